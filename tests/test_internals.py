"""
The seams in L{smartplug_backend.internals}: each private part of Twisted,
Autobahn or python-twitter the server relies on is checked here on the
installed versions, so that an upgrade that changes one fails here, loudly
and by name, instead of quietly slowing or breaking the server.
"""

import inspect
import io
import json
import os
import struct
import sys

import requests
import twitter
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import LogPublisher, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import HTTPChannel

from smartplug_backend import internals
from smartplug_backend.core.hub import Hub
from smartplug_backend.http.api import make_app
from smartplug_backend.http.channel import make_site
from smartplug_backend.internals import write_now
from smartplug_backend.ws.apps import AppFactory

from .helpers import SYNC_BRIDGE, SynchronousReactor, SynchronousThreadPool, quiet, ws_connect


class TwistedSeamTests(SynchronousTestCase):
    """
    The parts of twisted.web's HTTPChannel the HTTP channel relies on.
    """

    def test_bad_request_hook(self):
        """
        twisted.web still answers a malformed header through
        C{HTTPChannel._respondToBadRequestAndDisconnect}, which reaches our
        JSON 400.
        """
        self.assertTrue(
            callable(getattr(HTTPChannel, "_respondToBadRequestAndDisconnect", None)),
            "seam HTTPChannelSeams: HTTPChannel._respondToBadRequestAndDisconnect is gone",
        )
        site = make_site(make_app(Hub(), SYNC_BRIDGE), SynchronousReactor(), SynchronousThreadPool())
        channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"), transport.value())
        self.assertTrue(transport.value().endswith(b'{"error": "malformed HTTP request"}'), transport.value())

    def test_channel_attributes(self):
        """
        C{_handlingRequest} and C{length} are still the channel's own
        record of a request in progress and of its declared length.
        """
        channel = HTTPChannel()
        channel.makeConnection(StringTransport())
        self.assertIs(channel._handlingRequest, False, "seam handling_request: HTTPChannel._handlingRequest")
        channel.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 7\r\n\r\n")
        self.assertEqual(channel.length, 7, "seam declared_length: HTTPChannel.length")
        self.assertEqual(HTTPChannel.delimiter, b"\r\n", "seam: HTTPChannel is a LineReceiver")


class AutobahnSeamTests(SynchronousTestCase):
    """
    The parts of Autobahn's server protocol the WebSocket listeners rely on.
    """

    def test_on_open_step(self):
        """
        Autobahn still goes from the handshake to C{onOpen} through
        C{_onOpen}, so the handshake's attributes are dropped once open.
        """
        self.assertTrue(callable(getattr(WebSocketServerProtocol, "_onOpen", None)), "seam _onOpen is gone")
        factory = quiet(AppFactory(Hub()))
        _, server, _ = ws_connect(factory)
        self.assertEqual(server.state, server.STATE_OPEN)
        for name in internals.WebSocketServerSeams.HANDSHAKE_ONLY:
            self.assertTrue(hasattr(server, name), f"seam HANDSHAKE_ONLY: Autobahn no longer has {name}")
            self.assertIsNone(getattr(server, name), name)

    def test_non_minimal_lengths_read(self):
        """
        Autobahn still asks C{_protocol_violation} about a frame length
        written in more bytes than needed, in the words we answer: a
        125-byte message with a 16-bit length (Autobahn|Android, PlugBuddy)
        and a 126-byte one with a 64-bit length are read and answered, not
        failed with 1002; another violation still fails.
        """
        source = inspect.getsource(WebSocketServerProtocol.processData) if hasattr(
            WebSocketServerProtocol, "processData") else ""
        self.assertIn(internals.WebSocketServerSeams.NON_MINIMAL_LENGTH, source,
                      "seam _protocol_violation: Autobahn's reason for a non-minimal length changed")
        hub = Hub()
        plug = "L" * 111
        hub.report(plug, 1, "http", "10.0.0.5")
        message = json.dumps({"status": plug}).encode()
        self.assertEqual(len(message), 125)
        for header in (b"\x81\xfe" + struct.pack("!H", 125), b"\x81\xff" + struct.pack("!Q", 125)):
            client, server, pump = ws_connect(quiet(AppFactory(hub)))
            mask = b"\x01\x02\x03\x04"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(message))
            server.dataReceived(header + mask + masked)
            pump.flush()
            self.assertEqual(server.state, server.STATE_OPEN, header)
            self.assertEqual(client.texts(), [json.dumps({"id": plug, "value": 1})], header)
        client, server, pump = ws_connect(quiet(AppFactory(hub)))
        server.dataReceived(b"\x81\x7f" + struct.pack("!Q", 2**63) + b"\x00" * 4)
        pump.flush()
        self.assertNotEqual(server.state, server.STATE_OPEN)

    def test_prepared_frame_attributes(self):
        """
        An open connection has C{_perMessageCompress} and C{send_queue}, and
        a prepared message its frame in C{payloadHybi}: a text frame.
        """
        factory = quiet(AppFactory(Hub()))
        _, server, _ = ws_connect(factory)
        prepared = factory.prepareMessage(b"hi")
        self.assertEqual(server.prepared_frame_as_is(prepared), b"\x81\x02hi")
        self.assertIn("_perMessageCompress", vars(server), "seam prepared_frame_as_is")
        self.assertEqual(len(server.send_queue), 0, "seam prepared_frame_as_is: send_queue")

    def test_options_copied_only_when_missing(self):
        """
        Autobahn still lists its options in C{CONFIG_ATTRS} and copies them
        onto a new connection only where it has no such attribute.
        """
        self.assertIn("maxMessagePayloadSize", WebSocketServerProtocol.CONFIG_ATTRS)
        factory = quiet(AppFactory(Hub()))
        _, server, _ = ws_connect(factory)
        copied = [name for name in WebSocketServerProtocol.CONFIG_ATTRS if name in vars(server)]
        self.assertEqual(copied, [], "seam read_options_from_factory: options copied onto the connection")

    def test_unparsed_head(self):
        """
        During the opening handshake, C{data} holds the head received so
        far, and a header put into it is parsed.
        """
        factory = quiet(AppFactory(Hub()))
        server = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), "seam unparsed/insert_header")

    def test_request_line_replaced(self):
        """
        A request line put in place of the received one is the one parsed:
        an escaped target reaches C{onConnect} as its parameters.
        """
        factory = quiet(AppFactory(Hub()))
        server = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        server.makeConnection(StringTransport())
        seen = []
        server.onConnect = lambda request: seen.append((request.path, request.params))
        server.dataReceived(
            "GET /subscribe?clientName=Михаил HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".encode()
            + b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.assertEqual(seen, [("/subscribe", {"clientName": ["Михаил"]})], "seam replace_request_line")


class TwistedLogSeamTests(SynchronousTestCase):
    """
    twistd's text log observer, as L{smartplug_backend.server.logtext} finds
    and refits it.
    """

    def test_observers_listed(self):
        """
        The text file observers of a publisher are found among its others,
        in the order they were added.
        """
        first, second = textFileLogObserver(io.StringIO()), textFileLogObserver(io.StringIO())
        publisher = LogPublisher(first, lambda event: None)
        publisher.addObserver(second)
        self.assertEqual(internals.text_log_observers(publisher), [first, second], "seam LogPublisher._observers")

    def test_formatter_used_for_every_event(self):
        """
        The formatter read and set is the one the observer writes with.
        """
        out = io.StringIO()
        observer = textFileLogObserver(out)
        own = internals.log_formatter(observer)
        self.assertTrue(callable(own), "seam FileLogObserver.formatEvent")
        internals.set_log_formatter(observer, lambda event: "mine\n")
        observer({"log_format": "theirs", "log_time": 1.0})
        self.assertEqual(out.getvalue(), "mine\n", "seam FileLogObserver.formatEvent")
        internals.set_log_formatter(observer, own)
        observer({"log_format": "theirs", "log_time": 1.0, "log_system": "s"})
        self.assertTrue(out.getvalue().endswith(" [s] theirs\n"), "seam FileLogObserver.formatEvent")


class TwistdDaemonSeamTests(SynchronousTestCase):
    """
    twistd's status pipe between its daemon and the command waiting in the
    foreground, as L{internals.tell_daemon_parent} writes to it
    (C{tests/test_daemon_e2e.py} runs the real thing).
    """

    def test_parent_reads_the_failure(self):
        """
        What is written is read by twistd's own C{_waitForStart} as a
        failure (exit status 1) and printed; the pid file is removed.
        """
        from twisted.scripts._twistd_unix import ServerOptions, UnixApplicationRunner

        read, write = os.pipe()
        self.addCleanup(os.close, read)
        pidfile = self.mktemp()
        with open(pidfile, "w") as f:
            f.write("1")
        config = ServerOptions()
        config["statusPipe"], config["pidfile"] = write, pidfile
        internals.tell_daemon_parent(config, "smartplug: HTTP: cannot listen")
        printed = io.StringIO()
        self.patch(sys, "__stderr__", printed)
        code = UnixApplicationRunner(config)._waitForStart(read)
        self.assertEqual(code, 1, "seam UnixApplicationRunner._waitForStart")
        self.assertIn("b'smartplug: HTTP: cannot listen'", printed.getvalue(), "seam _waitForStart")
        self.assertFalse(os.path.exists(pidfile))

    def test_status_pipe_key(self):
        """
        twistd still keeps the pipe under C{statusPipe} in its options, and
        writes to it only when starting the application raises an Exception.
        """
        from twisted.scripts._twistd_unix import UnixApplicationRunner

        source = inspect.getsource(UnixApplicationRunner)
        self.assertIn('self.config["statusPipe"] = ', source, "seam config['statusPipe']")
        self.assertIn("except Exception", inspect.getsource(UnixApplicationRunner.postApplication),
                      "seam postApplication")

    def test_nothing_without_a_pipe(self):
        """
        Under C{twistd -n} (no pipe) and without twistd's options, nothing is
        done.
        """
        from twisted.scripts._twistd_unix import ServerOptions

        pidfile = self.mktemp()
        with open(pidfile, "w") as f:
            f.write("1")
        config = ServerOptions()
        config["pidfile"] = pidfile
        internals.tell_daemon_parent(config, "x")
        internals.tell_daemon_parent(None, "x")
        self.assertTrue(os.path.exists(pidfile))


class PythonTwitterSeamTests(SynchronousTestCase):
    """
    python-twitter's session.
    """

    def test_session(self):
        """
        C{twitter.Api} still sends through one C{requests.Session}.
        """
        api = twitter.Api("a", "b", "c", "d", cache=None)
        self.assertIsInstance(internals.requests_session(api), requests.Session)


class _Peer(Protocol):
    """
    One end of a loopback connection: fires C{made} when connected, C{lost}
    when closed, and C{got} with the first C{want} bytes received.
    """

    def __init__(self, want: int = 0) -> None:
        self.want, self.received = want, b""
        self.made, self.got, self.lost = Deferred(), Deferred(), Deferred()

    def connectionMade(self):
        self.made.callback(self)

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= self.want and not self.got.called:
            self.got.callback(self.received)

    def connectionLost(self, reason):
        self.lost.callback(None)


class WriteNowTests(TestCase):
    """
    L{write_now} sends on a plain TCP connection at once when nothing is
    buffered, and otherwise behaves exactly like C{transport.write}.
    """

    @inlineCallbacks
    def connected(self, want: int):
        """
        A loopback TCP connection: C{(server end, client end)}; the client
        end's C{got} fires with the first C{want} bytes it receives.
        """
        server, client = _Peer(), _Peer(want)
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield endpoint.connect(Factory.forProtocol(lambda: client))
        yield server.made

        def close():
            server.transport.abortConnection()
            client.transport.abortConnection()
            return gatherResults([server.lost, client.lost])

        self.addCleanup(close)
        return server, client

    @inlineCallbacks
    def test_sends_at_once(self):
        """
        With an empty buffer the bytes go to the socket without the
        transport registering for writing, and arrive.
        """
        server, client = yield self.connected(5)
        write_now(server.transport, b"hello")
        self.assertNotIn(server.transport, reactor.getWriters())
        self.assertEqual((yield client.got), b"hello")

    @inlineCallbacks
    def test_behind_buffered_bytes(self):
        """
        Bytes written before and still buffered go out first.
        """
        server, client = yield self.connected(6)
        server.transport.write(b"abc")
        write_now(server.transport, b"def")
        self.assertEqual((yield client.got), b"abcdef")

    @inlineCallbacks
    def test_remainder_is_buffered(self):
        """
        What the kernel does not take at once is written after it, in order.
        """
        data = bytes(range(256)) * 40000  # 10 MB: more than socket buffers hold
        server, client = yield self.connected(len(data))
        write_now(server.transport, data)
        self.assertIn(server.transport, reactor.getWriters())
        self.assertEqual((yield client.got), data)

    @inlineCallbacks
    def test_nothing_after_abort(self):
        """
        Once the connection is aborted nothing more is sent, as with write().
        """
        server, client = yield self.connected(1)
        server.transport.abortConnection()
        write_now(server.transport, b"late")
        yield client.lost
        self.assertEqual(client.received, b"")

    def test_other_transports_use_write(self):
        """
        A transport that is not a plain TCP connection gets C{write}.
        """
        transport = StringTransport()
        write_now(transport, b"hello")
        self.assertEqual(transport.value(), b"hello")



class WebSocketResourceSeamTests(SynchronousTestCase):
    """
    What the dashboard's live socket relies on to take over a connection of
    the HTTP site (L{internals.WebSocketResourceSeams}).
    """

    def test_channel_is_producer_with_network_producer(self):
        """
        twisted.web's channel still registers itself as its transport's
        producer and keeps the transport as C{_networkProducer}; Autobahn's
        resource still keeps its factory as C{_factory}.
        """
        from autobahn.twisted.websocket import WebSocketServerFactory

        channel = HTTPChannel()
        transport = StringTransport()
        channel.makeConnection(transport)
        self.assertIs(transport.producer, channel)
        self.assertIs(channel._networkProducer, transport)
        factory = WebSocketServerFactory()
        self.assertIs(internals.WebSocketResourceSeams(factory)._factory, factory)
        # The whole take-over, behind the connection count, is
        # tests.test_dashboard_live.TakeoverTests.
