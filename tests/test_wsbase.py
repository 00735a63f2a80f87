"""
The shared WebSocket server protocol: how prepared messages are sent, and
L{write_now} on real loopback connections.
"""

import txaio
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smartplug_backend.apps import AppFactory
from smartplug_backend.hub import Hub
from smartplug_backend.limits import MAX_MESSAGE, MAX_UNSENT
from smartplug_backend.wsbase import write_now

from .helpers import quiet, ws_connect


class PreparedMessageTests(SynchronousTestCase):
    """
    L{LenientServerProtocol.sendPreparedMessage} writes the prepared frame
    itself, keeps Autobahn's ordering when a send is queued, and still counts
    what a full transport leaves unsent.
    """

    def test_prepared_frame_reaches_client(self):
        """
        A prepared text message arrives at a client as exactly that message.
        """
        factory = AppFactory(Hub())
        client, server, pump = ws_connect(factory)
        server.sendPreparedMessage(factory.prepareMessage(b'{"id": "a", "value": 1}'))
        pump.flush()
        self.assertEqual(client.texts(), ['{"id": "a", "value": 1}'])

    def test_queued_send_keeps_order(self):
        """
        While Autobahn holds a send in its queue, a prepared message goes
        through Autobahn's own path and arrives after the queued ones.
        """
        # Autobahn paces queued sends with txaio.call_later: give it a clock.
        clock = Clock()
        self.patch(txaio.config, "loop", clock)
        factory = AppFactory(Hub())
        client, server, pump = ws_connect(factory)
        server.sendMessage(b"first", sync=True)
        server.sendMessage(b"second", sync=True)
        self.assertTrue(server.send_queue)
        server.sendPreparedMessage(factory.prepareMessage(b"third"))
        for _ in range(5):
            pump.flush()
            clock.advance(1)
        pump.flush()
        self.assertEqual(client.texts(), ["first", "second", "third"])

    def test_full_transport_still_cut_off(self):
        """
        Broadcasts to an app that stopped reading count as unsent once its
        transport is full, and the app is cut off past the limit.
        """
        factory = AppFactory(Hub())
        client, server, pump = ws_connect(factory)
        server.transport.producer.pauseProducing()
        prepared = factory.prepareMessage(b"x" * 60 * 1024)
        for _ in range(MAX_UNSENT // (60 * 1024) + 1):
            server.sendPreparedMessage(prepared)
        self.assertTrue(server.transport.disconnecting)


class IdleFootprintTests(SynchronousTestCase):
    """
    An open connection reads its protocol options from the factory and no
    longer holds its opening handshake, and works as before.
    """

    def test_options_come_from_factory(self):
        """
        Options are not copied onto the connection, yet apply to it: a
        message over the factory's limit fails the connection.
        """
        factory = AppFactory(Hub())
        client, server, pump = ws_connect(factory)
        self.assertNotIn("maxMessagePayloadSize", vars(server))
        self.assertEqual(server.maxMessagePayloadSize, MAX_MESSAGE)
        client.sendMessage(b"x" * (MAX_MESSAGE + 1))
        pump.flush()
        self.assertTrue(server.wasMaxMessagePayloadSizeExceeded)
        self.assertIsNotNone(client.closed)

    def test_connection_sets_its_own(self):
        """
        A connection can still set an option for itself alone.
        """
        factory = AppFactory(Hub())
        _, first, _ = ws_connect(factory)
        _, second, _ = ws_connect(factory)
        first.autoPingInterval = 5
        self.assertEqual(first.autoPingInterval, 5)
        self.assertEqual(second.autoPingInterval, factory.autoPingInterval)

    def test_handshake_dropped_after_open(self):
        """
        Once open, the request and response of the opening handshake are
        gone; status requests and broadcasts still work.
        """
        hub = Hub()
        factory = quiet(AppFactory(hub))
        hub.listen(factory.broadcast)
        hub.report("lamp", 1, "http", "192.168.1.64")
        client, server, pump = ws_connect(factory)
        self.assertIsNone(server.http_headers)
        self.assertIsNone(server.http_request_data)
        client.sendMessage(b'{"status": "lamp"}')
        pump.flush()
        hub.report("lamp", 0, "http", "192.168.1.64")
        pump.flush()
        self.assertEqual(client.texts(), ['{"id": "lamp", "value": 1}', '{"id": "lamp", "value": 0}'])


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
