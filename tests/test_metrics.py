"""
Tests for the Prometheus metrics (smartplug_backend.http.metrics): every
family moves with the traffic that should move it, in memory; GET /metrics
is served only to METRICS_ALLOW; labels never hold what a client chose.
"""

import json

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend import config
from smartplug_backend.core.hub import Hub
from smartplug_backend.core.journal import StoreFailed
from smartplug_backend.core.limits import MAX_UNSENT
from smartplug_backend.core.pubsub import report_publisher
from smartplug_backend.http.api import make_app
from smartplug_backend.http.channel import make_site
from smartplug_backend.http.metrics import (
    MeteredJournal,
    MetricsResource,
    RequestTimer,
    ServerCollector,
    commit_timings,
    new_registry,
)
from smartplug_backend.integrations.tweets import Notifier
from smartplug_backend.integrations.twitter_client import TweetError
from smartplug_backend.server.connections import ConnectionCap
from smartplug_backend.server.guard import Guard
from smartplug_backend.server.links import Link
from smartplug_backend.ws.apps import AppFactory
from smartplug_backend.ws.devices import DeviceFactory

from .helpers import SYNC_BRIDGE, SynchronousReactor, SynchronousThreadPool, accept, http_client, ws_connect
from .tweet_helpers import TEXTS, run_now

SECRET = "s3cret"
KEY = "k3y"


def sample(registry, name: str, **labels) -> float:
    """
    The value of one sample of C{registry}, 0 when it is absent.
    """
    return registry.get_sample_value(name, labels) or 0.0


class FailingJournal:
    """
    A journal whose disk is full: every save is refused.
    """

    def save_report(self, plug_id, value, at, source):
        return fail(StoreFailed("database or disk is full"))

    def save_display(self, display):
        return fail(StoreFailed("database or disk is full"))


class ServerCountsTests(SynchronousTestCase):
    """
    The collector's families follow reports, publications, slow clients,
    authentication failures, bans, connections and tweets.
    """

    def setUp(self):
        self.build(Hub(now=Clock().seconds))

    def build(self, hub):
        self.clock = Clock()
        self.hub = hub
        self.guard = Guard(self.clock, ban_after=2, ban_seconds=60)
        self.cap = ConnectionCap(100, self.clock)
        self.apps = AppFactory(hub, api_key=KEY, clock=self.clock, guard=self.guard)
        self.devices = DeviceFactory(hub, self.guard, SECRET, self.clock)
        hub.pubsub.deliver_with(self.apps.send_to_all)
        hub.listen(self.apps.broadcast)
        self.notifier = Notifier(self.post, run_now, self.clock, TEXTS)
        self.posts = []
        self.registry = new_registry()
        self.registry.register(
            ServerCollector(hub, self.cap, self.guard, {"app": self.apps, "device": self.devices}, self.notifier)
        )

    def post(self, text):
        outcome = self.posts.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def value(self, name, **labels):
        return sample(self.registry, name, **labels)

    def device(self, peer="10.0.0.7"):
        client, server, pump = ws_connect(self.devices, peer=peer)
        client.sendMessage(SECRET.encode())
        pump.flush()
        return client, pump

    def test_reports_accepted_per_source(self):
        """
        A report over HTTP counts for source "http", one from a device for
        "device"; nothing is refused.
        """
        http = http_client(self.hub)
        self.successResultOf(http.post("http://x/data", data=b'{"id": "p", "value": 1}'))
        self.successResultOf(http.post("http://x/data", data=b'{"id": "p", "value": 0}'))
        lamp, pump = self.device()
        lamp.sendMessage(b'{"id": "q", "value": 1}')
        pump.flush()
        self.assertEqual(self.value("smartplug_reports_accepted_total", source="http"), 2)
        self.assertEqual(self.value("smartplug_reports_accepted_total", source="device"), 1)
        self.assertEqual(self.value("smartplug_reports_refused_total", source="http", reason="invalid"), 0)

    def test_invalid_reports_refused(self):
        """
        A bad body at POST /data (400) and a device message that is not a
        report count as refused, reason "invalid", per source; none is
        accepted.
        """
        http = http_client(self.hub)
        response = self.successResultOf(http.post("http://x/data", data=b'{"id": "p", "value": 7}'))
        self.assertEqual(response.code, 400)
        lamp, pump = self.device()
        lamp.sendMessage(b"hello")
        lamp.sendMessage(b"\x01\x02", isBinary=True)
        pump.flush()
        self.assertEqual(self.value("smartplug_reports_refused_total", source="http", reason="invalid"), 1)
        self.assertEqual(self.value("smartplug_reports_refused_total", source="device", reason="invalid"), 2)
        self.assertEqual(self.value("smartplug_reports_accepted_total", source="http"), 0)

    def test_reports_the_store_refused(self):
        """
        A report the state store cannot record (503 over HTTP) counts as
        refused, reason "store", per source.
        """
        self.build(Hub(journal=FailingJournal()))
        http = http_client(self.hub)
        response = self.successResultOf(http.post("http://x/data", data=b'{"id": "p", "value": 1}'))
        self.assertEqual(response.code, 503)
        lamp, pump = self.device()
        lamp.sendMessage(b'{"id": "q", "value": 1}')
        pump.flush()
        self.assertEqual(self.value("smartplug_reports_refused_total", source="http", reason="store"), 1)
        self.assertEqual(self.value("smartplug_reports_refused_total", source="device", reason="store"), 1)
        self.assertEqual(self.value("smartplug_reports_accepted_total", source="http"), 0)

    def test_publications_and_deliveries(self):
        """
        Every publication counts once, with or without subscribers; each
        frame sent to a subscriber counts as a delivery.
        """
        subscribers = []
        for name in ("a", "b"):
            client, _, pump = ws_connect(self.apps, f"/subscribe?clientName={name}&apiKey={KEY}")
            client.sendMessage(b'{"action": "subscribe", "event": "door"}')
            pump.flush()
            subscribers.append((client, pump))
        publisher, _, pump = ws_connect(self.apps, f"/publish?clientName=pub&apiKey={KEY}")
        publisher.sendMessage(b'{"event": "door", "data": "open"}')
        publisher.sendMessage(b'{"event": "nobody-listens", "data": 1}')
        pump.flush()
        for client, client_pump in subscribers:
            client_pump.flush()
            self.assertEqual(len(client.messages), 1)
        self.assertEqual(self.value("smartplug_publications_total"), 2)
        self.assertEqual(self.value("smartplug_deliveries_total"), 2)

    def test_replayed_publications_are_deliveries(self):
        """
        Publications sent again to a subscriber that asks for the last one
        or for those since an offset count as deliveries; the "recovered"
        frame does not, nor does a publication again.
        """
        self.hub.pubsub.publish("door", "open")
        self.hub.pubsub.publish("door", "shut")
        late, _, pump = ws_connect(self.apps, f"/subscribe?clientName=late&apiKey={KEY}")
        late.sendMessage(b'{"action": "subscribe", "event": "door", "last": true}')
        pump.flush()
        resuming, _, pump = ws_connect(self.apps, f"/subscribe?clientName=back&apiKey={KEY}")
        epoch = json.loads(late.messages[-1])["epoch"]
        resuming.sendMessage(json.dumps({"action": "subscribe", "event": "door", "since": {"offset": 0, "epoch": epoch}}).encode())
        pump.flush()
        self.assertEqual([json.loads(m).get("data") for m in late.messages[-1:]], ["shut"])
        self.assertEqual(len(resuming.messages), 3)
        self.assertEqual(self.value("smartplug_publications_total"), 2)
        self.assertEqual(self.value("smartplug_deliveries_total"), 3)

    def test_other_nodes_publications_not_counted(self):
        """
        With several nodes (SPEC 11) a publication counts on the node that
        took it in, so the nodes' counts add up; its deliveries count where
        they are sent.
        """
        client, _, pump = ws_connect(self.apps, f"/subscribe?clientName=a&apiKey={KEY}")
        client.sendMessage(b'{"action": "subscribe", "event": "door"}')
        pump.flush()
        elsewhere = Hub().pubsub.number("door", "open")
        self.hub.apply_publication(elsewhere, "open")
        pump.flush()
        self.assertEqual(len(client.messages), 1)
        self.assertEqual(self.value("smartplug_publications_total"), 0)
        self.assertEqual(self.value("smartplug_deliveries_total"), 1)

    def test_other_nodes_reports_not_counted_as_publications(self):
        """
        Another node's plug report comes with its publication (event
        smartplug): it counts there, not here; this node's own does.
        """
        hub = Hub(now=Clock().seconds, publish_reports=True)
        self.build(hub)
        hub.listen(report_publisher(hub))
        other = Hub(now=Clock().seconds, publish_reports=True)
        taken = self.successResultOf(other.report("p", 1, "http", "10.0.0.1"))
        hub.apply_report("p", 1, taken.plug.updated_at, "http", "node-b", publication=taken.publication)
        self.assertEqual(self.value("smartplug_publications_total"), 0)
        self.successResultOf(hub.report("q", 1, "http", "10.0.0.1"))
        self.assertEqual(self.value("smartplug_publications_total"), 1)

    def test_slow_client_dropped(self):
        """
        A subscriber cut off for not reading counts once, for its listener.
        """
        slow, server, pump = ws_connect(self.apps, f"/subscribe?clientName=slow&apiKey={KEY}")
        slow.sendMessage(b'{"action": "subscribe", "event": "big"}')
        pump.flush()
        server.transport.producer.pauseProducing()
        chunk = "x" * (60 * 1024)
        for _ in range(MAX_UNSENT // len(chunk) + 2):
            self.hub.pubsub.publish("big", chunk)
        self.assertTrue(server.transport.disconnecting)
        self.assertEqual(self.value("smartplug_slow_clients_dropped_total", listener="app"), 1)
        self.assertEqual(self.value("smartplug_slow_clients_dropped_total", listener="device"), 0)
        # The dashboard is off here: its listener is listed all the same.
        self.assertEqual(
            self.registry.get_sample_value("smartplug_slow_clients_dropped_total", {"listener": "http"}), 0
        )

    def test_auth_failures_and_bans(self):
        """
        Wrong API keys (app WebSocket and HTTP) count as kind "api_key", a
        wrong device secret as "device_secret", and "dashboard_login" is
        listed from the start; a ban shows as active until it is lifted.
        """
        client, _, _ = ws_connect(self.apps, "/subscribe?clientName=x&apiKey=wrong", peer="10.0.0.1")
        self.assertFalse(client.opened)
        http = http_client(self.hub, guard=self.guard, api_key=KEY)
        response = self.successResultOf(
            http.post("http://x/display", data=b'{"mode": 0}', headers={"X-API-Key": "wrong"})
        )
        self.assertEqual(response.code, 401)
        lamp, _, pump = ws_connect(self.devices, peer="10.0.0.2")
        lamp.sendMessage(b"not the secret")
        pump.flush()
        self.assertEqual(self.value("smartplug_auth_failures_total", kind="api_key"), 2)
        self.assertEqual(self.value("smartplug_auth_failures_total", kind="device_secret"), 1)
        # Shown at 0 until a dashboard login fails (review finding 3).
        self.assertEqual(self.registry.get_sample_value("smartplug_auth_failures_total", {"kind": "dashboard_login"}), 0)
        self.assertEqual(self.value("smartplug_bans_active"), 0)
        ws_connect(self.apps, "/subscribe?clientName=x&apiKey=wrong", peer="10.0.0.1")
        self.assertEqual(self.value("smartplug_bans_active"), 1)
        self.clock.advance(60)
        self.assertEqual(self.value("smartplug_bans_active"), 0)

    def test_open_connections_per_listener(self):
        """
        Each listener's open connections are counted under its name, and
        uncounted as they close; refusals past the cap are counted too.
        """
        http = self.cap.wrap(Factory.forProtocol(Protocol), "http")
        app = self.cap.wrap(Factory.forProtocol(Protocol), "app")
        first, _ = accept(http)
        accept(http)
        accept(app)
        self.assertEqual(self.value("smartplug_open_connections", listener="http"), 2)
        self.assertEqual(self.value("smartplug_open_connections", listener="app"), 1)
        self.assertEqual(self.value("smartplug_open_connections", listener="device"), 0)
        first.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.value("smartplug_open_connections", listener="http"), 1)
        self.cap.limit = 2
        accept(app)
        self.assertEqual(self.value("smartplug_connections_refused_total", reason="max_connections"), 1)
        self.assertEqual(
            self.registry.get_sample_value("smartplug_connections_refused_total", {"reason": "per_address"}), 0
        )
        self.assertEqual(self.value("smartplug_open_connections", listener="app"), 1)

    def test_tweets_sent_and_failed(self):
        """
        A posted tweet counts as sent; one Twitter refuses for good counts
        as failed.
        """
        self.posts = ["1001", TweetError("Status is a duplicate.", status=403, code=187)]
        self.hub.listen(self.notifier.report)
        self.hub.report("p", 1, "http", "x")
        self.hub.report("p", 0, "http", "x")
        self.assertEqual(self.value("smartplug_tweets_sent_total"), 1)
        self.assertEqual(self.value("smartplug_tweets_failed_total"), 1)

    def test_every_family_present_at_zero(self):
        """
        Before any traffic every smartplug family is there, at zero, with
        the library's process and Python families beside them.
        """
        names = {family.name for family in self.registry.collect()}
        for name in [
            "smartplug_open_connections",
            "smartplug_reports_accepted",
            "smartplug_reports_refused",
            "smartplug_publications",
            "smartplug_deliveries",
            "smartplug_slow_clients_dropped",
            "smartplug_auth_failures",
            "smartplug_bans_active",
            "smartplug_tweets_sent",
            "smartplug_tweets_failed",
            "process_cpu_seconds",
            "python_info",
        ]:
            self.assertIn(name, names)
        self.assertEqual(self.value("smartplug_reports_accepted_total", source="http"), 0)


class LinkMetricsTests(SynchronousTestCase):
    """
    A gauge per outside service set up (Redis, the MQTT broker), and the
    MQTT messages dropped; none of them without those services.
    """

    class Bridge:
        dropped = 7

    def collect(self, *links, mqtt=None):
        clock = Clock()
        registry = new_registry()
        registry.register(
            ServerCollector(Hub(now=clock.seconds), ConnectionCap(100, clock), Guard(clock), {}, None, links, mqtt)
        )
        return registry

    def test_connected_gauges(self):
        """
        C{smartplug_mqtt_connected} and C{smartplug_redis_connected} are 1
        while their link is up, else 0.
        """
        clock = Clock()
        mqtt, redis = Link("mqtt", "mqtt://b:1883", clock.seconds), Link("redis", "redis://r:6379/0", clock.seconds)
        registry = self.collect(mqtt, redis, mqtt=self.Bridge())
        self.assertEqual((sample(registry, "smartplug_mqtt_connected"), sample(registry, "smartplug_redis_connected")),
                         (0, 0))
        redis.went_up()
        self.assertEqual((sample(registry, "smartplug_mqtt_connected"), sample(registry, "smartplug_redis_connected")),
                         (0, 1))
        self.assertEqual(sample(registry, "smartplug_mqtt_messages_dropped_total"), 7)

    def test_none_without_services(self):
        """
        Without REDIS_URL and MQTT_URL there is no such family.
        """
        names = {family.name for family in self.collect().collect()}
        self.assertFalse({"smartplug_mqtt_connected", "smartplug_redis_connected", "smartplug_mqtt_messages_dropped"}
                         & names)


class SlowJournal:
    """
    A journal whose saves answer when the test says so.
    """

    def __init__(self):
        self.pending = []

    def save_report(self, plug_id, value, at, source):
        self.pending.append(Deferred())
        return self.pending[-1]

    def save_display(self, display):
        self.pending.append(Deferred())
        return self.pending[-1]

    def history(self, plug_id, limit):
        return "history of " + plug_id


class CommitTimeTests(SynchronousTestCase):
    """
    MeteredJournal times each write from the hub's request to its answer.
    """

    def setUp(self):
        self.clock = Clock()
        self.registry = new_registry()
        self.inner = SlowJournal()
        self.journal = MeteredJournal(self.inner, commit_timings(self.registry), self.clock)
        self.hub = Hub(now=self.clock.seconds, journal=self.journal)

    def test_commit_time_observed(self):
        """
        A report committed 0.25 s after it was asked for, and a display
        change refused after 2 s, are both observed with those times; the
        report is still accepted as before.
        """
        from smartplug_backend.core.display import OFF

        report = self.hub.report("p", 1, "http", "x")
        self.clock.advance(0.25)
        self.inner.pending.pop(0).callback(None)
        self.assertEqual(self.successResultOf(report).plug.value, 1)
        shown = self.hub.set_display(OFF, "x")
        self.clock.advance(2)
        self.inner.pending.pop(0).errback(StoreFailed("disk I/O error"))
        self.assertIsNone(self.successResultOf(shown))
        self.assertEqual(sample(self.registry, "smartplug_store_commit_seconds_count"), 2)
        self.assertEqual(sample(self.registry, "smartplug_store_commit_seconds_sum"), 2.25)
        self.assertEqual(sample(self.registry, "smartplug_store_commit_seconds_bucket", le="0.25"), 1)
        self.assertEqual(sample(self.registry, "smartplug_store_commit_seconds_bucket", le="0.1"), 0)

    def test_reads_pass_through(self):
        """
        Everything but the writes is the wrapped journal's own.
        """
        self.assertEqual(self.journal.history("p", 5), "history of p")


class ManualThreadPool:
    """
    A WSGI pool whose work runs when the test says so.
    """

    def __init__(self):
        self.work = []

    def callInThread(self, f, *args, **kwargs):
        self.work.append((f, args, kwargs))

    def run(self):
        while self.work:
            f, args, kwargs = self.work.pop(0)
            f(*args, **kwargs)


def exchange(site, request: bytes, peer: str = "127.0.0.1") -> bytes:
    """
    Send raw C{request} bytes to C{site} from C{peer}; what came back.
    """
    address = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, 40000)
    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    channel.dataReceived(request)
    return transport.value()


def post(path: bytes, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)


def split(response: bytes):
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], head, body


class SiteTestCase(SynchronousTestCase):
    def make_site(self, allow=("127.0.0.1", "::1"), pool=None):
        self.reactor = SynchronousReactor()
        self.hub = Hub(now=self.reactor.seconds)
        self.registry = new_registry()
        app = make_app(self.hub, SYNC_BRIDGE)
        self.site = make_site(
            app,
            self.reactor,
            pool or SynchronousThreadPool(),
            children={b"metrics": MetricsResource(self.registry, allow)},
            timer=RequestTimer(self.registry, app, self.reactor),
        )
        return self.site


class RequestTimeTests(SiteTestCase):
    """
    smartplug_http_request_seconds: per method and route pattern, never a
    path or plug id from the network.
    """

    def value(self, name, **labels):
        return sample(self.registry, name, **labels)

    def test_time_from_arrival_to_answer(self):
        """
        A request that waits 0.3 s for a WSGI thread is observed as 0.3 s,
        under its route pattern.
        """
        pool = ManualThreadPool()
        site = self.make_site(pool=pool)
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        channel = site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /plugs HTTP/1.1\r\nHost: x\r\n\r\n")
        self.reactor.advance(0.3)
        pool.run()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertEqual(self.value("smartplug_http_request_seconds_count", method="GET", route="/plugs"), 1)
        self.assertAlmostEqual(self.value("smartplug_http_request_seconds_sum", method="GET", route="/plugs"), 0.3)

    def test_client_gone_before_answer(self):
        """
        A request whose client leaves before the answer (the plug's firmware
        closes at once) is still counted, once, timed to its leaving; the
        report is still acted on.
        """
        pool = ManualThreadPool()
        site = self.make_site(pool=pool)
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        channel = site.buildProtocol(address)
        channel.makeConnection(StringTransport(peerAddress=address))
        channel.dataReceived(post(b"/data", b'{"id": "p", "value": 1}'))
        self.reactor.advance(0.2)
        channel.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(1)
        pool.run()
        self.assertEqual(self.hub.plug("p").value, 1)
        self.assertEqual(self.value("smartplug_http_request_seconds_count", method="POST", route="/data"), 1)
        self.assertAlmostEqual(self.value("smartplug_http_request_seconds_sum", method="POST", route="/data"), 0.2)

    def test_routes_not_paths(self):
        """
        Requests are labelled with the app's route patterns (a wrong
        method's too); plug ids, unknown paths and odd methods never become
        labels.
        """
        site = self.make_site()
        exchange(site, post(b"/data", b'{"id": "0xb00b", "value": 1}'))
        exchange(site, b"GET /plugs/0xb00b HTTP/1.1\r\n\r\n")
        exchange(site, b"GET /plugs/0xb00b/history?limit=3 HTTP/1.1\r\n\r\n")
        exchange(site, b"GET /wp-login.php HTTP/1.1\r\n\r\n")
        exchange(site, b"GET /etc/passwd HTTP/1.1\r\n\r\n")
        exchange(site, b"BREW /data HTTP/1.1\r\n\r\n")
        exchange(site, b"GET /data HTTP/1.1\r\n\r\n")
        exchange(site, b"PUT /plugs/0xb00b HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        exchange(site, b"GET /metrics HTTP/1.1\r\n\r\n")
        count = "smartplug_http_request_seconds_count"
        self.assertEqual(self.value(count, method="POST", route="/data"), 1)
        self.assertEqual(self.value(count, method="GET", route="/plugs/<plug_id:path>"), 1)
        self.assertEqual(self.value(count, method="GET", route="/plugs/<plug_id:path>/history"), 1)
        self.assertEqual(self.value(count, method="GET", route="unmatched"), 2)
        # A known path asked with the wrong method (405) keeps its route.
        self.assertEqual(self.value(count, method="other", route="/data"), 1)
        self.assertEqual(self.value(count, method="GET", route="/data"), 1)
        self.assertEqual(self.value(count, method="PUT", route="/plugs/<plug_id:path>"), 1)
        self.assertEqual(self.value(count, method="GET", route="/metrics"), 1)
        labels = {
            value
            for family in self.registry.collect()
            for s in family.samples
            for value in s.labels.values()
        }
        for chosen_by_client in ("0xb00b", "/wp-login.php", "/etc/passwd", "BREW", "127.0.0.1"):
            self.assertFalse([v for v in labels if chosen_by_client in v], chosen_by_client)


class MetricsRouteTests(SiteTestCase):
    """
    GET /metrics on the HTTP site: the registry as Prometheus text, for
    METRICS_ALLOW only; every other path is the app's, as before.
    """

    def test_scrape_from_loopback(self):
        """
        The default allows loopback: 200, Prometheus's content type, a body
        Prometheus's parser reads, holding the server's families.
        """
        self.make_site()
        self.registry.register(ServerCollector(self.hub, ConnectionCap(10, Clock()), Guard(Clock()), {}))
        exchange(self.site, post(b"/data", b'{"id": "p", "value": 1}'))
        status, head, body = split(exchange(self.site, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertIn(b"\r\nContent-Type: text/plain; version=", head)
        families = {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}
        accepted = {s.labels["source"]: s.value for s in families["smartplug_reports_accepted"].samples
                    if s.name.endswith("_total")}
        self.assertEqual(accepted, {"http": 1.0, "device": 0.0})
        self.assertIn("process_cpu_seconds", families)

    def test_openmetrics_when_asked(self):
        """
        A scraper that asks for OpenMetrics gets it.
        """
        self.make_site()
        request = b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
        status, head, body = split(exchange(self.site, request))
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertIn(b"\r\nContent-Type: application/openmetrics-text; version=1.0.0", head)
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_ipv6_loopback_allowed(self):
        """
        ::1 is in the default too.
        """
        self.make_site()
        status, _, _ = split(exchange(self.site, b"GET /metrics HTTP/1.1\r\n\r\n", peer="::1"))
        self.assertEqual(status, b"HTTP/1.1 200 OK")

    def test_other_address_refused(self):
        """
        Any other address gets 403 with a JSON error, whatever its
        X-Forwarded-For says.
        """
        self.make_site()
        request = b"GET /metrics HTTP/1.1\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"
        status, head, body = split(exchange(self.site, request, peer="192.168.1.64"))
        self.assertEqual(status, b"HTTP/1.1 403 Forbidden")
        self.assertIn(b"Content-Type: application/json", head)
        self.assertEqual(
            json.loads(body), {"error": "metrics are not served to this address: see METRICS_ALLOW"}
        )
        self.assertNotIn(b"smartplug_", body)

    def test_allowed_network(self):
        """
        A network in METRICS_ALLOW admits its addresses (an IPv4 address
        seen on a dual-stack socket too) and no others; loopback is not
        special once the setting leaves it out.
        """
        self.make_site(allow=["192.168.1.0/24"])
        request = b"GET /metrics HTTP/1.1\r\n\r\n"
        self.assertEqual(split(exchange(self.site, request, peer="192.168.1.64"))[0], b"HTTP/1.1 200 OK")
        self.assertEqual(split(exchange(self.site, request, peer="::ffff:192.168.1.9"))[0], b"HTTP/1.1 200 OK")
        self.assertEqual(split(exchange(self.site, request, peer="192.168.2.1"))[0], b"HTTP/1.1 403 Forbidden")
        self.assertEqual(split(exchange(self.site, request, peer="127.0.0.1"))[0], b"HTTP/1.1 403 Forbidden")

    def test_allowed_in_mapped_spelling(self):
        """
        An entry written as an IPv4-mapped IPv6 address or network admits
        that IPv4 address, on either kind of socket.
        """
        self.make_site(allow=["::ffff:192.168.1.7", "::ffff:10.0.0.0/104"])
        request = b"GET /metrics HTTP/1.1\r\n\r\n"
        for peer, status in [("192.168.1.7", b"HTTP/1.1 200 OK"), ("::ffff:192.168.1.7", b"HTTP/1.1 200 OK"),
                             ("10.9.8.7", b"HTTP/1.1 200 OK"), ("192.168.1.8", b"HTTP/1.1 403 Forbidden")]:
            self.assertEqual(split(exchange(self.site, request, peer=peer))[0], status, peer)

    def test_head(self):
        """
        HEAD answers as GET does, without the body but with its length,
        and without twisted.web's warning line at every scrape.
        """
        self.make_site()
        with capturedLogs() as events:
            status, head, body = split(exchange(self.site, b"HEAD /metrics HTTP/1.1\r\n\r\n"))
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertIn(b"\r\nContent-Type: text/plain; version=", head)
        self.assertRegex(head, rb"\r\nContent-Length: [1-9][0-9]+")
        self.assertEqual(body, b"")
        self.assertEqual([formatEvent(e) for e in events if "HEAD" in formatEvent(e)], [])

    def test_wrong_method(self):
        """
        Only GET and HEAD: others get 405 with a JSON error and Allow.
        """
        self.make_site()
        status, head, body = split(exchange(self.site, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"))
        self.assertEqual(status, b"HTTP/1.1 405 Method Not Allowed")
        self.assertIn(b"Allow: GET, HEAD", head)
        self.assertEqual(json.loads(body), {"error": "method POST not allowed on /metrics"})

    def test_below_metrics_is_the_app(self):
        """
        /metrics/x is no metrics path: the app's JSON 404, as before; / and
        the app's routes answer as they did.
        """
        self.make_site()
        status, _, body = split(exchange(self.site, b"GET /metrics/x HTTP/1.1\r\n\r\n"))
        self.assertEqual(status, b"HTTP/1.1 404 Not Found")
        self.assertEqual(json.loads(body), {"error": "no such path: /metrics/x"})
        status, _, body = split(exchange(self.site, b"GET / HTTP/1.1\r\n\r\n"))
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", b"hallo."))
        status, _, body = split(exchange(self.site, b"GET /plugs/a%2Fb HTTP/1.1\r\n\r\n"))
        self.assertEqual(json.loads(body), {"error": "unknown plug id: a/b"})


class SettingTests(SynchronousTestCase):
    """
    METRICS_ALLOW (SPEC 8).
    """

    def test_default_is_loopback(self):
        """
        Without the setting, only loopback may scrape.
        """
        self.assertEqual(config.settings_from({}).METRICS_ALLOW, ("127.0.0.1", "::1"))

    def test_networks_accepted(self):
        """
        Addresses and networks, IPv4 and IPv6, are accepted as a tuple.
        """
        allow = config.settings_from({"METRICS_ALLOW": ["10.0.0.0/8", "fd00::/8", "192.168.1.5"]}).METRICS_ALLOW
        self.assertEqual(allow, ("10.0.0.0/8", "fd00::/8", "192.168.1.5"))

    def test_bad_entry_refused(self):
        """
        Something that is no address is refused with a line naming the
        setting.
        """
        error = self.assertRaises(config.ConfigError, config.settings_from, {"METRICS_ALLOW": ["localhost"]})
        self.assertIn("METRICS_ALLOW: 'localhost' is not an address or network", str(error))
