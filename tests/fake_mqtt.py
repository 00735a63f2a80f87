"""
A stand-in for paho's MQTT client, for the bridge's tests and for tests
that play Home Assistant's light commands through a bridge on a hub.
"""

import itertools

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from twisted.internet.defer import succeed

from smartplug_backend.integrations import homeassistant as ha
from smartplug_backend.integrations import mqtt
from smartplug_backend.integrations.mqtt_url import Broker

from .helpers import SynchronousReactor

BROKER = Broker("broker.local", 1883, username="me", password="hunter2")
TOPICS = ha.Topics()


class FakeClient:
    """
    paho's Client as the bridge uses it; records what it is asked to do.
    The C{connected}, C{refused}, ... methods play paho's network thread.
    """

    def __init__(self):
        self.published = []
        self.subscribed = []
        self.calls = []
        self.on_connect = self.on_connect_fail = self.on_disconnect = self.on_message = self.on_publish = None
        # What publish() answers: paho's MQTT_ERR_SUCCESS, or (full) its
        # MQTT_ERR_QUEUE_SIZE; each message gets the next id (paho's ids
        # are unique among those not yet acknowledged).
        self.full = False
        self.mids = []
        self._ids = itertools.count(1)

    def connect_async(self, host, port, keepalive):
        self.calls.append(("connect_async", host, port))

    def loop_start(self):
        self.calls.append("loop_start")

    def loop_stop(self):
        self.calls.append("loop_stop")

    def disconnect(self):
        self.calls.append("disconnect")

    def subscribe(self, topics):
        self.subscribed.extend(topic for topic, qos in topics)

    def publish(self, topic, payload, qos, retain):
        if "+" in topic or "#" in topic:
            raise ValueError("Publish topic cannot contain wildcards.")

        class Info:
            rc = mqtt.paho.MQTT_ERR_QUEUE_SIZE if self.full else mqtt.paho.MQTT_ERR_SUCCESS
            mid = next(self._ids)

        if not self.full:
            self.published.append((topic, payload, qos, retain))
            self.mids.append(Info.mid)
        return Info

    def topics(self):
        return [p[0] for p in self.published]

    def last(self, topic):
        return [p for p in self.published if p[0] == topic][-1]

    # paho's thread
    def connected(self):
        self.on_connect(self, None, {}, ReasonCode(PacketTypes.CONNACK, "Success"), None)

    def refused(self):
        self.on_connect(self, None, {}, ReasonCode(PacketTypes.CONNACK, "Not authorized"), None)

    def connect_failed(self):
        self.on_connect_fail(self, None)

    def dropped(self, reason="Unspecified error"):
        self.on_disconnect(self, None, {}, ReasonCode(PacketTypes.DISCONNECT, reason), None)

    def acknowledge(self, count=None):
        """
        The broker acknowledges the oldest C{count} messages (all by default).
        """
        mids, self.mids = (self.mids, []) if count is None else (self.mids[:count], self.mids[count:])
        for mid in mids:
            self.on_publish(self, None, mid, None, None)

    def message(self, topic, payload, retain=False):
        class Message:
            pass

        m = Message()
        m.topic, m.payload, m.retain = topic, payload, retain
        self.on_message(self, None, m)

    def light(self, payload: bytes) -> None:
        """
        Home Assistant sends C{payload} to the light's command topic.
        """
        self.message(TOPICS.display_set, payload)


def home_assistant(testcase, hub) -> FakeClient:
    """
    A started MQTT bridge on C{hub}, connected to a fake broker and stopped
    when C{testcase} ends: C{light(...)} on the client returned sends Home
    Assistant's light commands.
    """
    client = FakeClient()
    bridge = mqtt.MQTTBridge(hub, client, BROKER, TOPICS, SynchronousReactor(), lambda f: succeed(f()))
    bridge.startService()
    testcase.addCleanup(bridge.stopService)
    client.connected()
    return client
