"""
Tests for the fixed deadlines against peers that trickle bytes (SPEC 6.3):
the HTTP request deadline of smartplug_backend.http.channel on a fake clock, and
both deadlines on real loopback sockets with short timeouts.
"""

import json

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smartplug_backend.core.hub import Hub
from smartplug_backend.core.limits import HTTP_IDLE_TIMEOUT, HTTP_REQUEST_TIMEOUT
from smartplug_backend.http.api import Bridge, make_app
from smartplug_backend.http.channel import make_site
from smartplug_backend.ws.apps import AppFactory

from .helpers import SYNC_BRIDGE, SynchronousReactor, SynchronousThreadPool, accept

REPORT = b'POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\n\r\n{"id": "p", "value": 1}\n'


class RequestDeadlineTests(SynchronousTestCase):
    """
    A request must arrive whole within HTTP_REQUEST_TIMEOUT seconds of its
    first byte, however its bytes trickle in.
    """

    def setUp(self):
        self.hub = Hub()
        self.reactor = SynchronousReactor()
        self.site = make_site(make_app(self.hub, SYNC_BRIDGE), self.reactor, SynchronousThreadPool())

    def connect(self):
        return accept(self.site, "10.0.0.7")

    def trickle(self, channel, data: bytes, seconds: int) -> None:
        """
        Send one byte of C{data} a second for C{seconds} seconds.
        """
        for i in range(seconds):
            channel.dataReceived(data[i : i + 1])
            self.reactor.advance(1)

    def assert408(self, transport):
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), head)
        self.assertEqual(json.loads(body), {"error": f"no complete request within {HTTP_REQUEST_TIMEOUT} seconds"})
        self.assertTrue(transport.disconnecting)

    def test_trickled_head_cut_off(self):
        """
        A head sent one byte a second (each byte would restart the idle
        timeout) is answered 408 and closed at the deadline, not before, and
        never reaches the app.
        """
        channel, transport = self.connect()
        self.trickle(channel, REPORT, HTTP_REQUEST_TIMEOUT - 1)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        self.trickle(channel, REPORT[HTTP_REQUEST_TIMEOUT - 1 :], 1)
        self.assert408(transport)
        channel.dataReceived(REPORT)
        self.assertEqual(self.hub.plugs(), [])

    def test_trickled_body_cut_off(self):
        """
        A head sent at once followed by a body one byte a second is cut off
        at the same deadline.
        """
        channel, transport = self.connect()
        body = b'{"id": "p", "value": 1}'.ljust(HTTP_REQUEST_TIMEOUT * 2)
        channel.dataReceived(b"POST /data HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
        self.trickle(channel, body, HTTP_REQUEST_TIMEOUT)
        self.assert408(transport)
        self.assertEqual(self.hub.plugs(), [])

    def test_aborted_if_peer_holds_on(self):
        """
        A peer that does not close after the 408 is aborted as twisted.web
        aborts timed-out peers.
        """
        channel, transport = self.connect()
        self.reactor.pump([1] * HTTP_REQUEST_TIMEOUT)
        self.assert408(transport)
        self.reactor.pump([1] * channel.abortTimeout)
        self.assertTrue(transport.disconnected)

    def test_silent_connection_closed(self):
        """
        A connection that sends nothing is closed at the deadline.
        """
        channel, transport = self.connect()
        self.reactor.pump([1] * HTTP_REQUEST_TIMEOUT)
        self.assertTrue(transport.disconnecting)

    def test_deadline_per_request(self):
        """
        On a kept-alive connection each request gets its own deadline, from
        its first byte: an idle pause between requests (under the idle
        timeout) does not count against the next one.
        """
        channel, transport = self.connect()
        self.reactor.advance(HTTP_REQUEST_TIMEOUT - 1)
        channel.dataReceived(REPORT)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.reactor.pump([1] * (HTTP_IDLE_TIMEOUT - 1))
        self.trickle(channel, REPORT, HTTP_REQUEST_TIMEOUT - 1)
        channel.dataReceived(REPORT[HTTP_REQUEST_TIMEOUT - 1 :])
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(transport.disconnecting)

    def test_pipelined_requests(self):
        """
        Requests pipelined in one write are all answered, and no deadline is
        left running once they are.
        """
        channel, transport = self.connect()
        channel.dataReceived(REPORT * 3)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertIsNone(channel._request_deadline)

    def test_closed_connection_leaves_no_deadline(self):
        """
        A peer that leaves mid-request leaves no timer of ours behind.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        channel, transport = self.connect()
        channel.dataReceived(REPORT[:20])
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([c for c in self.reactor.getDelayedCalls() if c.active()], [])


class Trickler(protocol.Protocol):
    """
    Sends C{data} one byte every C{interval} seconds; C{done} fires with what
    it received and when the server closed the connection.
    """

    def __init__(self, data: bytes, interval: float):
        self.data = data
        self.interval = interval
        self.received = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.started = reactor.seconds()
        self.sent = 0
        self.loop = LoopingCall(self.send_one)
        self.loop.start(self.interval)

    def send_one(self):
        if self.sent < len(self.data):
            self.transport.write(self.data[self.sent : self.sent + 1])
            self.sent += 1

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.loop.stop()
        self.done.callback((self.received, reactor.seconds() - self.started))


class SlowlorisOnSocketsTests(TestCase):
    """
    On real loopback sockets, with short deadlines: a trickling peer is cut
    off in time while a normal client is served meanwhile.
    """

    DEADLINE = 0.5

    def listen(self, factory):
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        d = endpoint.listen(factory)

        def listening(port):
            self.addCleanup(port.stopListening)
            return port.getHost().port

        return d.addCallback(listening)

    def trickle(self, port: int, data: bytes):
        trickler = Trickler(data, self.DEADLINE / 10)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        return endpoint.connect(protocol.Factory.forProtocol(lambda: trickler)).addCallback(lambda _: trickler)

    @defer.inlineCallbacks
    def test_http(self):
        """
        An HTTP peer trickling a report gets 408 and is closed about the
        deadline after connecting, while a report sent normally in the
        meantime is answered 200 and recorded.
        """
        hub = Hub(now=reactor.seconds)
        pool = ThreadPool(minthreads=1, maxthreads=2, name="test-wsgi")
        pool.start()
        self.addCleanup(pool.stop)
        site = make_site(make_app(hub, Bridge.for_reactor(reactor)), reactor, pool, request_timeout=self.DEADLINE)
        port = yield self.listen(site)
        slow = yield self.trickle(port, REPORT.replace(b'"p"', b'"s"'))
        answer = yield treq.post(f"http://127.0.0.1:{port}/data", data=b'{"id": "fast", "value": 1}', persistent=False)
        self.assertEqual(answer.code, 200)
        yield answer.content()
        received, seconds = yield slow.done
        self.assertTrue(received.startswith(b"HTTP/1.1 408 "), received)
        self.assertGreaterEqual(seconds, self.DEADLINE * 0.9)
        self.assertLess(seconds, self.DEADLINE + 2)
        self.assertEqual([plug.id for plug in hub.plugs()], ["fast"])

    @defer.inlineCallbacks
    def test_websocket_handshake(self):
        """
        A WebSocket peer trickling its opening handshake is dropped about the
        deadline after connecting, while a normal client connects and gets
        broadcasts meanwhile.
        """
        hub = Hub(now=reactor.seconds)
        apps = AppFactory(hub, clock=reactor)
        apps.handshake_timeout = self.DEADLINE
        apps.setProtocolOptions(autoPingInterval=0)
        hub.listen(apps.broadcast)
        port = yield self.listen(apps)
        handshake = (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        slow = yield self.trickle(port, handshake)

        got = defer.Deferred()

        class App(WebSocketClientProtocol):
            def onOpen(self):
                hub.report("p", 1, "http", "test")

            def onMessage(self, payload, isBinary):
                self.sendClose()
                got.callback(payload)

        client_factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/")
        client_factory.protocol = App
        client_factory.setProtocolOptions(autoPingInterval=0)
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(client_factory)
        self.assertEqual((yield got), b'{"id": "p", "value": 1}')
        received, seconds = yield slow.done
        self.assertEqual(received, b"")
        self.assertGreaterEqual(seconds, self.DEADLINE * 0.9)
        self.assertLess(seconds, self.DEADLINE + 2)
