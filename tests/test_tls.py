"""
Tests for TLS set-up (smartplug_backend.server.tls) and its wiring into the
listeners (smartplug_backend.tap, listeners): every problem with the files is
one clear line, and every listener gets TLS.
"""

import io
import json
import os
import sys

from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend import tap
from smartplug_backend.config import settings_from
from smartplug_backend.server.connections import CappedFactory
from smartplug_backend.server.guard import GuardedFactory
from smartplug_backend.server.listeners import brings_own_tls, endpoint_description, with_backlog
from smartplug_backend.server.plainhttp import PlainHTTPAnswer, plain_http
from smartplug_backend.server.tls import MINIMUM_VERSION, TLS, TLSError, load

from .certs import other_key, self_signed
from .helpers import SynchronousReactor


class LoadTests(SynchronousTestCase):
    """
    L{load} accepts a matching certificate and key, and refuses anything
    else with one line naming the setting and the file.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.cert, self.key = self_signed(self.directory)

    def refused(self, cert, key) -> str:
        message = str(self.assertRaises(TLSError, load, cert, key))
        self.assertNotIn("\n", message)
        return message

    def test_matching_pair(self):
        """
        A self-signed certificate and its key give server options with TLS
        1.2 as the minimum, and the certificate's subject and expiry.
        """
        tls = load(self.cert, self.key)
        self.assertEqual(tls.subject, "CN=localhost")
        self.assertEqual(MINIMUM_VERSION.name, "TLSv1_2")
        # The context itself excludes every version before 1.2, whatever
        # OpenSSL's security level would allow.
        # (set_options(0) adds nothing and returns the options in force.)
        options = tls.options.getContext().set_options(0)
        excluded = SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3 | SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1
        self.assertEqual(options & excluded, excluded)
        self.assertFalse(options & SSL.OP_NO_TLSv1_2)
        wrapped = tls.wrap(object())
        self.assertIsInstance(wrapped, PlainHTTPAnswer)
        self.assertIsInstance(wrapped.wrappedFactory, TLSMemoryBIOFactory)

    def test_chain(self):
        """
        A certificate file holding a chain (as Let's Encrypt's fullchain.pem)
        is read whole: the first certificate is the server's.
        """
        other = os.path.join(self.directory, "other")
        os.makedirs(other)
        second, _ = self_signed(other, "intermediate.example")
        with open(self.cert, "ab") as f, open(second, "rb") as g:
            f.write(g.read())
        self.assertEqual(load(self.cert, self.key).subject, "CN=localhost")

    def test_missing_files(self):
        """
        A missing certificate or key file is named with the reason.
        """
        missing = os.path.join(self.directory, "nope.pem")
        self.assertEqual(self.refused(missing, self.key), f"TLS_CERT_FILE: cannot read {missing}: No such file or directory")
        self.assertEqual(self.refused(self.cert, missing), f"TLS_KEY_FILE: cannot read {missing}: No such file or directory")

    def test_unreadable_file(self):
        """
        A directory where a file should be is refused as unreadable.
        """
        self.assertIn(f"TLS_KEY_FILE: cannot read {self.directory}: ", self.refused(self.cert, self.directory))

    def test_not_pem(self):
        """
        Files that hold no PEM certificate or key are refused; the key's
        contents never appear in the message.
        """
        junk = os.path.join(self.directory, "junk.pem")
        with open(junk, "w") as f:
            f.write("s3cret-junk\n")
        self.assertEqual(self.refused(junk, self.key), f"TLS_CERT_FILE: {junk} holds no PEM certificate")
        message = self.refused(self.cert, junk)
        self.assertEqual(message, f"TLS_KEY_FILE: {junk} holds no PEM private key")
        self.assertEqual(self.refused(self.key, self.key), f"TLS_CERT_FILE: {self.key} holds no PEM certificate")
        self.assertEqual(self.refused(self.cert, self.cert), f"TLS_KEY_FILE: {self.cert} holds no PEM private key")

    def test_key_does_not_match(self):
        """
        A key of another certificate is refused, naming both files.
        """
        key = other_key(self.directory)
        self.assertEqual(self.refused(self.cert, key), f"TLS_KEY_FILE: {key} does not match the certificate in {self.cert}")

    def test_encrypted_key(self):
        """
        A key with a passphrase is refused with what to do.
        """
        key = other_key(self.directory, password=b"pass")
        self.assertEqual(self.refused(self.cert, key), f"TLS_KEY_FILE: {key} is encrypted; give the key without a passphrase")

    def test_from_settings(self):
        """
        Neither setting: no TLS; both: TLS; only one: an error saying to set
        both.
        """
        self.assertIsNone(TLS.from_settings(settings_from({})))
        both = settings_from({"TLS_CERT_FILE": self.cert, "TLS_KEY_FILE": self.key})
        self.assertEqual(TLS.from_settings(both).cert_file, self.cert)
        for name, other in [("TLS_CERT_FILE", "TLS_KEY_FILE"), ("TLS_KEY_FILE", "TLS_CERT_FILE")]:
            error = self.assertRaises(TLSError, TLS.from_settings, settings_from({name: self.cert}))
            self.assertEqual(str(error), f"{name} is set but {other} is not: set both for TLS, or neither")


def tls_layer(factory):
    """
    The TLS factory under a listener's guard, cap and plain-HTTP answer, or
    C{None} when the listener has no TLS of its own.
    """
    inner = factory.wrapped.wrapped
    if not isinstance(inner, PlainHTTPAnswer):
        return None
    return inner.wrappedFactory if isinstance(inner.wrappedFactory, TLSMemoryBIOFactory) else None


class WiringTests(SynchronousTestCase):
    """
    C{twistd smartplug} with TLS settings: every listener is wrapped, bans
    and the connection cap outside TLS.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.cert, self.key = self_signed(self.directory)

    def make(self, settings_text: str, args=()):
        path = os.path.join(self.directory, "settings.py")
        with open(path, "w") as f:
            f.write("STATE_DB = None\nAUTH_SECRET = 'x'\n" + settings_text)
        options = tap.Options()
        options.parseOptions(["--settings", path] + list(args))
        reactor = SynchronousReactor()
        tap.makeService(options, reactor=reactor).privilegedStartService()
        return {port: factory for port, factory, *_ in reactor.tcpServers}

    def tls_settings(self, key=None) -> str:
        return f"TLS_CERT_FILE = {self.cert!r}\nTLS_KEY_FILE = {key or self.key!r}\n"

    def test_every_listener_wrapped(self):
        """
        HTTP, app and device listeners are guard(cap(plain HTTP answer(TLS(
        factory)))), and the WebSocket factories know they are secure (wss).
        """
        factories = self.make(self.tls_settings() + "WWW_SERVER_PORT = 1\nWS_SERVER_PORT = 2\nDEVICE_SERVER_PORT = 3\n")
        self.assertEqual(sorted(factories), [1, 2, 3])
        for port, factory in factories.items():
            self.assertIsInstance(factory, GuardedFactory)
            self.assertIsInstance(factory.wrapped, CappedFactory)
            self.assertIsInstance(tls_layer(factory), TLSMemoryBIOFactory)
            inner = tls_layer(factory).wrappedFactory
            if port != 1:
                self.assertTrue(inner.isSecure)
        # One cap for all three.
        self.assertEqual(len({id(f.wrapped.cap) for f in factories.values()}), 1)

    def test_endpoint_options_get_tls(self):
        """
        Listeners given as tcp: endpoint descriptions get TLS from the
        settings too.
        """
        factories = self.make(self.tls_settings(), ["--www", "tcp:7000", "--ws", "tcp:7001", "--device", "tcp:7002"])
        for factory in factories.values():
            self.assertIsInstance(tls_layer(factory), TLSMemoryBIOFactory)

    def test_unix_socket_gets_tls(self):
        """
        A unix: endpoint description gets TLS too, and its listening lines
        name the socket's path.
        """
        path = os.path.join(self.directory, "http.sock")
        settings = os.path.join(self.directory, "settings.py")
        with open(settings, "w") as f:
            f.write("STATE_DB = None\n" + self.tls_settings())
        options = tap.Options()
        options.parseOptions(["--settings", settings, "--www", f"unix:{path}", "--ws", "tcp:7001"])
        reactor = SynchronousReactor()
        with capturedLogs() as events:
            tap.makeService(options, reactor=reactor).privilegedStartService()
        [(address, factory, *_)] = reactor.unixServers
        self.assertEqual(address, path)
        self.assertIsInstance(tls_layer(factory), TLSMemoryBIOFactory)
        lines = [formatEvent(e) for e in events]
        self.assertIn(f"HTTP listening on {path}", lines)
        self.assertIn(f"HTTP on {path} speaks https (TLS 1.2 or newer)", lines)

    def test_without_tls(self):
        """
        Without TLS settings no listener is wrapped in TLS and the WebSocket
        factories are not secure.
        """
        for factory in self.make("WWW_SERVER_PORT = 1\nWS_SERVER_PORT = 2\nDEVICE_SERVER_PORT = 3\n").values():
            self.assertIsNone(tls_layer(factory))
            self.assertNotIsInstance(factory.wrapped.wrapped, TLSMemoryBIOFactory)
            self.assertFalse(getattr(factory.wrapped.wrapped, "isSecure", False))

    def test_bad_key_one_line(self):
        """
        A key that does not match stops start-up with one line on stderr,
        and no traceback.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        key = other_key(self.directory)
        error = self.assertRaises(SystemExit, self.make, self.tls_settings(key))
        self.assertEqual(error.code, 1)
        self.assertEqual(stderr.getvalue(), f"smartplug: TLS_KEY_FILE: {key} does not match the certificate in {self.cert}\n")


class DescriptionTests(SynchronousTestCase):
    """
    Endpoint descriptions built from the settings, and the ones that bring
    their own TLS.
    """

    def test_backlog(self):
        """
        Every TCP or TLS listener, built-in or given as --www/--ws/--device,
        queues up to 1024 connections before accepting them, so that a burst
        of reconnecting apps is not dropped (Twisted's default is 50); a
        backlog the owner gives is kept.
        """
        self.assertEqual(with_backlog(endpoint_description(9000, "0.0.0.0")), "tcp:9000:interface=0.0.0.0:backlog=1024")
        self.assertEqual(endpoint_description(9000, "::1"), "tcp:9000:interface=\\:\\:1")
        self.assertEqual(with_backlog("tcp:0"), "tcp:0:backlog=1024")
        self.assertEqual(with_backlog("ssl:9443:privateKey=k.pem"), "ssl:9443:privateKey=k.pem:backlog=1024")
        self.assertEqual(with_backlog("tcp:0:backlog=7"), "tcp:0:backlog=7")
        self.assertEqual(with_backlog("unix:/tmp/s"), "unix:/tmp/s")

    def test_listening_line_brackets_ipv6(self):
        """
        The start-up line of an IPv6 listener writes its address in
        brackets ("[::]:9001"), as a URL does; an IPv4 one as it is.
        """
        from twisted.internet.testing import MemoryReactor

        from smartplug_backend.server.listeners import listener

        for description, shown in ((endpoint_description(9001, "::"), "[::]:9001"),
                                   (endpoint_description(9002, "0.0.0.0"), "0.0.0.0:9002")):
            with capturedLogs() as events:
                listener("app WebSocket", MemoryReactor(), description, Factory()).startService()
            self.assertIn(f"app WebSocket listening on {shown}", [formatEvent(e) for e in events])

    def test_brings_own_tls(self):
        """
        Only ssl: descriptions bring their own TLS.
        """
        self.assertTrue(brings_own_tls("ssl:9443:privateKey=k.pem"))
        self.assertTrue(brings_own_tls("SSL:9443"))
        self.assertFalse(brings_own_tls("tcp:9000"))
        self.assertFalse(brings_own_tls("unix:/tmp/sock"))


class _Recorder(Protocol):
    """
    A listener's protocol that keeps what it is told.
    """

    def __init__(self) -> None:
        self.received = []
        self.connected_at_once = False
        self.lost = 0

    def connectionMade(self) -> None:
        self.connected_at_once = True

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason=None) -> None:
        self.lost += 1


class _RecorderFactory(Factory):
    def __init__(self) -> None:
        self.built = []

    def buildProtocol(self, addr):
        self.built.append(_Recorder())
        return self.built[-1]


OWN = IPv4Address("TCP", "192.168.1.10", 9000)
PEER = IPv4Address("TCP", "192.168.1.64", 51000)
GET = b"GET /ui/ HTTP/1.1\r\nHost: smartplug.local:9000\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"


def refusal(where: str, body: bool = True) -> bytes:
    """
    The plain-HTTP 400 that names C{where}.
    """
    text = json.dumps({"error": f"this port speaks TLS: use {where} (wss:// for WebSockets)"}).encode()
    head = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(text))
    return head + text if body else head


def client_hello(alpn=(b"h2", b"http/1.1")):
    """
    A TLS client in memory and the ClientHello it sends.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_alpn_protos(list(alpn))
    client = SSL.Connection(context, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    return client, client.bio_read(65536)


class PlainHTTPTests(SynchronousTestCase):
    """
    A TLS listener (L{TLS.wrap}) answers a plain HTTP request with a plain
    400 that names https://, logged at most once a minute per address, and
    hands everything else to TLS unchanged.
    """

    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.tls = load(*self_signed(directory))
        self.clock = Clock()
        self.app = _RecorderFactory()

    def connect(self, factory=None, own=OWN, peer=PEER):
        factory = factory or self.tls.wrap(self.app)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(hostAddress=own, peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_plain_get_answered(self):
        """
        A plain GET gets a plain-HTTP 400 with a JSON error naming https://
        and the request's Host, and is closed; the listener's protocol sees
        none of it, and closing costs no TLS alert.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(GET)
        self.assertEqual(transport.value(), refusal("https://smartplug.local:9000/"))
        self.assertTrue(transport.disconnecting)
        status, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertEqual(json.loads(body), {
            "error": "this port speaks TLS: use https://smartplug.local:9000/ (wss:// for WebSockets)"})
        transport.clear()
        protocol.dataReceived(b"more")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(transport.value(), b"")
        [app] = self.app.built
        self.assertEqual((app.received, app.lost), ([], 1))

    def test_plain_request_in_one_byte_chunks(self):
        """
        A request that comes a byte at a time is answered once its head has
        come, not before; HEAD gets the head of the answer alone.
        """
        protocol, transport = self.connect()
        request = GET.replace(b"GET", b"HEAD", 1)
        for at in range(len(request)):
            self.assertEqual(transport.value(), b"")
            protocol.dataReceived(request[at:at + 1])
        self.assertEqual(transport.value(), refusal("https://smartplug.local:9000/", body=False))
        self.assertTrue(transport.disconnecting)

    def test_where_to_go(self):
        """
        The answer names the Host header when it is a plain host name (with
        this port when it names none), otherwise this port's own address; a
        unix socket has none to name.
        """
        for host, where in [
            (b"Host: smartplug.local\r\n", "https://smartplug.local:9000/"),
            (b"host: 192.168.1.10:8443\r\n", "https://192.168.1.10:8443/"),
            (b"Host: [fe80::1]:9000\r\n", "https://[fe80::1]:9000/"),
            (b"", "https://192.168.1.10:9000/"),
            (b"Host: <script>\r\n", "https://192.168.1.10:9000/"),
            (b"Host: a b\r\n", "https://192.168.1.10:9000/"),
        ]:
            protocol, transport = self.connect()
            protocol.dataReceived(b"POST /data HTTP/1.1\r\n" + host + b"Content-Length: 2\r\n\r\n{}")
            self.assertEqual(transport.value(), refusal(where), host)
        protocol, transport = self.connect(own=IPv6Address("TCP", "::1", 9001))
        protocol.dataReceived(b"GET / HTTP/1.0\n\n")
        self.assertEqual(transport.value(), refusal("https://[::1]:9001/"))
        protocol, transport = self.connect(own=UNIXAddress("/run/smartplug.sock"), peer=UNIXAddress(None))
        protocol.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(transport.value(), refusal("https://"))

    def test_refusals_logged_once_a_minute_per_address(self):
        """
        Each refusal is logged as one line naming the peer and the port, at
        most once a minute for one address.
        """
        factory = self.tls.wrap(self.app, self.clock)
        other = IPv4Address("TCP", "::ffff:192.168.1.65", 51000)
        with capturedLogs() as events:
            for seconds, peer in [(0, PEER), (30, PEER), (31, other), (59, PEER), (61, PEER), (62, other)]:
                self.clock.advance(seconds - self.clock.seconds())
                protocol, transport = self.connect(factory, peer=peer)
                protocol.dataReceived(GET)
                self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        lines = [formatEvent(e) for e in events]
        line = "plain HTTP from {} on the TLS port 9000; answered 400 (use https://)"
        self.assertEqual(lines, [line.format("192.168.1.64"), line.format("192.168.1.65"), line.format("192.168.1.64")])

    def test_log_memory_swept_amortised(self):
        """
        The addresses remembered for pacing are swept (stale ones dropped)
        once many are; under a flood of new ones, all recent, only each
        time their number has doubled, not at every new address.
        """
        from smartplug_backend.server import plainhttp

        self.patch(plainhttp, "_SWEEP_AT", 10)
        factory = self.tls.wrap(self.app, self.clock)
        own = IPv4Address("TCP", "0.0.0.0", 9000)
        sweeps, table = 0, factory._logged
        for n in range(1000):
            factory.refused(IPv4Address("TCP", f"10.0.{n // 250}.{n % 250}", 1), own)
            if factory._logged is not table:  # a sweep makes a new table
                sweeps, table = sweeps + 1, factory._logged
        self.assertEqual(len(factory._logged), 1000)
        self.assertLessEqual(sweeps, 8)
        self.clock.advance(61)
        for n in range(3000):
            factory.refused(IPv4Address("TCP", f"10.1.{n // 250}.{n % 250}", 1), own)
        self.assertLess(len(factory._logged), 3000 + 1000)

    def test_tls_handshake_unchanged(self):
        """
        A TLS client's bytes, whole or a byte at a time, reach TLS unchanged:
        the handshake completes with ALPN's http/1.1 and the listener's
        protocol gets the client's request, connected from the start.
        """
        for chunked in (False, True):
            app = _RecorderFactory()
            factory = self.tls.wrap(app)
            # Through the plain-HTTP answer, in front of TLS.
            self.assertIsInstance(factory, PlainHTTPAnswer)
            protocol, transport = self.connect(factory)
            [inner] = app.built
            self.assertTrue(inner.connected_at_once)
            client, hello = client_hello()
            self.assertEqual(hello[:1], b"\x16")
            to_server = hello
            for _ in range(10):
                for piece in ([to_server[at:at + 1] for at in range(len(to_server))] if chunked else [to_server]):
                    protocol.dataReceived(piece)
                client.bio_write(transport.value())
                transport.clear()
                try:
                    client.do_handshake()
                    break
                except SSL.WantReadError:
                    to_server = client.bio_read(65536)
            self.assertEqual(client.get_alpn_proto_negotiated(), b"http/1.1")
            try:
                # TLS 1.3: the client's Finished comes with its first data.
                leftover = client.bio_read(65536)
            except SSL.WantReadError:
                leftover = b""
            client.send(GET)
            for piece in [leftover, client.bio_read(65536)]:
                for byte in ([piece[at:at + 1] for at in range(len(piece))] if chunked else [piece]):
                    protocol.dataReceived(byte)
            self.assertEqual(b"".join(inner.received), GET, chunked)
            self.assertFalse(transport.disconnecting)


class FirstBytesTests(SynchronousTestCase):
    """
    L{PlainHTTPAnswer} decides on a connection's first bytes as soon as they
    settle it, and hands anything that is not plain HTTP on unchanged.
    """

    def connect(self):
        app = _RecorderFactory()
        protocol = PlainHTTPAnswer(app, Clock()).buildProtocol(PEER)
        transport = StringTransport(hostAddress=OWN, peerAddress=PEER)
        protocol.makeConnection(transport)
        [inner] = app.built
        return protocol, transport, inner

    def test_plain_http(self):
        """
        An ASCII method token and a space is plain HTTP; a TLS record (0x16)
        or anything else is not, as soon as its first byte says so; a token
        still growing is not settled.
        """
        for head in [b"GET ", b"POST /data", b"HEAD ", b"OPTIONS *", b"VERSION-CONTROL "]:
            self.assertTrue(plain_http(head), head)
        for head in [b"\x16", b"\x16\x03\x01", b"\x80", b" GET", b"get /", b"-GET ", b"GE\x00T ", b"A" * 21 + b" "]:
            self.assertFalse(plain_http(head), head)
        for head in [b"", b"G", b"GE", b"GET", b"A" * 20]:
            self.assertIsNone(plain_http(head), head)

    def test_tls_bytes_one_at_a_time(self):
        """
        A ClientHello sent a byte at a time reaches the protocol inside byte
        for byte: its first byte, 0x16, settles it and goes on at once.
        """
        protocol, transport, inner = self.connect()
        _, hello = client_hello()
        for at in range(len(hello)):
            protocol.dataReceived(hello[at:at + 1])
            self.assertEqual(inner.received, [hello[i:i + 1] for i in range(at + 1)])
        self.assertEqual(transport.value(), b"")

    def test_undecided_bytes_handed_on_together(self):
        """
        Bytes held while they could still be a method are handed on all
        together, unchanged, once a byte says they are not plain HTTP.
        """
        protocol, transport, inner = self.connect()
        for byte in b"GE":
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(inner.received, [])
        protocol.dataReceived(b"\x00T / HTTP/1.1\r\n\r\n")
        protocol.dataReceived(b"\x01")
        self.assertEqual(inner.received, [b"GE\x00T / HTTP/1.1\r\n\r\n", b"\x01"])
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
