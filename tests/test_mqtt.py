"""
Tests for smartplug_backend.integrations.mqtt: the bridge between the hub and
a paho client, with a fake client in paho's place and paho's callbacks called
by hand, as paho's network thread would.
"""

import json
import socket
import ssl
import subprocess
import sys

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smartplug_backend import config, tap
from smartplug_backend.core import limits
from smartplug_backend.core.display import OFF, Display, LastOn
from smartplug_backend.core.hub import Hub
from smartplug_backend.core.journal import MemoryJournal, StoreFailed
from smartplug_backend.integrations import homeassistant as ha
from smartplug_backend.integrations import mqtt
from smartplug_backend.integrations.mqtt_url import Broker

from .fake_mqtt import BROKER, TOPICS, FakeClient
from .helpers import SynchronousReactor, until


class HandOverReactor(MemoryReactorClock):
    """
    A memory reactor whose C{callFromThread} only queues, as the real one
    does until the reactor thread gets to it.
    """

    def __init__(self):
        super().__init__()
        self.handed_over = []

    def callFromThread(self, f, *args, **kwargs):
        self.handed_over.append((f, args, kwargs))

    def run_handed_over(self):
        while self.handed_over:
            f, args, kwargs = self.handed_over.pop(0)
            f(*args, **kwargs)


class RefusingJournal(MemoryJournal):
    """A journal that cannot write display states."""

    def save_display(self, display):
        return fail(StoreFailed("disk full"))


class BridgeTestCase(SynchronousTestCase):

    def setUp(self):
        self.build()

    def build(self, events=False, journal=None, run=None, display=None, last_on=None):
        self.reactor = SynchronousReactor()
        self.hub = Hub(now=self.reactor.seconds, journal=journal)
        self.hub.restore([], display, (), last_on)
        self.client = FakeClient()
        self.log = []
        self.packets = []
        self.hub.watch_display(lambda e: self.packets.append(e.packet))
        self.bridge = mqtt.MQTTBridge(
            self.hub, self.client, BROKER, TOPICS, self.reactor, run or (lambda f: succeed(f())), events=events
        )
        self.bridge._log = Logger(observer=self.log.append)
        self.bridge.startService()

    def logged(self):
        return [e["log_format"].format(**e) for e in self.log]

    def connect(self):
        self.client.connected()
        self.client.published.clear()


class ConnectionTests(BridgeTestCase):
    """
    Connecting, the hand-over from paho's thread, and what is published on
    every connect.
    """

    def test_start(self):
        """
        startService connects asynchronously and starts paho's own thread;
        nothing is published before the broker accepts us.
        """
        self.assertEqual(self.client.calls, [("connect_async", "broker.local", 1883), "loop_start"])
        self.hub.report("a", 1, "http", "p")
        self.assertEqual(self.client.published, [])

    def test_callbacks_only_hand_over(self):
        """
        paho's callbacks change nothing themselves: they hand their
        arguments to the reactor thread, where the work is done.
        """
        reactor = HandOverReactor()
        hub = Hub(now=reactor.seconds)
        client = FakeClient()
        bridge = mqtt.MQTTBridge(hub, client, BROKER, TOPICS, reactor, lambda f: succeed(f()))
        bridge.startService()
        client.connected()
        client.message(TOPICS.display_set, b'{"state": "ON"}')
        self.assertEqual((client.published, client.subscribed, hub.display().mode), ([], [], 0))
        self.assertEqual(len(reactor.handed_over), 2)
        reactor.run_handed_over()
        self.assertIn(TOPICS.status, client.topics())
        self.assertEqual(hub.display(), ha.DEFAULT_ON)

    def test_connect_publishes_everything(self):
        """
        On connect: subscriptions to HA's status and our command topics, then
        our C{online}, every config and every state, retained, QoS 1.
        """
        self.hub.report("0xb00bf0cc", 1, "http", "p")
        self.hub.set_display(Display(1, weather=6, intensity=9), "p")
        self.client.connected()
        self.assertEqual(self.client.subscribed, [TOPICS.ha_status, TOPICS.display_set, TOPICS.display_command])
        expected = [(m.topic, m.payload, 1, True) for m in ha.discovery(self.hub.plugs(), self.hub.display(), TOPICS)]
        self.assertEqual(self.client.published, expected)
        self.assertEqual(self.client.last(TOPICS.plug_state("0xb00bf0cc"))[1], b"ON")
        self.assertEqual(json.loads(self.client.last(TOPICS.display_state)[1])["effect"], "storm")
        self.assertIn("MQTT: connected to mqtt://broker.local:1883", self.logged())

    def test_unknown_display_not_published(self):
        """
        While the hub does not know the display (a node that has not loaded
        its state), connecting publishes no display state: Home Assistant
        keeps the retained one rather than being told the lamps are off.
        """
        self.hub.display_known = False
        self.client.connected()
        self.assertNotIn(TOPICS.display_state, self.client.topics())
        self.assertIn(TOPICS.light_config, self.client.topics())

    def test_reconnect_republishes(self):
        """
        After a dropped connection, the next connect publishes all again.
        """
        self.hub.report("a", 0, "http", "p")
        self.connect()
        self.client.dropped()
        self.hub.report("a", 1, "http", "p")
        self.assertEqual(self.client.published, [])
        self.client.connected()
        self.assertEqual(self.client.last(TOPICS.plug_state("a"))[1], b"ON")
        self.assertIn(TOPICS.plug_config("a"), self.client.topics())

    def test_home_assistant_online(self):
        """
        HA's birth message C{online} makes the bridge publish everything
        again, at once; C{offline} does nothing.
        """
        self.hub.report("a", 1, "http", "p")
        self.connect()
        self.client.message(TOPICS.ha_status, b"offline")
        self.assertEqual(self.client.published, [])
        self.client.message(TOPICS.ha_status, b"online")
        self.assertEqual(self.client.topics(), [m.topic for m in ha.discovery(self.hub.plugs(), self.hub.display(), TOPICS)])


class RepublishWindowTests(BridgeTestCase):
    """
    A republish of thousands of plugs keeps at most REPUBLISH_WINDOW
    messages unacknowledged, so that paho's queue never fills.
    """

    def setUp(self):
        self.patch(mqtt, "REPUBLISH_WINDOW", 4)
        super().setUp()
        for i in range(5):
            self.hub.report(f"p{i}", 0, "http", "x")

    def test_paced_by_acknowledgements(self):
        """
        The first messages go at once, the rest as the broker acknowledges
        them, until everything has been published, in L{ha.discovery}'s
        order.
        """
        self.client.connected()
        self.assertEqual(len(self.client.published), 4)
        for _ in range(20):
            self.client.acknowledge(1)
        expected = [m.topic for m in ha.discovery(self.hub.plugs(), self.hub.display(), TOPICS)]
        self.assertEqual(self.client.topics(), expected)

    def test_states_read_when_sent(self):
        """
        A state published later in the republish is the plug's state then,
        not when the republish began: it never undoes a live report.
        """
        self.client.connected()
        self.hub.report("p4", 1, "http", "x")
        self.assertEqual(self.client.published[-1], (TOPICS.plug_state("p4"), b"ON", 1, True))
        self.client.acknowledge()
        while self.client.mids:
            self.client.acknowledge()
        self.assertEqual(self.client.last(TOPICS.plug_state("p4"))[1], b"ON")

    def test_birth_restarts_it(self):
        """
        Home Assistant's C{online} during a republish starts it again from
        the top, rather than adding a second one behind it.
        """
        self.client.connected()
        self.client.message(TOPICS.ha_status, b"online")
        self.assertEqual(len(self.client.published), 4)
        while self.client.mids:
            self.client.acknowledge()
        expected = [m.topic for m in ha.discovery(self.hub.plugs(), self.hub.display(), TOPICS)]
        self.assertEqual(self.client.topics()[4:], expected)

    def test_live_messages_not_held(self):
        """
        Reports are published at once, whatever the republish waits for.
        """
        self.client.connected()
        self.hub.report("new", 1, "http", "x")
        self.assertEqual(self.client.topics()[-2:], [TOPICS.plug_config("new"), TOPICS.plug_state("new")])

    def test_queue_full_holds_the_republish(self):
        """
        When paho's queue is full at a reconnect (it sends its old messages
        again first), the republish waits for acknowledgements instead of
        running through and dropping every message.
        """
        self.client.connected()
        while self.client.mids:
            self.client.acknowledge()
        self.client.dropped()
        self.client.published.clear()
        self.client.full = True
        self.client.connected()
        self.assertEqual(self.client.published, [])
        self.client.full = False
        self.client.mids.append(999)  # an old message paho sent again
        self.client.acknowledge()
        while self.client.mids:
            self.client.acknowledge()
        expected = [m.topic for m in ha.discovery(self.hub.plugs(), self.hub.display(), TOPICS)]
        self.assertEqual(self.client.topics(), expected)

    def test_queue_full_said_once(self):
        """
        When paho's queue is full (the broker does not acknowledge), the
        messages it drops are said once per connection, not once each.
        """
        self.client.connected()
        self.client.full = True
        for value in (1, 0, 1):
            self.hub.report("p0", value, "http", "x")
        warnings = [line for line in self.logged() if "acknowledge" in line]
        self.assertEqual(len(warnings), 1)
        self.assertIn(f"{mqtt.MAX_QUEUED} messages wait for mqtt://broker.local:1883", warnings[0])
        self.client.dropped()
        self.client.connected()
        self.hub.report("p0", 0, "http", "x")
        self.assertEqual(len([line for line in self.logged() if "acknowledge" in line]), 2)


class OutageLogTests(BridgeTestCase):
    """
    A broker that is away is one log line per outage, and never shows the
    password.
    """

    def warnings(self):
        return [line for line in self.logged() if "unavailable" in line]

    def test_down_at_start(self):
        """
        Failing tries to connect log one line, however many there are.
        """
        for _ in range(5):
            self.client.connect_failed()
        self.assertEqual(self.warnings(), [
            "MQTT: broker mqtt://broker.local:1883 unavailable (cannot connect); "
            "trying again in the background, at most every 60 s"
        ])

    def test_connect_error_named(self):
        """
        paho calls C{on_connect_fail} while it handles the error; the line
        names it (the socket's words, TLS's reason without its source line).
        """
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError:
            self.client.connect_failed()
        self.assertIn("unavailable (cannot connect: Connection refused);", self.warnings()[0])
        verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed (_ssl.c:1006)")
        verify.verify_message = "self-signed certificate"
        cases = [
            (None, "cannot connect"),
            (verify, "cannot connect: certificate verify failed: self-signed certificate"),
            (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"),
             "cannot connect: [SSL: WRONG_VERSION_NUMBER] wrong version number"),
            (socket.gaierror(-2, "Name or service not known"), "cannot connect: Name or service not known"),
            (TimeoutError("timed out"), "cannot connect: timed out"),
        ]
        for error, expected in cases:
            self.assertEqual(mqtt.connect_error(error), expected)

    def test_refused(self):
        """
        A refused login is one line with the broker's reason, no password.
        """
        for _ in range(3):
            self.client.refused()
            self.client.dropped()
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("refused: Not authorized; check the user and password in MQTT_URL: a % in them is written %25",
                      self.warnings()[0])
        self.assertNotIn("hunter2", " ".join(self.logged()) + repr(BROKER))

    def test_wrong_scheme_hinted(self):
        """
        mqtt:// to a TLS port (the broker closes before answering) and
        mqtts:// to a plain one (the TLS handshake is reset, or answered
        with no TLS record) say which scheme to try; a refused connection
        says nothing of schemes.
        """
        self.client.dropped()
        self.assertIn("unavailable (the broker closed it or went away; if port 1883 speaks TLS, use mqtts://)",
                      self.warnings()[0])
        for error in (ConnectionResetError(104, "Connection reset by peer"),
                      ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"),
                      ConnectionRefusedError(111, "Connection refused")):
            self.build()
            self.bridge._broker = Broker("broker.local", 1883, tls=True)
            try:
                raise error
            except OSError:
                self.client.connect_failed()
            hinted = "; if port 1883 is plain MQTT (no TLS), use mqtt://)" in self.warnings()[0]
            self.assertEqual(hinted, not isinstance(error, ConnectionRefusedError), self.warnings())

    def test_silent_port_not_hinted_as_tls(self):
        """
        A port that accepts and never answers the MQTT handshake (paho's
        keepalive ends it) is said to be silent, not hinted as TLS: a TLS
        port answers plain MQTT with an alert and closes.
        """
        self.client.dropped("Keep alive timeout")
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("it accepted the connection but did not answer the MQTT handshake within 60 s; "
                      "is port 1883 an MQTT broker's?", self.warnings()[0])
        self.assertNotIn("TLS", self.warnings()[0])

    def test_ipv6_broker_in_brackets(self):
        """
        An IPv6 broker is written as in its URL, in brackets.
        """
        self.assertEqual(Broker("::1", 1883).where, "mqtt://[::1]:1883")
        self.assertEqual(Broker("fd00::2", 8883, tls=True).where, "mqtts://[fd00::2]:8883")

    def test_each_outage_once(self):
        """
        A lost connection logs one line; after the next connect, the next
        outage logs again.
        """
        self.connect()
        self.client.dropped()
        self.client.connect_failed()
        self.client.connect_failed()
        self.client.connected()
        self.client.dropped()
        self.assertEqual(len(self.warnings()), 2)
        self.assertIn("connection lost: the broker closed it or went away", self.warnings()[0])


class LinkTests(BridgeTestCase):
    """
    The bridge's link (dashboard, /metrics) follows the connection, and
    what paho's full queue drops is counted.
    """

    def test_link_follows_connection(self):
        """
        Down ("connecting") until the broker accepts us, up while connected,
        down with the reason the log gives after; no password in it.
        """
        link = self.bridge.link
        self.assertEqual((link.name, link.where, link.up, link.why), ("mqtt", "mqtt://broker.local:1883", False, "connecting"))
        self.client.refused()
        self.assertEqual((link.up, link.why), (False, "refused: Not authorized; check the user and password in MQTT_URL: "
                                                       "a % in them is written %25"))
        self.reactor.advance(30)
        self.client.connected()
        self.assertEqual((link.up, link.why, link.since), (True, None, self.reactor.seconds()))
        self.reactor.advance(30)
        self.client.dropped()
        self.assertEqual((link.up, link.why, link.since),
                         (False, "connection lost: the broker closed it or went away", self.reactor.seconds()))
        self.assertNotIn("hunter2", repr(link.as_json()))

    def test_dropped_counted(self):
        """
        A live state or event that paho's full queue refuses is dropped and
        counted; a republished message held for the next acknowledgement is
        not dropped, so not counted.
        """
        self.patch(mqtt, "REPUBLISH_WINDOW", 4)
        for n in range(3):
            self.hub.report(f"p{n}", 1, "http", "x")
        self.client.full = True
        self.client.connected()
        self.assertEqual(self.bridge.dropped, 0)
        self.hub.report("p0", 0, "http", "x")
        self.assertEqual(self.bridge.dropped, 1)
        self.client.full = False
        self.hub.report("p0", 1, "http", "x")
        self.assertEqual(self.bridge.dropped, 1)


class StateTests(BridgeTestCase):
    """
    Plug reports and display changes reach Home Assistant.
    """

    def test_report(self):
        """
        A new plug's first report publishes its config then its state;
        later reports only the state.
        """
        self.connect()
        self.hub.report("hall/1", 1, "http", "p")
        self.hub.report("hall/1", 0, "device", "p")
        self.assertEqual(self.client.published, [
            (TOPICS.plug_config("hall/1"), json.dumps(ha.plug_config("hall/1", TOPICS), separators=(",", ":")).encode(), 1, True),
            (TOPICS.plug_state("hall/1"), b"ON", 1, True),
            (TOPICS.plug_state("hall/1"), b"OFF", 1, True),
        ])

    def test_dropped_plug_keeps_its_entity(self):
        """
        A plug the hub drops (several nodes: another copy of the state won)
        is not taken out of Home Assistant, nor published by a republish
        under way; reported again, its config and state are published, so
        that the same entity (unique id) comes back to life, name and area
        kept.
        """
        self.patch(mqtt, "REPUBLISH_WINDOW", 4)
        for plug_id in "abcdef":
            self.hub.report(plug_id, 1, "http", "p")
        self.client.connected()
        self.hub.keep_plugs(["a", "b", "c", "d", "e"])
        for _ in range(3):
            self.client.acknowledge()
        self.assertEqual([p for p in self.client.published if "/f/" in p[0] or p[0].endswith("_f/config")], [])
        self.client.published.clear()
        self.hub.report("f", 0, "http", "p")
        self.assertEqual(self.client.topics(), [TOPICS.plug_config("f"), TOPICS.plug_state("f")])

    def test_display_from_http(self):
        """
        A display state set elsewhere (POST /display) is published as the
        light's state; a one-off command publishes nothing.
        """
        self.connect()
        self.hub.set_display(Display(2, color=(255, 65, 174), pulse=0), "p")
        self.hub.display_command("reset", "p")
        self.assertEqual(self.client.published, [
            (TOPICS.display_state, ha.display_message(self.hub.display(), TOPICS).payload, 1, True),
        ])


class CommandTests(BridgeTestCase):
    """
    Home Assistant's commands go through the hub, as POST /display does.
    """

    def test_colour(self):
        """
        A colour command sets the display (devices get the packet) and the
        new state is published back.
        """
        self.connect()
        self.client.message(TOPICS.display_set, b'{"state": "ON", "color": {"r": 255, "g": 65, "b": 174}}')
        self.assertEqual(self.packets, ["[cc:2:255,65,174:0]"])
        state = json.loads(self.client.last(TOPICS.display_state)[1])
        self.assertEqual((state["state"], state["color"]), ("ON", {"r": 255, "g": 65, "b": 174}))

    def test_off_then_bare_on(self):
        """
        OFF sends mode 0; a bare ON restores the last state that was on.
        """
        self.connect()
        self.client.message(TOPICS.display_set, b'{"state": "ON", "effect": "rain", "brightness": 255}')
        self.client.message(TOPICS.display_set, b'{"state": "OFF"}')
        self.client.message(TOPICS.display_set, b'{"state": "ON"}')
        self.assertEqual(self.packets, ["[cc:1:5:9]", "[cc:0:?:?]", "[cc:1:5:9]"])

    def test_last_on_from_start(self):
        """
        The state the hub had when the bridge was built counts as the last
        one that was on.
        """
        self.build(display=Display(2, color=(1, 2, 3), pulse=4))
        self.connect()
        self.client.message(TOPICS.display_set, b'{"state": "OFF"}')
        self.client.message(TOPICS.display_set, b'{"state": "ON"}')
        self.assertEqual(self.packets, ["[cc:0:?:?]", "[cc:2:1,2,3:4]"])

    def test_buttons(self):
        """
        A button press sends its one-off packet; the state is unchanged.
        """
        self.connect()
        self.client.message(TOPICS.display_command, b"reset")
        self.client.message(TOPICS.display_command, b"update")
        self.assertEqual(self.packets, ["[cc:r:?:?]", "[cc:u:?:?]"])
        self.assertEqual(self.hub.display().mode, 0)

    def test_bad_commands(self):
        """
        A bad command is logged and ignored: nothing reaches the devices, the
        unchanged state is published back (HA waits for it), nothing raises.
        """
        self.connect()
        for payload in (b"on", b'{"state": "ON", "effect": "fog"}', b"\xff\xfe"):
            self.client.message(TOPICS.display_set, payload)
        self.client.message(TOPICS.display_command, b"PRESS")
        self.assertEqual(self.packets, [])
        self.assertEqual(self.client.topics(), [TOPICS.display_state] * 3)
        self.assertEqual(sum("ignored" in line for line in self.logged()), 4)

    def test_empty_payload_silent(self):
        """
        An empty message (what clearing a retained command publishes) on the
        light's or the buttons' topic is no command: nothing is applied,
        published back or logged.
        """
        self.connect()
        self.log.clear()
        self.client.message(TOPICS.display_set, b"")
        self.client.message(TOPICS.display_command, b"")
        self.assertEqual((self.packets, self.client.topics(), self.logged()), ([], [], []))

    def test_pulse_through_weather(self):
        """
        A colour after a weather keeps the pulse of the colour before it
        (SPEC 12: "pulse kept").
        """
        self.build(display=Display(2, color=(1, 2, 3), pulse=4))
        self.connect()
        self.client.message(TOPICS.display_set, b'{"state": "ON", "effect": "rain"}')
        self.client.message(TOPICS.display_set, b'{"state": "ON", "color": {"r": 9, "g": 8, "b": 7}}')
        self.assertEqual(self.packets, ["[cc:1:5:9]", "[cc:2:9,8,7:4]"])

    def test_last_on_from_the_hub(self):
        """
        What the hub remembers (here as loaded from a store at start-up,
        the display off) is what a bare ON restores, and whose pulse a new
        colour keeps: the bridge keeps no copy of its own.
        """
        red = Display(2, color=(255, 0, 0), pulse=4)
        self.build(display=OFF, last_on=LastOn(Display(1, weather=5, intensity=3), red))
        self.connect()
        self.client.message(TOPICS.display_set, b'{"state": "ON"}')
        self.client.message(TOPICS.display_set, b'{"state": "ON", "color": {"r": 9, "g": 8, "b": 7}}')
        self.assertEqual(self.packets, ["[cc:1:5:3]", "[cc:2:9,8,7:4]"])

    def test_retained_command_ignored(self):
        """
        A retained command (it would come back on every reconnect) is
        ignored, with a log line.
        """
        self.connect()
        self.client.message(TOPICS.display_set, b'{"state": "ON"}', retain=True)
        self.assertEqual(self.packets, [])
        self.assertEqual([line for line in self.logged() if "retained" in line], [
            "MQTT: ignored a retained message on 'smartplug/display/set': commands must not be retained; clear it with "
            "mosquitto_pub -r -n -t smartplug/display/set (and the broker's -h/-u/-P)"])

    def test_retained_topic_quoted_for_the_shell(self):
        """
        The topic comes from the broker: the line to paste quotes it, so
        that no topic can make it another command.
        """
        self.build(events=True)
        self.connect()
        topic = "smartplug/publish/x'; rm -rf ~; echo '"
        self.client.message(topic, b"1", retain=True)
        [line] = [line for line in self.logged() if "retained" in line]
        self.assertIn("mosquitto_pub -r -n -t 'smartplug/publish/x'\"'\"'; rm -rf ~; echo '\"'\"'' (and", line)

    def test_retained_command_said_once(self):
        """
        The broker hands a retained command over again on every reconnect:
        it is said once per topic, not each time.
        """
        self.connect()
        for _ in range(3):
            self.client.message(TOPICS.display_set, b'{"state": "ON"}', retain=True)
            self.client.dropped()
            self.client.connected()
        self.client.message(TOPICS.display_command, b"reset", retain=True)
        self.assertEqual(len([line for line in self.logged() if "retained" in line]), 2)

    def test_journal_refuses(self):
        """
        When the state store refuses the change, the display is unchanged,
        and the unchanged state is published back.
        """
        self.build(journal=RefusingJournal())
        self.connect()
        self.client.message(TOPICS.display_set, b'{"state": "ON"}')
        self.assertEqual((self.packets, self.hub.display().mode), ([], 0))
        self.assertEqual(json.loads(self.client.last(TOPICS.display_state)[1]), {"state": "OFF"})


class EventsTests(BridgeTestCase):
    """
    C{MQTT_EVENTS}: pub/sub both ways, without loops.
    """

    def setUp(self):
        self.build(events=True)
        self.delivered = []
        self.hub.pubsub.deliver_with(lambda subscribers, frame: self.delivered.append(frame))
        self.hub.pubsub.subscribe("sub", "temp")

    def test_subscribes(self):
        """
        With events on, the bridge also subscribes to C{<prefix>/publish/#}.
        """
        self.client.connected()
        self.assertIn("smartplug/publish/#", self.client.subscribed)

    def test_out(self):
        """
        Each publication of E goes to C{<prefix>/events/E}, not retained,
        QoS 0; plug reports too (event C{smartplug}).
        """
        self.connect()
        self.hub.pubsub.publish("temp", {"c": 21})
        self.hub.pubsub.publish("hello", "world")
        self.assertEqual(self.client.published, [
            ("smartplug/events/temp", b'{"c":21}', 0, False),
            ("smartplug/events/hello", b"world", 0, False),
        ])

    def test_in(self):
        """
        A message to C{<prefix>/publish/E} is published as E to subscribers,
        and, as every publication of E, to C{<prefix>/events/E}: a
        different topic, so it does not come back.
        """
        self.connect()
        self.client.message("smartplug/publish/temp", b'{"c": 22}')
        self.assertEqual(len(self.delivered), 1)
        self.assertIn(b'"event":"temp","data":{"c":22}', self.delivered[0])
        self.assertEqual(self.client.published, [("smartplug/events/temp", b'{"c":22}', 0, False)])
        self.assertNotIn("smartplug/events/#", self.client.subscribed)

    def test_bad_event_name(self):
        """
        An event name MQTT cannot carry in a topic is logged, not published,
        and breaks nothing.
        """
        self.connect()
        self.hub.pubsub.publish("a+b", 1)
        self.hub.pubsub.publish("temp", 1)
        self.assertEqual(self.client.topics(), ["smartplug/events/temp"])
        self.assertTrue(any("not published" in line for line in self.logged()))
        # Said once per topic: a client publishing it again fills no log.
        self.hub.pubsub.publish("a+b", 2)
        self.assertEqual(len([line for line in self.logged() if "not published" in line]), 1)

    def test_in_bounded(self):
        """
        What comes from the broker is bounded as what WebSocket and HTTP
        peers send: a message over MAX_MESSAGE bytes, or a publication whose
        event name is over PUBSUB_MAX_EVENT characters, is ignored, said
        once per topic; the limits themselves pass.
        """
        self.connect()
        big = b'"' + b"x" * (limits.MAX_MESSAGE - 2) + b'"'
        self.client.message("smartplug/publish/temp", big + b" ")
        self.client.message("smartplug/publish/temp", big + b" ")
        self.client.message("smartplug/publish/" + "e" * (limits.PUBSUB_MAX_EVENT + 1), b"1")
        self.assertEqual(self.delivered, [])
        self.assertEqual(self.hub.pubsub.history.events(), 0)
        ignored = [line for line in self.logged() if "ignored a" in line]
        self.assertEqual(len(ignored), 2, ignored)
        self.assertIn(f"ignored a message of {limits.MAX_MESSAGE + 1} bytes on 'smartplug/publish/temp'", ignored[0])
        self.assertIn(f"event name of {limits.PUBSUB_MAX_EVENT + 1} characters: at most {limits.PUBSUB_MAX_EVENT}",
                      ignored[1])
        self.client.message("smartplug/publish/temp", big)
        self.client.message("smartplug/publish/" + "e" * limits.PUBSUB_MAX_EVENT, b"1")
        self.assertEqual(len(self.delivered), 1)
        self.assertEqual(self.hub.pubsub.history.events(), 2)

    def events(self):
        return [p[1] for p in self.client.published if p[0] == "smartplug/events/temp"]

    def test_events_unsent_bounded(self):
        """
        Events paho has not written to a broker that does not read are
        bounded: once MAX_EVENTS_UNSENT wait and the oldest has waited
        EVENTS_STALLED seconds, new ones are dropped and counted, said once
        per connection; as paho writes them (on_publish), new ones go
        again.  A burst to a broker that reads is not dropped, up to
        MAX_EVENTS_HELD.  The events paho had not written when the
        connection ended are counted as dropped too.
        """
        self.patch(mqtt, "MAX_EVENTS_UNSENT", 3)
        self.patch(mqtt, "MAX_EVENTS_HELD", 7)
        self.connect()
        self.client.acknowledge()  # the republish's configs and states
        for n in range(5):
            self.hub.pubsub.publish("temp", n)
        self.assertEqual((self.events(), self.bridge.dropped), ([b"0", b"1", b"2", b"3", b"4"], 0))
        self.reactor.advance(mqtt.EVENTS_STALLED - 1)
        self.hub.pubsub.publish("temp", 5)
        self.assertEqual(self.bridge.dropped, 0)
        self.reactor.advance(1)
        self.hub.pubsub.publish("temp", 6)
        self.hub.pubsub.publish("temp", 7)
        self.assertEqual((self.events()[-1], self.bridge.dropped), (b"5", 2))
        warnings = [line for line in self.logged() if "events wait" in line]
        self.assertEqual(warnings, ["MQTT: 6 events wait to be written to mqtt://broker.local:1883, which has read "
                                    f"none of them for {mqtt.EVENTS_STALLED} s; more events are dropped until it "
                                    "reads again, or until the connection ends"])
        self.client.acknowledge(4)  # paho wrote four of them
        self.hub.pubsub.publish("temp", 8)
        self.assertEqual((self.events()[-1], self.bridge.dropped), (b"8", 2))
        # States are not held back by events.
        self.hub.report("p", 1, "http", "x")
        self.assertIn(TOPICS.plug_state("p"), self.client.topics())
        # Events 4, 5 and 8 were never written.
        self.client.dropped()
        self.assertEqual(self.bridge.dropped, 5)
        self.connect()
        # However young, no more than MAX_EVENTS_HELD wait.
        for n in range(9, 18):
            self.hub.pubsub.publish("temp", n)
        self.assertEqual((self.events(), self.bridge.dropped), ([b"9", b"10", b"11", b"12", b"13", b"14", b"15"], 7))

    def test_off_by_default(self):
        """
        Without MQTT_EVENTS nothing is bridged either way.
        """
        self.build(events=False)
        self.client.connected()
        self.client.published.clear()
        self.hub.pubsub.publish("temp", 1)
        self.assertNotIn("smartplug/publish/#", self.client.subscribed)
        self.assertEqual(self.client.published, [])


class StallingBroker(Protocol):
    """
    A broker that accepts the connection (CONNACK) and then stops reading
    until L{read} is called; it counts the messages to C{TOPIC} it reads.
    """

    TOPIC = TOPICS.event("big").encode()

    def __init__(self):
        self.buffer = b""
        self.publishes = 0

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            # The fixed header: the packet's type, and its remaining length
            # (7 bits a byte, low first).
            length, shift, at = 0, 0, 1
            while at < len(self.buffer):
                byte = self.buffer[at]
                length |= (byte & 0x7F) << shift
                shift, at = shift + 7, at + 1
                if not byte & 0x80:
                    break
            else:
                return
            if len(self.buffer) < at + length:
                return
            kind, packet, self.buffer = self.buffer[0] >> 4, self.buffer[at:at + length], self.buffer[at + length:]
            if kind == 1:  # CONNECT
                self.transport.write(b"\x20\x02\x00\x00")
                self.factory.connected.callback(self)
                self.transport.pauseProducing()
            if kind == 3 and packet[2:2 + int.from_bytes(packet[:2], "big")] == self.TOPIC:  # PUBLISH
                self.publishes += 1

    def read(self) -> None:
        self.transport.resumeProducing()


class StalledBrokerTests(TestCase):
    """
    A real paho client against a broker on 127.0.0.1 that stops reading.
    """

    timeout = 60

    @inlineCallbacks
    def test_events_bounded_while_the_broker_does_not_read(self):
        """
        Events pile up in paho while the broker does not read: past
        MAX_EVENTS_UNSENT, the oldest waiting EVENTS_STALLED seconds, new
        ones are dropped and counted (paho's on_publish, which says an
        event was written, frees room); once the broker reads, every event
        handed to paho reaches it, and new ones go again.
        """
        self.patch(mqtt, "MAX_EVENTS_UNSENT", 20)
        self.patch(mqtt, "EVENTS_STALLED", 0.2)
        # A small receive buffer (inherited from the listening socket), so
        # that the broker's side fills soon.
        listening = socket.socket()
        self.addCleanup(listening.close)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        listening.bind(("127.0.0.1", 0))
        listening.listen(5)
        listening.setblocking(False)
        factory = Factory.forProtocol(StallingBroker)
        factory.connected = Deferred()
        port = reactor.adoptStreamPort(listening.fileno(), socket.AF_INET, factory)
        self.addCleanup(port.stopListening)
        broker = Broker("127.0.0.1", listening.getsockname()[1])
        hub = Hub(now=reactor.seconds)
        hub.restore([], OFF, (), None)
        client = mqtt.make_client(broker, TOPICS)
        # And a small send buffer on paho's side, whatever the host's TCP
        # tuning (a fixed size turns the kernel's autotuning off).
        client.on_socket_open = lambda client, userdata, sock: sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        bridge = mqtt.MQTTBridge(hub, client, broker, TOPICS, reactor, threads.deferToThread, events=True)
        bridge.startService()
        self.addCleanup(lambda: bridge.stopService() if bridge.running else None)
        stalled = yield factory.connected
        yield until(lambda: bridge.link.up, "the bridge to be connected")
        # 60 KB events, a few every 10 ms (paho's thread writes meanwhile),
        # until some are dropped: bounded in count and time.
        data = "x" * 60000
        sent = 0
        while not bridge.dropped and sent < 1000:
            for _ in range(5):
                hub.pubsub.publish("big", data)
            sent += 5
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertGreater(bridge.dropped, 0)
        handed = sent - bridge.dropped
        self.assertLess(stalled.publishes, handed)
        stalled.read()
        yield until(lambda: stalled.publishes == handed, f"the broker to read the {handed} events paho held",
                    timeout=30)
        hub.pubsub.publish("big", "after")
        yield until(lambda: stalled.publishes == handed + 1, "a new event to go")
        self.assertEqual(bridge.dropped, sent - handed)
        yield bridge.stopService()


class StopTests(BridgeTestCase):
    """
    stopService says offline, disconnects and waits for paho's thread.
    """

    def test_stop(self):
        """
        Stopping publishes C{offline} (retained), disconnects, stops paho's
        loop in a thread and fires; later reports publish nothing.
        """
        self.connect()
        done = self.bridge.stopService()
        self.successResultOf(done)
        # QoS 0: paho sends it before the DISCONNECT whatever waits for
        # an acknowledgement.
        self.assertEqual(self.client.published, [(TOPICS.status, b"offline", 0, True)])
        self.assertEqual(self.client.calls[-2:], ["disconnect", "loop_stop"])
        self.hub.report("a", 1, "http", "p")
        self.assertEqual(len(self.client.published), 1)

    def test_stop_never_connected(self):
        """
        Stopping a bridge that never reached its broker says so, and
        publishes nothing.
        """
        self.client.connect_failed()
        self.successResultOf(self.bridge.stopService())
        self.assertEqual(self.client.published, [])
        self.assertEqual(self.logged()[-1], "MQTT: stopped trying to reach mqtt://broker.local:1883")
        self.assertNotIn("MQTT: disconnected from mqtt://broker.local:1883", self.logged())

    def test_late_hand_over_after_stop(self):
        """
        A connect or message handed over after stopService changes nothing.
        """
        self.successResultOf(self.bridge.stopService())
        self.client.connected()
        self.client.message(TOPICS.display_set, b'{"state": "ON"}')
        self.assertEqual((self.client.published, self.client.subscribed, self.packets), ([], [], []))

    def test_stop_times_out(self):
        """
        If paho's thread does not end, stopping still finishes after
        STOP_TIMEOUT seconds.
        """
        self.build(run=lambda f: Deferred())
        done = self.bridge.stopService()
        self.assertNoResult(done)
        self.reactor.advance(mqtt.STOP_TIMEOUT)
        self.successResultOf(done)
        self.assertTrue(any("without a clean disconnect" in line for line in self.logged()))


class ClientTests(SynchronousTestCase):
    """
    L{mqtt.make_client}: paho set up from the URL.
    """

    def test_client(self):
        """
        Credentials, the retained last will C{offline}, capped backoff and
        TLS for mqtts:// are set on the paho client.
        """
        client = mqtt.make_client(Broker("b", 8883, tls=True, username="me", password="pw"), TOPICS)
        self.assertEqual((client.username, client.password), ("me", "pw"))
        self.assertEqual((client._will_topic, client._will_payload, client._will_retain), (b"smartplug/status", b"offline", True))
        self.assertEqual((client._reconnect_min_delay, client._reconnect_max_delay), (1, mqtt.RECONNECT_MAX))
        self.assertIsNotNone(client._ssl_context)
        plain = mqtt.make_client(Broker("b", 1883), TOPICS)
        self.assertIsNone(plain._ssl_context)
        self.assertIsNone(plain.username)


class WiringTests(SynchronousTestCase):
    """
    The tap builds the bridge only with MQTT_URL, and loads paho only then.
    """

    def test_service_when_set(self):
        """
        With MQTT_URL the server has an MQTTBridge; without, none.
        """
        for text, expected in (("", 0), ("MQTT_URL = 'mqtt://127.0.0.1:1'\n", 1)):
            path = self.mktemp() + ".py"
            with open(path, "w") as f:
                f.write("STATE_DB = None\n" + text)
            options = tap.Options()
            options.parseOptions(["--settings", path])
            service = tap.makeService(options, reactor=SynchronousReactor())
            self.assertEqual(sum(isinstance(s, mqtt.MQTTBridge) for s in service), expected, text)

    def test_paho_not_loaded_when_off(self):
        """
        Without MQTT_URL, building the server never imports paho.
        """
        code = (
            "import sys\n"
            "from smartplug_backend import tap\n"
            "from tests.helpers import SynchronousReactor\n"
            "o = tap.Options(); o.parseOptions(['--settings', sys.argv[1]])\n"
            "tap.makeService(o, reactor=SynchronousReactor())\n"
            "print('paho' in ' '.join(sys.modules))\n"
        )
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("STATE_DB = None\n")
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, timeout=60)
        self.assertEqual(out.stdout.strip(), b"False", out.stderr)

    def test_settings_url(self):
        """
        The service is built from the settings' URL and prefixes.
        """
        settings = config.settings_from({"MQTT_URL": "mqtt://me:pw@b:1884", "MQTT_PREFIX": "sp", "MQTT_EVENTS": True})
        bridge = mqtt.mqtt_service(settings, Hub(), SynchronousReactor())
        self.assertEqual((bridge._broker.host, bridge._broker.port, bridge._topics.prefix, bridge._events), ("b", 1884, "sp", True))
        self.assertIsNone(mqtt.mqtt_service(config.settings_from({}), Hub(), SynchronousReactor()))
