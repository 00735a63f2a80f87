"""
Tests for the dashboard's live WebSocket and its feed
(L{smartplug_backend.http.dashboard.live}, L{smartplug_backend.http.dashboard.feed}):
in memory with iosim, time on a Clock.
"""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend import config
from smartplug_backend.core.display import Display
from smartplug_backend.core.hub import Hub, Plug
from smartplug_backend.http.channel import make_site
from smartplug_backend.http.dashboard import auth, routes
from smartplug_backend.http.dashboard.feed import FLUSH_DELAY, PUBLICATIONS_KEPT, Feed, public_settings
from smartplug_backend.http.dashboard.live import SESSION_ENDED, LiveFactory, LiveResource, session_token
from smartplug_backend.server import passwords
from smartplug_backend.server.connections import ConnectionCap
from smartplug_backend.server.guard import Guard

from .helpers import SynchronousReactor, SynchronousThreadPool, accept, raw_handshake, ws_connect

ORIGIN = "http://localhost:9001"


class Live:
    """
    A hub, guard, sessions, feed and the live factory over them.
    """

    def __init__(self):
        self.clock = Clock()
        self.hub = Hub(now=self.clock.seconds)
        self.guard = Guard(self.clock, ban_after=2, ban_seconds=60)
        self.sessions = auth.Sessions(self.clock, days=1)
        self.facts = {"version": "test"}
        self.feed = Feed(self.hub, self.guard, self.clock, lambda: dict(self.facts))
        self.hub.listen(self.feed.report)
        self.hub.watch_kept(self.feed.kept)
        self.hub.watch_display(self.feed.display)
        self.hub.pubsub.observe(self.feed.publication)
        self.hub.pubsub.watch_connections(self.feed.clients_changed)
        self.guard.watch(self.feed.security_changed)
        self.factory = LiveFactory(self.feed, self.sessions, self.clock)
        self.token, self.session = self.sessions.create("anna")

    def connect(self, origin=ORIGIN, token=True):
        headers = {}
        if origin is not None:
            headers["Origin"] = origin
        if token:
            headers["Cookie"] = f"theme=dark; smartplug_session={self.token}"
        return ws_connect(self.factory, "/ui/live", headers=headers)


class LiveSocketTests(SynchronousTestCase):
    """
    Who may open the live socket, and what it gets.
    """

    def setUp(self):
        self.live = Live()

    def test_large_snapshot(self):
        """
        A snapshot over 64 KiB (500 plugs with long ids) reaches the page
        whole: the message limit is for what peers send.
        """
        for n in range(500):
            self.live.hub.report("p%03d-" % n + "q" * 120, 1, "http", "10.0.0.5")
        client, _, pump = self.live.connect()
        [snapshot] = client.messages
        self.assertGreater(len(snapshot), 64 * 1024)
        self.assertEqual(len(json.loads(snapshot)["plugs"]), 500)
        self.assertIsNone(client.closed)

    def test_snapshot_then_changes(self):
        """
        A page with the session cookie and its own Origin gets the snapshot
        at once, then a message for each report, display change and
        publication as it happens.
        """
        self.live.hub.report("kitchen", 1, "http", "10.0.0.5")
        client, _, pump = self.live.connect()
        self.assertTrue(client.opened)
        snapshot = client.json()[0]
        self.assertEqual(snapshot["type"], "snapshot")
        self.assertEqual([p["id"] for p in snapshot["plugs"]], ["kitchen"])
        self.assertEqual(snapshot["display"], {"mode": 0, "packet": "[cc:0:?:?]"})
        self.assertEqual(snapshot["server"], {"version": "test"})
        self.assertIsNone(snapshot["devices"])

        self.live.clock.advance(3)
        self.live.hub.report("kitchen", 0, "device", "10.0.0.6")
        self.live.hub.set_display(Display(2, color=(1, 2, 3), pulse=4), "me")
        self.live.hub.pubsub.publish("weather", {"t": 21})
        pump.flush()
        report, display, publication = client.json()[1:]
        self.assertEqual(report["report"], {"id": "kitchen", "value": 0, "at": 3, "source": "device"})
        self.assertEqual(report["plug"]["since"], 3)
        self.assertEqual(display["display"]["packet"], "[cc:2:1,2,3:4]")
        self.assertEqual(publication["publication"], {"event": "weather", "data": {"t": 21}, "at": 3, "origin": None})

    def test_foreign_origin_refused(self):
        """
        A page of another site (or none) cannot open the socket, even with
        the cookie: 403 before any upgrade.
        """
        for origin in ("http://evil.example", "null", None):
            client, _, _ = self.live.connect(origin=origin)
            self.assertFalse(client.opened, origin)
        _, transport = raw_handshake(self.live.factory, (
            "GET /ui/live HTTP/1.1\r\nHost: home:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://evil.example\r\nCookie: smartplug_session={self.live.token}\r\n\r\n"
        ).encode())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403"))
        # Origin: null (a page opened from disk) gets the same 403.
        _, transport = raw_handshake(self.live.factory, (
            "GET /ui/live HTTP/1.1\r\nHost: home:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: null\r\nCookie: smartplug_session={self.live.token}\r\n\r\n"
        ).encode())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403"), transport.value()[:80])
        self.assertEqual(self.live.factory.pages, set())

    def test_origin_under_tls(self):
        """
        When the HTTP port speaks TLS the page's own Origin is https://, and
        the same host over http:// is refused.
        """
        live = self.live
        live.factory = LiveFactory(live.feed, live.sessions, live.clock, url="wss://localhost")
        client, _, _ = live.connect(origin="http://localhost:9001")
        self.assertFalse(client.opened)
        client, _, _ = live.connect(origin="https://localhost:9001")
        self.assertTrue(client.opened)

    def test_no_session_refused(self):
        """
        Without a live session cookie the socket is refused (401).
        """
        client, _, _ = self.live.connect(token=False)
        self.assertFalse(client.opened)
        self.live.sessions.end(self.live.session)
        client, _, _ = self.live.connect()
        self.assertFalse(client.opened)

    def test_logout_closes(self):
        """
        Ending the session closes its pages with code 4001.
        """
        client, _, pump = self.live.connect()
        self.live.sessions.end(self.live.session)
        pump.flush()
        self.assertEqual(client.closed[0], SESSION_ENDED)
        self.assertEqual(self.live.factory.pages, set())

    def test_expiry_closes(self):
        """
        A page open when its session expires is closed with code 4001.
        """
        client, _, pump = self.live.connect()
        self.live.clock.advance(86400 - 1)
        pump.flush()
        self.assertIsNone(client.closed)
        self.live.clock.advance(1)
        pump.flush()
        self.assertEqual(client.closed[0], SESSION_ENDED)

    def test_sections_sent_once_per_burst(self):
        """
        Connections and authentication failures are sent as whole sections,
        once per burst, FLUSH_DELAY after it began.
        """
        client, _, pump = self.live.connect()
        pubsub = self.live.hub.pubsub
        pubsub.connected("c1", "kitchen-pi", "10.0.0.7:4000")
        pubsub.subscribe("c1", "weather")
        self.live.guard.failure("10.0.0.8", "wrong API key")
        self.live.guard.failure("10.0.0.8", "wrong API key")
        pump.flush()
        self.assertEqual(len(client.json()), 1)
        self.live.clock.advance(FLUSH_DELAY)
        pump.flush()
        update = client.json()[1]
        self.assertEqual(update["type"], "update")
        self.assertEqual(update["clients"][0]["client_name"], "kitchen-pi")
        self.assertEqual(update["clients"][0]["events"], ["weather"])
        self.assertEqual([b["address"] for b in update["bans"]], ["10.0.0.8"])
        self.assertEqual(update["bans"][0]["until"], 60)
        self.assertEqual(len(update["failures"]), 2)
        self.assertNotIn("server", update)

    def test_server_facts_refreshed_while_open(self):
        """
        The server section is re-sent every few seconds while a page is
        open, and not at all once none is.
        """
        client, _, pump = self.live.connect()
        self.live.facts["version"] = "newer"
        self.live.clock.pump([1] * 11)
        pump.flush()
        self.assertEqual(client.json()[-1]["server"], {"version": "newer"})
        client.sendClose()
        pump.flush()
        self.assertEqual(self.live.clock.getDelayedCalls(), [])


class FeedTests(SynchronousTestCase):
    """
    What the feed keeps and hides.
    """

    def test_clients_by_port_not_name(self):
        """
        The clients list leaves out the device port's connections, and
        shows an app that calls itself "device" (review finding 2).
        """
        live = Live()
        live.hub.pubsub.connected("lamp", "device", "10.0.0.2:1", kind="device")
        live.hub.pubsub.connected("app", "device", "10.0.0.3:1")
        snapshot = json.loads(live.feed.snapshot())
        self.assertEqual([c["ip_address"] for c in snapshot["clients"]], ["10.0.0.3:1"])

    def test_devices_of_every_node(self):
        """
        On Redis (SPEC 11) the devices section lists the other nodes'
        authenticated devices too, from their shared listing: address,
        since when and node (last heard is known only on their own node);
        this node's keep their own fields and gain its node.  A change of
        the shared listings marks the section for the page.
        """
        clock = Clock()
        clock.advance(1700000000)
        hub = Hub(now=clock.seconds, node="pi-kitchen")

        class Devices:
            def connected(self):
                return [{"address": "10.0.0.2:1", "connected_at": 1699999990.0, "last_heard": 1699999999.0}]

        feed = Feed(hub, Guard(clock, ban_after=2, ban_seconds=60), clock, dict, devices=Devices())
        hub.pubsub.watch_connections(feed.clients_changed)
        sent = []
        feed.watch(sent.append)
        feed.viewers(1)
        other = Hub(now=clock.seconds, node="pi-hall").pubsub
        other.connected("lamp", "device", "10.0.0.7:2", kind="device")
        other.connected("app", "device", "10.0.0.8:3")
        hub.pubsub.show_elsewhere([json.loads(json.dumps(other.listing()))])
        clock.advance(FLUSH_DELAY)
        self.assertEqual(json.loads(sent[-1])["devices"], [
            {"address": "10.0.0.2:1", "connected_at": 1699999990.0, "last_heard": 1699999999.0, "node": "pi-kitchen"},
            {"address": "10.0.0.7:2", "connected_at": 1700000000.0, "last_heard": None, "node": "pi-hall",
             "remote": True},
        ])
        self.assertEqual(json.loads(feed.snapshot())["devices"], json.loads(sent[-1])["devices"])

    def test_display_not_known_yet(self):
        """
        While a node on Redis has not loaded the shared state, the snapshot
        shows no display (the page says it is not known), not "off".
        """
        live = Live()
        live.hub.display_known = False
        self.assertIsNone(json.loads(live.feed.snapshot())["display"])
        live.hub.display_known = True
        self.assertEqual(json.loads(live.feed.snapshot())["display"]["packet"], "[cc:0:?:?]")

    def test_last_publications_kept(self):
        """
        The snapshot holds the last PUBLICATIONS_KEPT publications.
        """
        live = Live()
        for i in range(PUBLICATIONS_KEPT + 5):
            live.hub.pubsub.publish("e", i)
        kept = json.loads(live.feed.snapshot())["publications"]
        self.assertEqual([p["data"] for p in kept], list(range(5, PUBLICATIONS_KEPT + 5)))

    def test_since_unknown_until_the_value_changes(self):
        """
        After a restart the feed has not seen when a plug's value began: a
        repeated report leaves "since" unknown (the page reads it from the
        history), rather than making it the time of that report; a report
        that changes the value sets it, and a repeat keeps it.
        """
        live = Live()
        live.hub.restore([Plug("kitchen", 1, 100.0)])
        client, _, pump = live.connect()
        self.assertIsNone(client.json()[0]["plugs"][0]["since"])
        live.clock.advance(500)
        live.hub.report("kitchen", 1, "http", "10.0.0.5")
        pump.flush()

        def since():
            return [(m["plug"]["id"], m["plug"]["since"]) for m in client.json() if m["type"] == "report"]

        self.assertEqual(since(), [("kitchen", None)])
        self.assertIsNone(json.loads(live.feed.snapshot())["plugs"][0]["since"])
        live.clock.advance(10)
        live.hub.report("kitchen", 0, "http", "10.0.0.5")
        live.clock.advance(10)
        live.hub.report("kitchen", 0, "device", "10.0.0.6")
        # A plug's first report ever starts its value.
        live.hub.report("garage", 1, "http", "10.0.0.5")
        pump.flush()
        self.assertEqual(since()[1:], [("kitchen", 510), ("kitchen", 510), ("garage", 520)])

    def test_dropped_plugs_leave_the_page(self):
        """
        Plugs the hub drops or puts in another order (on Redis, another
        node's copy of the state won over this node's) reach the page in
        one message, by id, and the snapshot no longer holds the dropped
        ones, nor their recent reports.
        """
        live = Live()
        for plug_id, value in (("kitchen", 1), ("garage", 1), ("hall", 0), ("garage", 0), ("porch", 1)):
            live.hub.report(plug_id, value, "http", "10.0.0.5")
        client, _, pump = live.connect()
        live.hub.keep_plugs(["porch", "hall"])
        pump.flush()
        self.assertEqual(client.json()[1:], [{"type": "plugs", "order": ["porch", "hall"],
                                              "dropped": ["kitchen", "garage"]}])
        snapshot = json.loads(live.feed.snapshot())
        self.assertEqual([p["id"] for p in snapshot["plugs"]], ["porch", "hall"])
        self.assertEqual([r["id"] for r in snapshot["reports"]], ["hall", "porch"])

    def test_public_settings_hide_secrets(self):
        """
        Secrets show only as set or not, users without their hashes, and
        passwords in URLs are hidden.
        """
        hashed = passwords.hash_password("pw", n=2**10)
        settings = config.settings_from({
            "AUTH_SECRET": "s3cret", "API_KEY": "k3y", "CONSUMER_SECRET": "c", "DASHBOARD_USERS": {"anna": hashed},
            "TWITTER_API_URL": "https://user:pa55@api.example",
        })
        shown = public_settings(settings)
        text = json.dumps(shown)
        for secret in ("s3cret", "k3y", hashed, "pa55"):
            self.assertNotIn(secret, text)
        self.assertEqual(shown["AUTH_SECRET"], "(set)")
        self.assertEqual(shown["ACCESS_TOKEN_KEY"], "(not set)")
        self.assertEqual(shown["DASHBOARD_USERS"], ["anna"])
        self.assertEqual(shown["WWW_SERVER_PORT"], 9000)

    def test_public_settings_hide_passwords_in_a_query(self):
        """
        A password in a URL's query (redis-py reads C{?password=}) is hidden
        as C{***}, and the rest of the URL stays as written, an C{@} in
        the query included; MQTT_URL's password too.
        """
        settings = config.settings_from({
            "REDIS_URL": "redis://127.0.0.1:6379/0?username=u&password=SECRET",
            "MQTT_URL": "mqtt://smartplug:pa55@192.168.1.2:1883",
        })
        shown = public_settings(settings)
        self.assertEqual(shown["REDIS_URL"], "redis://127.0.0.1:6379/0?username=u&password=***")
        self.assertEqual(shown["MQTT_URL"], "mqtt://smartplug:***@192.168.1.2:1883")
        settings = config.settings_from({"REDIS_URL": "redis://:pw@db.lan:6380/2?password=p@ss&socket_timeout=5"})
        self.assertEqual(public_settings(settings)["REDIS_URL"],
                         "redis://:***@db.lan:6380/2?password=***&socket_timeout=5")

    def test_session_token_from_cookie_header(self):
        """
        The session token is read from a Cookie header among others.
        """
        self.assertEqual(session_token("a=1; smartplug_session=abc-_1; b=2"), "abc-_1")
        self.assertIsNone(session_token("a=1"))
        self.assertIsNone(session_token(None))
        self.assertIsNone(session_token('smartplug_session="unterminated'))


def live_site():
    """
    A L{Live}, the HTTP site with its dashboard, and a connection cap.
    """
    live = Live()
    api = routes.Api(live.hub, live.guard, live.sessions, {}, None, 10)
    ui = routes.Dashboard(api, LiveResource(live.factory))
    live.factory.handshake_timeout = 0
    site = make_site(lambda e, s: [], SynchronousReactor(), SynchronousThreadPool(), children={b"ui": ui})
    return live, site, ConnectionCap(10, live.clock)


class TakeoverTests(SynchronousTestCase):
    """
    The live socket inside the HTTP site, behind our listener wrappers.
    """

    def test_upgrade_through_counted_connection(self):
        """
        An upgrade request to /ui/live on the HTTP site behind the
        connection cap and the guard, wrapped as the HTTP listener is (the
        guard tracking it, to close it on a ban), gets 101 and the
        snapshot; when it closes, the cap and the guard count it closed
        (each page load used to keep a place for good).
        """
        live, site, cap = live_site()
        protocol, transport = accept(live.guard.wrap(cap.wrap(site), close_on_ban=True))
        transport.protocol = protocol  # as a TCP transport knows its protocol
        self.assertEqual(cap.open, 1)
        protocol.dataReceived((
            "GET /ui/live HTTP/1.1\r\nHost: home:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://home:9000\r\nCookie: smartplug_session={live.token}\r\n\r\n"
        ).encode())
        sent = transport.value()
        self.assertTrue(sent.startswith(b"HTTP/1.1 101"), sent[:200])
        self.assertIn(b'"type":"snapshot"', sent)
        self.assertEqual(len(live.factory.pages), 1)
        # A ban of its address closes the address's other HTTP connections,
        # not the logged-in page: it proved its session, and may be the
        # owner's, sharing the address with whatever failed.
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        other, keep_alive = accept(live.guard.wrap(cap.wrap(site), close_on_ban=True))
        live.guard.ban(transport.getPeer().host, 60)
        live.clock.advance(1)
        self.assertTrue(keep_alive.disconnecting)
        self.assertFalse(transport.disconnecting)
        other.connectionLost(Failure(ConnectionDone()))

        # The page's side closes first (a killed tab): the transport tells
        # the outermost wrapper, which the HTTP channel made half-closeable.
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(cap.open, 0)
        self.assertEqual(dict(cap.open_by_address), {})
        self.assertEqual(live.guard.open_connections(transport.getPeer().host), 0)
        self.assertEqual(live.factory.pages, set())


    def upgrade_through(self, outside=lambda f: f, inside=lambda f: f):
        """
        An upgrade to /ui/live on a connection of the guarded and counted
        site, with C{inside(site)} in the guard and count's place of the
        site and C{outside(...)} around them; a ban of its address; the
        close.

        @return: the cap's and the guard's open connections once upgraded,
            whether the ban left the page open, and the cap's, the guard's
            and the live factory's counts after the close.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        live, site, cap = live_site()
        protocol, transport = accept(outside(live.guard.wrap(cap.wrap(inside(site)), close_on_ban=True)))
        transport.protocol = protocol
        protocol.dataReceived((
            "GET /ui/live HTTP/1.1\r\nHost: home:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://home:9000\r\nCookie: smartplug_session={live.token}\r\n\r\n"
        ).encode())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101"), transport.value()[:200])
        host = transport.getPeer().host
        opened = (cap.open, live.guard.open_connections(host))
        live.guard.ban(host, 60)
        live.clock.advance(1)
        stayed = not transport.disconnecting
        protocol.connectionLost(Failure(ConnectionDone()))
        return opened, stayed, (cap.open, live.guard.open_connections(host), len(live.factory.pages))

    def test_upgrade_inside_tls_of_an_endpoint(self):
        """
        With an C{ssl:} endpoint the TLS wrapper (a Twisted
        C{ProtocolWrapper}) stands outside the guard and the count: the live
        socket takes the channel's place inside them all the same, so a ban
        leaves the page open and its close is counted (Autobahn put it in
        the TLS wrapper's place: the connection was never counted closed).
        """
        from twisted.protocols.policies import WrappingFactory

        self.assertEqual(self.upgrade_through(outside=WrappingFactory), ((1, 1), True, (0, 0, 0)))

    def test_upgrade_behind_tls_of_the_settings(self):
        """
        With C{TLS_CERT_FILE} two C{ProtocolWrapper}s (the first bytes'
        check, then TLS) stand inside the guard and the count: a ban finds
        the page behind them (they link by C{wrappedProtocol}) and leaves it
        open.
        """
        from twisted.protocols.policies import WrappingFactory

        self.assertEqual(self.upgrade_through(inside=lambda site: WrappingFactory(WrappingFactory(site))),
                         ((1, 1), True, (0, 0, 0)))

    def test_unknown_wrappers_refused_loudly(self):
        """
        A connection whose wrappers do not lead to the channel (our chain
        changed, or Twisted's) is refused with 500 and an error line, rather
        than taken over in a way that never counts it closed.
        """
        from twisted.logger import capturedLogs, formatEvent

        live = Live()
        api = routes.Api(live.hub, live.guard, live.sessions, {}, None, 10)
        ui = routes.Dashboard(api, LiveResource(live.factory))
        site = make_site(lambda e, s: [], SynchronousReactor(), SynchronousThreadPool(), children={b"ui": ui})
        protocol, transport = accept(site)
        transport.protocol = object()  # a stranger between the transport and the channel
        with capturedLogs() as events:
            protocol.dataReceived((
                "GET /ui/live HTTP/1.1\r\nHost: home:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://home:9000\r\nCookie: smartplug_session={live.token}\r\n\r\n"
            ).encode())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500 "), transport.value()[:100])
        self.assertEqual(live.factory.pages, set())
        self.assertTrue([e for e in events if "dashboard live socket refused" in formatEvent(e)])


class NobodyWatchingTests(SynchronousTestCase):
    """
    With no page open the feed costs next to nothing.
    """

    def test_nothing_sent_or_scheduled_without_pages(self):
        """
        Reports, publications and connection changes with no page open are
        neither serialised nor scheduled; the snapshot still has them.
        """
        live = Live()
        sent = []
        live.feed.watch(sent.append)
        live.hub.report("p", 1, "http", "x")
        live.hub.pubsub.publish("e", 1)
        live.hub.pubsub.connected("c", "app", "10.0.0.1:1")
        live.guard.failure("10.0.0.1", "test")
        self.assertEqual((sent, live.clock.getDelayedCalls()), ([], []))
        snapshot = json.loads(live.feed.snapshot())
        self.assertEqual(len(snapshot["reports"]), 1)
        self.assertEqual(len(snapshot["publications"]), 1)


class ServerFactsTests(SynchronousTestCase):
    """
    The server section's facts (L{smartplug_backend.http.dashboard.wiring}).
    """

    def test_last_backup_read_in_a_thread(self):
        """
        The backup folder is listed by the backup runner, never where the
        facts are asked for (the reactor thread): the first answer has no
        backup, the reading's result is kept, and a change is told once
        (review finding 6).
        """
        import os

        from twisted.internet.defer import Deferred

        from smartplug_backend.http.dashboard import wiring

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "manual-1.tar.gz"), "wb"):
            pass
        asked, changes = [], []

        def run(f, *args):
            asked.append((f, args, Deferred()))
            return asked[-1][2]

        newest = wiring.LastBackup(folder, run, lambda: changes.append(1))
        facts = wiring.server_facts(config.settings_from({}), Clock(), last_backup=newest)
        self.assertIsNone(facts()["last_backup"])
        self.assertIsNone(facts()["last_backup"])
        self.assertEqual([(f, a) for f, a, _ in asked], [(wiring._last_backup, (folder,))])
        f, args, reading = asked.pop()
        reading.callback(f(*args))
        self.assertEqual(changes, [1])
        self.assertEqual(facts()["last_backup"]["file"], os.path.join(folder, "manual-1.tar.gz"))
        f, args, reading = asked.pop()
        reading.callback(f(*args))
        self.assertEqual(changes, [1])

    def test_tls_of_an_ssl_endpoint(self):
        """
        With the HTTP listener an ssl: endpoint, the TLS panel says so
        rather than "plain http" (review finding 8).
        """
        from smartplug_backend.http.dashboard import wiring

        facts = wiring.server_facts(config.settings_from({}), Clock(), endpoint_tls=True)
        self.assertEqual(facts()["tls"], {"endpoint": True, "note": "TLS by the ssl: endpoint; certificate not read"})
        self.assertIsNone(wiring.server_facts(config.settings_from({}), Clock())()["tls"])

    def test_links(self):
        """
        The server section lists the links to outside services as they are
        when it is read.
        """
        from smartplug_backend.http.dashboard import wiring
        from smartplug_backend.server.links import Link

        clock = Clock()
        link = Link("redis", "redis://r:6379/0", clock.seconds)
        facts = wiring.server_facts(config.settings_from({}), clock, links=[link])
        self.assertEqual(facts()["links"], [link.as_json()])
        link.went_up()
        self.assertTrue(facts()["links"][0]["up"])
        self.assertEqual(wiring.server_facts(config.settings_from({}), clock)()["links"], [])

    def test_store_in_redis(self):
        """
        With REDIS_URL set the server section says the store is Redis, and
        neither names STATE_DB's unused file nor shows the URL (it may hold
        a password).
        """
        from smartplug_backend.http.dashboard import wiring

        settings = config.settings_from({"STATE_DB": "state.sqlite", "REDIS_URL": "redis://:secret@127.0.0.1:6379/0"})
        facts = wiring.server_facts(settings, Clock())()
        self.assertEqual(facts["store"], {"redis": True})
        self.assertNotIn("secret", json.dumps(facts))
        self.assertEqual(wiring.server_facts(config.settings_from({"STATE_DB": None}), Clock())()["store"], None)
