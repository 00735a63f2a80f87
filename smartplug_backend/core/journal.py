"""
The journal: what the hub asks of the state store, and the in-memory one.

The hub records every report and display state in its journal I{before} it
changes its own state or tells anyone (SPEC 7): a change the journal could not
keep is not accepted.  The SQLite journal (L{smartplug_backend.state.persistence}) answers
later, from its writer thread; L{MemoryJournal} (C{STATE_DB = None}) answers
at once and keeps only the bounded history, so the hub behaves exactly as the
original in-memory server did.
"""

import collections
import dataclasses
from typing import Protocol

from twisted.internet.defer import Deferred, succeed


class StoreFailed(Exception):
    """
    The store could not record a change (disk full, read-only file, ...).

    C{str(error)} is the store's own one-line reason, for the log.
    """


class StoreAway(StoreFailed):
    """
    The store cannot be reached (Redis away: SPEC 11): every change is
    refused until it answers again, for the same reason, so the hub logs
    the refusals of one outage paced rather than one line each.
    """


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """
    One recorded report of a plug.

    @ivar at: seconds since the epoch.
    @ivar source: C{"http"} or C{"device"}.
    """

    value: int
    at: float
    source: str


class Journal(Protocol):
    """
    Where the hub records its changes.  Every method may answer later; the
    answers of one journal come back in the order the calls were made.

    A journal with a true C{shared} attribute is shared by several nodes
    (SPEC 11): the hub hands it every publication, even those it keeps no
    history of, and it answers publications with the publication as it
    numbered them.
    """

    def save_report(self, plug_id: str, value: int, at: float, source: str, publication=None) -> Deferred:
        """
        Record a report durably: the plug's new state and a history entry,
        and, when given, its pub/sub publication C{(publication, keep,
        oldest)} as L{save_publication} records one, in the same commit.

        @return: fires with C{None} once recorded, or fails (L{StoreFailed}
            for a store that cannot write) with nothing recorded.
        """

    def save_display(self, display) -> Deferred:
        """
        Record the display state (a L{smartplug_backend.core.display.Display})
        durably, and in the same commit what it sets of what the display
        was last when on (C{NEVER_ON.after(display)}, see
        L{smartplug_backend.core.display.LastOn}: a state that is not off,
        a colour), keeping the rest: the last state that was not off
        outlives a restart.

        @return: fires with C{None} once recorded, or fails with nothing
            recorded.
        """

    def history(self, plug_id: str, limit: int) -> Deferred:
        """
        @return: fires with at most C{limit} L{HistoryEntry}s of the plug,
            newest first.
        """

    def save_publication(self, publication, keep: int, oldest: float) -> Deferred:
        """
        Record a pub/sub publication (a L{smartplug_backend.core.history.Publication})
        durably, with its event's epoch and newest offset; drop the event's
        publications beyond the newest C{keep} or made before C{oldest}.

        @return: fires with C{None} once recorded, or fails with nothing
            recorded.
        """

    def save_command(self, command: str) -> Deferred:
        """
        Pass on a one-off display command (C{"reset"}, C{"update"}): a local
        journal keeps nothing; a shared one hands it to the other nodes.

        @return: fires with C{None} once passed on, or fails.
        """


class MemoryJournal:
    """
    The journal of C{STATE_DB = None}: nothing survives a restart; the last
    C{keep} reports of each plug are kept in memory for the history route.
    """

    def __init__(self, keep: int = 10000) -> None:
        self._keep = keep
        self._history: dict[str, collections.deque] = {}

    def save_report(self, plug_id: str, value: int, at: float, source: str, publication=None) -> Deferred:
        entries = self._history.get(plug_id)
        if entries is None:
            entries = self._history[plug_id] = collections.deque(maxlen=self._keep)
        entries.append(HistoryEntry(value, at, source))
        return succeed(None)

    def save_display(self, display) -> Deferred:
        return succeed(None)

    def save_publication(self, publication, keep: int, oldest: float) -> Deferred:
        # The hub's pub/sub history is the only copy.
        return succeed(None)

    def save_command(self, command: str) -> Deferred:
        return succeed(None)

    def history(self, plug_id: str, limit: int) -> Deferred:
        entries = self._history.get(plug_id, ())
        newest = [entries[-i] for i in range(1, min(limit, len(entries)) + 1)]
        return succeed(newest)
