"""
Tests for smartplug_backend.server.sockets: TCP keepalive and a bounded send
buffer on accepted connections, on real loopback sockets (no reactor).
"""

import socket

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core import limits
from smartplug_backend.server import sockets
from smartplug_backend.server.connections import ConnectionCap


class SocketTransport(StringTransport):
    """
    A test transport whose handle is a real socket, as a TCP transport's is.
    """

    def __init__(self, sock):
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        self.socket = sock

    def getHandle(self):
        return self.socket


class Wrapping:
    """
    A transport in front of another, as a TLS layer is.
    """

    def __init__(self, transport):
        self.transport = transport

    def getHandle(self):
        return object()


class KeepAliveTests(SynchronousTestCase):
    """
    L{sockets.keep_alive} and its use on every connection a listener
    admits.
    """

    def accepted(self):
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        server, _ = listener.accept()
        self.addCleanup(server.close)
        return server

    def assertKeptAlive(self, sock):
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), limits.KEEPALIVE_IDLE)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), limits.KEEPALIVE_INTERVAL)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), limits.KEEPALIVE_COUNT)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), sockets.USER_TIMEOUT_MS)

    def test_dead_peer_found_within_minutes(self):
        """
        The timings find a silent dead peer within about three minutes (the
        system default would wait over two hours before the first probe).
        """
        self.assertLessEqual(limits.KEEPALIVE_IDLE + limits.KEEPALIVE_INTERVAL * limits.KEEPALIVE_COUNT, 240)
        self.assertEqual(sockets.USER_TIMEOUT_MS, (limits.KEEPALIVE_IDLE + limits.KEEPALIVE_INTERVAL * limits.KEEPALIVE_COUNT) * 1000)

    def test_sets_socket_options(self):
        """
        keep_alive turns keepalive on with our timings, also through a
        layer in front of the TCP transport (an ssl: endpoint's TLS).
        """
        for wrap in (lambda t: t, Wrapping):
            sock = self.accepted()
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)
            self.assertTrue(sockets.keep_alive(wrap(SocketTransport(sock))))
            self.assertKeptAlive(sock)

    def test_timer_never_at_system_default(self):
        """
        The timings are set before keepalive goes on, so the kernel's timer
        never runs, even for a moment, at the system's two hours (which a
        look with ss, as test_field_e2e takes, could catch).
        """
        calls = []

        class Recording(socket.socket):
            def setsockopt(self, level, option, value):
                calls.append((level, option))
                super().setsockopt(level, option, value)

        sock = self.accepted()
        recording = Recording(fileno=sock.detach())
        self.addCleanup(recording.close)
        self.assertTrue(sockets.keep_alive(SocketTransport(recording)))
        self.assertEqual(calls[-1], (socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        self.assertIn((socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), calls)
        self.assertKeptAlive(recording)

    def test_no_tcp_socket(self):
        """
        A transport without a TCP socket (a unix socket, a test fake) is
        left alone.
        """
        self.assertFalse(sockets.keep_alive(StringTransport()))
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertFalse(sockets.keep_alive(SocketTransport(a)))

    def test_every_admitted_connection(self):
        """
        A connection admitted by the connection cap (which wraps every
        listener) gets keepalive before its protocol sees it.
        """
        cap = ConnectionCap(10, Clock())
        seen = []

        class Seeing(Protocol):
            def connectionMade(self):
                seen.append(self.transport.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

        factory = cap.wrap(Factory.forProtocol(Seeing))
        sock = self.accepted()
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        protocol.makeConnection(SocketTransport(sock))
        self.assertEqual(seen, [1])
        self.assertKeptAlive(sock)

    def test_bound_send_buffer(self):
        """
        bound_send_buffer fixes the kernel's send buffer at WS_SEND_BUFFER
        (read back doubled by Linux), and says how much the kernel may hold;
        0 for a transport without a TCP socket.
        """
        sock = self.accepted()
        held = sockets.bound_send_buffer(SocketTransport(sock))
        self.assertEqual(held, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
        self.assertEqual(held, 2 * limits.WS_SEND_BUFFER)
        self.assertEqual(sockets.bound_send_buffer(StringTransport()), 0)
