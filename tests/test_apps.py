"""
Tests for the app WebSocket (smartplug_backend.ws.apps), joined in memory with
iosim; no sockets.
"""

import base64
import hashlib

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.hub import Hub
from smartplug_backend.ws.apps import AppFactory

from .helpers import RecordingClient, http_client, raw_handshake, ws_connect

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


KEY = b"AQIDBAUGBwgJCgsMDQ4PEA=="


def upgrade_request(path: bytes, host_line: bytes = b"") -> bytes:
    """
    A minimal RFC 6455 opening handshake for C{path}, with C{host_line}
    (none by default).
    """
    return (
        b"GET " + path + b" HTTP/1.1\r\n" + host_line + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


class PlugBuddyTests(SynchronousTestCase):
    """
    The PlugBuddy protocol of SPEC 4.1.
    """

    def setUp(self):
        self.hub = Hub()
        self.factory = AppFactory(self.hub)
        self.hub.listen(self.factory.broadcast)

    def test_status_known_plug(self):
        """
        A status request for a known plug is answered on that connection only.
        """
        self.hub.report("0xb00bf0cc", 1, "http", "x")
        asker, _, pump = ws_connect(self.factory)
        other, _, other_pump = ws_connect(self.factory)
        asker.sendMessage(b'{"status": "0xb00bf0cc"}')
        pump.flush()
        other_pump.flush()
        self.assertEqual(asker.messages, [b'{"id": "0xb00bf0cc", "value": 1}'])
        self.assertEqual(other.messages, [])

    def test_status_unknown_plug_is_silent(self):
        """
        An unknown id gets no answer and the connection stays open.
        """
        client, _, pump = ws_connect(self.factory)
        client.sendMessage(b'{"status": "nobody"}')
        pump.flush()
        self.assertEqual(client.messages, [])
        self.assertIsNone(client.closed)

    def test_broadcast_to_every_client(self):
        """
        Every report reaches every open app connection as the original's
        bytes, whatever they asked about.
        """
        clients = [ws_connect(self.factory) for _ in range(3)]
        self.hub.report("0xb00bf0cc", 1, "http", "x")
        self.hub.report("other", 0, "http", "x")
        for client, _, pump in clients:
            pump.flush()
            self.assertEqual(
                client.messages,
                [b'{"id": "0xb00bf0cc", "value": 1}', b'{"id": "other", "value": 0}'],
            )

    def test_broadcast_serialised_once(self):
        """
        A broadcast prepares its message once for all clients.
        """
        clients = [ws_connect(self.factory) for _ in range(3)]
        prepared = []
        original = self.factory.prepareMessage
        self.factory.prepareMessage = lambda *a, **kw: prepared.append(a) or original(*a, **kw)
        self.hub.report("p", 1, "http", "x")
        self.assertEqual(len(prepared), 1)
        for client, _, pump in clients:
            pump.flush()
            self.assertEqual(len(client.messages), 1)

    def test_malformed_messages_ignored(self):
        """
        Binary, non-JSON, non-object and wrongly typed messages are logged and
        ignored; the connection stays open and still answers.
        """
        self.hub.report("p", 0, "http", "x")
        client, _, pump = ws_connect(self.factory)
        for bad in [b"hello", b"[1, 2]", b'{"status": 5}', b'{"foo": "p"}', b"[" * 5000]:
            client.sendMessage(bad)
        client.sendMessage(b"\x00\x01", isBinary=True)
        client.sendMessage(b'{"status": "p"}')
        pump.flush()
        self.assertEqual(client.messages, [b'{"id": "p", "value": 0}'])
        self.assertIsNone(client.closed)

    def test_closed_clients_forgotten(self):
        """
        A closed connection no longer receives broadcasts.
        """
        client, _, pump = ws_connect(self.factory)
        self.assertEqual(len(self.factory.clients), 1)
        client.sendClose()
        pump.flush()
        self.assertEqual(self.factory.clients, set())
        self.hub.report("p", 1, "http", "x")

    def test_disconnect_says_who_closed(self):
        """
        The disconnect's log line says who closed: the app, or the server
        for what the app broke (text that is not UTF-8: 1007, though the
        app only echoes that code).
        """
        from twisted.logger import capturedLogs, formatEvent

        with capturedLogs() as events:
            client, _, pump = ws_connect(self.factory)
            client.sendClose(1000)
            pump.flush()
            broken, _, pump = ws_connect(self.factory, port=50002)
            broken.sendMessage(b"\xff\xfe")
            pump.flush()
        lines = [formatEvent(e) for e in events if "app disconnected" in formatEvent(e)]
        self.assertEqual(lines[0], "app disconnected from 192.168.1.64: closed by the app (code 1000)")
        self.assertRegex(lines[1], r"^app disconnected from 192\.168\.1\.64: closed by the server \(code 1007: .+\)$")

    def test_post_reaches_websocket_client(self):
        """
        A POST /data through the real Site and WSGIResource reaches an app
        client connected to the same hub.
        """
        client, _, pump = ws_connect(self.factory)
        http = http_client(self.hub)
        response = self.successResultOf(http.post("http://x/data", data=b'{"id": "0xb00bf0cc", "value": 1}'))
        self.assertEqual(response.code, 200)
        pump.flush()
        self.assertEqual(client.messages, [b'{"id": "0xb00bf0cc", "value": 1}'])


class HandshakeTests(SynchronousTestCase):
    """
    Clients with unusual opening handshakes connect (SPEC 4.1).
    """

    def setUp(self):
        self.hub = Hub()
        self.factory = AppFactory(self.hub)

    def assertUpgraded(self, request: bytes, key: bytes):
        server, transport = raw_handshake(self.factory, request)
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 101 "), answer[:200])
        self.assertIn(b"Sec-WebSocket-Accept: " + accept_for(key), answer)
        self.assertIn(server, self.factory.clients)
        return server, transport

    def test_autobahn_android_0_5_0(self):
        """
        The handshake of Autobahn|Android 0.5.0, whose key line ends with the
        LF that Android's Base64.DEFAULT appends, upgrades; broadcasts reach it.
        """
        key = b"dGhlIHNhbXBsZSBub25jZQ=="
        request = (
            b"GET / HTTP/1.1\r\nHost: 192.168.1.10:9001\r\nUpgrade: WebSocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\n\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        server, transport = self.assertUpgraded(request, key)
        transport.clear()
        self.hub.listen(self.factory.broadcast)
        self.hub.report("0xb00bf0cc", 0, "http", "x")
        payload = b'{"id": "0xb00bf0cc", "value": 0}'
        self.assertEqual(transport.value(), b"\x81" + bytes([len(payload)]) + payload)

    def test_host_with_other_port(self):
        """
        A Host header naming another port (a port-forward) is accepted.
        """
        self.assertUpgraded(upgrade_request(b"/", b"Host: home.example.org:443\r\n"), KEY)

    def test_no_host_header(self):
        """
        A handshake without any Host header is accepted.
        """
        self.assertUpgraded(upgrade_request(b"/ws"), KEY)

    def test_handshake_in_pieces(self):
        """
        A Host-less handshake arriving in small pieces is accepted too.
        """
        request = upgrade_request(b"/")
        server, transport = raw_handshake(self.factory, request[:7])
        for i in range(7, len(request), 5):
            server.dataReceived(request[i : i + 5])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))


class DeafClient(RecordingClient):
    """
    A client that never answers a ping, as PiCloud's Python client does
    (it does not read its publish socket; its subscriber reads when asked).
    """

    def onPing(self, payload):
        self.pings = getattr(self, "pings", 0) + 1


class ClockTimer:
    """
    txaio's batched timer interface on a L{Clock}.
    """

    def __init__(self, clock):
        self.call_later = clock.callLater


class PingTests(SynchronousTestCase):
    """
    Who gets WebSocket pings (SPEC 3.5): PlugBuddy connections (Autobahn
    clients answer them) are pinged every 60 s and dropped 30 s after an
    unanswered one; PiCloud's routes are never pinged, so a client that
    never reads keeps its connection through any silence.
    """

    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(now=self.clock.seconds)
        self.factory = AppFactory(self.hub, clock=self.clock)
        # Autobahn runs its ping timers on a batched timer of the global
        # reactor (txaio's); these run on the test's clock.
        self.factory._batched_timer = ClockTimer(self.clock)
        self.hub.pubsub.deliver_with(self.factory.send_to_all)

    def connect(self, path):
        return ws_connect(self.factory, path, client_protocol=DeafClient, quiet_server=False)

    def advance(self, seconds, *pumps):
        for _ in range(seconds):
            self.clock.advance(1)
            for pump in pumps:
                pump.flush()

    def test_quiet_picloud_clients_stay(self):
        """
        After an hour of silence a subscriber and a publisher that never
        answer pings are still connected, were never pinged, and a
        publication still goes through; a deaf PlugBuddy connection was
        dropped after 90 s.
        """
        sub, _, sub_pump = self.connect("/subscribe?clientName=sensor")
        pub, _, pub_pump = self.connect("/publish?clientName=sensor")
        info, _, info_pump = self.connect("/socket/info")
        app, _, app_pump = self.connect("/")
        sub.sendMessage(b'{"action": "subscribe", "event": "temperature"}')
        sub_pump.flush()
        self.advance(89, sub_pump, pub_pump, info_pump, app_pump)
        self.assertIsNone(app.closed)
        self.assertEqual(getattr(app, "pings", 0), 1)
        self.advance(3600, sub_pump, pub_pump, info_pump, app_pump)
        self.assertIsNotNone(app.closed)
        for client in (sub, pub, info):
            self.assertIsNone(client.closed)
            self.assertEqual(getattr(client, "pings", 0), 0)
        pub.sendMessage(b'{"event": "temperature", "data": "21.5"}')
        pub_pump.flush()
        sub_pump.flush()
        self.assertEqual([m["data"] for m in sub.json()], ["21.5"])
        for client, pump in [(sub, sub_pump), (pub, pub_pump), (info, info_pump)]:
            client.sendClose()
            pump.flush()
