"""
The MQTT bridge (SPEC 12): Home Assistant discovery for the plugs and the
lamps' display, commands from Home Assistant, and (C{MQTT_EVENTS}) pub/sub
both ways.

paho-mqtt runs its network loop on a thread of its own (C{loop_start}): it
connects, reconnects with backoff and does the socket work there.  Its
callbacks touch nothing: each hands its arguments to the reactor with
C{callFromThread}, and L{MQTTBridge} does the rest on the reactor thread.
Publishing from the reactor only queues a packet for paho's thread (paho's
C{publish} is thread-safe and never waits for the network), so no report
and no answer ever waits for the broker.

This module imports paho; C{tap} imports it only when C{MQTT_URL} is set.
"""

import re
import shlex
import ssl
import sys
from collections import OrderedDict
from typing import Any, Callable, Optional

import paho.mqtt.client as paho
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ..core import limits
from ..core.pubsub import InvalidPublication, check_event
from ..server.links import Link
from . import homeassistant as ha
from .mqtt_url import Broker, parse_broker_url

# paho's reconnect backoff: 1 s, doubling, capped (see core/limits.py).
RECONNECT_MIN = limits.MQTT_RECONNECT_MIN
RECONNECT_MAX = limits.MQTT_RECONNECT_MAX
KEEPALIVE = limits.MQTT_KEEPALIVE
MAX_QUEUED = limits.MQTT_MAX_QUEUED
MAX_EVENTS_UNSENT = limits.MQTT_MAX_EVENTS_UNSENT
EVENTS_STALLED = limits.MQTT_EVENTS_STALLED
MAX_EVENTS_HELD = limits.MQTT_MAX_EVENTS_HELD
REPUBLISH_WINDOW = limits.MQTT_REPUBLISH_WINDOW
# Topics whose retained command is remembered as said (past that, each is
# said every time the broker hands it over).
RETAINED_TOLD = 1000
# The most a message from the broker may hold (a broker passes up to 256 MB):
# what a WebSocket or HTTP peer may send.  A bigger one is ignored.
MAX_PAYLOAD = limits.MAX_MESSAGE
STOP_TIMEOUT = limits.MQTT_STOP_TIMEOUT
# The origin our publications into pub/sub carry (the dashboard shows it).
ORIGIN = "mqtt"
PEER = "mqtt"

_log = Logger(namespace="smartplug_backend.integrations.mqtt")


def connect_error(error: Optional[BaseException]) -> str:
    """
    Why a try to connect failed, for the log: C{cannot connect}, and the
    socket's or TLS's own words when known (C{Connection refused},
    C{certificate verify failed: self-signed certificate}).
    """
    if error is None:
        return "cannot connect"
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        why = f"certificate verify failed: {error.verify_message}"
    elif isinstance(error, OSError) and error.strerror:
        why = error.strerror
    else:
        why = str(error) or type(error).__name__
    return f"cannot connect: {re.sub(r' [(]_ssl[.]c:[0-9]+[)]$', '', why)}"


def make_client(broker: Broker, topics: ha.Topics) -> paho.Client:
    """
    A paho client for C{broker}: MQTT 3.1.1, a random client id with a clean
    session, our last will (C{offline}, retained), TLS for C{mqtts://}.
    """
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        # The system's CA certificates, host name checked.
        client.tls_set()
    client.will_set(topics.status, ha.OFFLINE, qos=1, retain=True)
    client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
    client.max_queued_messages_set(MAX_QUEUED)
    return client


class MQTTBridge(Service):
    """
    Keeps Home Assistant's view in step with the hub, and applies its
    commands through the hub.

    @param hub: the L{smartplug_backend.core.hub.Hub}.
    @param client: a paho C{Client} (or a fake with the same methods and
        callback attributes), not yet connected.
    @param broker: where to connect.
    @param topics: the bridge's topics.
    @param reactor: for C{callFromThread}.
    @param run_in_thread: C{run_in_thread(f)} returns a Deferred of C{f()}
        run off the reactor thread (paho's C{loop_stop} joins its thread).
    @param events: bridge pub/sub publications both ways (C{MQTT_EVENTS}).
    """

    _log = _log

    def __init__(self, hub, client, broker: Broker, topics: ha.Topics, reactor,
                 run_in_thread: Callable[[Callable[[], Any]], Deferred], events: bool = False) -> None:
        self._hub = hub
        self._client = client
        self._broker = broker
        self._topics = topics
        self._reactor = reactor
        self._run = run_in_thread
        self._events = events
        self._connected = False
        # True from the first failure until the next connection: one log
        # line per outage, not one per try.
        self._away = False
        # The republish under way (the rest of its messages, made as they
        # go out: L{_pump}), and the ids of our QoS 1 messages the broker has
        # not acknowledged yet.
        self._republishing = None
        # A republished message paho's full queue did not take: sent first
        # when the republish goes on.
        self._held = None
        self._unacked: set = set()
        # Our QoS 0 messages paho has not written to the broker's socket yet
        # (it tells with on_publish once it has), oldest first: id -> when
        # handed over.  paho keeps them without a bound, so past
        # MAX_EVENTS_UNSENT of them, the oldest waiting EVENTS_STALLED
        # seconds, or past MAX_EVENTS_HELD, new events are dropped.
        self._unsent: OrderedDict = OrderedDict()
        # Said once per connection: paho's queue was full, messages dropped;
        # events were dropped.
        self._told_full = False
        self._told_unsent = False
        # Messages paho's full queue did not take, and events dropped
        # (GET /metrics).
        self.dropped = 0
        # Up or not, since when, why: the dashboard and GET /metrics.
        self.link = Link("mqtt", broker.where, reactor.seconds)
        # Topics whose retained command was said to be ignored, and topics
        # said once to be refused (by paho, or for what came on them): a
        # client publishing there again and again fills no log.
        self._told_retained: set = set()
        self._told_topics: set = set()
        # Subscribed now, in wiring order (tap adds tweets after us, as
        # SPEC 1.1 wants them last); nothing is published before connecting.
        # A plug the hub drops (several nodes: another copy of the state
        # won) keeps its entity in Home Assistant: it is the same entity,
        # name and area kept, once the plug reports again.
        self._stops: list[Callable[[], None]] = [hub.listen(self._report), hub.watch_display(self._display)]
        if events:
            self._stops.append(hub.pubsub.observe(self._published))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish

    # -- paho's thread: hand over, touch nothing ---------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._reactor.callFromThread(self._connect_result, reason_code.is_failure, str(reason_code))

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this from inside its "except OSError:" around the
        # connect, so the error is the one being handled; if a paho version
        # stops doing so, the line just says "cannot connect".
        self._reactor.callFromThread(self._on_connect_error, connect_error(sys.exc_info()[1]))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._reactor.callFromThread(self._lost, str(reason_code))

    def _on_message(self, client, userdata, message) -> None:
        self._reactor.callFromThread(self._message, message.topic, message.payload, message.retain)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._reactor.callFromThread(self._acknowledged, mid)

    # -- the reactor thread -------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._log.info("MQTT: connecting to {where}", where=self._broker.where)
        # Neither looks anything up nor connects here: paho's thread does.
        self._client.connect_async(self._broker.host, self._broker.port, KEEPALIVE)
        self._client.loop_start()

    def stopService(self) -> Deferred:
        """
        Say C{offline}, disconnect, and fire once paho's thread has ended
        (or after L{STOP_TIMEOUT} seconds).
        """
        super().stopService()
        for stop in self._stops:
            stop()
        self._stops = []
        was_connected = self._connected
        self._republishing = None
        if was_connected:
            # A clean disconnect drops the will, so we say it ourselves, at
            # QoS 0: paho sends that at once, before the DISCONNECT, while a
            # QoS 1 message waits behind the ones still unacknowledged (a
            # republish of thousands of plugs), and the DISCONNECT does not.
            self._publish(ha.Message(self._topics.status, ha.OFFLINE.encode()), qos=0)
        self._connected = False
        self._client.disconnect()
        stopped = self._run(self._client.loop_stop)
        stopped.addTimeout(STOP_TIMEOUT, self._reactor)
        done = "MQTT: disconnected from {where}" if was_connected else "MQTT: stopped trying to reach {where}"
        stopped.addCallbacks(
            lambda _: self._log.info(done, where=self._broker.where),
            lambda f: self._log.warn("MQTT: stopped without a clean disconnect: {why}", why=f.getErrorMessage()),
        )
        return stopped

    def _connect_result(self, failed: bool, reason: str) -> None:
        if not self.running:
            return  # handed over after stopService: we are leaving
        if failed:
            # Refused (bad password, not authorised): paho tries again.
            hint = ""
            if reason in ("Not authorized", "Bad user name or password"):
                hint = "; check the user and password in MQTT_URL: a % in them is written %25"
            self._unavailable(f"refused: {reason}{hint}")
            return
        self._connected = True
        self._away = False
        self._told_full = False
        self._told_unsent = False
        self.link.went_up()
        # Messages of an earlier connection that paho sends again are not
        # counted toward the republish window.
        self._unacked.clear()
        self._unsent.clear()
        self._log.info("MQTT: connected to {where}", where=self._broker.where)
        subscriptions = [(self._topics.ha_status, 1), (self._topics.display_set, 1), (self._topics.display_command, 1)]
        if self._events:
            subscriptions.append((self._topics.publish_filter, 1))
        self._client.subscribe(subscriptions)
        self.republish()

    def _unavailable(self, why: str) -> None:
        self._connected = False
        if self.running:
            self.link.went_down(why)
        if not self._away and self.running:
            self._away = True
            self._log.warn(
                "MQTT: broker {where} unavailable ({why}); trying again in the background, at most every {cap} s",
                where=self._broker.where, why=why, cap=RECONNECT_MAX,
            )

    def _lost(self, reason: str) -> None:
        if self.running:
            # paho dropped the events it had not written yet, unsaid: every
            # one written was told before the end.
            self.dropped += len(self._unsent)
        self._unsent.clear()
        if reason == "Unspecified error":
            # What paho says when the socket closed under it.
            reason = "the broker closed it or went away"
        if self._connected:
            self._unavailable(f"connection lost: {reason}")
        elif not self._away:
            if "keep alive timeout" in reason.lower():
                # Accepted, then silent: not a TLS port (that answers plain
                # MQTT with an alert and closes), but something that does
                # not speak MQTT, or a broker that hangs.
                self._unavailable(f"it accepted the connection but did not answer the MQTT handshake within "
                                  f"{KEEPALIVE} s; is port {self._broker.port} an MQTT broker's?")
            else:
                # Closed before the broker said yes: a TLS port spoken to in
                # plain MQTT closes so.
                self._unavailable(reason + self._scheme_hint())

    def _on_connect_error(self, why: str) -> None:
        # mqtts:// to a plain port: the broker resets the TLS handshake, or
        # answers with bytes that are no TLS record.
        if self._broker.tls and re.search(r"reset by peer|wrong version number|EOF|record layer", why):
            why += self._scheme_hint()
        self._unavailable(why)

    def _scheme_hint(self) -> str:
        port = self._broker.port
        if self._broker.tls:
            return f"; if port {port} is plain MQTT (no TLS), use mqtt://"
        return f"; if port {port} speaks TLS, use mqtts://"

    def republish(self) -> None:
        """
        Publish our status, every discovery config and every state again:
        at most L{REPUBLISH_WINDOW} unacknowledged at a time, the rest as the
        broker acknowledges them, so that thousands of plugs do not fill
        paho's queue (its limit would drop the rest, and what is published
        live meanwhile).  A republish asked for while one is under way
        starts it again from the top (Home Assistant's birth messages come
        in bursts).
        """
        hub = self._hub

        def display():
            # A node that has not loaded its state (Redis unreachable at
            # start) does not know the display: its retained state stays.
            return hub.display() if hub.display_known else None

        self._republishing = ha.discovery_now([p.id for p in hub.plugs()], hub.plug, display, self._topics)
        self._held = None
        self._pump()

    def _pump(self) -> None:
        messages = self._republishing
        while messages is not None and self._connected and len(self._unacked) < REPUBLISH_WINDOW:
            message = self._held or next(messages, None)
            self._held = None
            if message is None:
                self._republishing = None
                return
            if not self._publish(message, held=True):
                # paho's queue is full (of what it sends again after a
                # reconnect): this one waits for the next acknowledgement,
                # rather than the rest of the republish being dropped.
                self._held = message
                return

    def _acknowledged(self, mid: int) -> None:
        self._unacked.discard(mid)
        self._unsent.pop(mid, None)
        if self._republishing is not None:
            self._pump()

    def _publish(self, message: ha.Message, qos: int = 1, held: bool = False) -> bool:
        """
        Hand C{message} to paho.

        @param held: the caller keeps C{message} to try again: a full queue
            does not drop it.
        @return: False when paho's queue is full and did not take it.
        """
        if not self._connected:
            # Everything retained is published again on (re)connect.
            return True
        try:
            sent = self._client.publish(message.topic, message.payload, qos=qos, retain=message.retain)
        except ValueError as e:
            # A topic paho refuses (e.g. an event named with + or #).
            self._once(self._told_topics, message.topic, "MQTT: not published to {topic!r}: {why}", why=str(e))
            return True
        if sent.rc == paho.MQTT_ERR_QUEUE_SIZE:
            if not held:
                self.dropped += 1
            if not self._told_full:
                self._told_full = True
                self._log.warn(
                    "MQTT: {count} messages wait for {where} to acknowledge them; more are dropped until it does "
                    "(every state is published again on the next reconnect, or when Home Assistant restarts)",
                    count=MAX_QUEUED, where=self._broker.where,
                )
            return False
        if qos:
            self._unacked.add(sent.mid)
        elif sent.rc == paho.MQTT_ERR_SUCCESS:
            self._unsent[sent.mid] = self._reactor.seconds()
        else:
            # Not taken: the connection ended under it (its end is on its
            # way to the reactor).
            self.dropped += 1
        return True

    def _report(self, report) -> None:
        for message in ha.plug_messages(report.plug, report.previous is None, self._topics):
            self._publish(message)

    def _display(self, event) -> None:
        if event.command is not None:
            return
        self._publish(ha.display_message(event.state, self._topics))

    def _published(self, event: str, data: Any, origin: Optional[str]) -> None:
        # Every publication, ours from <prefix>/publish/E included: that
        # topic is not <prefix>/events/E, so nothing loops.
        if self._connected and self._events_stalled():
            self.dropped += 1
            if not self._told_unsent:
                self._told_unsent = True
                self._log.warn(
                    "MQTT: {count} events wait to be written to {where}, which has read none of them for {seconds} s; "
                    "more events are dropped until it reads again, or until the connection ends",
                    count=len(self._unsent), where=self._broker.where, seconds=EVENTS_STALLED,
                )
            return
        self._publish(ha.Message(self._topics.event(event), ha.event_payload(data), retain=False), qos=0)

    def _events_stalled(self) -> bool:
        """
        Whether MAX_EVENTS_UNSENT events wait to be written and the oldest
        has waited EVENTS_STALLED seconds (the broker does not read), or
        MAX_EVENTS_HELD wait, whatever their age (paho's memory).
        """
        if len(self._unsent) < MAX_EVENTS_UNSENT:
            return False
        if len(self._unsent) >= MAX_EVENTS_HELD:
            return True
        return self._reactor.seconds() - next(iter(self._unsent.values())) >= EVENTS_STALLED

    def _message(self, topic: str, payload: bytes, retained: bool) -> None:
        if not self.running:
            return
        try:
            self._handle(topic, payload, retained)
        except Exception:
            self._log.failure("MQTT: message on {topic!r} not handled", topic=topic)

    def _once(self, told: set, topic: str, text: str, **fields) -> None:
        """
        Warn C{text} about C{topic} unless C{told} holds it; C{told} keeps
        the first L{RETAINED_TOLD} topics, past which each is said every
        time.
        """
        if topic in told:
            return
        if len(told) < RETAINED_TOLD:
            told.add(topic)
        self._log.warn(text, topic=topic, **fields)

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        topics = self._topics
        if len(payload) > MAX_PAYLOAD:
            self._once(self._told_topics, topic, "MQTT: ignored a message of {size} bytes on {topic!r}: at most {most}",
                       size=len(payload), most=MAX_PAYLOAD)
            return
        if topic == topics.ha_status:
            if payload == ha.ONLINE.encode() and self._connected:
                self._log.info("MQTT: Home Assistant is online; publishing discovery again")
                self.republish()
            return
        if not payload and topic in (topics.display_set, topics.display_command):
            # Clearing a retained command publishes an empty message: not a
            # command, and nothing to complain about.
            return
        if retained:
            # A retained command would be applied again on every reconnect;
            # the broker hands it over again each time: said once per topic.
            # The topic comes from the broker: quoted for the shell, so that
            # the line can be pasted as it is.
            self._once(
                self._told_retained, topic,
                "MQTT: ignored a retained message on {topic!r}: commands must not be retained; clear it with "
                "mosquitto_pub -r -n -t {quoted} (and the broker's -h/-u/-P)",
                quoted=shlex.quote(topic),
            )
            return
        if topic == topics.display_set:
            self._light_command(payload)
        elif topic == topics.display_command:
            try:
                command = ha.parse_button(payload)
            except ha.InvalidCommand as e:
                self._log.warn("MQTT: ignored a command on {topic!r}: {why}", topic=topic, why=str(e))
                return
            self._hub.display_command(command, PEER)
        elif self._events and (event := topics.published_event(topic)) is not None:
            try:
                check_event(event)
            except InvalidPublication as e:
                self._once(self._told_topics, topic, "MQTT: ignored a publication on {topic!r}: {why}", why=str(e))
                return
            self._hub.publish(event, ha.parse_event_data(payload), PEER, origin=ORIGIN)

    def _light_command(self, payload: bytes) -> None:
        # The hub keeps what the display was last when on, as its journal
        # does: a bare ON restores it after a restart too, on every node.
        last_on = self._hub.last_on()
        try:
            display = ha.parse_light_command(payload, self._hub.display(), last_on.state, last_on.colour)
        except ha.InvalidCommand as e:
            self._log.warn("MQTT: ignored a light command on {topic!r}: {why}", topic=self._topics.display_set, why=str(e))
            # Home Assistant waits for the state: tell it nothing changed.
            self._publish(ha.display_message(self._hub.display(), self._topics))
            return
        done = self._hub.set_display(display, PEER)
        # None: the journal refused it (logged by the hub); show the old state.
        done.addCallback(lambda shown: None if shown is not None else self._publish(
            ha.display_message(self._hub.display(), self._topics)))


def mqtt_service(settings, hub, reactor) -> Optional[MQTTBridge]:
    """
    The bridge for C{settings}, or C{None} when C{MQTT_URL} is unset.
    """
    if settings.MQTT_URL is None:
        return None
    broker = parse_broker_url(settings.MQTT_URL)
    topics = ha.Topics(settings.MQTT_PREFIX, settings.HA_DISCOVERY_PREFIX)
    client = make_client(broker, topics)

    def run_in_thread(f):
        return deferToThreadPool(reactor, reactor.getThreadPool(), f)

    return MQTTBridge(hub, client, broker, topics, reactor, run_in_thread, events=settings.MQTT_EVENTS)

