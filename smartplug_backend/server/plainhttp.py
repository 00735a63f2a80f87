"""
Plain HTTP on a TLS port (SPEC 6.1): a browser or curl given C{http://} for
a port that speaks TLS gets a 400 saying to use C{https://}, instead of an
empty reply that OpenSSL's refusal of the bytes leaves it.

L{PlainHTTPAnswer} wraps a listener's TLS factory (L{TLS.wrap}) and looks
at the first bytes of each connection.  An ASCII method token and a space
(C{GET }, C{POST }...) is plain HTTP: once its head has come, it gets the
400 in plain HTTP and the connection is closed.  Anything else (a TLS
record starts with 0x16) goes to TLS at once, with every byte seen so far,
unchanged: a TLS client sees no difference.
"""

import json
import re
from typing import Optional

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from .guard import log_prefix, normal_address

# The longest method token looked at: longer ones are not plain HTTP.
METHOD_MAX = 20
# A plain request's head is read up to this many bytes for its Host header.
HEAD_MAX = 8192
# Seconds between two log lines about one address.
LOG_EVERY = 60
# Past this many remembered addresses the stale ones are dropped in one sweep.
_SWEEP_AT = 4096

_SPACE = 0x20
# The refusals' lines come under TLS, where an owner looks for them.
_log = Logger(namespace="smartplug_backend.server.tls")
_HOST = re.compile(rb"([A-Za-z0-9][A-Za-z0-9._-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?")


def _method_token(byte: int, first: bool) -> bool:
    return 0x41 <= byte <= 0x5A or (byte == 0x2D and not first)  # A-Z, and "-" after the first


def plain_http(head: bytes) -> Optional[bool]:
    """
    Whether the first bytes of a connection are a plain HTTP request: an
    ASCII method token followed by a space.

    @return: True or False as soon as C{head} settles it (a lone 0x16, the
        start of a TLS record, is False); C{None} while it is a method
        token that could still go on.
    """
    for at, byte in enumerate(head[: METHOD_MAX + 1]):
        if byte == _SPACE:
            return at > 0
        if not _method_token(byte, at == 0):
            return False
    return None if len(head) <= METHOD_MAX else False


def _host_header(head: bytes) -> Optional[bytes]:
    for line in head.split(b"\n")[1:]:
        if not line.strip(b"\r"):
            break  # the end of the head
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"host":
            value = value.strip()
            return value if _HOST.fullmatch(value) else None
    return None


def _own_address(address) -> Optional[str]:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if not host or port is None:
        return None  # a unix socket
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_name(address) -> str:
    port = getattr(address, "port", None)
    if port is not None:
        return str(port)
    name = getattr(address, "name", None)
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "?")


def answer(head: bytes, own) -> bytes:
    """
    The plain-HTTP 400 for a request with C{head} on a TLS port whose
    address is C{own}: it names C{https://} with the request's Host (given
    this port's number when it names none), or this port's address when the
    Host header is missing or not a plain host name.  A HEAD request gets
    the head alone.
    """
    host = _host_header(head)
    own_port = getattr(own, "port", None)
    if host is not None:
        address = host.decode("ascii")
        if _HOST.fullmatch(host).group(2) is None and own_port is not None:
            address += f":{own_port}"
    else:
        address = _own_address(own)
    where = f"https://{address}/" if address else "https://"
    body = json.dumps({"error": f"this port speaks TLS: use {where} (wss:// for WebSockets)"}).encode()
    return (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n"
        b"\r\n" % len(body)
    ) + (b"" if head.startswith(b"HEAD ") else body)


class _FirstBytes(ProtocolWrapper):
    """
    Holds a connection's first bytes until they say plain HTTP or not: see
    L{PlainHTTPAnswer}.
    """

    # The bytes held while undecided (and, for plain HTTP, until the head
    # has come); None once they went to TLS.
    _head: Optional[bytes] = b""
    _answered = False

    def logPrefix(self) -> str:
        return log_prefix(self.wrappedProtocol)

    def dataReceived(self, data: bytes) -> None:
        if self._head is None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._answered:
            return
        head = self._head + data
        kind = plain_http(head)
        if kind is None:
            self._head = head
        elif not kind:
            self._head = None
            self.wrappedProtocol.dataReceived(head)
        elif b"\n\r\n" in head or b"\n\n" in head or len(head) >= HEAD_MAX:
            self._head = b""
            self._answer(head[:HEAD_MAX])
        else:
            self._head = head

    def _answer(self, head: bytes) -> None:
        self._answered = True
        transport = self.transport
        self.factory.refused(transport.getPeer(), transport.getHost())
        transport.write(answer(head, transport.getHost()))
        transport.loseConnection()

    # Once answered, the connection is plain HTTP's: TLS gets no say on it
    # (it may try to send an alert as it learns of the close).

    def write(self, data: bytes) -> None:
        if not self._answered:
            self.transport.write(data)

    def writeSequence(self, data) -> None:
        if not self._answered:
            self.transport.writeSequence(data)


class PlainHTTPAnswer(WrappingFactory):
    """
    Wraps a listener's TLS factory: a connection that opens with a plain
    HTTP request gets a plain-HTTP 400 (L{answer}) and is closed; any other
    goes to TLS unchanged.  Each refusal is logged, at most one line per
    address every L{LOG_EVERY} seconds.

    The TLS layer and the protocol inside it are connected at once, as
    without this wrapper: their deadlines run from the connection, so a
    peer that sends half a method and waits is dropped as before.

    @param clock: paces the log lines (the reactor when C{None}).
    """

    protocol = _FirstBytes
    noisy = False

    def __init__(self, wrapped, clock=None) -> None:
        super().__init__(wrapped)
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        # address -> when its last line was logged
        self._logged: dict[str, float] = {}
        self._sweep_at = 0
        self._swept = clock.seconds()

    def logPrefix(self) -> str:
        return log_prefix(self.wrappedFactory)

    def refused(self, peer, own) -> None:
        """
        Log that C{peer} sent plain HTTP to this TLS port (C{own}), unless
        a line about C{peer} was logged less than L{LOG_EVERY} seconds ago.
        """
        host = getattr(peer, "host", None)
        host = normal_address(host) if host else "?"
        now = self._clock.seconds()
        last = self._logged.get(host)
        if last is not None and now - last < LOG_EVERY:
            return
        if last is None and len(self._logged) >= _SWEEP_AT and (
            len(self._logged) >= self._sweep_at or now - self._swept >= LOG_EVERY
        ):
            self._logged = {h: t for h, t in self._logged.items() if now - t < LOG_EVERY}
            # Under a flood from many addresses, sweep again only once their
            # number has doubled, or a minute later: O(1) per connection on
            # average, and stale ones do not stay for good.
            self._sweep_at = 2 * len(self._logged)
            self._swept = now
        self._logged[host] = now
        _log.info(
            "plain HTTP from {peer} on the TLS port {port}; answered 400 (use https://)",
            peer=host,
            port=_port_name(own),
        )
