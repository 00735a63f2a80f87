"""
Authentication failures and bans shared by every node through Redis (SPEC
6.2, 11): the guard's C{shared} (L{smartplug_backend.server.guard.Guard}).
"""

from typing import Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.logger import Logger


class SharedBans:
    """
    Authentication failures and bans shared through Redis (SPEC 6.2, 11),
    as the guard's C{shared}: a failure counted or a ban made here is
    committed and reaches every node; the other nodes' (and the bans loaded
    at start) reach the guard through L{watch}.
    """

    _log = Logger(namespace="smartplug_backend.integrations.redis")

    def __init__(self, engine) -> None:
        self._engine = engine
        self._watchers: list = []
        self._failure_watchers: list = []
        self._lift_watchers: list = []
        self._holders: list = []
        # The addresses whose ban is on its way to Redis.
        self.sharing: set = set()

    def watch(self, ban: Callable[[str, float], None], failed: Callable[[str], None],
              lifted: Callable[[str, str], None], held: Callable[[], Iterable[tuple[str, float]]] = tuple) -> None:
        """
        Call C{ban(host, seconds)} for every ban made on another node,
        C{failed(host)} for every authentication failure counted there, and
        C{lifted(host, by)} for every ban lifted there by hand; C{held()}
        gives the bans this node holds now, as C{(host, until)}.
        """
        self._watchers.append(ban)
        self._failure_watchers.append(failed)
        self._lift_watchers.append(lifted)
        self._holders.append(held)

    def held(self) -> list[tuple[str, float]]:
        """
        The bans this node holds now, as C{(host, until)}.
        """
        return [ban for held in self._holders for ban in held()]

    def lifted(self, host: str) -> None:
        """
        Tell every node that the ban on C{host} was lifted here by hand.
        """
        self._tell({"kind": "lift", "address": host}, self._engine.state.commit_lift, (host,),
                   "lifting the ban on {peer} not shared with the other nodes: {why}")

    def lifted_elsewhere(self, host: str, by: str) -> None:
        for lifted in self._lift_watchers:
            lifted(host, by)

    def failed(self, host: str) -> None:
        """
        Tell every node that this one counted a failure of C{host}; while
        Redis is away each node counts its own.
        """
        engine = self._engine
        if engine.up:
            told = engine.commit({"kind": "failure", "address": host}, engine.state.commit_announcement)
            told.addErrback(lambda f: None)

    def failed_elsewhere(self, host: str) -> None:
        for failed in self._failure_watchers:
            failed(host)

    def share(self, host: str, until: float, seconds: float) -> Deferred:
        """
        Tell every node that this one banned C{host} until C{until}.

        @return: a Deferred that fires once that is done or failed (logged).
        """
        self.sharing.add(host)
        told = self._tell({"kind": "ban", "address": host, "until": until, "seconds": seconds},
                          self._engine.state.commit_ban, (host, until, seconds),
                          "ban on {peer} not shared with the other nodes: {why}")
        return told.addBoth(lambda _: self.sharing.discard(host))

    def _tell(self, change: dict, commit, args: tuple, not_shared: str) -> Deferred:
        # Committed through the engine; a failure is logged with
        # C{not_shared} (fields: peer, why), this node's own view stands.
        told = self._engine.commit(change, commit, *args)
        return told.addErrback(lambda f: self._log.warn(not_shared, peer=change["address"], why=f.getErrorMessage()))

    def banned_elsewhere(self, host: str, seconds: float) -> None:
        for ban in self._watchers:
            ban(host, seconds)
