"""
The shared WebSocket server protocol (smartplug_backend.ws.base): how prepared
messages are sent, and the limits
every WebSocket listener shares (SPEC 6.3): message and frame size, handshake
size, the handshake deadline.
"""

import json
from urllib.parse import quote

import txaio
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.hub import Hub
from smartplug_backend.core.limits import MAX_HANDSHAKE, MAX_MESSAGE, MAX_UNSENT, WS_HANDSHAKE_TIMEOUT
from smartplug_backend.ws.apps import AppFactory

from .helpers import accept, quiet, raw_handshake, ws_connect

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: localhost:9001\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
TOO_BIG = WebSocketProtocol.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG

class PreparedMessageTests(SynchronousTestCase):
    """
    L{LenientServerProtocol.sendPreparedMessage} writes the prepared frame
    itself, keeps Autobahn's ordering when a send is queued, and still counts
    what a full transport leaves unsent.
    """

    def test_nothing_after_close_frame(self):
        """
        A broadcast that comes while a connection is closing sends nothing:
        no data frame may follow the close frame.
        """
        factory = AppFactory(Hub())
        client, server, pump = ws_connect(factory)
        server.sendClose()
        sent = len(b"".join(server.transport.stream))
        server.sendPreparedMessage(factory.prepareMessage(b'{"id": "a", "value": 1}'))
        self.assertEqual(len(b"".join(server.transport.stream)), sent)
        pump.flush()
        self.assertEqual(client.messages, [])

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


class OutgoingSizeTests(SynchronousTestCase):
    """
    The 64 KiB limit is for what peers send: the server's own messages go
    out whatever their size (the info frame, the dashboard's snapshot,
    replayed publications).
    """

    def test_large_message_sent(self):
        """
        A message of 200 KiB sent with sendMessage arrives whole, and the
        connection stays open and still refuses an oversized message.
        """
        factory = AppFactory(Hub())
        client, server, pump = ws_connect(factory)
        big = b"x" * (200 * 1024)
        server.sendMessage(big)
        pump.flush()
        self.assertEqual(client.messages, [big])
        self.assertIsNone(client.closed)
        client.sendMessage(b" " * (MAX_MESSAGE + 1))
        pump.flush()
        self.assertEqual(client.closed[0], TOO_BIG)

    def test_send_after_close_is_quiet(self):
        """
        A message sent while the connection closes is dropped, not raised
        (an info frame's timer may fire in between).
        """
        factory = AppFactory(Hub())
        client, server, pump = ws_connect(factory)
        server.sendClose()
        server.sendMessage(b"late")
        pump.flush()
        self.assertEqual(client.messages, [])


class PacedTransport:
    """
    Makes an iosim server transport behave like TCP's for its producer: it
    pauses the producer once C{limit} bytes were written since the last
    drain; L{drain} delivers them and resumes it.
    """

    def __init__(self, server, pump, limit=64 * 1024):
        self.transport = server.transport
        self.pump = pump
        self.limit = limit
        self.pending = 0
        self.paused = False
        write = self.transport.write

        def paced_write(data):
            write(data)
            self.pending += len(data)
            if self.pending > self.limit and not self.paused:
                self.paused = True
                self.transport.producer.pauseProducing()

        self.transport.write = paced_write

    def drain(self) -> None:
        self.pump.flush()
        self.pending = 0
        if self.paused:
            self.paused = False
            self.transport.producer.resumeProducing()


class SendFirstTests(SynchronousTestCase):
    """
    L{LenientServerProtocol.send_first}: a replay goes out as the peer
    reads it, not counted as unsent, ahead of what is sent meanwhile.
    """

    def setUp(self):
        self.factory = AppFactory(Hub())
        self.client, self.server, self.pump = ws_connect(self.factory)
        self.paced = PacedTransport(self.server, self.pump)

    def test_replay_larger_than_unsent_limit(self):
        """
        A replay of 6 MB reaches a peer that reads, whole and in order, with
        live messages sent during it after it; the peer is not cut off.
        """
        replay = [b"%03d" % n + b"r" * 60000 for n in range(100)]
        self.server.send_first(replay)
        self.assertFalse(self.server.transport.disconnecting)
        self.server.sendMessage(b"live 1")
        self.factory.send_to_all([self.server], b"live 2")
        for _ in range(200):
            self.paced.drain()
        self.assertEqual(self.client.messages, replay + [b"live 1", b"live 2"])
        self.assertEqual(self.factory.slow_dropped, 0)
        self.assertIsNone(self.client.closed)

    def test_peer_not_reading_is_cut_off(self):
        """
        A peer that reads nothing during its replay is cut off once what is
        sent meanwhile passes the unsent limit; the replay's rest is dropped.
        """
        self.server.send_first([b"r" * 60000] * 100)
        prepared = self.factory.prepareMessage(b"x" * 60 * 1024)
        for _ in range(MAX_UNSENT // (60 * 1024) + 1):
            self.server.sendPreparedMessage(prepared)
        self.assertTrue(self.server.transport.disconnecting)
        self.assertEqual(self.factory.slow_dropped, 1)
        self.assertIsNone(self.server._backlog)

    def test_nothing_written_once_closing(self):
        """
        Once the connection is closing, the rest of a replay is not written.
        """
        self.server.send_first([b"r" * 60000] * 10)
        self.server.sendClose()
        written = len(b"".join(self.server.transport.stream))
        self.paced.transport.producer.resumeProducing()
        self.assertEqual(len(b"".join(self.server.transport.stream)), written)


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
        self.assertNotIn("_text_headers", vars(server))
        client.sendMessage(b'{"status": "lamp"}')
        pump.flush()
        hub.report("lamp", 0, "http", "192.168.1.64")
        pump.flush()
        self.assertEqual(client.texts(), ['{"id": "lamp", "value": 1}', '{"id": "lamp", "value": 0}'])


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


class GoingAwayTests(SynchronousTestCase):
    """
    When the server stops, every WebSocket connection is closed with 1001
    (L{LimitedServerFactory.go_away}, run by L{GoingAway}).
    """

    def setUp(self):
        self.clock = Clock()
        self.factory = AppFactory(Hub(), clock=self.clock)

    def test_open_ones_closed_with_1001(self):
        """
        Open connections get a close frame with 1001 and the reason; once
        they have answered and ended, the Deferred fires, with nothing left
        to wait for.
        """
        pairs = [ws_connect(self.factory)[::2] for _ in range(2)]
        self.assertEqual(len(self.factory.connections), 2)
        done = self.factory.go_away(2.0)
        for _, pump in pairs:
            pump.flush()
        self.assertEqual([client.closed for client, _ in pairs], [(1001, "server going away")] * 2)
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_silent_peer_dropped_after_timeout(self):
        """
        A peer that does not answer the close is dropped after the timeout,
        and the Deferred fires then; one still in its opening handshake is
        dropped at once.
        """
        open_one, open_transport = raw_handshake(self.factory, HANDSHAKE)
        self.assertIn(b"101 Switching Protocols", open_transport.value())
        opening, opening_transport = accept(self.factory)
        open_transport.clear()
        done = self.factory.go_away(2.0)
        self.assertEqual(open_transport.value(), b"\x88\x13\x03\xe9server going away")
        self.assertTrue(opening_transport.disconnecting)
        self.assertNoResult(done)
        self.clock.advance(2.0)
        self.assertIsNone(self.successResultOf(done))
        self.assertTrue(open_transport.disconnecting)

    def test_nothing_open(self):
        """
        With no connection there is nothing to wait for.
        """
        self.assertIsNone(self.successResultOf(self.factory.go_away(2.0)))

    def test_service_logs_and_waits(self):
        """
        L{GoingAway} says how many it closes and stops once they have
        ended; with none it says nothing.
        """
        from smartplug_backend.server.services import GoingAway

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service = GoingAway([self.factory], 2.0)
        service.startService()
        self.assertIsNone(service.stopService())
        client, _, pump = ws_connect(self.factory)
        service.startService()
        stopping = service.stopService()
        self.assertNoResult(stopping)
        pump.flush()
        self.successResultOf(stopping)
        self.assertEqual(client.closed, (1001, "server going away"))
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "smartplug_backend"]
        self.assertEqual(lines, ["stopping: closing 1 WebSocket connection (1001 going away)"])


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

    def test_no_versions_to_strangers(self):
        """
        A plain GET (no Upgrade) is refused with 426 and a plain-text body,
        not Autobahn's HTML status page; neither it nor a 101 names the
        server software or its version.
        """
        server, transport = self.connect()
        server.dataReceived(b"GET /?redirect=http%3A%2F%2Fevil.example HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 426 "), answer)
        self.assertNotIn(b"Server:", answer)
        self.assertNotIn(b"utobahn", answer)
        self.assertNotIn(b"evil.example", answer)
        server, transport = self.connect()
        server.dataReceived(HANDSHAKE)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        self.assertNotIn(b"Server:", transport.value())

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


class HandshakeUTF8Tests(SynchronousTestCase):
    """
    An opening handshake with bytes that are not UTF-8 in its path, query or
    a header is refused with 400 and a text body naming the part (SPEC
    6.3); UTF-8 in them, sent as it is or escaped, reads as what it says.
    """

    def setUp(self):
        self.hub = Hub()
        self.factory = AppFactory(self.hub, clock=Clock())
        self.factory.setProtocolOptions(autoPingInterval=0)

    def handshake(self, target: bytes, header: bytes = b"") -> tuple:
        server, transport = accept(self.factory, "10.0.0.9")
        server.dataReceived(HANDSHAKE.replace(b"GET / ", b"GET " + target + b" ").replace(
            b"\r\n\r\n", b"\r\n" + header + b"\r\n\r\n" if header else b"\r\n\r\n"))
        return server, transport

    def test_refused(self):
        for target, header, why in [
            (b"/subscribe?clientName=a", b"X-Other: \xff\xfe", b"header X-Other is not UTF-8\n"),
            (b"/subscribe?clientName=k%FCche", b"", b"the query is not UTF-8\n"),
            (b"/subscribe?clientName=k\xfcche", b"", b"the query is not UTF-8\n"),
            (b"/sub%ffscribe", b"", b"the path is not UTF-8\n"),
            (b"/", b"X-API-Client-Name: k\xfcche", b"header X-API-Client-Name is not UTF-8\n"),
        ]:
            server, transport = self.handshake(target, header)
            answer = transport.value()
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
            self.assertTrue(answer.endswith(b"\r\n\r\n" + why), answer)
            self.assertTrue(transport.disconnecting)
            self.assertNotEqual(server.state, server.STATE_OPEN)
        self.assertEqual(json.loads(self.hub.pubsub.info_frame())["all_connections"], None)

    def test_utf8_names(self):
        """
        A client name in UTF-8, in the query as it is or escaped, or in the
        header, is the name the client gave (Autobahn alone reads the head
        as Latin-1: C{kÃ¼che}).
        """
        # Letters whose UTF-8 holds bytes Latin-1 text splits on: 0x85
        # (a line end) in "х" and "Å", 0xa0 (a space) in "à".
        names = ["küche", "Михаил", "Åsa", "cuisineà"]
        for name in names:
            for target, header in [
                (b"/subscribe?clientName=" + name.encode(), b""),
                (b"/subscribe?clientName=" + quote(name).encode(), b""),
                (b"/subscribe", b"X-API-Client-Name: " + name.encode()),
            ]:
                server, transport = self.handshake(target, header)
                self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value())
        listed = [c["client_name"] for c in json.loads(self.hub.pubsub.info_frame())["all_connections"]]
        self.assertEqual(listed, [name for name in names for _ in range(3)])

    def test_repeated_headers_joined(self):
        """
        A header sent twice reads as Autobahn reads it: both values, joined
        with ", ", so an API key sent twice is a wrong key.
        """
        self.factory = AppFactory(self.hub, api_key="kö", clock=Clock())
        self.factory.setProtocolOptions(autoPingInterval=0)
        key = "X-API-Key: kö".encode()
        server, transport = self.handshake(b"/subscribe?clientName=a", key)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value())
        server, transport = self.handshake(b"/subscribe?clientName=a", key + b"\r\n" + key)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "), transport.value())

    def test_malformed_request_line_not_quoted(self):
        """
        A request line of other than three words is refused without quoting
        it (Autobahn would, API key included, to the client and the log).
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for target in [b"/subscribe?apiKey=s3cret extra", b"/subscribe?apiKey=s3cret\x1fx",
                       b"/subscribe?apiKey=s3cret&clientName=a\x0b", b"/subscribe?apiKey=s3cret\x1cx"]:
            server, transport = self.handshake(target)
            answer = transport.value()
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
            self.assertTrue(answer.endswith(b"\r\n\r\nmalformed request line\n"), answer)
        said = [formatEvent(e) for e in events]
        self.assertTrue(any("malformed request line" in line for line in said), said)
        self.assertFalse([line for line in said if "s3cret" in line])

    def test_unparsed_target_not_quoted(self):
        """
        A target Autobahn cannot parse, or one with a fragment, is refused
        without its query or fragment (an API key) in the answer or the log.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for target in [b"http://[x/subscribe?apiKey=s3cret", b"/subscribe?clientName=a#apiKey=s3cret",
                       b"/subscribe?a=1#%61piKey=s3cret"]:
            server, transport = self.handshake(target)
            answer = transport.value()
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
            self.assertNotIn(b"s3cret", answer)
        said = [formatEvent(e) for e in events]
        self.assertEqual(len([line for line in said if "failing WebSocket opening handshake" in line]), 3, said)
        self.assertFalse([line for line in said if "s3cret" in line])


class PeerAddressTests(SynchronousTestCase):
    """
    How a peer is written in logs and in the info socket's C{ip_address}.
    """

    def test_as_picloud_writes_it(self):
        """
        C{"<ip>:<port>"} as Go's C{RemoteAddr} gives it: an IPv6 address in
        brackets, an IPv4 peer of a dual-stack listener as IPv4 (SPEC 3.4's
        C{ip_address} must split back into host and port).
        """
        from twisted.internet.address import IPv4Address, IPv6Address
        from twisted.internet.testing import StringTransport

        from smartplug_backend.ws.base import peer_address, peer_host

        for peer, address, host in (
            (IPv4Address("TCP", "10.0.0.7", 4000), "10.0.0.7:4000", "10.0.0.7"),
            (IPv6Address("TCP", "::1", 33862), "[::1]:33862", "::1"),
            (IPv6Address("TCP", "::ffff:127.0.0.1", 59948), "127.0.0.1:59948", "127.0.0.1"),
            (IPv6Address("TCP", "2001:db8::5", 1), "[2001:db8::5]:1", "2001:db8::5"),
        ):
            transport = StringTransport(peerAddress=peer)
            self.assertEqual((peer_address(transport), peer_host(transport)), (address, host))
        self.assertEqual((peer_address(None), peer_host(None)), ("?", "?"))
