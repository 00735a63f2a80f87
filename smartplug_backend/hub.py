"""
The hub: the one object that holds the server's state (SPEC 7).

It lives on the reactor thread and knows nothing of Bottle, Autobahn,
threads or SQLite.  Protocols call it; listeners subscribe to its changes
(the app WebSocket broadcast, tweets, pub/sub) and are called in the order
they subscribed.  A listener that fails is logged and the others still run.

Every report is first recorded in the hub's journal (L{journal.Journal}); only
once the journal has it does the hub change its state and tell the listeners.
A report the journal refuses changes nothing and reaches no one.
"""

import dataclasses
import time
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from .journal import Journal, MemoryJournal, StoreFailed


def utc_rfc3339(seconds: float) -> str:
    """
    C{seconds} since the epoch as UTC RFC 3339 with milliseconds and C{Z}.
    """
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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
    The plugs' state, owned by the reactor thread.

    @param now: returns the current time in seconds (a clock's C{seconds}).
    @param journal: where reports are recorded before they are accepted;
        by default a L{MemoryJournal}, which keeps nothing across restarts.
    """

    _log = Logger()

    def __init__(self, now: Callable[[], float] = time.time, journal: Optional[Journal] = None) -> None:
        self._now = now
        self._journal = MemoryJournal() if journal is None else journal
        self._plugs: dict[str, Plug] = {}
        self._listeners: list[Listener] = []

    def restore(self, plugs: Iterable[Plug]) -> None:
        """
        Take C{plugs} (in first-report order) as the known state, as loaded
        from the store at start-up; no listener is told.
        """
        for plug in plugs:
            self._plugs[plug.id] = plug

    def listen(self, listener: Listener) -> Callable[[], None]:
        """
        Call C{listener(report)} for every accepted report from now on.

        @return: a function that stops the calls.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def report(self, plug_id: str, value: int, source: str, peer: str) -> Deferred:
        """
        Record a validated report in the journal, then take it as the plug's
        state and tell every listener.

        With the in-memory journal all of that happens before this returns.

        @return: a Deferred that fires with the L{Report}, or with C{None}
            when the journal could not record it (already logged here; the
            state is unchanged).  It never fails, so callers that do not
            care (the device port) may drop it.
        """
        plug = Plug(plug_id, value, self._now())
        saved = maybeDeferred(self._journal.save_report, plug_id, value, plug.updated_at, source)
        return saved.addCallbacks(
            lambda _: self._accept(plug, source, peer),
            self._not_saved,
            errbackArgs=(plug, peer),
        )

    def _not_saved(self, failure, plug: Plug, peer: str) -> None:
        if failure.check(StoreFailed):
            self._log.error(
                "report plug {plug_id} -> {value} from {peer} refused: state store cannot write: {why}",
                plug_id=plug.id, value=plug.value, peer=peer, why=failure.getErrorMessage(),
            )
        else:
            self._log.failure(
                "report plug {plug_id} -> {value} from {peer} refused: state store failed",
                failure, plug_id=plug.id, value=plug.value, peer=peer,
            )
        return None

    def _accept(self, plug: Plug, source: str, peer: str) -> Report:
        # The journal answers in call order, so reports of one plug are
        # accepted in the order they arrived and "previous" is right.
        old = self._plugs.get(plug.id)
        self._plugs[plug.id] = plug
        report = Report(plug, old.value if old else None, source, peer)
        self._log.info(
            "plug {plug_id} -> {value} from {peer}", plug_id=plug.id, value=plug.value, peer=peer
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

    def history(self, plug_id: str, limit: int) -> Deferred:
        """
        The plug's recorded reports, newest first.

        @return: a Deferred firing with at most C{limit}
            L{journal.HistoryEntry}s, or with C{None} for an unknown plug.
        """
        if plug_id not in self._plugs:
            return succeed(None)
        return self._journal.history(plug_id, limit)
