"""
The device WebSocket (SPEC 2.1, 2.2) over in-memory connections, with a fake
clock for both timeouts.
"""


from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.display import Display
from smartplug_backend.core.hub import Hub
from smartplug_backend.core.limits import MAX_UNSENT
from smartplug_backend.server.guard import Guard
from smartplug_backend.ws.apps import AppFactory
from smartplug_backend.ws.devices import DeviceFactory

from .helpers import PEER, ws_connect

SECRET = "s3cret-ünïcode"


class DeviceTestCase(SynchronousTestCase):
    """
    A hub, a guard and a device factory sharing one fake clock.
    """

    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(now=self.clock.seconds)
        self.guard = Guard(self.clock, ban_after=3, ban_seconds=60)
        self.factory = DeviceFactory(self.hub, self.guard, SECRET, self.clock, auth_timeout=10, idle_timeout=30)
        self.hub.watch_display(self.factory.send_packet)

    def connect(self, peer=PEER):
        client, server, pump = ws_connect(self.factory, peer=peer)
        self.assertTrue(client.opened)
        return client, server, pump

    def send(self, connection, payload, isBinary=False):
        client, _, pump = connection
        client.sendMessage(payload, isBinary=isBinary)
        pump.flush()

    def authenticated(self, peer=PEER):
        connection = self.connect(peer)
        self.send(connection, SECRET.encode("utf-8"))
        self.assertEqual(connection[0].texts()[:1], ["ok"])
        return connection

    def wait(self, connection, seconds):
        """
        Let C{seconds} pass in one-second steps, moving bytes after each.
        """
        for _ in range(seconds):
            self.clock.advance(1)
            connection[2].flush()

    def assertRefused(self, connection):
        """
        The connection was closed with 1008 after nothing but the close, and
        one failure was counted for its address.
        """
        client, server, _ = connection
        self.assertEqual(client.messages, [])
        self.assertEqual(client.closed[0], 1008)
        self.assertNotIn(server, self.factory.devices)
        self.assertEqual(self.guard.failures(PEER), 1)


class HandshakeTests(DeviceTestCase):
    """
    SPEC 2.1: the secret first, within DEVICE_AUTH_TIMEOUT.
    """

    def test_secret(self):
        """
        The right secret gets C{ok} and at once the current display packet,
        and the device joins the authenticated set; no failure is counted.
        """
        client, server, _ = self.authenticated()
        self.assertEqual(client.texts(), ["ok", "[cc:0:?:?]"])
        self.assertIsNone(client.closed)
        self.assertEqual(self.factory.devices, {server})
        self.assertEqual(self.guard.failures(PEER), 0)

    def test_no_packet_while_display_unknown(self):
        """
        While the node has not loaded its state (a shared store unreachable
        at start), a device gets C{ok} and no display packet: the lamp keeps
        what it shows rather than being switched off.
        """
        self.hub.display_known = False
        client, _, _ = self.authenticated()
        self.assertEqual(client.texts(), ["ok"])

    def test_secret_gets_current_packet(self):
        """
        A device that authenticates after the display was set gets that
        state's packet.
        """
        self.hub.set_display(Display(1, weather=3, intensity=9), "test")
        client, _, _ = self.authenticated()
        self.assertEqual(client.texts(), ["ok", "[cc:1:3:9]"])

    def test_wrong_secret(self):
        """
        A wrong secret is closed with 1008, nothing else sent, one failure.
        """
        connection = self.connect()
        self.send(connection, b"s3cret")
        self.assertRefused(connection)

    def test_other_first_message(self):
        """
        Any other first message, even C{ping} or a plug report, is refused
        the same way, and the report is not acted on.
        """
        for first in [b"ping", b'{"id": "x", "value": 1}', b""]:
            self.clock.advance(60)  # the guard forgets the previous failure
            connection = self.connect()
            self.send(connection, first)
            self.assertRefused(connection)
        self.assertIsNone(self.hub.plug("x"))

    def test_binary_secret(self):
        """
        The secret's bytes in a binary frame are refused.
        """
        connection = self.connect()
        self.send(connection, SECRET.encode("utf-8"), isBinary=True)
        self.assertRefused(connection)

    def test_timeout(self):
        """
        A device that sends nothing for DEVICE_AUTH_TIMEOUT seconds is closed
        with 1008 and counted as a failure; a second before, it is still open.
        """
        connection = self.connect()
        self.wait(connection, 9)
        self.assertIsNone(connection[0].closed)
        self.wait(connection, 1)
        self.assertRefused(connection)

    def test_secret_just_in_time(self):
        """
        The secret a second before the timeout is accepted, and the auth
        timeout does not fire afterwards.
        """
        connection = self.connect()
        self.wait(connection, 9)
        self.send(connection, SECRET.encode("utf-8"))
        self.wait(connection, 5)
        self.assertEqual(connection[0].texts(), ["ok", "[cc:0:?:?]"])
        self.assertIsNone(connection[0].closed)

    def test_ping_frames_before_secret(self):
        """
        Before the secret a ping frame gets no pong and does not put off the
        timeout.
        """
        connection = self.connect()
        self.wait(connection, 5)
        connection[0].sendPing(b"hi")
        self.wait(connection, 5)
        self.assertEqual(connection[0].pongs, [])
        self.assertRefused(connection)

    def test_nothing_after_refusal(self):
        """
        Messages that follow a wrong secret (even the right secret) get
        nothing: the refusal stands.
        """
        client, _, pump = connection = self.connect()
        client.sendMessage(b"wrong")
        client.sendMessage(SECRET.encode("utf-8"))
        client.sendMessage(b"ping")
        pump.flush()
        self.assertRefused(connection)

    def test_bans_after_three(self):
        """
        Three refused devices from one address ban it.
        """
        for _ in range(3):
            self.send(self.connect(), b"wrong")
        self.assertTrue(self.guard.banned(PEER))

    def test_banned_secret_not_checked(self):
        """
        On a connection opened before its address was banned, even the
        right secret is refused (1008) without being checked, and counted
        as a failure during the ban: connections opened beforehand are no
        extra guesses.  Once the ban is lifted the secret works again.
        """
        early = self.connect()
        self.guard.ban(PEER, 60)
        with capturedLogs() as events:
            self.send(early, SECRET.encode("utf-8"))
        client, server, _ = early
        self.assertEqual(client.messages, [])
        self.assertEqual(client.closed[0], 1008)
        self.assertNotIn(server, self.factory.devices)
        self.assertIn(
            f"authentication failure from {PEER} during its ban: device port: secret refused, not checked",
            [formatEvent(e) for e in events],
        )
        self.guard.lift(PEER, "test")
        self.authenticated()

    def test_broken_first_message_counts(self):
        """
        A first message over the limit, which Autobahn refuses itself (1009,
        SPEC 6.3), counts as a failure too, as anything but the secret does
        (SPEC 2.1).
        """
        client, _, pump = self.connect()
        client.sendMessage(b"x" * (64 * 1024 + 1))
        pump.flush()
        self.assertEqual(client.closed[0], 1009)
        self.assertEqual(self.guard.failures(PEER), 1)
        self.assertIn("broken first message (code 1009)", self.guard.recent_failures()[-1].reason)

    def test_first_message_not_utf8(self):
        """
        A first text message that is not UTF-8 is closed with 1008 and
        counted, as any wrong secret (SPEC 2.1), not with Autobahn's 1007.
        """
        client, _, pump = self.connect()
        client.sendMessage(b"\xff\xfe")
        pump.flush()
        self.assertEqual(client.closed, (1008, "authentication failed"))
        self.assertEqual(client.messages, [])
        self.assertEqual(self.guard.failures(PEER), 1)
        self.assertIn("wrong secret", self.guard.recent_failures()[-1].reason)

    def test_text_not_utf8_after_secret_ignored(self):
        """
        After the secret a text message that is not UTF-8 is neither a ping
        nor a report: logged, counted as refused and ignored; the connection
        stays open (SPEC 2.2).
        """
        client, _, pump = self.authenticated()
        client.sendMessage(b'{"id": "\xff", "value": 1}')
        client.sendMessage(b"ping")
        pump.flush()
        self.assertIsNone(client.closed)
        self.assertEqual(client.messages[-1], b"pong")
        self.assertEqual(self.hub.plugs(), [])

    def test_server_stop_is_no_failure(self):
        """
        A device waiting for its secret when the server closes (going away,
        1001) is not counted.
        """
        client, server, pump = self.connect()
        server.sendCloseFrame(code=1001, isReply=False)
        pump.flush()
        self.assertEqual(self.guard.failures(PEER), 0)

    def test_leaving_is_no_failure(self):
        """
        A device that disconnects before sending anything is not counted as
        a failure, and its timer is cancelled.
        """
        client, _, pump = self.connect()
        client.sendClose(1000)
        pump.flush()
        self.assertEqual(self.guard.failures(PEER), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_while_closing(self):
        """
        A device that closed by itself is not counted as a failure if the
        auth timeout fires before its connection is gone.
        """
        client, server, pump = self.connect()
        client.sendClose(1000)
        pump.pump()
        self.assertEqual(server.state, server.STATE_CLOSED)
        self.clock.advance(10)
        pump.flush()
        self.assertEqual(self.guard.failures(PEER), 0)

    def test_logs(self):
        """
        Connect, authentication, refusal and disconnect are logged with the
        address, and neither the secret nor a wrong attempt ever appears in
        the logs.
        """
        with capturedLogs() as events:
            self.send(self.connect(), b"my-guess-at-it")
            client, _, pump = self.authenticated()
            client.sendClose(1000)
            pump.flush()
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn(f"device connected from {PEER}", text)
        self.assertIn(f"device {PEER} authenticated", text)
        self.assertIn(f"device disconnected from {PEER}: refused (wrong secret)", text)
        self.assertIn(f"device disconnected from {PEER}: closed by the device (code 1000)", text)
        self.assertNotIn(SECRET, text)
        self.assertNotIn("s3cret", text)
        self.assertNotIn("my-guess-at-it", text)


class AuthenticatedTests(DeviceTestCase):
    """
    SPEC 2.2: after the secret.
    """

    def test_text_ping(self):
        """
        Text C{ping} gets text C{pong}.
        """
        connection = self.authenticated()
        self.send(connection, b"ping")
        self.assertEqual(connection[0].texts()[2:], ["pong"])

    def test_ping_frame(self):
        """
        A ping frame gets a pong frame with the same payload.
        """
        client, _, pump = self.authenticated()
        client.sendPing(b"beat")
        pump.flush()
        self.assertEqual(client.pongs, [b"beat"])

    def test_plug_report(self):
        """
        A JSON plug report is handled like POST /data: the hub records it
        with source "device" and the device's address, and app clients get
        the broadcast.
        """
        apps = AppFactory(self.hub)
        self.hub.listen(apps.broadcast)
        reports = []
        self.hub.listen(reports.append)
        app, _, app_pump = ws_connect(apps, peer="192.168.1.80")
        self.send(self.authenticated(), b'{"id": "0xb00bf0cc", "value": true}')
        app_pump.flush()
        self.assertEqual(app.texts(), ['{"id": "0xb00bf0cc", "value": 1}'])
        self.assertEqual([(r.plug.id, r.plug.value, r.source, r.peer) for r in reports], [("0xb00bf0cc", 1, "device", PEER)])

    def test_other_messages_ignored(self):
        """
        Invalid reports, other text and binary messages are logged and
        ignored; the connection stays open and still answers.
        """
        connection = self.authenticated()
        with capturedLogs() as events:
            for payload in [b"hello", b"{", b'{"id": "x", "value": 5}', b"[1]", b"PING"]:
                self.send(connection, payload)
            self.send(connection, b"\x00\x01", isBinary=True)
            self.send(connection, b"ping")
        self.assertEqual(connection[0].texts()[2:], ["pong"])
        self.assertIsNone(connection[0].closed)
        self.assertIsNone(self.hub.plug("x"))
        ignored = [formatEvent(e) for e in events if "ignored device message" in formatEvent(e)]
        self.assertEqual(len(ignored), 6)
        self.assertIn("value must be 0 or 1", ignored[2])

    def test_idle_timeout(self):
        """
        A device silent for DEVICE_IDLE_TIMEOUT seconds is closed, and the
        log says why; a second before it is still open.
        """
        connection = self.authenticated()
        with capturedLogs() as events:
            self.wait(connection, 29)
            self.assertIsNone(connection[0].closed)
            self.clock.advance(1)
            # Closing: no display packet follows the close frame.
            self.assertEqual(self.factory.devices, set())
            connection[2].flush()
        self.assertEqual(connection[0].closed[0], 1000)
        self.assertIn(
            f"device disconnected from {PEER}: silent for 30 seconds",
            [formatEvent(e) for e in events],
        )
        # An idle device is not an authentication failure.
        self.assertEqual(self.guard.failures(PEER), 0)

    def test_frames_of_a_message_are_not_silence(self):
        """
        A device sending a long message in frames, each well within the
        idle timeout, is not idle (SPEC 2.2: "no frame of any kind"), though
        the message takes longer than the timeout to end.
        """
        connection = client, _, pump = self.authenticated()
        client.beginMessage()
        for part in [b'{"id": "x", ', b" ", b" "]:
            client.sendMessageFrame(part)
            pump.flush()
            self.wait(connection, 20)
        self.assertIsNone(client.closed)
        client.sendMessageFrame(b'"value": 1}')
        client.endMessage()
        pump.flush()
        self.assertEqual(self.hub.plug("x").value, 1)

    def test_one_frame_trickling_in_is_not_silence(self):
        """
        Nor is one frame whose bytes arrive slowly, each part well within
        the idle timeout.
        """
        client, server, pump = self.authenticated()
        payload = b'{"id": "y", "value": 1}' + b" " * 100
        # A client's frame: FIN and text, masked with a zero key (the
        # payload unchanged).
        frame = bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload
        for start in range(0, len(frame), 40):
            server.dataReceived(frame[start:start + 40])
            self.clock.advance(20)
            pump.flush()
        self.assertIsNone(client.closed)
        self.assertEqual(self.hub.plug("y").value, 1)

    def test_disconnect_reasons(self):
        """
        The log line of a disconnect says who closed and why: the server
        for a message over the limit (the device only echoes its code),
        the server for a device that does not read, and a lost connection
        without Autobahn's "None".
        """
        with capturedLogs() as events:
            client, _, pump = self.authenticated()
            client.sendMessage(b"x" * (64 * 1024 + 1))
            pump.flush()
            _, slow, pump = self.authenticated(peer="10.0.0.8")
            slow.transport.producer.pauseProducing()
            for _ in range(MAX_UNSENT // 60000 + 2):
                slow.sendMessage(b"x" * 60000)
            pump.flush()
            _, gone, _ = self.authenticated(peer="10.0.0.9")
            gone.onClose(False, 1006, None)
        lines = [formatEvent(e) for e in events if "device disconnected" in formatEvent(e)]
        self.assertEqual(len(lines), 3, lines)
        self.assertRegex(lines[0], rf"^device disconnected from {PEER}: closed by the server \(code 1009: .+\)$")
        self.assertEqual(lines[1], "device disconnected from 10.0.0.8: too slow: over 1 MiB unsent; cut off")
        self.assertEqual(lines[2], "device disconnected from 10.0.0.9: connection lost")

    def test_idle_timeout_while_closing(self):
        """
        A device that closed by itself is logged as such even if the idle
        timeout fires before its connection is gone.
        """
        client, _, pump = self.authenticated()
        with capturedLogs() as events:
            client.sendClose(1000)
            pump.pump()
            self.clock.advance(30)
            pump.flush()
        self.assertIn(
            f"device disconnected from {PEER}: closed by the device (code 1000)",
            [formatEvent(e) for e in events],
        )

    def test_any_frame_keeps_alive(self):
        """
        A text message, a ping frame or a pong frame each restart the idle
        timeout.
        """
        client, _, pump = connection = self.authenticated()
        for keep_alive in [
            lambda: client.sendMessage(b"ping"),
            lambda: client.sendPing(b""),
            lambda: client.sendPong(b""),
            lambda: client.sendMessage(b"anything"),
        ]:
            self.wait(connection, 25)
            keep_alive()
            pump.flush()
        self.wait(connection, 29)
        self.assertIsNone(client.closed)
        self.wait(connection, 1)
        self.assertEqual(client.closed[0], 1000)

    def test_disconnect(self):
        """
        A device that goes leaves the authenticated set and leaves no timer.
        """
        client, _, pump = self.authenticated()
        client.sendClose(1000)
        pump.flush()
        self.assertEqual(self.factory.devices, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DisplayBroadcastTests(DeviceTestCase):
    """
    SPEC 2.3: display changes reach every authenticated device.
    """

    def test_every_device(self):
        """
        Two authenticated devices both get a new state's packet and a one-off
        command; a device still waiting for its secret gets neither.
        """
        first, second = self.authenticated(), self.authenticated("192.168.1.65")
        waiting = self.connect("192.168.1.66")
        self.hub.set_display(Display(2, color=(255, 65, 174), pulse=0), "test")
        self.hub.display_command("reset", "test")
        for _client, _, pump in (first, second, waiting):
            pump.flush()
        for client, _, _ in (first, second):
            self.assertEqual(client.texts()[2:], ["[cc:2:255,65,174:0]", "[cc:r:?:?]"])
        self.assertEqual(waiting[0].messages, [])

    def test_prepared_once(self):
        """
        A packet is framed once however many devices there are.
        """
        for n in range(3):
            self.authenticated(f"192.168.1.{70 + n}")
        prepared = []
        original = self.factory.prepareMessage
        self.patch(self.factory, "prepareMessage", lambda *a, **k: prepared.append(a) or original(*a, **k))
        self.hub.set_display(Display(), "test")
        self.assertEqual(prepared, [(b"[cc:0:?:?]",)])

    def test_no_devices(self):
        """
        With no device connected a display change sends nothing and fails
        nothing.
        """
        self.hub.set_display(Display(1, weather=1, intensity=1), "test")
        self.assertEqual(self.flushLoggedErrors(), [])


class DashboardViewTests(DeviceTestCase):
    """
    The devices as the dashboard sees them.
    """

    def test_connected_and_watched(self):
        """
        An authenticated device is listed with its address, since when and
        last heard; each change (authenticated, heard, gone) is told.
        """
        changes = []
        self.factory.watch(lambda: changes.append(self.clock.seconds()))
        connection = self.authenticated()
        [device] = self.factory.connected()
        self.assertTrue(device["address"].startswith(PEER + ":"))
        self.assertEqual((device["connected_at"], device["last_heard"]), (0, 0))
        self.wait(connection, 5)
        self.send(connection, b"ping")
        self.assertEqual(self.factory.connected()[0]["last_heard"], 5)
        connection[0].sendClose()
        connection[2].flush()
        self.assertEqual(self.factory.connected(), [])
        self.assertEqual(changes, [0, 5, 5])
