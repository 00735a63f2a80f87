"""
C{MAX_CONNECTIONS} (SPEC 6.3): one count of open connections over every
listener, and a refusal at accept for each connection past it; and
C{MAX_CONNECTIONS_PER_ADDRESS}: no one address may hold more than that many
of them (loopback and C{BAN_ALLOW} excepted), so that one host cannot take
every place and lock out the lamps and apps.

A refused connection is closed before a byte is read or written (no TLS
handshake, no HTTP): under a flood that is the cheapest answer there is.  The
refusals are logged once, then summed up at most once every C{log_every}
seconds, so that the flood does not flood the log as well.
"""

import functools
import ipaddress
from collections import Counter
from typing import Iterable, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .guard import AllowList, GateFactory, PassThrough, normal_address, pass_through
from .sockets import keep_alive

#: Why a connection was refused: every place taken, or its address holds
#: all it may.
FULL = "max_connections"
PER_ADDRESS = "per_address"


@functools.lru_cache(maxsize=4096)
def holder_of(address: str) -> str:
    """
    Who holds a connection from C{address} (as L{normal_address} spells
    it), for C{MAX_CONNECTIONS_PER_ADDRESS}: the address itself, but for a
    global IPv6 address its /64 network, which one host on the internet is
    usually given whole (it could otherwise open each connection from
    another address).  Link-local and unique local addresses (a home's own
    network) are each their own, with their scope.
    """
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%")[0])
    except ValueError:
        return address
    return str(ipaddress.IPv6Network(f"{ip}/64", strict=False)) if ip.is_global else address


class ConnectionCap:
    """
    Counts the open connections of every listener wrapped with L{wrap}.

    @param limit: connections open at once, over all listeners.
    @param clock: paces the summary of refusals (the reactor; a L{Clock} in
        tests).
    @param log_every: seconds between two log lines about refusals.
    @param per_address: connections one address may hold open at once
        (C{None}: no such limit); loopback addresses and those in C{exempt}
        may hold more.
    @param exempt: addresses and networks (C{BAN_ALLOW}) not held to
        C{per_address}: a reverse proxy's clients all share its address.
    @ivar open: connections open now.
    @ivar open_by_listener: connections open now per listener name given
        to L{wrap}.
    @ivar refused: connections refused since start.
    @ivar refused_by_reason: the same, per reason (L{FULL}, L{PER_ADDRESS}).
    """

    _log = Logger(namespace="smartplug_backend.server.connections")

    def __init__(self, limit: int, clock: IReactorTime, log_every: float = 10, per_address: Optional[int] = None,
                 exempt: Iterable[str] = ()) -> None:
        self.limit = limit
        self.per_address = per_address
        self.open = 0
        self.open_by_listener: Counter = Counter()
        # normal address (an IPv6 one's /64: holder_of) -> its connections open now
        self.open_by_address: Counter = Counter()
        self.refused = 0
        self.refused_by_reason: Counter = Counter()
        self._exempt_list = AllowList(exempt)
        self._exempt: dict = {}
        self._clock = clock
        self._log_every = log_every
        # reason -> the pending summary, and the refusals it will sum up
        self._summaries: dict = {}
        self._unlogged: Counter = Counter()
        self._refused_from: Counter = Counter()

    @classmethod
    def from_settings(cls, settings, clock: IReactorTime) -> "ConnectionCap":
        """
        The cap configured by C{MAX_CONNECTIONS} and
        C{MAX_CONNECTIONS_PER_ADDRESS} (C{BAN_ALLOW} exempt from the latter).
        """
        return cls(settings.MAX_CONNECTIONS, clock, per_address=settings.MAX_CONNECTIONS_PER_ADDRESS,
                   exempt=settings.BAN_ALLOW)

    def wrap(self, factory, listener: Optional[str] = None) -> "CappedFactory":
        """
        C{factory} behind this cap: see L{CappedFactory}.  Its open
        connections are also counted under C{listener}, when given.
        """
        return CappedFactory(self, factory, listener)

    def admit(self, host) -> bool:
        """
        Count a new connection from C{host} if there is room, overall and
        for its address; otherwise count and log its refusal.
        """
        address = normal_address(host) if host else "?"
        if self.open >= self.limit:
            self._refuse(FULL, address, f"{self.open} connections open, MAX_CONNECTIONS is {self.limit}{self._most()}")
            return False
        holder = self._holder(address)
        held = self.open_by_address[holder]
        if self.per_address is not None and held >= self.per_address and not self._is_exempt(address):
            self._refuse(
                PER_ADDRESS, holder, f"it holds {held} connections, MAX_CONNECTIONS_PER_ADDRESS is {self.per_address}"
            )
            return False
        self.open += 1
        self.open_by_address[holder] = held + 1
        return True

    def _refuse(self, reason: str, address: str, why: str) -> None:
        """
        Count a refusal; log the first of a period whole, and the others of
        each reason summed up at most once per period (L{_sum_up}).
        """
        self.refused += 1
        self.refused_by_reason[reason] += 1
        if self._summaries.get(reason) is None:
            self._log.warn(
                "refused a connection from {peer}: {why} (further refusals are summed up every {every} seconds)",
                peer=address,
                why=why,
                every=self._log_every,
            )
            self._summaries[reason] = self._clock.callLater(self._log_every, self._sum_up, reason)
        else:
            self._unlogged[reason] += 1
            if reason == PER_ADDRESS:
                self._refused_from[address] += 1

    def release(self, listener: Optional[str] = None, address: Optional[str] = None) -> None:
        """
        Count a connection closed (of C{address}, as L{admit} was given it).
        """
        self.open -= 1
        if listener is not None:
            self.open_by_listener[listener] -= 1
        if address is not None:
            holder = self._holder(normal_address(address))
            left = self.open_by_address[holder] - 1
            if left > 0:
                self.open_by_address[holder] = left
            else:
                del self.open_by_address[holder]

    def _holder(self, address: str) -> str:
        """
        Whose count a connection from C{address} goes to, the same when it
        is admitted and released: L{holder_of}, but an exempt address counts
        on its own, never against its /64.
        """
        return address if self._is_exempt(address) else holder_of(address)

    def _is_exempt(self, address: str) -> bool:
        # Remembered: a flood from one address costs one look-up per
        # connection.
        exempt = self._exempt.get(address)
        if exempt is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                exempt = True  # a unix: socket: local, as loopback is
            else:
                exempt = ip.is_loopback or address in self._exempt_list
            if len(self._exempt) > 10000:
                self._exempt.clear()
            self._exempt[address] = exempt
        return exempt

    def _most(self) -> str:
        """
        Which address holds most of the open connections, when it holds
        many: the likelier cause of a full server than the refused peer.
        """
        if not self.open_by_address:
            return ""
        address, held = self.open_by_address.most_common(1)[0]
        return f"; {held} of them from {address}" if held * 10 >= self.open else ""

    def _sum_up(self, reason: str) -> None:
        self._summaries[reason] = None
        count = self._unlogged.pop(reason, 0)
        if not count:
            return
        if reason == FULL:
            self._log.warn(
                "refused {count} more connections in the last {every} seconds: {open} open, MAX_CONNECTIONS is "
                "{limit}{most}",
                count=count, every=self._log_every, open=self.open, limit=self.limit, most=self._most(),
            )
        else:
            # At most MAX_CONNECTIONS / MAX_CONNECTIONS_PER_ADDRESS addresses.
            addresses = ", ".join(address for address, _ in self._refused_from.most_common(3))
            self._refused_from.clear()
            self._log.warn(
                "refused {count} more connections in the last {every} seconds from addresses holding "
                "MAX_CONNECTIONS_PER_ADDRESS ({limit}): {addresses}",
                count=count, every=self._log_every, limit=self.per_address, addresses=addresses,
            )
        # Still refusing: the next line comes no sooner than another period.
        self._summaries[reason] = self._clock.callLater(self._log_every, self._sum_up, reason)


class _Counted(PassThrough):
    """
    Counts a connection against the cap until it closes, and turns on TCP
    keepalive (L{keep_alive}) for it.
    """

    def __init__(self, cap: ConnectionCap, listener: Optional[str], address: str, wrapped) -> None:
        super().__init__(wrapped)
        self._cap = cap
        self._listener = listener
        self._address = address
        self._released = False

    def opened(self, transport) -> None:
        # Every admitted connection of every listener passes here once.
        keep_alive(transport)

    def closed(self) -> None:
        if not self._released:
            self._released = True
            self._cap.release(self._listener, self._address)


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
        address = getattr(addr, "host", None) or "?"
        try:
            inner = self.wrapped.buildProtocol(addr)
        except BaseException:
            self.cap.release(address=address)
            raise
        if inner is None:
            self.cap.release(address=address)
            return None
        if self.listener is not None:
            self.cap.open_by_listener[self.listener] += 1
        return pass_through(_Counted, inner, self.cap, self.listener, address)
