"""
End-to-end: the real C{twistd -n smartplug} with C{MQTT_URL} set, Debian's
mosquitto started by the test, and a paho client in Home Assistant's role.
"""

import json
import os
import signal

from twisted.trial.unittest import TestCase
from websockets.sync.client import connect as ws_connect

from smartplug_backend.core.display import Display
from smartplug_backend.integrations.homeassistant import Topics, display_message

from .certs import self_signed
from .mosquitto import connect_home_assistant, start_mosquitto
from .server import RunningServer, reserved_port, start_server
from .test_e2e import http
from .test_metrics_e2e import scrape, value

SECRET = "s3cret"
USER, PASSWORD = "smartplug", "mqtt-pa55word"
LISTENERS = ("HTTP", "app WebSocket", "device WebSocket")
PLUG_CONFIG = "homeassistant/binary_sensor/smartplug_0xb00bf0cc/config"
PLUG_STATE = "smartplug/plug/0xb00bf0cc/state"
CONFIGS = [
    "homeassistant/light/smartplug_display/config",
    "homeassistant/button/smartplug_display_reset/config",
    "homeassistant/button/smartplug_display_update/config",
]


def report(server, plug_id: str, value: int):
    return http(server.url("/data"), json.dumps({"id": plug_id, "value": value}).encode())


class HomeAssistantEndToEndTests(TestCase):
    """
    Discovery, state and commands through a real broker, with a password.
    """

    def setUp(self):
        self.broker = start_mosquitto(self, users={USER: PASSWORD, "ha": "ha-pw"})
        self.server = start_server(
            self, f"AUTH_SECRET = {SECRET!r}\nMQTT_URL = {self.broker.url(USER, PASSWORD)!r}\n", listeners=LISTENERS,
        )
        self.server.wait_for(r"MQTT: connected to mqtt://127\.0\.0\.1:\d+")

    def home_assistant(self):
        return connect_home_assistant(self, self.broker.port, user="ha", password="ha-pw")

    def device(self):
        device = ws_connect(f"ws://127.0.0.1:{self.server.ports['device WebSocket']}/", open_timeout=5)
        self.addCleanup(device.close)
        device.send(SECRET)
        self.assertEqual(device.recv(timeout=5), "ok")
        self.assertEqual(device.recv(timeout=5), "[cc:0:?:?]")
        return device

    def test_discovery_retained(self):
        """
        A plug's report makes its binary_sensor config and state appear,
        retained, for a Home Assistant that connects later, beside the light,
        the two buttons and our retained C{online}; the password never
        reaches the log.
        """
        self.assertEqual(report(self.server, "0xb00bf0cc", 1)[0], 200)
        self.server.wait_for(r"plug 0xb00bf0cc -> 1")
        # The log line comes before the broker has the messages: a client
        # that subscribes meanwhile gets some of them live, not retained.
        # Once a first one has seen the last, the broker holds them all.
        self.home_assistant().wait_for(PLUG_STATE)
        ha = self.home_assistant()
        config = ha.wait_for(PLUG_CONFIG)
        self.assertTrue(config.retain)
        fields = json.loads(config.payload)
        self.assertEqual(
            {k: fields[k] for k in ("unique_id", "device_class", "state_topic", "availability_topic",
                                    "payload_on", "payload_off", "payload_available", "payload_not_available")},
            {"unique_id": "smartplug_0xb00bf0cc", "device_class": "plug", "state_topic": PLUG_STATE,
             "availability_topic": "smartplug/status", "payload_on": "ON", "payload_off": "OFF",
             "payload_available": "online", "payload_not_available": "offline"},
        )
        self.assertEqual(fields["device"]["identifiers"], ["smartplug_0xb00bf0cc"])
        state = ha.wait_for(PLUG_STATE)
        self.assertEqual((state.payload, state.retain), (b"ON", True))
        status = ha.wait_for("smartplug/status")
        self.assertEqual((status.payload, status.retain), (b"online", True))
        for topic in CONFIGS:
            self.assertTrue(ha.wait_for(topic).retain, topic)
        light = json.loads(ha.wait_for(CONFIGS[0]).payload)
        self.assertEqual((light["schema"], light["command_topic"], light["state_topic"]),
                         ("json", "smartplug/display/set", "smartplug/display/state"))
        self.assertEqual(json.loads(ha.wait_for("smartplug/display/state").payload), {"state": "OFF"})

        # A later report changes the retained state.
        self.assertEqual(report(self.server, "0xb00bf0cc", 0)[0], 200)
        ha.wait_for(PLUG_STATE, b"OFF")
        later = self.home_assistant()
        self.assertEqual(later.wait_for(PLUG_STATE).payload, b"OFF")
        self.assertNotIn(PASSWORD, self.server.log())

    def test_command_reaches_device(self):
        """
        A colour command on C{display/set} reaches a connected lamp as its
        packet, the new state is published back and GET /display shows it;
        a button press sends the one-off packet; a bad command is ignored.
        """
        device = self.device()
        ha = self.home_assistant()
        ha.wait_for("smartplug/display/state")
        mark = ha.mark()
        ha.publish("smartplug/display/set", b"not json")
        ha.publish("smartplug/display/set", json.dumps({"state": "ON", "color": {"r": 255, "g": 65, "b": 174}}))
        self.assertEqual(device.recv(timeout=5), "[cc:2:255,65,174:0]")
        # First the unchanged state (the answer to the bad command), then the new one.
        self.assertEqual(json.loads(ha.wait_for("smartplug/display/state", start=mark).payload), {"state": "OFF"})
        colour = display_message(Display(2, color=(255, 65, 174), pulse=0), Topics()).payload
        self.assertFalse(ha.wait_for("smartplug/display/state", colour, start=mark).retain)
        self.assertEqual(json.loads(http(self.server.url("/display"))[1])["packet"], "[cc:2:255,65,174:0]")

        ha.publish("smartplug/display/set", json.dumps({"state": "ON", "effect": "snow", "brightness": 255}))
        self.assertEqual(device.recv(timeout=5), "[cc:1:7:9]")
        ha.publish("smartplug/display/command", b"reset")
        self.assertEqual(device.recv(timeout=5), "[cc:r:?:?]")
        self.server.wait_for(r"MQTT: ignored a light command .*not JSON")

    def test_birth_republishes(self):
        """
        Home Assistant's birth message C{online} on C{homeassistant/status}
        makes the server publish every config and state again.
        """
        report(self.server, "0xb00bf0cc", 1)
        ha = self.home_assistant()
        ha.wait_for(PLUG_STATE)
        mark = ha.mark()
        ha.publish("homeassistant/status", b"online")
        for topic in [PLUG_CONFIG, PLUG_STATE] + CONFIGS:
            self.assertFalse(ha.wait_for(topic, start=mark, timeout=5).retain, topic)

    def test_broker_restart(self):
        """
        When the broker restarts (and forgets every retained message), the
        server logs it once, reconnects, and publishes everything again.
        """
        report(self.server, "0xb00bf0cc", 1)
        self.home_assistant().wait_for(PLUG_STATE)
        self.broker.stop()
        self.server.wait_for(r"MQTT: broker mqtt://127\.0\.0\.1:\d+ unavailable \(connection lost")
        self.assertEqual(report(self.server, "0xb00bf0cc", 0)[0], 200)
        self.broker.start()
        self.server.wait_for_count(r"MQTT: connected to", 2, timeout=20)
        # The republish may still be on its way: a client that subscribes
        # meanwhile gets some of it live, not retained.  Once a first client
        # has seen it all, the broker holds it all.
        probe = self.home_assistant()
        for topic in [PLUG_STATE, PLUG_CONFIG] + CONFIGS:
            probe.wait_for(topic)
        ha = self.home_assistant()
        self.assertEqual(ha.wait_for(PLUG_STATE).payload, b"OFF")
        for topic in [PLUG_CONFIG] + CONFIGS:
            self.assertTrue(ha.wait_for(topic).retain, topic)
        self.assertEqual(self.server.log().count("unavailable"), 1)
        self.assertNotIn("Traceback", self.server.log())

    def test_clean_stop_says_offline(self):
        """
        Stopping the server (SIGTERM) leaves C{offline} retained as our
        status, and the shutdown has no traceback.
        """
        ha = self.home_assistant()
        ha.wait_for("smartplug/status", b"online")
        self.assertEqual(self.server.stop(), -signal.SIGTERM)
        self.assertNotIn("Traceback", self.server.log())
        status = ha.wait_for("smartplug/status", b"offline")
        self.assertEqual(self.home_assistant().wait_for("smartplug/status").payload, b"offline")
        self.assertFalse(status.retain)


class BrokerAwayEndToEndTests(TestCase):
    """
    A broker that is down or refuses us never stops the server.
    """

    def test_down_at_start(self):
        """
        With nothing on the broker's port the server starts, answers
        reports at once, and logs one line; when the broker appears, the
        server connects and publishes what it has.
        """
        # Held (bound, not listening: connecting is refused) until the broker
        # takes it, so that nothing else can meanwhile.
        port = reserved_port(self)
        server = start_server(self, f"MQTT_URL = 'mqtt://127.0.0.1:{port}'\n")
        # paho's own error, read while it handles it: a test of that too.
        server.wait_for(r"MQTT: broker mqtt://127\.0\.0\.1:\d+ unavailable \(cannot connect: Connection refused\)")
        self.assertEqual(report(server, "0xb00bf0cc", 1), (200, b"{}"))
        self.assertEqual(http(server.url("/plugs/0xb00bf0cc"))[0], 200)
        self.assertEqual(value(scrape(server.url("/metrics")), "smartplug_mqtt_connected"), 0)
        broker = start_mosquitto(self, port=port)
        server.wait_for(r"MQTT: connected to", timeout=20)
        self.assertEqual(value(scrape(server.url("/metrics")), "smartplug_mqtt_connected"), 1)
        self.assertEqual(connect_home_assistant(self, broker.port).wait_for(PLUG_STATE).payload, b"ON")
        self.assertEqual(server.log().count("unavailable"), 1)
        self.assertNotIn("Traceback", server.log())

    def test_untrusted_broker_certificate(self):
        """
        C{mqtts://} to a broker whose certificate the system does not trust
        is one log line that says so (not just "cannot connect"); with its
        certificate trusted, as the README shows (C{SSL_CERT_FILE}), the
        same server connects.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cert, key = self_signed(directory)
        broker = start_mosquitto(self, tls=(cert, key))
        server = start_server(self, f"MQTT_URL = {broker.url()!r}\n")
        server.wait_for(r"MQTT: broker mqtts://127\.0\.0\.1:\d+ unavailable "
                        r"\(cannot connect: certificate verify failed: self[- ]signed certificate\)")
        self.assertEqual(report(server, "a", 1), (200, b"{}"))
        trusted = start_server(self, f"MQTT_URL = {broker.url()!r}\n", env={"SSL_CERT_FILE": cert})
        trusted.wait_for(r"MQTT: connected to mqtts://127\.0\.0\.1:", timeout=20)
        self.assertNotIn("Traceback", server.log() + trusted.log())

    def test_wrong_password(self):
        """
        A refused login is one log line without the password; reports are
        still served.
        """
        broker = start_mosquitto(self, users={USER: PASSWORD})
        server = start_server(self, f"MQTT_URL = {broker.url(USER, 'wrong-pw')!r}\n")
        server.wait_for(r"MQTT: broker .* unavailable \(refused: Not authorized; check the user and password in MQTT_URL")
        self.assertEqual(report(server, "a", 1), (200, b"{}"))
        self.assertNotIn("wrong-pw", server.log())
        self.assertEqual(server.log().count("unavailable"), 1)


class EventsEndToEndTests(TestCase):
    """
    C{MQTT_EVENTS = True}: pub/sub through MQTT both ways.
    """

    def test_both_ways(self):
        """
        HTTP publications and plug reports appear on C{smartplug/events/E};
        a message to C{smartplug/publish/E} reaches a PiCloud subscriber and,
        as every publication, C{smartplug/events/E}, once.
        """
        broker = start_mosquitto(self)
        server = start_server(self, f"MQTT_URL = {broker.url()!r}\nMQTT_EVENTS = True\n")
        server.wait_for(r"MQTT: connected to")
        ha = connect_home_assistant(self, broker.port, topics=("smartplug/events/#",))
        with ws_connect(server.ws_url("/subscribe?clientName=t"), open_timeout=5) as sub:
            sub.send(json.dumps({"action": "subscribe", "event": "hello"}))
            sub.send(json.dumps({"action": "subscribe", "event": "ready"}))
            # Once "ready" arrives, both subscriptions are in place.
            self.assertEqual(http(server.url("/publish?clientName=c"), b'{"event": "ready"}')[0], 201)
            self.assertEqual(json.loads(sub.recv(timeout=5))["event"], "ready")
            ha.publish("smartplug/publish/hello", b'{"from": "mqtt"}')
            frame = json.loads(sub.recv(timeout=5))
        self.assertEqual((frame["event"], frame["data"]), ("hello", {"from": "mqtt"}))
        status, _ = http(server.url("/publish?clientName=c"), b'{"event": "temp", "data": "21.5"}')
        self.assertEqual(status, 201)
        self.assertEqual(ha.wait_for("smartplug/events/temp").payload, b"21.5")
        report(server, "p1", 1)
        self.assertEqual(json.loads(ha.wait_for("smartplug/events/smartplug").payload), {"id": "p1", "value": 1})
        # In order, each once: "hello" came from MQTT and went out again.
        self.assertEqual([(m.topic, m.payload) for m in ha.messages][:3], [
            ("smartplug/events/ready", b"null"),
            ("smartplug/events/hello", b'{"from":"mqtt"}'),
            ("smartplug/events/temp", b"21.5"),
        ])


class ManyPlugsEndToEndTests(TestCase):
    """
    More plugs than one republish window, through a real broker and paho.
    """

    PLUGS = 700

    def test_republish_and_stop_with_many_plugs(self):
        """
        After a broker restart (it forgets every retained message) the
        server publishes every plug's state again, paced by the broker's
        acknowledgements (more than REPUBLISH_WINDOW messages: paho calls
        back for each); stopped straight after Home Assistant's birth
        message, with a republish in flight, it still leaves C{offline}
        retained.
        """
        import http.client

        broker = start_mosquitto(self)
        server = start_server(self, f"MQTT_URL = {broker.url()!r}\n")
        server.wait_for(r"MQTT: connected to")
        connection = http.client.HTTPConnection("127.0.0.1", server.ports["HTTP"], timeout=10)
        self.addCleanup(connection.close)
        for i in range(self.PLUGS):
            connection.request("POST", "/data", json.dumps({"id": f"p{i}", "value": i % 2}))
            self.assertEqual(connection.getresponse().read(), b"{}")
        last = f"smartplug/plug/p{self.PLUGS - 1}/state"
        connect_home_assistant(self, broker.port).wait_for(last, timeout=20)
        broker.stop()
        broker.start()
        server.wait_for_count(r"MQTT: connected to", 2, timeout=20)
        ha = connect_home_assistant(self, broker.port, topics=("smartplug/plug/+/state",))
        ha.wait_for(last, timeout=30)
        states = {m.topic: m.payload for m in ha.messages}
        self.assertEqual(len(states), self.PLUGS)
        self.assertEqual(states["smartplug/plug/p1/state"], b"ON")
        ha.publish("homeassistant/status", b"online")
        self.assertEqual(server.stop(), -signal.SIGTERM)
        status = connect_home_assistant(self, broker.port, topics=("smartplug/status",))
        self.assertEqual(status.wait_for("smartplug/status").payload, b"offline")
        self.assertNotIn("Traceback", server.log())


class RestartEndToEndTests(TestCase):
    """
    With C{STATE_DB}, what the display was last when on outlives a kill -9
    and a restart of the real server (SPEC 12).
    """

    def test_bare_on_after_kill_9(self):
        """
        A colour, then off, both answered 200; kill -9; after the restart
        a bare ON from Home Assistant sends the colour to the lamps.
        """
        broker = start_mosquitto(self, users={USER: PASSWORD, "ha": "ha-pw"})
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        settings = (f'STATE_DB = "state.sqlite"\nAUTH_SECRET = {SECRET!r}\n'
                    f"MQTT_URL = {broker.url(USER, PASSWORD)!r}\n")
        first = RunningServer(directory, settings, listeners=LISTENERS)
        self.addCleanup(first.stop)
        first.start()
        colour = {"mode": 2, "color": [255, 65, 174], "pulse": 0}
        self.assertEqual(http(first.url("/display"), json.dumps(colour).encode())[0], 200)
        self.assertEqual(http(first.url("/display"), b'{"mode": 0}')[0], 200)
        first.process.kill()
        first.process.wait()

        second = RunningServer(directory, settings, listeners=LISTENERS)
        self.addCleanup(second.stop)
        second.start()
        with ws_connect(f"ws://127.0.0.1:{second.ports['device WebSocket']}/", open_timeout=5) as device:
            device.send(SECRET)
            self.assertEqual((device.recv(timeout=5), device.recv(timeout=5)), ("ok", "[cc:0:?:?]"))
            second.wait_for(r"MQTT: connected to")
            ha = connect_home_assistant(self, broker.port, user="ha", password="ha-pw")
            # The first server's last will said offline; the second says
            # online once it has subscribed to the commands.
            ha.wait_for("smartplug/status", b"online")
            ha.publish("smartplug/display/set", b"ON")
            self.assertEqual(device.recv(timeout=5), "[cc:2:255,65,174:0]")
