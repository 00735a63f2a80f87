"""
Tests for the reactor-thread ingest routes (smartplug_backend.http.ingest)
and the site's root (smartplug_backend.http.root): what they answer is what
the Bottle app answers, byte for byte, with the same effects and log lines;
they never use a WSGI thread for a request they take; the rest goes to the
app untouched.
"""

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from smartplug_backend.core.hub import Hub
from smartplug_backend.core.journal import MemoryJournal, StoreFailed
from smartplug_backend.http.api import make_app
from smartplug_backend.http.channel import make_site
from smartplug_backend.http.ingest import ingest_routes
from smartplug_backend.server.guard import Guard

from .helpers import SYNC_BRIDGE, SynchronousReactor

FIRMWARE_REQUEST = (
    b"POST /data HTTP/1.1\nHost: craplab.local\nConnection: close\n"
    b"Content-Type: application/json\nContent-Length: 32\n\n"
    b'{"id": "0xb00bf0cc", "value": 1}'
)

REPORTS = [
    b'{"id": "0xb00bf0cc", "value": 1}', b'{"id": "a", "value": false}', b'{"id": "a/b \xc3\xa9", "value": true}',
    b"", b"  ", b"[]", b'{"value": 1}', b'{"id": "", "value": 1}', b'{"id": "a"}', b'{"id": "a", "value": 2}',
    b'{"id": "a", "value": 1.0}', b"nope", b'{"id": "' + b"x" * 129 + b'", "value": 1}', b"\xff\xfe",
    b'{"id": "a", "value": NaN}', b'{"id": "\\ud800", "value": 1}', b'{"id": "a", "value": 1, "pad": "'
    + b"x" * (64 * 1024) + b'"}',
]
PUBLICATIONS = [
    b'{"event": "e", "data": "text"}', b'{"event": "e", "data": 42}', b'{"event": "e"}', b'{"event": ""}', b"{}",
    b"nope", b"[1]", b'{"action": "publish", "event": "e", "data": {"a": [1]}}', b'{"event": "e", "data": NaN}',
    b'{"event": 5}', b"",
]
# (path with query, headers) of POST /publish: every way of giving, or not
# giving, the key and the client name.
PUBLISH_CREDENTIALS = [
    (b"/publish?clientName=pi", {}),
    (b"/publish?clientName=pi&apiKey=good", {}),
    (b"/publish?clientName=pi&apiKey=bad", {}),
    (b"/publish?clientName=pi&apiKey=bad&apiKey=good", {}),
    (b"/publish?clientName=pi&apiKey=good&apiKey=bad", {}),
    (b"/publish?clientName=pi;apiKey=good", {}),
    (b"/publish?clientName=&apiKey=good", {}),
    (b"/publish?apiKey=good", {}),
    (b"/publish?clientName=p%C3%AF&apiKey=g%6Fod", {}),
    (b"/publish?clientName=pi&apiKey=g%FFod", {}),
    (b"/publish", {b"X-API-Key": [b"good"], b"X-API-Client-Name": [b"a"]}),
    (b"/publish", {b"X-API-Key": [b"bad"], b"X-API-Client-Name": [b"a"]}),
    (b"/publish", {b"X-API-Key": [b"good", b"good"], b"X-API-Client-Name": [b"a"]}),
    (b"/publish", {b"X_API_Key": [b"good"], b"X-API-Client-Name": [b"a"]}),
    (b"/publish", {b"X-API-Key": [b"good"], b"X_API_Key": [b"bad"], b"X-API-Client-Name": [b"a"]}),
    (b"/publish?clientName=a&apiKey=good", {b"X-API-Key": [b"bad"]}),
    (b"/publish?clientName=a", {b"X-API-Key": [b""], b"X-API-Client-Name": [b""]}),
    (b"/publish?apiKey=good", {b"X-API-Client-Name": [b"\xc3\xa9"]}),
]


def wire(request_line: bytes, headers: dict, body: bytes) -> bytes:
    """
    One HTTP/1.1 request as a client sends it.
    """
    head = [request_line, b"Host: smartplug.test", b"Content-Length: %d" % len(body)]
    for name, values in headers.items():
        head += [name + b": " + v for v in values]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class RecordingPool:
    """
    A thread-pool stand-in that runs work at once and counts it.
    """

    def __init__(self):
        self.calls = 0

    def callInThread(self, f, *args, **kwargs):
        self.calls += 1
        f(*args, **kwargs)


class Server:
    """
    The real Site over a hub, with (C{fast}) or without the ingest routes,
    fed raw bytes; what it answered, published, counted and logged.
    """

    def __init__(self, testcase, fast: bool, api_key=None, journal=None, children=None):
        self.clock = Clock()
        self.hub = Hub(now=self.clock.seconds, journal=journal)
        self.published = []
        # What the hub's publish fires with: an offset, or None when the
        # store refused the publication.
        self.publish_answer = 1

        def publish(event, data, peer):
            self.published.append((event, data, peer))
            return succeed(self.publish_answer)

        self.hub.publish = publish
        self.guard = Guard(self.clock, ban_after=1000)
        self.pool = RecordingPool()
        app = make_app(self.hub, SYNC_BRIDGE, guard=self.guard, api_key=api_key)
        self.site = make_site(
            app, SynchronousReactor(), self.pool, children=children,
            fast=ingest_routes(self.hub, api_key, self.guard) if fast else None,
        )
        self.logged = []

        def observe(event):
            if event.get("log_namespace", "").startswith("smartplug_backend"):
                self.logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, observe)

    #: The peer of every connection (a dual-stack listener's would be
    #: IPv6Address("TCP", "::ffff:192.168.1.64", 4000)).
    address = IPv4Address("TCP", "192.168.1.64", 4000)

    def connect(self):
        address = self.address
        channel = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        return channel, transport

    def exchange(self, request: bytes) -> bytes:
        """
        The answer to C{request}, its Date header blanked.
        """
        channel, transport = self.connect()
        channel.dataReceived(request)
        answer = transport.value()
        channel.connectionLost(Failure(ConnectionDone()))
        start = answer.find(b"\r\nDate: ")
        if start >= 0:
            end = answer.index(b"\r\n", start + 2)
            answer = answer[:start] + b"\r\nDate: -" + answer[end:]
        return answer

    def effects(self):
        return (
            [p.as_json() for p in self.hub.plugs()],
            self.published,
            self.guard.failures("192.168.1.64"),
            self.logged,
        )


class SameAnswersTests(SynchronousTestCase):
    """
    The ingest routes answer every request exactly as the Bottle app alone
    does (status line, headers, body), and with the same effects: state,
    publications, ban counts and log lines.
    """

    def compare(self, requests, api_key=None):
        fast, app = Server(self, True, api_key), Server(self, False, api_key)
        for request in requests:
            self.assertEqual(fast.exchange(request), app.exchange(request), request[:200])
        self.assertEqual(fast.effects(), app.effects())
        return fast, app

    def test_reports(self):
        """
        Valid and invalid reports, with CRLF and the firmware's bare LF,
        get the same answers; the valid ones change the same state.
        """
        requests = [wire(b"POST /data HTTP/1.1", {}, body) for body in REPORTS]
        requests += [FIRMWARE_REQUEST, FIRMWARE_REQUEST.replace(b"\n", b"\r\n")]
        fast, _ = self.compare(requests)
        self.assertEqual(len(fast.hub.plugs()), 3)

    def test_publications(self):
        """
        Publications with every combination of body and credentials, with
        and without API_KEY, get the same answers, and the same are
        published, counted toward bans and logged.
        """
        for api_key in (None, "good"):
            requests = [
                wire(b"POST " + path + b" HTTP/1.1", headers, body)
                for path, headers in PUBLISH_CREDENTIALS
                for body in PUBLICATIONS
            ]
            fast, _ = self.compare(requests, api_key)
            self.assertTrue(fast.published)
            if api_key is not None:
                self.assertTrue(fast.guard.failures("192.168.1.64"))

    def test_repeated_parameter_first_counts(self):
        """
        A repeated query parameter counts by its first value, on both paths,
        as PiCloud's Go server and the WebSocket ports read it.
        """
        body = b'{"event": "e", "data": 1}'
        first_good = wire(b"POST /publish?clientName=a&apiKey=good&apiKey=bad HTTP/1.1", {}, body)
        first_bad = wire(b"POST /publish?clientName=a&apiKey=bad&apiKey=good HTTP/1.1", {}, body)
        fast, app = self.compare([first_good, first_bad], "good")
        self.assertIn(b" 201 ", fast.exchange(first_good))
        self.assertIn(b" 401 ", fast.exchange(first_bad))

    def test_dual_stack_peer_as_ipv4(self):
        """
        On a dual-stack listener an IPv4 peer comes as C{::ffff:a.b.c.d}:
        both paths log, publish and count it as the IPv4 address it is.
        """
        requests = [wire(b"POST /data HTTP/1.1", {}, b'{"id": "p", "value": 1}'),
                    wire(b"POST /publish?clientName=a&apiKey=good HTTP/1.1", {}, b'{"event": "e", "data": 1}'),
                    wire(b"POST /publish?clientName=a&apiKey=bad HTTP/1.1", {}, b'{"event": "e", "data": 1}')]
        fast, app = Server(self, True, "good"), Server(self, False, "good")
        for server in (fast, app):
            server.address = IPv6Address("TCP", "::ffff:192.168.1.64", 4000)
            for request in requests:
                server.exchange(request)
        self.assertEqual(fast.effects(), app.effects())
        self.assertEqual([peer for _, _, peer in fast.published], ["192.168.1.64"])
        self.assertIn("plug p -> 1 from 192.168.1.64", "\n".join(fast.logged))
        self.assertNotIn("::ffff:", "\n".join(fast.logged))
        self.assertEqual(fast.guard.failures("192.168.1.64"), 1)

    def test_banned_address(self):
        """
        From a banned address (a keep-alive connection that outlived the
        ban's start) a publication with the right key is not published by
        the ingest route: the app refuses it, 403, as without the fast
        routes (review finding 1).
        """
        request = wire(b"POST /publish?clientName=a&apiKey=good HTTP/1.1", {}, b'{"event": "e", "data": 1}')
        fast, app = Server(self, True, "good"), Server(self, False, "good")
        for server in (fast, app):
            server.guard.ban("192.168.1.64", 60)
        answer = fast.exchange(request)
        self.assertIn(b" 403 Forbidden", answer)
        self.assertEqual(answer, app.exchange(request))
        self.assertEqual(fast.published, [])
        self.assertEqual(fast.pool.calls, 1)

    def test_other_methods_and_paths(self):
        """
        Other methods on the ingest paths, and paths that only look like
        them, are the app's: same answers (405, 404, 200...).
        """
        body = REPORTS[0]
        requests = [
            wire(method + b" " + path + b" HTTP/1.1", {}, body)
            for method in (b"GET", b"PUT", b"HEAD", b"POST")
            for path in (b"/data", b"/data/", b"/data/x", b"/data?x=1", b"//data", b"/da%74a", b"/publish/x", b"/")
        ]
        self.compare(requests)


class ReactorThreadTests(SynchronousTestCase):
    """
    Which requests use a WSGI thread.
    """

    def test_valid_reports_and_publications_need_no_thread(self):
        """
        A valid report and a valid publication are answered without a WSGI
        thread; a refused one, and every other route, use one.
        """
        server = Server(self, True, api_key="k")
        self.assertIn(b" 200 OK", server.exchange(FIRMWARE_REQUEST))
        self.assertIn(b" 201 Created", server.exchange(wire(
            b"POST /publish?clientName=a&apiKey=k HTTP/1.1", {}, b'{"event": "e", "data": 1}')))
        self.assertEqual(server.pool.calls, 0)
        self.assertIn(b" 400 Bad Request", server.exchange(wire(b"POST /data HTTP/1.1", {}, b"{}")))
        self.assertIn(b" 401 Unauthorized", server.exchange(wire(
            b"POST /publish?clientName=a HTTP/1.1", {}, b'{"event": "e", "data": 1}')))
        self.assertIn(b" 200 OK", server.exchange(b"GET /plugs HTTP/1.1\r\n\r\n"))
        self.assertEqual(server.pool.calls, 3)

    def test_children(self):
        """
        Resources added by their first path segment (the dashboard, the
        metrics) are served beside the ingest routes and the app, which
        still sees whole paths.
        """
        extra = Resource()
        extra.putChild(b"page", Data(b"a page", "text/plain"))
        server = Server(self, True, children={b"extra": extra})
        self.assertTrue(server.exchange(b"GET /extra/page HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\na page"))
        self.assertIn(b" 200 OK", server.exchange(FIRMWARE_REQUEST))
        self.assertIn(b'"id": "0xb00bf0cc"', server.exchange(b"GET /plugs/0xb00bf0cc HTTP/1.1\r\n\r\n"))
        self.assertEqual(server.pool.calls, 1)


class PendingJournal(MemoryJournal):
    """
    A journal that commits when the test says so.
    """

    def __init__(self):
        super().__init__()
        self.pending = []

    def save_report(self, plug_id, value, at, source):
        saved = Deferred()
        self.pending.append(saved)
        return saved


class CommitTests(SynchronousTestCase):
    """
    With a state store, a report is answered once it is committed.
    """

    def setUp(self):
        self.journal = PendingJournal()
        self.server = Server(self, True, journal=self.journal)

    def test_answered_after_commit(self):
        """
        No answer before the journal has the report; 200 after.
        """
        channel, transport = self.server.connect()
        channel.dataReceived(FIRMWARE_REQUEST)
        self.assertEqual(transport.value(), b"")
        self.journal.pending.pop().callback(None)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(transport.value().endswith(b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"))
        self.assertEqual(self.server.hub.plug("0xb00bf0cc").value, 1)

    def test_store_refusal(self):
        """
        A report the store refuses is answered 503 with the app's JSON
        error, and changes nothing.
        """
        channel, transport = self.server.connect()
        channel.dataReceived(FIRMWARE_REQUEST)
        self.journal.pending.pop().errback(StoreFailed("disk I/O error"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertTrue(transport.value().endswith(
            b'\r\n\r\n{"error": "state store cannot write: report not recorded"}'))
        self.assertIsNone(self.server.hub.plug("0xb00bf0cc"))

    def test_publication_refused(self):
        """
        A publication the store refuses is answered 503 with the app's JSON
        error, by the ingest route as by the Bottle app.
        """
        request = wire(b"POST /publish?clientName=pi&apiKey=good HTTP/1.1", {}, b'{"event": "e", "data": 1}')
        answers = []
        for fast in (True, False):
            server = Server(self, fast, api_key="good")
            server.publish_answer = None
            answers.append(server.exchange(request))
            self.assertEqual(len(server.published), 1)
        self.assertTrue(answers[0].startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answers[0])
        self.assertTrue(answers[0].endswith(b'\r\n\r\n{"error": "state store cannot write: publication not recorded"}'))
        self.assertEqual(answers[0], answers[1])

    def test_peer_gone_before_commit(self):
        """
        The firmware closes before it reads: the report is still taken once
        committed, and nothing is written to the closed connection.
        """
        channel, transport = self.server.connect()
        channel.dataReceived(FIRMWARE_REQUEST)
        channel.connectionLost(Failure(ConnectionDone()))
        self.journal.pending.pop().callback(None)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.server.hub.plug("0xb00bf0cc").value, 1)
        self.assertEqual(self.flushLoggedErrors(), [])
