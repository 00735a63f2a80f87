"""
Property-based tests (hypothesis): generated JSON and bytes thrown at POST
/data, the raw HTTP channel, the WebSocket handshake, the PlugBuddy
protocol, the device handshake and the pub/sub actions.  Whatever comes in:
no 500, no traceback or error logged, state unchanged by rejected input,
no timer or connection left behind, and the server still serving.
"""

import json
import re
import urllib.parse

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core import strictjson
from smartplug_backend.core.hub import Hub
from smartplug_backend.core.limits import MAX_HANDSHAKE
from smartplug_backend.core.pubsub import parse_publication
from smartplug_backend.core.reports import InvalidReport, parse_report
from smartplug_backend.http.api import make_app
from smartplug_backend.http.channel import make_site
from smartplug_backend.server.connections import ConnectionCap
from smartplug_backend.server.guard import Guard
from smartplug_backend.ws.apps import AppFactory
from smartplug_backend.ws.devices import DeviceFactory

from .helpers import PEER as WS_PEER
from .helpers import SYNC_BRIDGE, SynchronousReactor, SynchronousThreadPool, accept, http_client, ws_connect
from .strategies import (
    FIRMWARE_REQUEST,
    Problems,
    is_utf8,
    json_values,
    mutated,
    publisher_messages,
    report_bodies,
    subscriber_messages,
)

PEER_IP = "10.1.2.3"
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d\d\d) ")
SECRET = b"s3cret"


def expected_report(body: bytes):
    """
    What the hub should record for C{body}: C{(id, value)}, or C{None} when
    it must be refused.
    """
    try:
        return parse_report(body)
    except InvalidReport:
        return None


def snapshot(hub: Hub):
    return [(p.id, p.value) for p in hub.plugs()], hub.display(), hub.pubsub.subscriptions()


def pieces(data: bytes, cuts: list) -> list:
    """
    C{data} split at the offsets C{cuts} (as the network may split it).
    """
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


class HTTPProperties(SynchronousTestCase):
    """
    POST /data and the raw HTTP channel under generated input.
    """

    def setUp(self):
        self.problems = Problems(self)

    def assertNoProblems(self):
        self.assertEqual(self.problems.take(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    @given(report_bodies)
    def test_post_data(self, body):
        """
        POST /data with any body is answered 200 (and recorded) exactly when
        it is a valid report, else 400 with a JSON error and the state
        unchanged; never a 500, never a logged problem; a valid report is
        still served afterwards.
        """
        hub = Hub()
        client = http_client(hub)
        hub.report("known", 1, "test", "x")
        before = snapshot(hub)
        response = self.successResultOf(client.post("http://x/data", data=body))
        answer = self.successResultOf(response.content())
        expected = expected_report(body)
        if expected is None:
            self.assertEqual(response.code, 400, answer)
            self.assertIsInstance(json.loads(answer)["error"], str)
            self.assertEqual(snapshot(hub), before)
        else:
            self.assertEqual((response.code, answer), (200, b"{}"))
            self.assertEqual((hub.plug(expected[0]).id, hub.plug(expected[0]).value), expected)
        response = self.successResultOf(client.post("http://x/data", data=b'{"id": "after", "value": 0}'))
        self.assertEqual(response.code, 200)
        self.assertNoProblems()

    @given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=128)
           .filter(lambda plug_id: not plug_id.endswith("/history")))
    @example("line\nbreak")
    @example("x\r\n")
    @example("\n")
    @example("x/history\n")
    @example("a\n/history\n")
    @example("kitchen/kettle")
    @example("50%")
    @example("..")
    @example("?")
    def test_any_id_reads_back(self, plug_id):
        """
        Any id a report may use reads back at GET /plugs/<id> and
        /plugs/<id>/history, escaped: line breaks, slashes, "%", dots and
        anything else.  (An id ending in "/history" is the one exception:
        its path is the history of the id before it.)
        """
        hub = Hub()
        client = http_client(hub)
        body = json.dumps({"id": plug_id, "value": 1}).encode()
        self.assertEqual(self.successResultOf(client.post("http://x/data", data=body)).code, 200)
        path = "http://x/plugs/" + urllib.parse.quote(plug_id, safe="")
        response = self.successResultOf(client.get(path))
        answer = self.successResultOf(response.content())
        self.assertEqual((response.code, json.loads(answer)["id"]), (200, plug_id), answer)
        response = self.successResultOf(client.get(path + "/history"))
        answer = self.successResultOf(response.content())
        self.assertEqual((response.code, [e["value"] for e in json.loads(answer)]), (200, [1]), answer)
        self.assertNoProblems()

    @given(
        st.one_of(
            mutated(FIRMWARE_REQUEST),
            mutated(FIRMWARE_REQUEST.replace(b"\n", b"\r\n")),
            mutated(b"GET /plugs/%ff%fe?apiKey=%ff HTTP/1.1\r\nHost: x\r\n\r\n"),
            st.binary(max_size=300),
            report_bodies.map(lambda b: b"POST /data HTTP/1.1\nContent-Length: %d\n\n%s" % (len(b), b)),
        ),
        st.lists(st.integers(min_value=0, max_value=400), max_size=5),
    )
    # Found by this test: twisted.web went on parsing after its own 400, and
    # answered twice or wrote to a finished request.
    @example(
        b'OST /data HTTP/1.1\nHost: craplab.local\x00Connection: close\nContent-Type:\x00application/json\n'
        b'Content-Length: 32\n\n{"id": "0xb00bf0cc", "value": 1}',
        [88],
    )
    @example(
        b'OST /data HTTP/1.1\nHost: craplab.local\nConnection: close\x00Content-Type: application/json\n'
        b'ontent-Length: 32\n\n{"id": "0xb00bf0cc", "value": 1}',
        [106],
    )
    def test_raw_channel(self, data, cuts):
        """
        Any bytes, in any pieces, on the HTTP port: no 5xx answer, no logged
        problem, no timer left once the peer goes, the state unchanged
        unless a report was answered 200; the next connection is served.
        """
        hub = Hub()
        reactor = SynchronousReactor()
        cap = ConnectionCap(10, reactor)
        site = cap.wrap(make_site(make_app(hub, SYNC_BRIDGE), reactor, SynchronousThreadPool()))
        before = snapshot(hub)
        channel, transport = accept(site, PEER_IP)
        for piece in pieces(data, cuts):
            channel.dataReceived(piece)
        statuses = STATUS_LINE.findall(transport.value())
        self.assertFalse([s for s in statuses if s.startswith(b"5")], transport.value())
        # Whatever went wrong was answered once, last, as JSON.
        errors = [s for s in statuses if s.startswith(b"4")]
        if errors:
            self.assertEqual((len(errors), statuses[-1]), (1, errors[0]), transport.value())
            self.assertIn(b'{"error": ', transport.value())
        if b"200" not in statuses:
            self.assertEqual(snapshot(hub), before)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(cap.open, 0)
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.active()], [])

        channel, transport = accept(site, PEER_IP)
        channel.dataReceived(FIRMWARE_REQUEST)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertNoProblems()


    @given(
        st.sampled_from([
            b"GET /", b"POST /data", b"GET /plugs", b"GET /plugs/a", b"GET /plugs/a/history",
            b"GET /display", b"POST /display", b"POST /publish", b"POST /publish?clientName=c",
            b"GET /plugs/%ff", b"POST /publish?apiKey=%ff&clientName=%fe",
        ]),
        st.sampled_from([b"X-API-Key", b"X-API-Client-Name", b"Content-Type", b"Host", b"Origin", b"Cookie", b"X-Other"]),
        st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")).filter(bool),
    )
    @example(b"POST /display", b"X-API-Key", b"\xff\xfe\xc3(")
    @example(b"POST /publish?clientName=x", b"X-API-Key", b"\xff")
    @example(b"POST /publish?clientName=x", b"X-API-Client-Name", b"\xff\xfe")
    def test_any_bytes_in_a_header(self, request_line, header, value):
        """
        Any bytes in any header, on any route (SPEC 6.3): a 2xx or 4xx with
        a body, never a 5xx or a logged problem; a header that is not UTF-8
        gets 400 naming it, whatever the route, and counts toward no ban
        (no key was tried), as does a path or query that is not UTF-8.
        """
        hub = Hub()
        reactor = SynchronousReactor()
        guard = Guard(reactor)
        site = make_site(make_app(hub, SYNC_BRIDGE, guard=guard, api_key="k"), reactor, SynchronousThreadPool())
        channel, transport = accept(site, PEER_IP)
        body = b'{"id": "p", "value": 1, "event": "e", "mode": 0}'
        channel.dataReceived(
            request_line + b" HTTP/1.1\r\nHost: x\r\n" + header + b": " + value
            + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        status = STATUS_LINE.match(transport.value())
        self.assertIsNotNone(status, transport.value())
        self.assertIn(status.group(1)[:1], (b"2", b"4"), transport.value())
        if b"\0" in value:
            # twisted.web refuses the header line itself.
            expected = b"malformed HTTP request"
        elif b"%f" in request_line:
            expected = b"the (path|query) is not UTF-8"
        elif not is_utf8(value):
            # twisted.web spells header names its own way (X-Api-Key).
            expected = b"header (?i:%s) is not UTF-8" % re.escape(header)
        else:
            expected = None
        if expected is not None:
            self.assertEqual(status.group(1), b"400")
            self.assertRegex(transport.value(), rb'\{"error": "%s"\}$' % expected)
            self.assertEqual(guard.failures(PEER_IP), 0)
        self.assertNoProblems()


class WebSocketProperties(SynchronousTestCase):
    """
    The app and device WebSocket ports under generated input.
    """

    def setUp(self):
        self.problems = Problems(self)
        self.clock = Clock()
        self.hub = Hub(now=self.clock.seconds)
        self.apps = AppFactory(self.hub, clock=self.clock)
        self.hub.pubsub.deliver_with(self.apps.send_to_all)
        self.hub.listen(self.apps.broadcast)
        self.hub.report("known", 1, "test", "x")

    def assertNoProblems(self):
        self.assertEqual(self.problems.take(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def assertOpen(self, client):
        self.assertTrue(client.opened)
        self.assertIsNone(client.closed)

    @given(
        st.one_of(
            mutated(
                b"GET /subscribe?clientName=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
            st.binary(max_size=300).map(lambda b: b + b"\r\n\r\n"),
            st.binary(max_size=300),
        ),
        st.lists(st.integers(min_value=0, max_value=400), max_size=5),
        st.booleans(),
    )
    def test_handshake_bytes(self, data, cuts, device_port):
        """
        Any bytes as an opening handshake on the app or the device port, in
        any pieces: no 5xx answer (but Autobahn's 505 for a version other
        than HTTP/1.1), no logged problem, a bounded buffer, and no timer
        left once the peer goes.
        """
        cap = ConnectionCap(10, self.clock)
        if device_port:
            listener = DeviceFactory(self.hub, Guard(self.clock), SECRET.decode(), self.clock)
        else:
            listener = self.apps
        listener.setProtocolOptions(autoPingInterval=0)
        server, transport = accept(cap.wrap(listener), PEER_IP)
        for piece in pieces(data, cuts):
            server.dataReceived(piece)
        status = STATUS_LINE.match(transport.value())
        if status:
            self.assertFalse(status.group(1).startswith(b"5") and status.group(1) != b"505", transport.value()[:200])
        self.assertLessEqual(len(server.wrapped.data), MAX_HANDSHAKE + len(data))
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(cap.open, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.hub.pubsub.info_frame().count(b"10.1.2.3"), 0)
        self.assertNoProblems()

    @given(st.lists(st.one_of(report_bodies.map(lambda b: (b, True)), json_values.map(lambda v: (json.dumps(v).encode(), False))), max_size=6))
    def test_plugbuddy(self, messages):
        """
        Any messages on a PlugBuddy connection, binary or text: only a valid
        status request of a known plug is answered, the connection stays
        open, the state does not change, and a status request still works.
        """
        client, _, pump = ws_connect(self.apps)
        before = snapshot(self.hub)
        for payload, binary in messages:
            client.sendMessage(payload, isBinary=binary)
        pump.flush()
        self.assertOpen(client)
        expected = []
        for payload, binary in messages:
            message = None if binary else _loads(payload)
            if isinstance(message, dict) and message.get("status") == "known":
                expected.append(b'{"id": "known", "value": 1}')
        self.assertEqual(client.messages, expected)
        self.assertEqual(snapshot(self.hub), before)
        client.sendMessage(b'{"status": "known"}')
        pump.flush()
        self.assertEqual(client.messages[-1:], [b'{"id": "known", "value": 1}'])
        client.sendClose()
        pump.flush()
        self.assertNoProblems()

    def test_broken_utf8_text(self):
        """
        A text message of broken UTF-8 closes that connection with 1007
        (invalid payload), logs no problem, and others are still served.
        """
        client, _, pump = ws_connect(self.apps)
        other, _, other_pump = ws_connect(self.apps)
        client.sendMessage(b'{"status": "\xff"}')
        pump.flush()
        self.assertEqual(client.closed[0], 1007)
        self.hub.report("known", 0, "test", "x")
        other_pump.flush()
        self.assertEqual(other.messages, [b'{"id": "known", "value": 0}'])
        self.assertNoProblems()

    @given(st.lists(subscriber_messages, max_size=6), st.lists(publisher_messages, max_size=6))
    # What Python's own json let through (see test_strictjson), always tried.
    @example(
        [b'{"action": "subscribe", "event": "\\udfff"}'],
        [b'{"event": "e", "data": NaN}', b'{"event": "f", "data": [1e999]}', b'{"event": "\\udfff", "data": 1}'],
    )
    def test_pubsub(self, subscriptions, publications):
        """
        Any messages from a subscriber and a publisher: the registry holds
        exactly the valid subscriptions, the subscriber receives exactly the
        valid publications of its events, each frame strict JSON, and both
        connections stay open.
        """
        subscriber, sub_server, sub_pump = ws_connect(self.apps, "/subscribe?clientName=s")
        publisher, _, pub_pump = ws_connect(self.apps, "/publish?clientName=p")
        # Subscribed to the events the publications mostly use, so that
        # what they carry is delivered (or refused) and checked.
        events = {"e", "f"}
        for payload in [b'{"action": "subscribe", "event": "e"}', b'{"action": "subscribe", "event": "f"}'] + subscriptions:
            send(subscriber, payload)
            message = _loads(payload) if is_utf8(payload) else None
            if isinstance(message, dict):
                action, event = message.get("action"), message.get("event")
                if action == "unsubscribe:all":
                    events.clear()
                elif action in ("subscribe", "unsubscribe") and isinstance(event, str) and event:
                    (events.add if action == "subscribe" else events.discard)(event)
        sub_pump.flush()
        self.assertEqual({event for event, subs in self.hub.pubsub.subscriptions() if sub_server in subs}, events)
        expected = []
        for payload in publications:
            send(publisher, payload)
            try:
                event, data = parse_publication(_loads(payload) if is_utf8(payload) else None)
            except ValueError:
                continue
            if event in events:
                expected.append((event, data))
        pub_pump.flush()
        sub_pump.flush()
        received = [strictjson.loads(frame) for frame in subscriber.messages]
        self.assertEqual([(frame["event"], frame["data"]) for frame in received], expected)
        self.assertOpen(subscriber)
        self.assertOpen(publisher)
        self.assertNoProblems()

    @given(st.one_of(st.binary(max_size=40).map(lambda b: (b, True)), st.text(max_size=40).map(lambda t: (t.encode(), False)), st.just((SECRET, False))), st.lists(report_bodies, max_size=4))
    def test_device(self, first, messages):
        """
        Any first message on the device port: the secret gets C{ok} and the
        display packet, anything else a 1008 close, one failure counted and
        nothing sent; after the secret, any messages leave the connection
        open and change the state only for valid reports.
        """
        guard = Guard(self.clock, ban_after=1000)
        devices = DeviceFactory(self.hub, guard, SECRET.decode(), self.clock)
        device, _, pump = ws_connect(devices)
        payload, binary = first
        device.sendMessage(payload, isBinary=binary)
        pump.flush()
        if payload != SECRET or binary:
            self.assertEqual((device.messages, device.closed[0]), ([], 1008))
            self.assertEqual(guard.failures(WS_PEER), 1)
            self.assertNoProblems()
            return
        self.assertEqual(device.messages, [b"ok", b"[cc:0:?:?]"])
        plugs = dict((p.id, p.value) for p in self.hub.plugs())
        for body in messages:
            send(device, body)
            expected = expected_report(body) if is_utf8(body) else None
            if expected is not None:
                plugs[expected[0]] = expected[1]
        pump.flush()
        self.assertIsNone(device.closed)
        self.assertEqual(dict((p.id, p.value) for p in self.hub.plugs()), plugs)
        device.sendMessage(b"ping")
        pump.flush()
        self.assertEqual(device.messages[-1], b"pong")
        self.assertNoProblems()


def send(client, payload: bytes) -> None:
    """
    Send C{payload} as a text message if it is UTF-8, else as binary (a
    text frame of broken UTF-8 is closed with 1007 by the protocol itself:
    see L{WebSocketProperties.test_broken_utf8_text}).
    """
    client.sendMessage(payload, isBinary=not is_utf8(payload))


def _loads(payload: bytes):
    try:
        return strictjson.loads(payload)
    except strictjson.InvalidJSON:
        return None

