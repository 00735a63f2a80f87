"""
The hub: the one object that holds the server's state (SPEC 7).

It lives on the reactor thread and knows nothing of Bottle, Autobahn or
threads.  Protocols call it; listeners subscribe to its changes (the app
WebSocket broadcast, tweets, pub/sub, storage) and are called in the order
they subscribed.  A listener that fails is logged and the others still run.
"""

import dataclasses
import time
from typing import Callable, Optional

from twisted.logger import Logger

from .pubsub import PubSub
from .times import utc_rfc3339


@dataclasses.dataclass(frozen=True)
class Plug:
    """
    The last known state of one plug.
    """

    id: str
    value: int
    updated_at: float

    def as_json(self) -> dict:
        return {"id": self.id, "value": self.value, "updated_at": utc_rfc3339(self.updated_at)}


@dataclasses.dataclass(frozen=True)
class Report:
    """
    One accepted report, as listeners see it.

    @ivar previous: the plug's value before this report, or C{None} if this
        is the first report of the plug.
    @ivar source: how it arrived: C{"http"} or C{"device"}.
    @ivar peer: the sender's address, for logs.
    """

    plug: Plug
    previous: Optional[int]
    source: str
    peer: str

    @property
    def changed(self) -> bool:
        """
        True when the value differs from the last one (a first report counts).
        """
        return self.previous != self.plug.value


Listener = Callable[[Report], None]


class Hub:
    """
    The server's state, owned by the reactor thread: the plugs here, the
    pub/sub registry in C{pubsub}.

    @param now: returns the current time in seconds (a clock's C{seconds}).
    """

    _log = Logger()

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._plugs: dict[str, Plug] = {}
        self._listeners: list[Listener] = []
        self.pubsub = PubSub(now=now)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """
        Call C{listener(report)} for every accepted report from now on.

        @return: a function that stops the calls.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def report(self, plug_id: str, value: int, source: str, peer: str) -> Report:
        """
        Record a validated report and tell every listener.
        """
        old = self._plugs.get(plug_id)
        plug = Plug(plug_id, value, self._now())
        self._plugs[plug_id] = plug
        report = Report(plug, old.value if old else None, source, peer)
        self._log.info(
            "plug {plug_id} -> {value} from {peer}", plug_id=plug_id, value=value, peer=peer
        )
        for listener in list(self._listeners):
            try:
                listener(report)
            except Exception:
                self._log.failure("listener {listener!r} failed", listener=listener)
        return report

    def plug(self, plug_id: str) -> Optional[Plug]:
        """
        The plug with this id, or C{None} if it never reported.
        """
        return self._plugs.get(plug_id)

    def plugs(self) -> list[Plug]:
        """
        Every known plug, in the order they first reported.
        """
        return list(self._plugs.values())
