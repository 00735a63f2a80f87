"""
Tests for the HTTP listener (smartplug_backend.http.channel): the plug firmware's
bare-LF request, fed byte for byte to the real Site.
"""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.hub import Hub
from smartplug_backend.http.api import make_app
from smartplug_backend.http.channel import BadRequest, make_site
from smartplug_backend.http.ingest import ingest_routes

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
        self.site = make_site(
            make_app(self.hub, SYNC_BRIDGE), SynchronousReactor(), self.pool, fast=ingest_routes(self.hub, None)
        )

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

    def test_absolute_form_target(self):
        """
        A request target in absolute form (as proxies send it, RFC 9112
        3.2.2) is served as its path and query: the fast route and the app
        alike.
        """
        channel, transport = self.connect()
        body = b'{"id": "p1", "value": 1}'
        channel.dataReceived(
            b"POST http://craplab.local:9000/data HTTP/1.1\r\nHost: craplab.local\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"), transport.value())
        self.assertEqual(self.hub.plug("p1").value, 1)
        for target, status, ending in [
            (b"HTTP://craplab.local/plugs/p1", b"200", b'"value": 1'),
            (b"http://craplab.local/plugs/p1/history?limit=1", b"200", b'"value": 1'),
            (b"http://craplab.local", b"200", b"hallo."),
            (b"https://craplab.local?x=1", b"200", b"hallo."),
            (b"http://craplab.local/nowhere", b"404", b'"error"'),
        ]:
            channel, transport = self.connect()
            channel.dataReceived(b"GET %s HTTP/1.1\r\nHost: craplab.local\r\n\r\n" % target)
            answer = transport.value()
            self.assertTrue(answer.startswith(b"HTTP/1.1 %s " % status), (target, answer))
            self.assertIn(ending, answer, target)

    def test_origin_form(self):
        """
        Only an http(s) absolute form is rewritten.
        """
        from smartplug_backend.http.channel import origin_form

        for target, expected in [
            (b"/plugs", b"/plugs"),
            (b"/a?u=http://x/", b"/a?u=http://x/"),
            (b"*", b"*"),
            (b"ftp://x/plugs", b"ftp://x/plugs"),
            (b"http://x:1/a/b?c", b"/a/b?c"),
            (b"http://x?c=/d", b"/?c=/d"),
            (b"http://", b"/"),
        ]:
            self.assertEqual(origin_form(target), expected, target)

    def test_no_server_header(self):
        """
        Answers, found or not, do not name the server software or its
        version.
        """
        channel, transport = self.connect()
        channel.dataReceived(FIRMWARE_REQUEST)
        channel, missing = self.connect()
        channel.dataReceived(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        for answer in (transport.value(), missing.value()):
            self.assertTrue(answer.startswith(b"HTTP/1.1 "), answer)
            self.assertNotIn(b"\r\nserver:", answer.lower())
            self.assertNotIn(b"twisted", answer.lower())

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
        The firmware closes as soon as its bytes are out: a report served by
        the Bottle app (as every report was before the ingest routes) is
        still acted on even though the connection is gone before the WSGI
        thread reads the body.
        """
        self.site = make_site(make_app(self.hub, SYNC_BRIDGE), SynchronousReactor(), self.pool)
        queued = []
        self.pool.callInThread = lambda f, *a, **kw: queued.append(lambda: f(*a, **kw))
        channel, transport = self.connect()
        channel.dataReceived(FIRMWARE_REQUEST)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.hub.plug("0xb00bf0cc"))
        [run] = queued
        run()
        self.assertEqual(self.hub.plug("0xb00bf0cc").value, 1)

    def test_half_closed_peer_gets_its_answer(self):
        """
        A client that half-closes after its request (shutdown(SHUT_WR), then
        reads) gets its answer once the WSGI thread is done, and the
        connection is closed after it; the report (served by the Bottle app
        here) is acted on.
        """
        self.site = make_site(make_app(self.hub, SYNC_BRIDGE), SynchronousReactor(), self.pool)
        queued = []
        self.pool.callInThread = lambda f, *a, **kw: queued.append(lambda: f(*a, **kw))
        channel, transport = self.connect()
        request = FIRMWARE_REQUEST.replace(b"Connection: close\n", b"")
        channel.dataReceived(request)
        channel.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        [run] = queued
        run()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"), transport.value())
        self.assertTrue(transport.value().endswith(b"\r\n\r\n{}"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.hub.plug("0xb00bf0cc").value, 1)

    def test_half_closed_peer_answered_by_ingest_route(self):
        """
        The same half-closing client, its report taken by the reactor-thread
        ingest route: answered at once, then closed.
        """
        channel, transport = self.connect()
        channel.dataReceived(FIRMWARE_REQUEST.replace(b"Connection: close\n", b""))
        channel.readConnectionLost()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"), transport.value())
        self.assertTrue(transport.value().endswith(b"\r\n\r\n{}"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.hub.plug("0xb00bf0cc").value, 1)

    def test_half_closed_pipelined_requests(self):
        """
        Two whole requests before the half-close are both answered, in order,
        then the connection closes.
        """
        one = b"GET / HTTP/1.1\nHost: x\n\n"
        channel, transport = self.connect()
        channel.dataReceived(one + one)
        channel.readConnectionLost()
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertTrue(transport.disconnecting)

    def test_half_closed_idle_or_partial(self):
        """
        A half-close with no request, or in the middle of one (the rest can
        never come), closes the connection without an answer.
        """
        for sent in (b"", b"POST /data HTTP/1.1\nContent-Length: 32\n\n{"):
            channel, transport = self.connect()
            channel.dataReceived(sent)
            channel.readConnectionLost()
            self.assertEqual(transport.value(), b"")
            self.assertTrue(transport.disconnecting)

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


class BodyLimitTests(SynchronousTestCase):
    """
    Bodies over 64 KiB are refused with 413 without being read or handled.
    """

    def setUp(self):
        self.hub = Hub()
        self.site = make_site(make_app(self.hub, SYNC_BRIDGE), SynchronousReactor(), SynchronousThreadPool())

    def connect(self):
        channel = self.site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 4000))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def assert413(self, transport):
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "), head)
        self.assertEqual(body, b'{"error": "body too large: at most 65536 bytes"}')
        self.assertTrue(transport.disconnecting)

    def test_declared_length_refused_before_body(self):
        """
        A Content-Length over the limit is answered 413 as soon as the head
        is in; the body that follows is ignored, not buffered.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"POST /data HTTP/1.1\r\nContent-Length: 65537\r\nExpect: 100-continue\r\n\r\n")
        self.assert413(transport)
        self.assertNotIn(b"100 Continue", transport.value())
        channel.dataReceived(b"x" * 65537)
        self.assertEqual(self.hub.plugs(), [])

    def test_chunked_body_refused_once_over(self):
        """
        A chunked body is refused once its chunks pass the limit, and the
        request is never handled even if its end arrives.
        """
        channel, transport = self.connect()
        body = b'{"id": "a", "value": 1, "pad": "' + b"x" * 70000 + b'"}'
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096]) for i in range(0, len(body), 4096))
        channel.dataReceived(b"POST /data HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        self.assert413(transport)
        self.assertEqual(self.hub.plugs(), [])

    def test_chunked_body_in_memory(self):
        """
        A chunked body is read into memory, not a temporary file (which
        twisted.web makes on the reactor thread), and handled.
        """
        import tempfile

        self.patch(tempfile, "TemporaryFile", lambda *a, **k: self.fail("a temporary file was made"))
        channel, transport = self.connect()
        body = b'{"id": "a", "value": 1}'
        channel.dataReceived(b"POST /data HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertEqual([p.id for p in self.hub.plugs()], ["a"])

    def test_limit_itself_accepted(self):
        """
        A body of exactly 64 KiB is read and handled (here: a 400, since it
        is not a valid report, but not a 413).
        """
        channel, transport = self.connect()
        body = b" " * 65536
        channel.dataReceived(b"POST /data HTTP/1.1\r\nContent-Length: 65536\r\n\r\n" + body)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))


class MalformedRequestTests(SynchronousTestCase):
    """
    twisted.web's refusals of malformed requests, made to follow SPEC 1.
    """

    def setUp(self):
        self.hub = Hub()
        self.site = make_site(make_app(self.hub, SYNC_BRIDGE), SynchronousReactor(), SynchronousThreadPool())

    def test_malformed_header_json_400_once(self):
        """
        A header with a NUL in it is answered 400 with a JSON error, once;
        what the peer sends after that is not parsed, even a valid report.
        """
        channel = self.site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 4000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /data HTTP/1.1\nHost: x\x00y\nContent-Length: 2\n\n{}")
        channel.dataReceived(FIRMWARE_REQUEST)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), head)
        self.assertEqual(body, b'{"error": "malformed HTTP request"}')
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.hub.plugs(), [])

    def test_overlong_line_json_400(self):
        """
        A request line or header over 16 KiB gets the same JSON 400 instead
        of a silent close, without waiting for its end.
        """
        for head in [b"GET /" + b"a" * 20000, b"GET / HTTP/1.1\nX-Pad: " + b"a" * 20000]:
            channel = self.site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 4000))
            transport = StringTransport()
            channel.makeConnection(transport)
            channel.dataReceived(head)
            answer_head, _, body = transport.value().partition(b"\r\n\r\n")
            self.assertTrue(answer_head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer_head)
            self.assertEqual(body, b'{"error": "malformed HTTP request"}')
            self.assertTrue(transport.disconnecting)


class NotUTF8Tests(SynchronousTestCase):
    """
    A request with bytes that are not UTF-8 in its path (escaped or not),
    query or any header gets 400 with a JSON error naming the part, on
    every route, before the route reads it (SPEC 6.3); the log says so.
    """

    def setUp(self):
        self.hub = Hub()
        self.site = make_site(make_app(self.hub, SYNC_BRIDGE), SynchronousReactor(), SynchronousThreadPool(),
                              fast=ingest_routes(self.hub, None))
        self.events = []
        self.patch(BadRequest, "_log", Logger(observer=self.events.append))

    def answer(self, request: bytes) -> tuple:
        channel = self.site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 4000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 4000))
        channel.makeConnection(transport)
        channel.dataReceived(request)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        return head.split(b"\r\n")[0], body

    def test_refused(self):
        self.hub.report("ab", 1, "http", "10.0.0.2")
        report = b'{"id": "cd", "value": 1}'
        for request, error in [
            # Bottle alone would drop the byte and answer plug ab.
            (b"GET /plugs/ab%ff HTTP/1.1\r\nHost: x\r\n\r\n", "the path is not UTF-8"),
            (b"GET /plugs?x=%fe HTTP/1.1\r\nHost: x\r\n\r\n", "the query is not UTF-8"),
            (b"POST /data HTTP/1.1\r\nHost: x\r\nX-Other: \xff\r\nContent-Length: 24\r\n\r\n" + report,
             "header X-Other is not UTF-8"),
            (b"POST /publish?clientName=k%fcche HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\n"
             b'{"event": "e"}', "the query is not UTF-8"),
            (b"GET /ui/%c3 HTTP/1.1\r\nHost: x\r\n\r\n", "the path is not UTF-8"),
        ]:
            self.assertEqual(self.answer(request), (b"HTTP/1.1 400 Bad Request", json.dumps({"error": error}).encode()))
        self.assertEqual([p.id for p in self.hub.plugs()], ["ab"])
        self.assertEqual(json.loads(self.hub.pubsub.history_page("e", 0, 10))["publications"], [])
        self.assertEqual([formatEvent(e) for e in self.events][:2], [
            "HTTP client 10.0.0.1: the path is not UTF-8; answered 400",
            "HTTP client 10.0.0.1: the query is not UTF-8; answered 400"])
        self.assertEqual(len(self.events), 5)

    def test_target_not_a_path(self):
        """
        A request target that is neither a path nor absolute-form is 400
        (twisted.web took "Xdata" for "/data": a report was accepted).
        """
        report = b'{"id": "cd", "value": 1}'
        for target in [b"Xdata", b"*data", b"data", b"ftp://x/data"]:
            request = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\n\r\n%s" % (target, report)
            self.assertEqual(
                self.answer(request),
                (b"HTTP/1.1 400 Bad Request", b'{"error": "the request target must be a path starting with /"}'),
                target,
            )
        self.assertEqual(self.hub.plugs(), [])
        self.assertEqual(
            formatEvent(self.events[0]),
            "HTTP client 10.0.0.1: the request target must be a path starting with /; answered 400",
        )

    def test_star_target(self):
        """
        A C{*} target is only for OPTIONS (answered 200, empty, as
        twisted.web does); any other method gets a JSON 405 with
        C{Allow: OPTIONS}, not twisted.web's empty one (SPEC 1: every error
        is JSON), and it is logged.
        """
        for method in (b"GET", b"POST", b"DELETE"):
            request = b"%s * HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % method
            self.assertEqual(self.answer(request),
                             (b"HTTP/1.1 405 Method Not Allowed", b'{"error": "the target * is only for OPTIONS"}'))
        transport = StringTransport()
        channel = self.site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 4000))
        channel.makeConnection(transport)
        channel.dataReceived(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
        head = transport.value().partition(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertIn(b"Allow: OPTIONS", head)
        self.assertIn(b"Content-Type: application/json", head)
        self.assertEqual(self.answer(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), (b"HTTP/1.1 200 OK", b""))
        # Checked like any request: a header that is not UTF-8 is a 400.
        self.assertEqual(self.answer(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nX-A: \xff\r\n\r\n"),
                         (b"HTTP/1.1 400 Bad Request", b'{"error": "header X-A is not UTF-8"}'))
        self.assertEqual(formatEvent(self.events[0]),
                         "HTTP client 10.0.0.1: the target * is only for OPTIONS; answered 405")
        self.assertEqual(self.hub.plugs(), [])

    def test_head_refused_without_a_body(self):
        """
        A refused HEAD gets the status and the length of the JSON error, no
        body, and twisted.web logs no warning holding its target (an apiKey
        in the query would be in it).
        """
        from twisted.logger import globalLogPublisher

        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        for request in (b"HEAD /plugs?apiKey=TOPSECRET HTTP/1.1\r\nHost: x\r\nX-A: \xff\r\n\r\n",
                        b"HEAD Xplugs?apiKey=TOPSECRET HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"HEAD * HTTP/1.1\r\nHost: x\r\n\r\n"):
            transport = StringTransport()
            channel = self.site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 4000))
            channel.makeConnection(transport)
            channel.dataReceived(request)
            head, _, body = transport.value().partition(b"\r\n\r\n")
            self.assertEqual(body, b"", request)
            self.assertRegex(head, rb"Content-Length: [1-9]", request)
        self.assertNotIn("TOPSECRET", " ".join(formatEvent(e) or "" for e in logged))

    def test_utf8_accepted(self):
        """
        UTF-8 in the path (escaped: twisted.web takes only ASCII in a
        request line) and in a header is read as what it says.
        """
        self.assertEqual(self.answer(b"GET /plugs/k%C3%BCche HTTP/1.1\r\nHost: x\r\n\r\n"),
                         (b"HTTP/1.1 404 Not Found", '{"error": "unknown plug id: k\\u00fcche"}'.encode()))
        report = '{"id": "küche", "value": 1}'.encode()
        request = b"POST /data HTTP/1.1\r\nHost: x\r\nX-Other: \xc3\xbc\r\nContent-Length: %d\r\n\r\n%s"
        self.assertEqual(self.answer(request % (len(report), report)), (b"HTTP/1.1 200 OK", b"{}"))
        self.assertEqual(self.answer(b"GET /plugs/k%C3%BCche HTTP/1.1\r\nHost: x\r\n\r\n")[0], b"HTTP/1.1 200 OK")
        self.assertEqual(self.events, [])
