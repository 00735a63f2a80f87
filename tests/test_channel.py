"""
Tests for the HTTP listener (smartplug_backend.channel): the plug firmware's
bare-LF request, fed byte for byte to the real Site.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.channel import make_site
from smartplug_backend.hub import Hub
from smartplug_backend.web import make_app

from .helpers import SYNC_BRIDGE, SynchronousReactor, SynchronousThreadPool

FIRMWARE_REQUEST = (
    b"POST /data HTTP/1.1\nHost: craplab.local\nConnection: close\n"
    b"Content-Type: application/json\nContent-Length: 32\n\n"
    b'{"id": "0xb00bf0cc", "value": 1}'
)


class FirmwareRequestTests(SynchronousTestCase):
    """
    LenientHTTPChannel and PatientRequest accept what the firmware sends.
    """

    def setUp(self):
        self.hub = Hub()
        self.pool = SynchronousThreadPool()
        self.site = make_site(make_app(self.hub, SYNC_BRIDGE), SynchronousReactor(), self.pool)

    def connect(self):
        channel = self.site.buildProtocol(IPv4Address("TCP", "192.168.1.64", 4000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.168.1.64", 4000))
        channel.makeConnection(transport)
        return channel, transport

    def test_bare_lf_request(self):
        """
        The firmware's exact request, with bare LF line ends, is answered
        200 and reaches the hub.
        """
        channel, transport = self.connect()
        channel.dataReceived(FIRMWARE_REQUEST)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\n{}"))
        self.assertEqual(self.hub.plug("0xb00bf0cc").value, 1)

    def test_crlf_request(self):
        """
        An ordinary CRLF request works as before.
        """
        channel, transport = self.connect()
        channel.dataReceived(FIRMWARE_REQUEST.replace(b"\n", b"\r\n"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertEqual(self.hub.plug("0xb00bf0cc").value, 1)

    def test_byte_by_byte(self):
        """
        The request split into single bytes is parsed the same.
        """
        channel, transport = self.connect()
        for i in range(len(FIRMWARE_REQUEST)):
            channel.dataReceived(FIRMWARE_REQUEST[i : i + 1])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))

    def test_peer_closes_before_app_reads(self):
        """
        The firmware closes as soon as its bytes are out: the report is still
        acted on even though the connection is gone before the WSGI thread
        reads the body.
        """
        queued = []
        self.pool.callInThread = lambda f, *a, **kw: queued.append(lambda: f(*a, **kw))
        channel, transport = self.connect()
        channel.dataReceived(FIRMWARE_REQUEST)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.hub.plug("0xb00bf0cc"))
        [run] = queued
        run()
        self.assertEqual(self.hub.plug("0xb00bf0cc").value, 1)

    def test_body_bytes_are_not_rewritten(self):
        """
        LF handling applies to the request head only: a body containing CR
        and LF reaches the app unchanged (here: valid JSON with whitespace).
        """
        body = b'{"id":\r\n "crlf",\n "value": 0}'
        head = b"POST /data HTTP/1.1\nContent-Length: %d\n\n" % len(body)
        channel, transport = self.connect()
        channel.dataReceived(head + body)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertEqual(self.hub.plug("crlf").value, 0)

    def test_keep_alive_requests(self):
        """
        Two LF-only requests on one connection are both answered.
        """
        one = b"GET / HTTP/1.1\nHost: x\n\n"
        channel, transport = self.connect()
        channel.dataReceived(one + one)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
