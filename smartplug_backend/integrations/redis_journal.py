"""
The hub's journal with C{REDIS_URL} set (SPEC 11): every change goes to
Redis through the engine (L{redis_engine.RedisEngine}), which commits it
with one Lua script and fires its Deferred when the change comes back on
the change channel, in the channel's order.
"""

import json

from twisted.internet.defer import Deferred

from ..core.display import NEVER_ON, Display, LastOn
from ..core.history import Publication


def display_state(display: Display) -> str:
    """
    The display state as JSON without its packet (what L{validate_display}
    reads back).
    """
    state = display.as_json()
    del state["packet"]
    return json.dumps(state)


def last_on_states(last_on: LastOn) -> tuple[str, str]:
    """
    The last state on and the last colour as JSON, each '' when there is
    none, as the Lua scripts take them.
    """
    return tuple("" if display is None else display_state(display) for display in (last_on.state, last_on.colour))


def publication_of(change: dict) -> Publication:
    """
    The publication a change carries, numbered by Redis.
    """
    return Publication(change["event"], change["offset"], change["epoch"], change["data"], change["created_at"])


class RedisJournal:
    """
    The hub's journal with C{REDIS_URL} set: every change goes through the
    engine to Redis, and its Deferred fires when it comes back on the change
    channel, in the channel's order.

    @param keep: history entries kept per plug (C{HISTORY_KEEP}).
    """

    # Every node must see every publication: the hub journals them all.
    shared = True

    def __init__(self, engine, keep: int) -> None:
        self._engine = engine
        self._keep = keep

    def save_report(self, plug_id: str, value: int, at: float, source: str, publication=None) -> Deferred:
        """
        Commit a report, and with C{publication} (C{(publication, keep,
        oldest)}) its C{smartplug} publication in the same Lua call.

        @return: fires with C{None}, or with the publication as Redis
            numbered it.
        """
        engine = self._engine
        change = {"kind": "report", "plug": plug_id, "value": value, "at": at, "source": source}
        if publication is None:
            return engine.commit(change, engine.state.commit_report, plug_id, value, at, source, self._keep)
        p, keep, oldest = publication
        change.update(event=p.event, data=p.data_json, created_at=p.created_at)
        numbering = (p.event, p.epoch, p.data_json, p.created_at, keep, p.created_at - oldest)
        done = engine.commit(change, engine.state.commit_report, plug_id, value, at, source, self._keep, numbering)
        return done.addCallback(publication_of)

    def save_publication(self, publication, keep: int, oldest: float) -> Deferred:
        """
        Commit a publication: Redis numbers it (offset and epoch of its
        event), keeps it (the newest C{keep}), and hands it to every node.

        @return: fires with the publication as Redis numbered it.
        """
        engine = self._engine
        p = publication
        change = {"kind": "publication", "event": p.event, "data": p.data_json, "created_at": p.created_at}
        done = engine.commit(change, engine.state.commit_publication, p.event, p.epoch, p.data_json, p.created_at,
                             keep, p.created_at - oldest)
        return done.addCallback(publication_of)

    def save_display(self, display) -> Deferred:
        """
        Commit a display state, and what it sets of the last state on and
        the last colour, in one Lua call: every node derives the same from
        the change, in the channel's order, and a node that starts later
        loads it.
        """
        engine = self._engine
        state = display_state(display)
        return engine.commit({"kind": "display", "state": json.loads(state)}, engine.state.commit_display, state,
                             *last_on_states(NEVER_ON.after(display)))

    def save_command(self, command: str) -> Deferred:
        engine = self._engine
        return engine.commit({"kind": "command", "command": command}, engine.state.commit_announcement)

    def history(self, plug_id: str, limit: int) -> Deferred:
        """
        The plug's history, read from Redis (fails with L{StoreFailed} while
        Redis is unreachable: this node keeps no copy of it).
        """
        return self._engine.read(self._engine.state.history, plug_id, limit)
