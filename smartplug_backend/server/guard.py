"""
Refusing strangers (SPEC 6.2): API key checks and IP bans shared by every
listener.

A L{Guard} counts authentication failures per peer address.  After
C{BAN_AFTER} failures the address is banned for C{BAN_SECONDS}: every
listener wrapped with L{Guard.wrap} closes its new connections at once,
before any HTTP, TLS or WebSocket byte is read, and the connections it
already has on listeners wrapped with C{close_on_ban} (the HTTP port: a
keep-alive connection must not go on guessing) are closed too.  Credential
checks refuse a banned address before looking at what it sent (see
L{Guard.banned}).  Addresses in C{BAN_ALLOW} are never banned.  The guard
lives on the reactor thread; a WSGI thread reports a failure through the
bridge and reads bans with L{Guard.banned_from_thread}.
"""

import collections
import dataclasses
import functools
import hmac
import ipaddress
from collections import Counter
from typing import Callable, Iterable, Optional

from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocolNegotiationFactory, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..core.limits import RECENT_FAILURES

# Failures of addresses idle for longer than a ban are forgotten; past this
# many remembered addresses the stale ones are dropped in one sweep.
_SWEEP_AT = 4096
# Seconds between a ban and the closing of the banned address's open
# connections: the answer that made the ban (a 401) is written first.
CLOSE_AFTER_BAN = 0.5
# The one protocol every listener speaks, named for ALPN.
HTTP_1_1 = b"http/1.1"


@dataclasses.dataclass(frozen=True)
class Ban:
    """
    One current ban, as the dashboard shows it.

    @ivar until: when it ends, in the clock's seconds.
    @ivar refused: connections refused during it.
    @ivar failures: the failures that led to it.
    """

    address: str
    until: float
    refused: int
    failures: int


@dataclasses.dataclass(frozen=True)
class Failure:
    """
    One recorded authentication failure (the reason never holds what the
    peer sent).
    """

    at: float
    address: str
    reason: str


#: What a banned address is told where it can be told something (403).
BANNED = "this address is banned for too many authentication failures; try again later"


def _connections(count: int) -> str:
    return f"{count} connection" if count == 1 else f"{count} connections"


def key_matches(expected: Optional[str], given: Optional[str]) -> bool:
    """
    True when no key is required (C{expected} is C{None}) or C{given} is that
    key, compared in constant time.
    """
    if expected is None:
        return True
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@functools.lru_cache(maxsize=4096)
def normal_address(host: str) -> str:
    """
    One spelling per address, so that a ban holds on IPv4 and dual-stack
    IPv6 listeners alike (C{::ffff:10.0.0.1} is C{10.0.0.1}).  Anything that
    is not an IP address is returned unchanged.  Kept for the addresses
    seen most (parsing one is a tenth of a report's cost).
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def normal_network(entry: str):
    """
    The network C{entry} of an allow list (C{BAN_ALLOW}, C{METRICS_ALLOW})
    spelled as L{normal_address} spells the addresses it is matched with:
    C{::ffff:10.0.0.1} and C{::ffff:10.0.0.0/120} are IPv4, or they would
    never match.
    """
    network = ipaddress.ip_network(entry, strict=False)
    mapped = getattr(network.network_address, "ipv4_mapped", None)
    if mapped is not None and network.prefixlen >= 96:
        return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


class AllowList:
    """
    Addresses and networks (C{BAN_ALLOW}, C{METRICS_ALLOW}); C{host in
    allow_list} is true for an IP address in one of them, in whichever
    spelling (L{normal_address}, L{normal_network}).
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = tuple(normal_network(entry) for entry in entries)

    def __contains__(self, host: Optional[str]) -> bool:
        try:
            address = ipaddress.ip_address(normal_address(host or ""))
        except ValueError:
            return False
        return any(address in network for network in self._networks)


@dataclasses.dataclass
class _Failures:
    count: int
    last: float


class Guard:
    """
    Authentication failures and bans per peer address.

    @param clock: the reactor's time (a L{Clock} in tests); bans are lifted
        by a delayed call on it.
    @param ban_after: failures that ban an address.
    @param ban_seconds: how long a ban lasts; failures are also forgotten
        after this long without a new one.
    @param allow: addresses and networks (strings) never banned.
    @param shared: where failures and bans are shared with other nodes
        (SPEC 11), or C{None}: an object with C{failed(host)},
        C{share(host, until, seconds)} and C{lifted(host)}, called for every
        failure this guard counts, every ban it makes and every ban lifted
        by hand, and C{watch(ban, failed, lifted)}, through which it calls
        L{ban}, L{failed_elsewhere} and L{lifted_elsewhere} for the other
        nodes'.
    """

    _log = Logger(namespace="smartplug_backend.server.guard")

    def __init__(self, clock: IReactorTime, ban_after: int = 3, ban_seconds: float = 60, allow: Iterable[str] = (),
                 shared=None) -> None:
        self._clock = clock
        self._ban_after = ban_after
        self._ban_seconds = ban_seconds
        self._allow = AllowList(allow)
        self._failures: dict[str, _Failures] = {}
        self._sweep_at = 0  # see _sweep
        self._swept = clock.seconds()
        # banned address -> connections refused during its ban
        self._bans: dict[str, int] = {}
        # banned address -> (its end, the timer that lifts it, failures)
        self._ban_ends: dict[str, tuple] = {}
        # address -> open connections of listeners wrapped with close_on_ban
        self._open: dict[str, set] = {}
        self._recent: collections.deque = collections.deque(maxlen=RECENT_FAILURES)
        self._watchers: list[Callable[[], None]] = []
        # kind -> failures counted, for metrics
        self.failure_counts: Counter = Counter()
        self._shared = shared
        if shared is not None:
            shared.watch(self.ban, self.failed_elsewhere, self.lifted_elsewhere,
                         lambda: [(ban.address, ban.until) for ban in self.bans()])

    @classmethod
    def from_settings(cls, settings, clock: IReactorTime, shared=None) -> "Guard":
        """
        The guard configured by C{BAN_AFTER}, C{BAN_SECONDS} and C{BAN_ALLOW}.
        """
        return cls(clock, settings.BAN_AFTER, settings.BAN_SECONDS, settings.BAN_ALLOW, shared)

    @property
    def ban_seconds(self) -> float:
        """
        How long a ban lasts (C{BAN_SECONDS}).
        """
        return self._ban_seconds

    def allowed(self, host: str) -> bool:
        """
        True when C{host} is in C{BAN_ALLOW}: it is never banned.
        """
        return host in self._allow

    def banned(self, host: str) -> bool:
        """
        True while C{host} is banned.
        """
        return normal_address(host) in self._bans

    def banned_from_thread(self, host: str) -> bool:
        """
        L{banned}, safe to call from any thread (a WSGI handler): one read
        of a dict that only the reactor thread changes, which Python makes
        atomic (a copy of every ban, made at every ban, cost O(bans) each:
        8 ms a ban at 50,000 bans).
        """
        return self._bans.get(normal_address(host)) is not None

    def active_bans(self) -> int:
        """
        How many addresses are banned now.
        """
        return len(self._bans)

    def failures(self, host: str) -> int:
        """
        The failures counted against C{host} now (0 once forgotten or banned).
        """
        seen = self._failures.get(normal_address(host))
        if seen is None or self._clock.seconds() - seen.last >= self._ban_seconds:
            return 0
        return seen.count

    def failure(self, host: str, reason: str, kind: str = "other") -> bool:
        """
        Count one authentication failure of C{host}; ban it when that makes
        C{BAN_AFTER} failures.  C{reason} is logged: it must not hold what
        the peer sent.  C{kind} is what failed, from a small fixed set
        (C{"api_key"}, C{"device_secret"}, ...): a metrics label.

        A failure of an address that is banned already is logged, listed
        and counted too, but does not lengthen its ban.

        @return: True when C{host} is banned now.
        """
        self.failure_counts[kind] += 1
        host = normal_address(host)
        if host in self._bans:
            # Logged and listed like any failure, but the ban keeps its end:
            # it is already in force, and every node shares that end.
            self._recent.append(Failure(self._clock.seconds(), host, reason + " (during its ban)"))
            self._log.warn(
                "authentication failure from {peer} during its ban: {reason}", peer=host, reason=reason
            )
            self._changed()
            return True
        self._recent.append(Failure(self._clock.seconds(), host, reason))
        self._changed()
        if self.allowed(host):
            self._log.warn(
                "authentication failure from {peer}: {reason} (in BAN_ALLOW, never banned)",
                peer=host,
                reason=reason,
            )
            return False
        count = self._count(host)
        self._log.warn(
            "authentication failure from {peer}: {reason} ({count} of {limit})",
            peer=host,
            reason=reason,
            count=count,
            limit=self._ban_after,
        )
        if self._shared is not None:
            self._shared.failed(host)
        if count < self._ban_after:
            return False
        self._ban_after_failures(host, count)
        if self._shared is not None:
            self._shared.share(host, self._clock.seconds() + self._ban_seconds, self._ban_seconds)
        return True

    def _ban_after_failures(self, host: str, count: int) -> None:
        del self._failures[host]
        self._bans[host] = 0
        timer = self._clock.callLater(self._ban_seconds, self._lift, host, self._ban_seconds)
        self._ban_ends[host] = (self._clock.seconds() + self._ban_seconds, timer, count)
        self._began(host)
        self._changed()
        self._log.warn(
            "banned {peer} for {seconds} seconds after {count} authentication failures",
            peer=host,
            seconds=self._ban_seconds,
            count=count,
        )

    def failed_elsewhere(self, host: str) -> None:
        """
        Count an authentication failure that another node saw (SPEC 11:
        failures count per address on all nodes together); ban the address
        when that makes C{BAN_AFTER}.  The node that saw the failure logs it.
        """
        host = normal_address(host)
        if host in self._bans or self.allowed(host):
            return
        count = self._count(host)
        if count >= self._ban_after:
            self._ban_after_failures(host, count)

    def ban(self, host: str, seconds: float) -> None:
        """
        Ban C{host} for C{seconds} from now, as another node decided (SPEC
        11); nothing if it is banned already or in C{BAN_ALLOW}.
        """
        host = normal_address(host)
        if host in self._bans or self.allowed(host) or seconds <= 0:
            return
        seen = self._failures.pop(host, None)
        self._bans[host] = 0
        timer = self._clock.callLater(seconds, self._lift, host, seconds)
        self._ban_ends[host] = (self._clock.seconds() + seconds, timer, seen.count if seen else 0)
        self._began(host)
        self._changed()
        self._log.warn("banned {peer} for {seconds:.0f} seconds by another node", peer=host, seconds=seconds)

    def _count(self, host: str) -> int:
        now = self._clock.seconds()
        seen = self._failures.get(host)
        if seen is None or now - seen.last >= self._ban_seconds:
            seen = self._failures[host] = _Failures(0, now)
            if len(self._failures) > _SWEEP_AT and (
                len(self._failures) > self._sweep_at or now - self._swept >= self._ban_seconds
            ):
                self._sweep(now)
        seen.count += 1
        seen.last = now
        return seen.count

    def _sweep(self, now: float) -> None:
        for host, seen in list(self._failures.items()):
            if now - seen.last >= self._ban_seconds:
                del self._failures[host]
        # Under a flood of addresses that all failed lately, sweep again only
        # once their number has doubled, or a ban's time later: each failure
        # costs O(1) on average, and stale ones do not stay for good.
        self._sweep_at = 2 * len(self._failures)
        self._swept = now

    def _began(self, host: str) -> None:
        if self._open.get(host):
            self._clock.callLater(CLOSE_AFTER_BAN, self._close_open, host)

    def _close_open(self, host: str) -> None:
        if host not in self._bans:
            return
        # A connection that proved a credential (a logged-in dashboard
        # page's live socket) guesses nothing more: like the WebSocket
        # ports' proven connections it stays, so that the owner's own page,
        # sharing the address with the client that failed, is not cut off.
        connections, proven = [], 0
        for connection in self._open.get(host, ()):
            if _proven(connection):
                proven += 1
            else:
                connections.append(connection)
        if connections and proven:
            self._log.info(
                "closing {count} open HTTP connection(s) of banned {peer}; {kept} logged-in dashboard page(s) stay open",
                count=len(connections), peer=host, kept=proven,
            )
        elif connections:
            self._log.info("closing {count} open HTTP connection(s) of banned {peer}", count=len(connections), peer=host)
        elif proven:
            self._log.info("{kept} logged-in dashboard page(s) of banned {peer} stay open", kept=proven, peer=host)
        for connection in connections:
            connection.transport.loseConnection()

    def opened(self, host: Optional[str], connection) -> None:
        """
        Track C{connection} (it has a C{transport}) of C{host}: it is closed
        if C{host} is banned while it is open.
        """
        if host:
            self._open.setdefault(normal_address(host), set()).add(connection)

    def closed(self, host: Optional[str], connection) -> None:
        """
        Stop tracking C{connection}: it has closed.
        """
        if not host:
            return
        host = normal_address(host)
        connections = self._open.get(host)
        if connections is not None:
            connections.discard(connection)
            if not connections:
                del self._open[host]

    def open_connections(self, host: str) -> int:
        """
        How many tracked connections of C{host} are open now.
        """
        return len(self._open.get(normal_address(host), ()))

    def _lift(self, host: str, seconds: float) -> None:
        refused = self._bans.pop(host)
        self._ban_ends.pop(host, None)
        self._log.info(
            "ban on {peer} lifted after {seconds:g} seconds ({refused} refused)",
            peer=host,
            # Whole seconds: a ban taken over from another node has
            # whatever was left of it.
            seconds=round(seconds),
            refused=_connections(refused),
        )
        self._changed()

    def lift(self, host: str, by: str) -> bool:
        """
        End the ban on C{host} now (the dashboard's button); C{by} is who
        asked, for the log.

        @return: False when C{host} was not banned.
        """
        host = normal_address(host)
        if host not in self._bans:
            return False
        self._end_ban(host, by)
        if self._shared is not None:
            self._shared.lifted(host)
        return True

    def lifted_elsewhere(self, host: str, by: str) -> None:
        """
        End the ban on C{host} now, as another node's owner asked (SPEC 11).
        """
        host = normal_address(host)
        if host in self._bans:
            self._end_ban(host, by)

    def _end_ban(self, host: str, by: str) -> None:
        refused = self._bans.pop(host)
        _, timer, _ = self._ban_ends.pop(host)
        if timer.active():
            timer.cancel()
        self._log.info(
            "ban on {peer} lifted by {by} ({refused} refused)", peer=host, by=by, refused=_connections(refused)
        )
        self._changed()

    def bans(self) -> list[Ban]:
        """
        The current bans, oldest first.
        """
        return [
            Ban(host, until, self._bans[host], failures)
            for host, (until, _, failures) in self._ban_ends.items()
            if host in self._bans
        ]

    def recent_failures(self) -> list[Failure]:
        """
        The last L{RECENT_FAILURES} authentication failures, oldest first.
        """
        return list(self._recent)

    def watch(self, listener: Callable[[], None]) -> Callable[[], None]:
        """
        Call C{listener()} after every failure, ban and lift, from now on.

        @return: a function that stops the calls.
        """
        self._watchers.append(listener)
        return lambda: self._watchers.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._watchers):
            try:
                listener()
            except Exception:
                self._log.failure("guard listener {listener!r} failed", listener=listener)

    def admits(self, host: Optional[str]) -> bool:
        """
        Whether a new connection from C{host} may go on; a refusal is counted
        for the log line that lifts the ban.
        """
        if not self._bans:
            # The usual case, on every accept: no address to spell out.
            return True
        host = normal_address(host) if host else None
        if host not in self._bans:
            return True
        self._bans[host] += 1
        return False

    def wrap(self, factory, close_on_ban: bool = False) -> "GuardedFactory":
        """
        C{factory} behind this guard: see L{GuardedFactory}.

        @param close_on_ban: close the open connections of an address when
            it is banned (the HTTP listener).
        """
        return GuardedFactory(self, factory, close_on_ban)


class ClosedAtOnce(Protocol):
    """
    The protocol of a refused connection (a banned peer, one over
    C{MAX_CONNECTIONS}): closed as soon as it is made, before anything is
    read or written.
    """

    def connectionMade(self) -> None:
        self.transport.abortConnection()


def log_prefix(wrapped) -> str:
    """
    The log prefix of C{wrapped} (a factory or protocol), for a wrapper that
    should not show in the log.
    """
    prefix = getattr(wrapped, "logPrefix", None)
    return prefix() if prefix else type(wrapped).__name__


@implementer(IProtocolNegotiationFactory)
class GateFactory(Factory):
    """
    Wraps a listener's factory and decides at accept: a connection refused
    by L{admit} gets L{ClosedAtOnce} and never reaches the wrapped factory.

    A protocol rather than C{None}, so that it also works under wrappers
    (TLS, connection limits) that do not accept C{None} from the factory
    they wrap.

    It names HTTP/1.1 as its protocol for ALPN: an C{ssl:} endpoint wraps
    it in TLS, and Twisted's ALPN callback aborts the handshake of every
    client that offers ALPN (browsers, curl, okhttp) when the factory
    inside names no protocol.
    """

    noisy = False

    def __init__(self, wrapped) -> None:
        self.wrapped = wrapped

    def logPrefix(self) -> str:
        return log_prefix(self.wrapped)

    def acceptableProtocols(self) -> list:
        """
        ALPN: every listener speaks HTTP/1.1 (WebSocket handshakes included).
        """
        return [HTTP_1_1]

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr):
        if not self.admit(getattr(addr, "host", None)):
            return ClosedAtOnce()
        return self.admitted(addr)

    def admit(self, host: Optional[str]) -> bool:
        """
        Whether a new connection from C{host} may go on.
        """
        raise NotImplementedError

    def admitted(self, addr):
        """
        The protocol of an admitted connection: the wrapped factory's.
        """
        return self.wrapped.buildProtocol(addr)


class PassThrough(Protocol):
    """
    Stands between a transport and a listener's protocol to see the
    connection open and close (L{opened}, L{closed}), passing everything on.

    Unlike Twisted's ProtocolWrapper it is not a transport itself: the
    listener's protocol gets the real transport.  So a TLS transport stays
    what Autobahn checks for, and writes cost no extra call.  Build it with
    L{pass_through}, which keeps the wrapped protocol's half-close handling.
    """

    def __init__(self, wrapped) -> None:
        self.wrapped = wrapped

    def logPrefix(self) -> str:
        return log_prefix(self.wrapped)

    def makeConnection(self, transport) -> None:
        self.transport = transport
        self.opened(transport)
        self.wrapped.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.wrapped.dataReceived(data)

    def connectionLost(self, reason) -> None:
        self.closed()
        self.wrapped.connectionLost(reason)

    def opened(self, transport) -> None:
        """
        The connection is open (before the wrapped protocol hears of it).
        """

    def closed(self) -> None:
        """
        The connection is closed (before the wrapped protocol hears of it).
        """


@implementer(IHalfCloseableProtocol)
class _HalfCloseable:
    """
    For a wrapped protocol that handles half-closed connections (the HTTP
    channel): the transport asks the outermost protocol whether it does, so
    the wrapper says yes and passes both calls on.  The wrapped protocol
    may change (the dashboard's live socket takes the channel's place) to
    one that does not: then a half-close is the end of the connection, as
    the transport would have made it.
    """

    def readConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.wrapped):
            self.wrapped.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.wrapped):
            self.wrapped.writeConnectionLost()
        else:
            self.transport.loseConnection()


_half_closeable: dict = {}


def pass_through(cls: type, inner, *args) -> PassThrough:
    """
    C{cls(*args, inner)}, a L{PassThrough}; half-closeable when C{inner} is.
    """
    if IHalfCloseableProtocol.providedBy(inner):
        if cls not in _half_closeable:
            _half_closeable[cls] = type(cls.__name__ + "HalfCloseable", (_HalfCloseable, cls), {})
        cls = _half_closeable[cls]
    return cls(*args, inner)


def _proven(connection) -> bool:
    """
    Whether the protocol at the end of C{connection}'s chain of wrappers
    (the guard's tracking and the connection count, linked by C{wrapped};
    with C{TLS_CERT_FILE} then Twisted's C{ProtocolWrapper}s, the TLS one
    among them, linked by C{wrappedProtocol}) says it has C{proven} a
    credential.
    """
    protocol = connection
    while True:
        inner = getattr(protocol, "wrapped", None)
        if inner is None:
            inner = getattr(protocol, "wrappedProtocol", None)
        if inner is None:
            return getattr(protocol, "proven", False) is True
        protocol = inner


class _Tracked(PassThrough):
    """
    Lets the guard know which connections of an address are open, so that a
    ban can close them: all but those whose protocol (the one at the end of
    the chain of wrappers now: the dashboard's live socket takes the HTTP
    channel's place) says it has C{proven} a credential (L{_proven}).
    """

    def __init__(self, guard: Guard, host: Optional[str], wrapped) -> None:
        super().__init__(wrapped)
        self._guard = guard
        self._host = host

    def opened(self, transport) -> None:
        self._guard.opened(self._host, self)

    def closed(self) -> None:
        self._guard.closed(self._host, self)


class GuardedFactory(GateFactory):
    """
    Wraps a listener's factory: a banned peer's connection is closed at
    once (see L{GateFactory}).  With C{close_on_ban}, the connections it
    admits are tracked, and closed when their address is banned.
    """

    def __init__(self, guard: Guard, wrapped, close_on_ban: bool = False) -> None:
        super().__init__(wrapped)
        self.guard = guard
        self.close_on_ban = close_on_ban

    def admit(self, host: Optional[str]) -> bool:
        return self.guard.admits(host)

    def admitted(self, addr):
        inner = self.wrapped.buildProtocol(addr)
        if inner is None or not self.close_on_ban:
            return inner
        return pass_through(_Tracked, inner, self.guard, getattr(addr, "host", None))
