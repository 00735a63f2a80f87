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

from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from .guard import GateFactory, log_prefix, normal_address
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


class _Counted(Protocol):
    """
    Stands between a transport and a listener's protocol, to turn on TCP
    keepalive (L{keep_alive}) and to see the connection close.

    Unlike Twisted's ProtocolWrapper it is not a transport itself: the
    listener's protocol gets the real transport.  So a TLS transport stays
    what Autobahn checks for (under an C{ssl:} endpoint, TLS is outside the
    cap), and writes cost no extra call.
    """

    def __init__(self, cap: ConnectionCap, wrapped, listener: Optional[str] = None) -> None:
        self._cap = cap
        self.wrapped = wrapped
        self._listener = listener
        self._released = False

    def logPrefix(self) -> str:
        return log_prefix(self.wrapped)

    def makeConnection(self, transport) -> None:
        self.transport = transport
        # Every admitted connection of every listener passes here once.
        keep_alive(transport)
        self.wrapped.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.wrapped.dataReceived(data)

    def connectionLost(self, reason) -> None:
        if not self._released:
            self._released = True
            self._cap.release(self._listener)
        self.wrapped.connectionLost(reason)


@implementer(IHalfCloseableProtocol)
class _CountedHalfCloseable(_Counted):
    """
    A L{_Counted} for a protocol that handles half-closed connections (the
    HTTP channel): the transport asks the outermost protocol whether it
    does, so this one says yes and passes both calls on.
    """

    def readConnectionLost(self) -> None:
        self.wrapped.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrapped.writeConnectionLost()


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
        if IHalfCloseableProtocol.providedBy(inner):
            return _CountedHalfCloseable(self.cap, inner, self.listener)
        return _Counted(self.cap, inner, self.listener)
