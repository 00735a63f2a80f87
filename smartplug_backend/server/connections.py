"""
C{MAX_CONNECTIONS} (SPEC 6.3): one count of open connections over every
listener, and a refusal at accept for each connection past it.

A refused connection is closed before a byte is read or written (no TLS
handshake, no HTTP): under a flood that is the cheapest answer there is.  The
refusals are logged once, then summed up at most once every C{log_every}
seconds, so that the flood does not flood the log as well.
"""

from collections import Counter
from typing import Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .guard import GateFactory, PassThrough, normal_address, pass_through
from .sockets import keep_alive


class ConnectionCap:
    """
    Counts the open connections of every listener wrapped with L{wrap}.

    @param limit: connections open at once, over all listeners.
    @param clock: paces the summary of refusals (the reactor; a L{Clock} in
        tests).
    @param log_every: seconds between two log lines about refusals.
    @ivar open: connections open now.
    @ivar open_by_listener: connections open now per listener name given
        to L{wrap}.
    @ivar refused: connections refused since start.
    """

    _log = Logger(namespace="smartplug_backend.server.connections")

    def __init__(self, limit: int, clock: IReactorTime, log_every: float = 10) -> None:
        self.limit = limit
        self.open = 0
        self.open_by_listener: Counter = Counter()
        self.refused = 0
        self._clock = clock
        self._log_every = log_every
        self._summary = None
        self._unlogged = 0

    @classmethod
    def from_settings(cls, settings, clock: IReactorTime) -> "ConnectionCap":
        """
        The cap configured by C{MAX_CONNECTIONS}.
        """
        return cls(settings.MAX_CONNECTIONS, clock)

    def wrap(self, factory, listener: Optional[str] = None) -> "CappedFactory":
        """
        C{factory} behind this cap: see L{CappedFactory}.  Its open
        connections are also counted under C{listener}, when given.
        """
        return CappedFactory(self, factory, listener)

    def admit(self, host) -> bool:
        """
        Count a new connection from C{host} if there is room; otherwise
        count and log its refusal.
        """
        if self.open < self.limit:
            self.open += 1
            return True
        self.refused += 1
        if self._summary is None:
            self._log.warn(
                "refused a connection from {peer}: {open} connections open, MAX_CONNECTIONS is {limit} "
                "(further refusals are summed up every {every} seconds)",
                peer=normal_address(host) if host else "?",
                open=self.open,
                limit=self.limit,
                every=self._log_every,
            )
            self._summary = self._clock.callLater(self._log_every, self._sum_up)
        else:
            self._unlogged += 1
        return False

    def release(self, listener: Optional[str] = None) -> None:
        """
        Count a connection closed.
        """
        self.open -= 1
        if listener is not None:
            self.open_by_listener[listener] -= 1

    def _sum_up(self) -> None:
        self._summary = None
        if not self._unlogged:
            return
        self._log.warn(
            "refused {count} more connections in the last {every} seconds: MAX_CONNECTIONS ({limit}) open",
            count=self._unlogged,
            every=self._log_every,
            limit=self.limit,
        )
        self._unlogged = 0
        # Still refusing: the next line comes no sooner than another period.
        self._summary = self._clock.callLater(self._log_every, self._sum_up)


class _Counted(PassThrough):
    """
    Counts a connection against the cap until it closes, and turns on TCP
    keepalive (L{keep_alive}) for it.
    """

    def __init__(self, cap: ConnectionCap, listener: Optional[str], wrapped) -> None:
        super().__init__(wrapped)
        self._cap = cap
        self._listener = listener
        self._released = False

    def opened(self, transport) -> None:
        # Every admitted connection of every listener passes here once.
        keep_alive(transport)

    def closed(self) -> None:
        if not self._released:
            self._released = True
            self._cap.release(self._listener)


class CappedFactory(GateFactory):
    """
    Wraps a listener's factory: past the cap a new connection is closed at
    once (see L{GateFactory}); below it, it is counted until it closes.
    """

    def __init__(self, cap: ConnectionCap, wrapped, listener: Optional[str] = None) -> None:
        super().__init__(wrapped)
        self.cap = cap
        self.listener = listener

    def admit(self, host) -> bool:
        return self.cap.admit(host)

    def admitted(self, addr):
        try:
            inner = self.wrapped.buildProtocol(addr)
        except BaseException:
            self.cap.release()
            raise
        if inner is None:
            self.cap.release()
            return None
        if self.listener is not None:
            self.cap.open_by_listener[self.listener] += 1
        return pass_through(_Counted, inner, self.cap, self.listener)
