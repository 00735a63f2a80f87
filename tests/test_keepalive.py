"""
Tests for smartplug_backend.server.keepalive: TCP keepalive on accepted
connections, on real loopback sockets (no reactor).
"""

import socket

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.server import keepalive
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
    L{keepalive.keep_alive} and its use on every connection a listener
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
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), keepalive.IDLE)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), keepalive.INTERVAL)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), keepalive.COUNT)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), keepalive.USER_TIMEOUT_MS)

    def test_dead_peer_found_within_minutes(self):
        """
        The timings find a silent dead peer within about three minutes (the
        system default would wait over two hours before the first probe).
        """
        self.assertLessEqual(keepalive.IDLE + keepalive.INTERVAL * keepalive.COUNT, 240)
        self.assertEqual(keepalive.USER_TIMEOUT_MS, (keepalive.IDLE + keepalive.INTERVAL * keepalive.COUNT) * 1000)

    def test_sets_socket_options(self):
        """
        keep_alive turns keepalive on with our timings, also through a
        layer in front of the TCP transport (an ssl: endpoint's TLS).
        """
        for wrap in (lambda t: t, Wrapping):
            sock = self.accepted()
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)
            self.assertTrue(keepalive.keep_alive(wrap(SocketTransport(sock))))
            self.assertKeptAlive(sock)

    def test_no_tcp_socket(self):
        """
        A transport without a TCP socket (a unix socket, a test fake) is
        left alone.
        """
        self.assertFalse(keepalive.keep_alive(StringTransport()))
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertFalse(keepalive.keep_alive(SocketTransport(a)))

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
