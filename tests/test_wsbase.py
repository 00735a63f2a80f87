"""
Tests for the limits every WebSocket listener shares (smartplug_backend.wsbase,
SPEC 6.3): message and frame size, handshake size, the handshake deadline.
"""

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.apps import AppFactory
from smartplug_backend.hub import Hub
from smartplug_backend.limits import MAX_HANDSHAKE, MAX_MESSAGE, WS_HANDSHAKE_TIMEOUT

from .helpers import accept, ws_connect

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: localhost:9001\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
TOO_BIG = WebSocketProtocol.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG


class MessageSizeTests(SynchronousTestCase):
    """
    Frames and messages over 64 KiB close the connection with 1009.
    """

    def setUp(self):
        self.hub = Hub()
        self.factory = AppFactory(self.hub, clock=Clock())

    def test_message_at_limit_accepted(self):
        """
        A message of exactly 64 KiB is read (and, not being a status
        request, ignored); the connection stays open.
        """
        client, _, pump = ws_connect(self.factory)
        client.sendMessage(b" " * MAX_MESSAGE)
        pump.flush()
        self.assertIsNone(client.closed)

    def test_frame_over_limit(self):
        """
        A single frame one byte over 64 KiB closes the connection with 1009.
        """
        client, _, pump = ws_connect(self.factory)
        client.sendMessage(b" " * (MAX_MESSAGE + 1))
        pump.flush()
        self.assertEqual(client.closed[0], TOO_BIG)

    def test_fragmented_message_over_limit(self):
        """
        A message sent as small frames is refused with 1009 once its frames
        add up to more than 64 KiB.
        """
        client, _, pump = ws_connect(self.factory)
        client.beginMessage()
        for _ in range(5):
            client.beginMessageFrame(MAX_MESSAGE // 4)
            client.sendMessageFrameData(b" " * (MAX_MESSAGE // 4))
        pump.flush()
        self.assertEqual(client.closed[0], TOO_BIG)

    def test_others_served_after_refusal(self):
        """
        After one client is closed with 1009, another still gets broadcasts.
        """
        bad, _, bad_pump = ws_connect(self.factory)
        good, _, good_pump = ws_connect(self.factory)
        self.hub.listen(self.factory.broadcast)
        bad.sendMessage(b" " * (MAX_MESSAGE + 1))
        bad_pump.flush()
        self.hub.report("p", 1, "http", "x")
        good_pump.flush()
        self.assertEqual(good.messages, [b'{"id": "p", "value": 1}'])
        self.assertEqual(len(self.factory.clients), 1)


class HandshakeLimitTests(SynchronousTestCase):
    """
    The opening handshake is bounded in size and in time.
    """

    def setUp(self):
        self.clock = Clock()
        self.factory = AppFactory(Hub(), clock=self.clock)
        self.factory.setProtocolOptions(autoPingInterval=0)

    def connect(self):
        return accept(self.factory, "10.0.0.9")

    def test_oversized_head_refused(self):
        """
        A handshake head over 16 KiB with no end in sight is refused with
        431 and the connection closed; what follows is not buffered.
        """
        server, transport = self.connect()
        server.dataReceived(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HANDSHAKE)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"))
        self.assertTrue(transport.disconnecting)
        server.dataReceived(b"a" * 100000)
        self.assertLess(len(server.data), MAX_HANDSHAKE + 100000 + 100)
        self.assertNotEqual(server.state, server.STATE_OPEN)

    def test_oversized_complete_head_refused(self):
        """
        A complete handshake whose headers pass 16 KiB is refused too.
        """
        server, transport = self.connect()
        padded = HANDSHAKE.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"a" * MAX_HANDSHAKE + b"\r\n\r\n")
        server.dataReceived(padded)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))

    def test_head_within_limit_accepted(self):
        """
        A handshake with large but allowed headers is upgraded.
        """
        server, transport = self.connect()
        padded = HANDSHAKE.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"a" * (MAX_HANDSHAKE - 400) + b"\r\n\r\n")
        server.dataReceived(padded)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))

    def test_trickling_peer_dropped_at_deadline(self):
        """
        A peer that sends its handshake one byte a second, resetting no
        timer, is dropped when the deadline passes after connecting.
        """
        server, transport = self.connect()
        for i in range(WS_HANDSHAKE_TIMEOUT - 1):
            server.dataReceived(HANDSHAKE[i : i + 1])
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        server.dataReceived(HANDSHAKE[WS_HANDSHAKE_TIMEOUT - 1 : WS_HANDSHAKE_TIMEOUT])
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_silent_peer_dropped_at_deadline(self):
        """
        A peer that connects and sends nothing is dropped at the deadline.
        """
        server, transport = self.connect()
        self.clock.pump([1] * WS_HANDSHAKE_TIMEOUT)
        self.assertTrue(transport.disconnecting)

    def test_completed_handshake_cancels_deadline(self):
        """
        A handshake completed in time leaves no timer behind: the connection
        stays open past the deadline.
        """
        server, transport = self.connect()
        server.dataReceived(HANDSHAKE)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(WS_HANDSHAKE_TIMEOUT * 2)
        self.assertFalse(transport.disconnecting)

    def test_lost_connection_cancels_deadline(self):
        """
        A peer that leaves mid-handshake leaves no timer behind.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        server, transport = self.connect()
        server.dataReceived(HANDSHAKE[:10])
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
