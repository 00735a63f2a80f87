"""
The hub: the one object that holds the server's state (SPEC 7).

It lives on the reactor thread and knows nothing of Bottle, Autobahn or
threads.  Protocols call it; listeners subscribe to its changes (the app
WebSocket broadcast, tweets, pub/sub, storage; the devices for the display)
and are called in the order they subscribed.  A listener that fails is
logged and the others still run.
"""

import dataclasses
import time
from typing import Callable, Optional

from twisted.logger import Logger

from .display import COMMANDS, OFF, Display
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


@dataclasses.dataclass(frozen=True)
class DisplayEvent:
    """
    A packet for every device, as display listeners see it.

    @ivar packet: what the devices get, e.g. C{"[cc:2:255,65,174:0]"}.
    @ivar state: the display state after the event.
    @ivar command: C{"reset"} or C{"update"} for a one-off command (the state
        did not change), C{None} when the state was set.
    @ivar peer: who asked, for logs.
    """

    packet: str
    state: Display
    command: Optional[str]
    peer: str


Listener = Callable[[Report], None]
DisplayListener = Callable[[DisplayEvent], None]


class Hub:
    """
    The server's state, owned by the reactor thread: the plugs and the
    display here, the pub/sub registry in C{pubsub}.

    @param now: returns the current time in seconds (a clock's C{seconds}).
    """

    _log = Logger()

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._plugs: dict[str, Plug] = {}
        self._display = OFF
        self._listeners: list[Listener] = []
        self._display_listeners: list[DisplayListener] = []
        self.pubsub = PubSub(now=now)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """
        Call C{listener(report)} for every accepted report from now on.

        @return: a function that stops the calls.
        """
        return _subscribe(self._listeners, listener)

    def watch_display(self, listener: DisplayListener) -> Callable[[], None]:
        """
        Call C{listener(event)} with a L{DisplayEvent} whenever the display
        state is set or a one-off command is given, from now on.

        @return: a function that stops the calls.
        """
        return _subscribe(self._display_listeners, listener)

    def _notify(self, listeners: list, event) -> None:
        for listener in list(listeners):
            try:
                listener(event)
            except Exception:
                self._log.failure("listener {listener!r} failed", listener=listener)

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
        self._notify(self._listeners, report)
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

    def display(self) -> Display:
        """
        The current display state (off until someone sets it).
        """
        return self._display

    def set_display(self, display: Display, peer: str) -> Display:
        """
        Make C{display} the state and send its packet to the display
        listeners, even when it equals the old state (a lamp that missed a
        packet gets it again).
        """
        self._display = display
        self._log.info("display -> {packet} from {peer}", packet=display.packet(), peer=peer)
        self._notify(self._display_listeners, DisplayEvent(display.packet(), display, None, peer))
        return display

    def display_command(self, command: str, peer: str) -> str:
        """
        Send the one-off packet of C{command} (a key of
        L{smartplug_backend.display.COMMANDS}) without changing the state.

        @return: the packet sent.
        """
        packet = COMMANDS[command]
        self._log.info("display command {command} from {peer}", command=command, peer=peer)
        self._notify(self._display_listeners, DisplayEvent(packet, self._display, command, peer))
        return packet


def _subscribe(listeners: list, listener) -> Callable[[], None]:
    listeners.append(listener)
    return lambda: listeners.remove(listener)
