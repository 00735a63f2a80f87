"""
Tests for PiCloud pub/sub: the registry and frames (smartplug_backend.core.pubsub),
the app-port routes over iosim, and C{POST /publish}.
"""

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.hub import Hub
from smartplug_backend.core.limits import MAX_UNSENT, PUBSUB_MAX_EVENT
from smartplug_backend.core.pubsub import PubSub, delivery_frame, go_json, report_publisher
from smartplug_backend.core.times import utc_rfc3339
from smartplug_backend.http import api
from smartplug_backend.server.guard import Guard
from smartplug_backend.ws import picloud
from smartplug_backend.ws.apps import AppFactory, AppProtocol

from .helpers import PEER, STUB_PEER, http_client, raw_handshake, ws_connect

FRAME_1 = b'{"action":"publish","event":"e","data":1,"created_at":"1970-01-01T00:00:01.000Z"}\n'


class RegistryTests(SynchronousTestCase):
    """
    The pub/sub registry, without any network.
    """

    def setUp(self):
        self.sent = []
        self.clock = Clock()
        self.clock.advance(1)
        self.pubsub = PubSub(deliver=lambda subs, frame: self.sent.append((frame, subs)), now=self.clock.seconds)

    def test_recoveries_wait_for_the_history(self):
        """
        While the history is not known (a node on Redis that has not
        loaded it), last and since are answered once it is, to the
        subscribers still subscribed; a plain subscription is made at once.
        """
        self.pubsub.history_known = False
        self.assertEqual(self.pubsub.subscribe("a", "door", since=(0, "E")), [])
        self.assertEqual(self.pubsub.subscribe("b", "door", last=True), [])
        self.assertEqual(self.pubsub.subscribe("gone", "door", last=True), [])
        self.pubsub.unsubscribe("gone", "door")
        self.assertEqual(self.pubsub.subscribe("left", "door", last=True), [])
        self.pubsub.unsubscribe_all("left")
        # Asked again plainly after leaving: no recovery.
        self.assertEqual(self.pubsub.subscribe("c", "door", since=(0, "E")), [])
        self.pubsub.unsubscribe("c", "door")
        self.assertEqual(self.pubsub.subscribe("c", "door"), [])
        # Asked twice: answered once, as last asked.
        self.assertEqual(self.pubsub.subscribe("b", "door", last=True), [])
        self.pubsub.history.restore([("door", "E", 2, [(1, '"one"', 1.0), (2, '"two"', 1.0)])])
        self.assertEqual(self.sent, [])
        self.pubsub.history_known = True
        self.assertEqual([(json.loads(frame), subscribers) for frame, subscribers in self.sent], [
            ({"action": "publish", "event": "door", "data": "one", "created_at": "1970-01-01T00:00:01.000Z",
              "offset": 1, "epoch": "E"}, ["a"]),
            ({"action": "publish", "event": "door", "data": "two", "created_at": "1970-01-01T00:00:01.000Z",
              "offset": 2, "epoch": "E"}, ["a"]),
            ({"action": "recovered", "event": "door", "recovered": True, "offset": 2, "epoch": "E"}, ["a"]),
            ({"action": "publish", "event": "door", "data": "two", "created_at": "1970-01-01T00:00:01.000Z",
              "offset": 2, "epoch": "E"}, ["b"]),
        ])
        self.assertTrue(self.pubsub.is_subscribed("c", "door"))
        self.assertEqual(self.pubsub._waiting, {})
        self.sent.clear()
        self.pubsub.history_known = True
        self.assertEqual(self.sent, [])

    def test_info_frame_with_other_nodes(self):
        """
        With a node name (SPEC 11) every connection says its node, the
        listing holds this node's part, and the info frame lists this
        node's connections first, then the other nodes' (subscriptions of
        one event merged).
        """
        pubsub = PubSub(now=self.clock.seconds, node="A")
        pubsub.connected("a", "alice", "10.0.0.1:1")
        pubsub.subscribe("a", "door")
        alice = {"client_name": "alice", "ip_address": "10.0.0.1:1", "connected_at": "1970-01-01T00:00:01.000Z",
                 "node": "A"}
        self.assertEqual(pubsub.listing(),
                         {"subscriptions": [{"name": "door", "connections": [alice]}], "all_connections": [alice],
                          "kinds": ["app"]})
        bob = dict(alice, client_name="bob", node="B")
        carol = dict(alice, client_name="carol", node="B")
        pubsub.show_elsewhere([{"subscriptions": [{"name": "door", "connections": [bob]},
                                                  {"name": "bell", "connections": [carol]}],
                                "all_connections": [bob, carol]}])
        frame = json.loads(pubsub.info_frame())
        self.assertEqual(frame["subscriptions"], [{"name": "door", "connections": [alice, bob]},
                                                  {"name": "bell", "connections": [carol]}])
        self.assertEqual(frame["all_connections"], [alice, bob, carol])
        self.assertEqual(pubsub.connections(), [(alice, ["door"]), (bob, ["door"]), (carol, ["bell"])])
        pubsub.show_elsewhere([])
        self.assertEqual(json.loads(pubsub.info_frame())["all_connections"], [alice])

    def test_app_connections_by_port_not_name(self):
        """
        L{PubSub.app_connections} leaves out the device port's connections
        and keeps an app that calls itself C{device}, here and on other
        nodes (whose listing says each connection's kind; an older node's,
        without kinds, is read by name); the info frame lists them all.
        """
        pubsub = PubSub(now=self.clock.seconds, node="A")
        pubsub.connected("lamp", "device", "10.0.0.2:1", kind="device")
        pubsub.connected("app", "device", "10.0.0.3:1")
        mine = pubsub.listing()
        self.assertEqual(mine["kinds"], ["device", "app"])
        elsewhere = dict(mine, all_connections=[dict(e, node="B") for e in mine["all_connections"]])
        old = {"subscriptions": [], "all_connections": [{"client_name": "device", "node": "C"},
                                                        {"client_name": "phone", "node": "C"}]}
        pubsub.show_elsewhere([elsewhere, old])
        shown = [(entry["ip_address"] if "ip_address" in entry else entry["client_name"], entry["node"])
                 for entry, _ in pubsub.app_connections()]
        self.assertEqual(shown, [("10.0.0.3:1", "A"), ("10.0.0.3:1", "B"), ("phone", "C")])
        self.assertEqual(len(json.loads(pubsub.info_frame())["all_connections"]), 6)
        pubsub.disconnected("app")
        self.assertEqual([e["node"] for e, _ in pubsub.app_connections()], ["B", "C"])

    def test_other_nodes_subscribers_matched(self):
        """
        Another node's subscribers are matched to its connections by their
        entries: each connection gets its events, in the listing's order; a
        subscriber listed under no connection, or not an object, is left
        out; entries with odd values (another node's JSON) still match.
        """
        a = {"client_name": "a", "ip_address": "10.0.0.1:1", "connected_at": "T", "node": "B"}
        b = dict(a, client_name="b", tags=["x", {"y": 1}])
        ghost = dict(a, client_name="ghost")
        listing = {"subscriptions": [{"name": "door", "connections": [b, a]},
                                     {"name": "temp", "connections": [ghost, "junk", dict(b)]},
                                     {"name": "gone", "connections": None}],
                   "all_connections": [a, b, dict(a)], "kinds": ["app", "app", "app"]}
        pubsub = PubSub(now=self.clock.seconds, node="A")
        pubsub.show_elsewhere([listing])
        self.assertEqual([(entry["client_name"], found) for entry, found in pubsub.app_connections()],
                         [("a", ["door"]), ("b", ["door", "temp"]), ("a", [])])

    def test_other_nodes_changes_tell_the_watchers(self):
        """
        The dashboard's connection watchers hear of other nodes' lists when
        they change, not at every refresh.
        """
        told = []
        self.pubsub.watch_connections(lambda: told.append(1))
        listing = {"subscriptions": [], "all_connections": [{"client_name": "x", "node": "B"}]}
        self.pubsub.show_elsewhere([listing])
        self.pubsub.show_elsewhere([listing])
        self.pubsub.show_elsewhere([])
        self.assertEqual(len(told), 2)

    def test_subscribe_is_idempotent(self):
        """
        A subscriber that subscribes twice gets each publication once.
        """
        self.pubsub.subscribe("a", "e")
        self.pubsub.subscribe("a", "e")
        self.assertEqual(self.pubsub.publish("e", 1), 1)
        self.assertEqual(self.sent, [(FRAME_1, ["a"])])

    def test_only_subscribers_of_the_event(self):
        """
        A publication goes to the subscribers of its event only, serialised once.
        """
        self.pubsub.subscribe("a", "e")
        self.pubsub.subscribe("b", "e")
        self.pubsub.subscribe("c", "other")
        self.pubsub.publish("e", 1)
        self.assertEqual(self.sent, [(FRAME_1, ["a", "b"])])
        self.assertEqual(self.pubsub.publish("nobody", 1), 0)
        self.assertEqual(len(self.sent), 1)

    def test_unsubscribe(self):
        """
        unsubscribe stops one event; unsubscribe of an unknown one is harmless.
        """
        self.pubsub.subscribe("a", "e")
        self.pubsub.subscribe("a", "f")
        self.pubsub.unsubscribe("a", "e")
        self.pubsub.unsubscribe("a", "never")
        self.assertEqual(self.pubsub.publish("e", 1), 0)
        self.assertEqual(self.pubsub.publish("f", 1), 1)

    def test_unsubscribe_all_and_disconnect(self):
        """
        unsubscribe_all and disconnected forget every subscription.
        """
        for event in "xyz":
            self.pubsub.subscribe("a", event)
            self.pubsub.subscribe("b", event)
        self.pubsub.unsubscribe_all("a")
        self.pubsub.connected("b", "bee", "1.2.3.4:5")
        self.pubsub.disconnected("b")
        self.assertEqual(list(self.pubsub.subscriptions()), [])

    def test_delivery_frame_bytes(self):
        """
        The frame has PiCloud's key order, compact JSON as Go writes it
        (UTF-8, <>& escaped), RFC 3339 UTC time and a trailing newline.
        """
        self.assertEqual(
            delivery_frame("temp", {"c": "<20°C & ok>", "n": [1, None]}, 1700000000.5),
            '{"action":"publish","event":"temp","data":{"c":"\\u003c20°C \\u0026 ok\\u003e","n":[1,null]},'
            '"created_at":"2023-11-14T22:13:20.500Z"}\n'.encode("utf-8"),
        )
        self.assertEqual(go_json("a\u2028b"), '"a\\u2028b"')

    def test_info_frame(self):
        """
        The info frame lists subscriptions with their connections and every
        open connection.
        """
        self.pubsub.connected("a", "alice", "10.0.0.1:1000")
        self.pubsub.connected("b", "bob", "10.0.0.2:2000")
        self.pubsub.subscribe("a", "e")
        self.clock.advance(1)
        frame = self.pubsub.info_frame()
        self.assertTrue(frame.endswith(b"}\n"))
        alice = {"client_name": "alice", "ip_address": "10.0.0.1:1000", "connected_at": "1970-01-01T00:00:01.000Z"}
        bob = {"client_name": "bob", "ip_address": "10.0.0.2:2000", "connected_at": "1970-01-01T00:00:01.000Z"}
        self.assertEqual(
            json.loads(frame),
            {
                "subscriptions": [{"name": "e", "connections": [alice]}],
                "all_connections": [alice, bob],
                "created_at": "1970-01-01T00:00:02.000Z",
            },
        )

    @given(st.lists(st.tuples(st.sampled_from(["connect", "disconnect", "subscribe", "unsubscribe", "all",
                                               "elsewhere", "tick"]),
                              st.sampled_from("abc"), st.sampled_from(["e", "f", "<&>"])), max_size=30))
    def test_info_frame_follows_every_change(self, steps):
        """
        The info frame, whose lists are written once per change, is after
        any steps the frame written afresh from the listings (with one
        other node's, whose subscriber entries may be of its connections
        or not); asked twice without a change, it is the same.
        """
        clock = Clock()
        pubsub = PubSub(now=clock.seconds, max_empty=2)

        def afresh():
            mine = pubsub.listing()
            subscriptions = {s["name"]: list(s["connections"]) for s in mine["subscriptions"]}
            connections = mine["all_connections"]
            for other in pubsub._elsewhere:
                for subscription in other.get("subscriptions", ()):
                    subscriptions.setdefault(subscription["name"], []).extend(subscription["connections"] or ())
                connections.extend(other.get("all_connections") or ())
            return (go_json({"subscriptions": [{"name": n, "connections": c or None} for n, c in subscriptions.items()],
                             "all_connections": connections or None,
                             "created_at": utc_rfc3339(clock.seconds())}) + "\n").encode("utf-8")

        for n, (step, connection, event) in enumerate(steps):
            if step == "connect":
                pubsub.connected(connection, connection, f"10.0.0.1:{n}")
            elif step == "disconnect":
                pubsub.disconnected(connection)
            elif step == "subscribe":
                pubsub.subscribe(connection, event)
            elif step == "unsubscribe":
                pubsub.unsubscribe(connection, event)
            elif step == "all":
                pubsub.unsubscribe_all(connection)
            elif step == "elsewhere":
                entry = {"client_name": connection, "ip_address": f"10.0.0.2:{n}", "connected_at": "T", "node": "B"}
                pubsub.show_elsewhere([{"subscriptions": [{"name": event, "connections": [entry]}],
                                        "all_connections": [entry] if n % 2 else []}])
            else:
                clock.advance(1.5)
            self.assertEqual(pubsub.info_frame(), afresh())
        self.assertEqual(pubsub.info_frame(), pubsub.info_frame())

    def test_info_frame_as_go_writes_it(self):
        """
        As PiCloud's Go server writes it (SPEC 3.4): no subscriptions is
        C{[]}, no connections is C{null}, and an event whose subscribers
        have all left stays listed with C{"connections": null}, however
        they left (unsubscribe, unsubscribe:all, disconnect).
        """
        self.assertEqual(
            self.pubsub.info_frame(),
            b'{"subscriptions":[],"all_connections":null,"created_at":"1970-01-01T00:00:01.000Z"}\n',
        )
        self.pubsub.connected("a", "alice", "10.0.0.1:1000")
        for event in ("x", "y", "z"):
            self.pubsub.subscribe("a", event)
        self.pubsub.unsubscribe("a", "x")
        self.pubsub.unsubscribe_all("a")
        self.pubsub.subscribe("a", "z")
        self.pubsub.disconnected("a")
        self.assertEqual(
            json.loads(self.pubsub.info_frame()),
            {
                "subscriptions": [
                    {"name": "x", "connections": None},
                    {"name": "y", "connections": None},
                    {"name": "z", "connections": None},
                ],
                "all_connections": None,
                "created_at": "1970-01-01T00:00:01.000Z",
            },
        )
        # Only events with subscribers count as subscriptions; a publication
        # of a left event reaches no one.
        self.assertEqual(list(self.pubsub.subscriptions()), [])
        self.assertEqual(self.pubsub.publish("x", 1), 0)

    def test_reports_published_as_smartplug(self):
        """
        A plug report is published as event smartplug with the apps' JSON text.
        """
        hub = Hub(now=self.clock.seconds)
        hub.pubsub = self.pubsub
        hub.listen(report_publisher(hub))
        self.pubsub.subscribe("a", "smartplug")
        hub.report("0xb00bf0cc", 1, "http", "x")
        [(frame, _)] = self.sent
        self.assertEqual(json.loads(frame)["data"], '{"id": "0xb00bf0cc", "value": 1}')


class RegistryBoundTests(SynchronousTestCase):
    """
    Subscriptions cannot grow the registry without bound, and a
    disconnection costs what that connection subscribed to, not every
    event ever seen.
    """

    def test_empty_events_bounded(self):
        """
        Only the max_empty most recently emptied events stay listed (with
        no connections); events with subscribers always stay.
        """
        pubsub = PubSub(max_empty=3)
        pubsub.subscribe("keeper", "kept")
        for n in range(10):
            pubsub.subscribe("a", f"e{n}")
        pubsub.unsubscribe_all("a")
        pubsub.subscribe("b", "e9")
        pubsub.unsubscribe("b", "e9")
        names = [s["name"] for s in pubsub.listing()["subscriptions"]]
        self.assertEqual(names, ["kept", "e7", "e8", "e9"])
        frame = json.loads(pubsub.info_frame())
        self.assertEqual([s["connections"] for s in frame["subscriptions"]][1:], [None, None, None])

    def test_unsubscribe_all_walks_own_subscriptions(self):
        """
        unsubscribe_all touches only the subscriber's own events (the
        registry's whole list of events is never walked), and leaves the
        other subscribers' subscriptions alone.
        """

        class Unwalkable(dict):
            def __iter__(self):
                raise AssertionError("walked every event")

            keys = values = items = __iter__

        pubsub = PubSub()
        for n in range(100):
            pubsub.subscribe("other", f"e{n}")
        pubsub.subscribe("a", "e5")
        pubsub.subscribe("a", "mine")
        pubsub._events = Unwalkable(pubsub._events)
        pubsub.unsubscribe_all("a")
        pubsub.disconnected("a")
        pubsub._events = dict(dict.items(pubsub._events))
        self.assertEqual(dict(pubsub.subscriptions())["e5"], ["other"])
        self.assertEqual(dict(pubsub.subscriptions()).get("mine"), None)
        self.assertEqual(len(pubsub.subscriptions()), 100)


class RouteTests(SynchronousTestCase):
    """
    PiCloud's routes on the app WebSocket port.
    """

    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(now=self.clock.seconds)
        self.guard = Guard(self.clock, ban_after=10)
        self.factory = self.make_factory(api_key=None)

    def make_factory(self, api_key):
        self.hub = Hub(now=self.clock.seconds)
        factory = AppFactory(
            self.hub, api_key=api_key, info_interval=5, clock=self.clock, guard=self.guard
        )
        self.hub.pubsub.deliver_with(factory.send_to_all)
        return factory

    def handshake(self, path: bytes, headers: bytes = b""):
        request = (
            b"GET " + path + b" HTTP/1.1\r\nHost: pi:9001\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nSec-WebSocket-Version: 13\r\n" + headers + b"\r\n"
        )
        return raw_handshake(self.factory, request)[1].value()

    def assertRefused(self, answer: bytes, body: bytes):
        head, _, got = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), head)
        self.assertIn(b"Content-Type: text/plain; charset=utf-8", head)
        self.assertEqual(got, body)

    def test_client_name_required(self):
        """
        /subscribe and /publish without a client name get 401 "Invalid client
        name", before any upgrade.
        """
        for path in [b"/subscribe", b"/publish", b"/subscribe?clientName="]:
            self.assertRefused(self.handshake(path), b"Invalid client name\n")
        self.assertEqual(self.guard.failures(PEER), 0)

    def test_client_name_header_or_param(self):
        """
        The name may come as X-API-Client-Name or as clientName.
        """
        self.assertTrue(self.handshake(b"/subscribe", b"X-API-Client-Name: kitchen\r\n").startswith(b"HTTP/1.1 101"))
        self.assertTrue(self.handshake(b"/publish?clientName=kitchen").startswith(b"HTTP/1.1 101"))

    def test_api_key(self):
        """
        With API_KEY set, a wrong or missing key gets 401 "Invalid API Key";
        a wrong one counts toward a ban (a missing one guesses nothing); the
        right key in the header or the apiKey parameter is accepted.
        """
        self.factory = self.make_factory(api_key="k3y")
        self.assertRefused(self.handshake(b"/subscribe?clientName=a&apiKey=nope"), b"Invalid API Key\n")
        self.assertRefused(self.handshake(b"/socket/info"), b"Invalid API Key\n")
        self.assertRefused(self.handshake(b"/info", b"X-API-Key: K3Y\r\n"), b"Invalid API Key\n")
        self.assertEqual(self.guard.failures(PEER), 2)
        self.assertTrue(self.handshake(b"/subscribe?clientName=a&apiKey=k3y").startswith(b"HTTP/1.1 101"))
        self.assertTrue(self.handshake(b"/info", b"X-API-Key: k3y\r\n").startswith(b"HTTP/1.1 101"))
        self.assertTrue(self.handshake(b"/", b"").startswith(b"HTTP/1.1 101"), "PlugBuddy needs no key")

    def test_banned_address_key_not_checked(self):
        """
        A handshake from a banned address (on a connection opened before
        the ban) is refused with 403, the right key not even checked: one
        connection opened beforehand is no extra guess.  A key it brings is
        counted as a failure during the ban; the PlugBuddy path, which
        takes no key, is refused too, uncounted.
        """
        self.factory = self.make_factory(api_key="k3y")
        self.guard.ban(PEER, 60)
        for path in [b"/subscribe?clientName=a&apiKey=k3y", b"/socket/info?apiKey=k3y", b"/"]:
            head, _, body = self.handshake(path).partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 403 Forbidden\r\n"), (path, head))
            self.assertIn(b"banned", body)
        self.assertEqual(self.guard.failure_counts["api_key"], 2)
        self.assertTrue(all("not checked" in f.reason for f in self.guard.recent_failures()))
        self.guard.lift(PEER, "test")
        self.assertTrue(self.handshake(b"/subscribe?clientName=a&apiKey=k3y").startswith(b"HTTP/1.1 101"))

    def test_subscribe_then_publish_elsewhere(self):
        """
        A subscription on one socket takes effect for a publication sent on
        another right after it; unsubscribing stops it.
        """
        sub, _, sub_pump = ws_connect(self.factory, "/subscribe?clientName=s")
        pub, _, pub_pump = ws_connect(self.factory, "/publish?clientName=p")
        sub.sendMessage(b'{"action": "subscribe", "event": "door"}')
        sub_pump.flush()
        pub.sendMessage(b'{"event": "door", "data": "open"}')
        pub.sendMessage(b'{"action": "publish", "event": "door", "data": {"n": 2}}')
        pub.sendMessage(b'{"event": "window", "data": 1}')
        pub_pump.flush()
        sub_pump.flush()
        self.assertEqual([(m["event"], m["data"]) for m in sub.json()], [("door", "open"), ("door", {"n": 2})])
        sub.sendMessage(b'{"action": "unsubscribe", "event": "door"}')
        sub_pump.flush()
        pub.sendMessage(b'{"event": "door", "data": "closed"}')
        pub_pump.flush()
        sub_pump.flush()
        self.assertEqual(len(sub.messages), 2)

    def test_subscriptions_per_connection_bounded(self):
        """
        One connection subscribes to at most PUBSUB_SUBSCRIPTIONS_PER_CONNECTION
        events; more are ignored (and logged), while subscribing again to one
        it has, or after unsubscribing one, still works.
        """
        self.patch(picloud, "PUBSUB_SUBSCRIPTIONS_PER_CONNECTION", 3)
        sub, server, pump = ws_connect(self.factory, "/subscribe?clientName=s")
        for event in [b"a", b"b", b"c", b"d", b"a"]:
            sub.sendMessage(b'{"action": "subscribe", "event": "' + event + b'"}')
        pump.flush()
        self.assertEqual(self.hub.pubsub.subscription_count(server), 3)
        self.assertFalse(self.hub.pubsub.is_subscribed(server, "d"))
        sub.sendMessage(b'{"action": "unsubscribe", "event": "b"}')
        sub.sendMessage(b'{"action": "subscribe", "event": "d"}')
        pump.flush()
        self.assertTrue(self.hub.pubsub.is_subscribed(server, "d"))
        self.assertEqual(self.hub.pubsub.subscription_count(server), 3)

    def test_unsubscribe_all_and_close_cleanup(self):
        """
        unsubscribe:all drops every subscription, and a closed connection's
        subscriptions are gone.
        """
        sub, _, pump = ws_connect(self.factory, "/subscribe?clientName=s")
        for event in [b"a", b"b"]:
            sub.sendMessage(b'{"action": "subscribe", "event": "' + event + b'"}')
        pump.flush()
        self.assertEqual(len(list(self.hub.pubsub.subscriptions())), 2)
        sub.sendMessage(b'{"action": "unsubscribe:all"}')
        pump.flush()
        self.assertEqual(list(self.hub.pubsub.subscriptions()), [])
        sub.sendMessage(b'{"action": "subscribe", "event": "a"}')
        pump.flush()
        sub.sendClose()
        pump.flush()
        self.assertEqual(list(self.hub.pubsub.subscriptions()), [])

    def test_bad_messages_ignored(self):
        """
        Unknown actions and malformed messages are ignored; the connection
        stays open.
        """
        events = []
        self.patch(AppProtocol, "_log", Logger(observer=events.append))
        sub, _, pump = ws_connect(self.factory, "/subscribe?clientName=s")
        long_name = b'{"action": "subscribe", "event": "' + b"e" * (PUBSUB_MAX_EVENT + 1) + b'"}'
        for bad in [b"nope", b"[]", b'{"action": "dance"}', b'{"action": "subscribe"}', b'{"action": "subscribe", "event": 3}',
                    long_name]:
            sub.sendMessage(bad)
        pump.flush()
        self.assertEqual(list(self.hub.pubsub.subscriptions()), [])
        self.assertIn(f"event name of {PUBSUB_MAX_EVENT + 1} characters: at most {PUBSUB_MAX_EVENT}",
                      [e.get("reason") for e in events])
        sub.sendMessage(b'{"action": "subscribe", "event": "' + b"e" * PUBSUB_MAX_EVENT + b'"}')
        pump.flush()
        self.assertEqual(len(list(self.hub.pubsub.subscriptions())), 1)
        sub.sendMessage(b'{"action": "unsubscribe:all"}')
        pump.flush()
        self.assertIsNone(sub.closed)
        pub, _, pump = ws_connect(self.factory, "/publish?clientName=p")
        pub.sendMessage(b'{"event": "e", "data": 1e999}')
        pump.flush()
        reasons = [e["reason"] for e in events if "reason" in e]
        self.assertEqual(reasons[:2], ["not valid JSON: Expecting value (line 1, column 1)", "expected a JSON object"])
        self.assertEqual(reasons[-1], "not valid JSON: a number is out of range")

    def test_plugbuddy_clients_do_not_get_publications(self):
        """
        PlugBuddy connections receive plug broadcasts, not pub/sub frames;
        subscribers of smartplug receive reports as publications.
        """
        app, _, app_pump = ws_connect(self.factory, "/")
        sub, _, sub_pump = ws_connect(self.factory, "/subscribe?clientName=s")
        sub.sendMessage(b'{"action": "subscribe", "event": "smartplug"}')
        sub_pump.flush()
        self.hub.listen(self.factory.broadcast)
        self.hub.listen(report_publisher(self.hub))
        self.hub.report("p", 1, "http", "x")
        app_pump.flush()
        sub_pump.flush()
        self.assertEqual(app.messages, [b'{"id": "p", "value": 1}'])
        self.assertEqual([m["data"] for m in sub.json()], ['{"id": "p", "value": 1}'])

    def test_info_socket(self):
        """
        The info socket sends its first frame after one interval, then one
        every interval, listing connections and subscriptions, but not
        itself (PiCloud's info sockets are not clients).  The log names the
        subscriber's client and the info socket's route alone.
        """
        events = []
        self.patch(AppProtocol, "_log", Logger(observer=events.append))
        self.addCleanup(lambda: self.assertEqual(
            [formatEvent(e) for e in events if "route" in e][:2],
            [f"app connected from {PEER} (subscribe, kitchen)", f"app connected from {PEER} (info)"]))
        sub, _, sub_pump = ws_connect(self.factory, "/subscribe?clientName=kitchen", port=4001)
        sub.sendMessage(b'{"action": "subscribe", "event": "door"}')
        sub_pump.flush()
        info, _, pump = ws_connect(self.factory, "/socket/info", port=4002)
        self.clock.pump([1] * 4)
        pump.flush()
        self.assertEqual(info.messages, [])
        self.clock.pump([1])
        pump.flush()
        [frame] = info.json()
        self.assertEqual(
            [c["client_name"] for c in frame["subscriptions"][0]["connections"]], ["kitchen"]
        )
        self.assertEqual(
            [(c["client_name"], c["ip_address"]) for c in frame["all_connections"]],
            [("kitchen", "192.168.1.64:4001")],
        )
        self.clock.pump([5])
        pump.flush()
        self.assertEqual(len(info.messages), 2)
        info.sendClose()
        pump.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_large_info_frame(self):
        """
        An info frame over 64 KiB (many subscriptions) is still sent whole:
        the message limit is for what peers send.
        """
        sub, _, sub_pump = ws_connect(self.factory, "/subscribe?clientName=many", port=4001)
        for n in range(800):
            sub.sendMessage(b'{"action": "subscribe", "event": "event-%04d-padding-padding-padding"}' % n)
        sub_pump.flush()
        info, _, pump = ws_connect(self.factory, "/socket/info", port=4002)
        self.clock.pump([5])
        pump.flush()
        [frame] = info.messages
        self.assertGreater(len(frame), 64 * 1024)
        self.assertEqual(len(json.loads(frame)["subscriptions"]), 800)
        self.assertIsNone(info.closed)

    def test_slow_subscriber_cut_off(self):
        """
        A subscriber whose unsent data passes 1 MiB is closed with 1008 "too
        slow" and dropped; the others still get every publication.
        """
        slow, slow_server, slow_pump = ws_connect(self.factory, "/subscribe?clientName=slow")
        fast, _, fast_pump = ws_connect(self.factory, "/subscribe?clientName=fast")
        for client, pump in [(slow, slow_pump), (fast, fast_pump)]:
            client.sendMessage(b'{"action": "subscribe", "event": "big"}')
            pump.flush()
        # The transport says its buffer is full: the peer stopped reading.
        slow_server.transport.producer.pauseProducing()
        chunk = "x" * (60 * 1024)
        count = MAX_UNSENT // len(chunk) + 1
        for _ in range(count):
            self.hub.pubsub.publish("big", chunk)
        self.assertTrue(slow_server.transport.disconnecting)
        self.assertEqual(slow_server.transport.stream[-1], b"\x88\x0a\x03\xf0too slow")
        fast_pump.flush()
        self.assertEqual(len(fast.messages), count)
        slow_pump.flush()
        self.assertEqual(slow.closed[0], 1008)
        self.assertEqual([s for _, subs in self.hub.pubsub.subscriptions() for s in subs].count(slow_server), 0)


class HTTPPublishTests(SynchronousTestCase):
    """
    C{POST /publish} on the HTTP port (SPEC 3.3).
    """

    def setUp(self):
        self.hub = Hub()
        self.guard = Guard(Clock(), ban_after=10)
        self.published = []
        self.hub.publish = lambda event, data, peer: self.published.append((event, data)) or 0

    def post(self, path, body, headers=None, api_key=None):
        client = http_client(self.hub, api_key=api_key, guard=self.guard)
        response = self.successResultOf(client.post("http://pi" + path, data=body, headers=headers))
        return response.code, self.successResultOf(response.content()), response.headers

    def test_publish(self):
        """
        A valid publication answers 201 with an empty body and is published;
        any JSON value is valid data.
        """
        for data in [b'"text"', b"42", b'{"a": [1]}', b"null"]:
            code, body, _ = self.post("/publish?clientName=pi", b'{"event": "e", "data": ' + data + b"}")
            self.assertEqual((code, body), (201, b""))
        self.assertEqual([d for _, d in self.published], ["text", 42, {"a": [1]}, None])

    def test_bad_request(self):
        """
        A body that is not JSON, or a missing, empty or too long event, answers 400
        "Bad request" as plain text and publishes nothing.
        """
        events = []
        self.patch(api, "_log", Logger(observer=events.append))
        for body in [b"", b"{", b"[]", b'{"data": 1}', b'{"event": "", "data": 1}', b'{"event": 5}',
                     b'{"event": "' + b"e" * (PUBSUB_MAX_EVENT + 1) + b'"}', b'{"event": "e", "data": 1e999}']:
            code, answer, headers = self.post("/publish?clientName=pi", body)
            self.assertEqual((code, answer), (400, b"Bad request\n"), body)
            self.assertEqual(headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"])
        self.assertEqual(self.published, [])
        self.assertEqual([e["reason"] for e in events if "reason" in e][-1], "not valid JSON: a number is out of range")

    def test_auth(self):
        """
        A missing client name or a wrong API key answers 401 with PiCloud's
        bodies; a wrong key counts as a failure; headers work like parameters.
        """
        self.assertEqual(self.post("/publish", b'{"event": "e"}')[:2], (401, b"Invalid client name\n"))
        self.assertEqual(
            self.post("/publish?clientName=a&apiKey=bad", b'{"event": "e"}', api_key="good")[:2],
            (401, b"Invalid API Key\n"),
        )
        self.assertEqual(self.guard.failures(STUB_PEER), 1)
        code, _, _ = self.post(
            "/publish", b'{"event": "e"}', headers={"X-API-Key": "good", "X-API-Client-Name": "a"}, api_key="good"
        )
        self.assertEqual(code, 201)
        self.assertEqual(self.published, [("e", None)])

    def test_banned_address_key_not_checked(self):
        """
        From a banned address (a keep-alive connection opened before its
        ban) POST /publish, GET /events/<E>/history and POST /display are
        refused with 403 JSON without looking at the key, even the right
        one, and publish nothing; the attempt is logged as a failure.  A
        wrong key from an address that is not banned still gets PiCloud's
        401 body (review finding 1).
        """
        self.guard.ban(STUB_PEER, 60)
        client = http_client(self.hub, api_key="good", guard=self.guard)
        for method, path, body in [("POST", "/publish?clientName=a&apiKey=good", b'{"event": "e"}'),
                                   ("GET", "/events/e/history?apiKey=good", None),
                                   ("POST", "/display?apiKey=good", b'{"mode": 0}')]:
            response = self.successResultOf(client.request(method, "http://pi" + path, data=body))
            self.assertEqual(response.code, 403, path)
            self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
            self.assertIn("banned", json.loads(self.successResultOf(response.content()))["error"])
        self.assertEqual(self.published, [])
        self.assertEqual(self.guard.failure_counts["api_key"], 3)
        self.assertTrue(all("not checked" in f.reason for f in self.guard.recent_failures()))
        self.guard.lift(STUB_PEER, "test")
        self.assertEqual(
            self.post("/publish?clientName=a&apiKey=bad", b'{"event": "e"}', api_key="good")[:2],
            (401, b"Invalid API Key\n"),
        )


class DeviceConnectionsInfoTests(SynchronousTestCase):
    """
    The info frame lists device-port connections too (SPEC 3.4).
    """

    def test_device_listed_while_connected(self):
        """
        A device connection appears in all_connections as "device" once it
        has authenticated (not before), and is gone once it closes.
        """
        from smartplug_backend.ws.devices import DeviceFactory

        clock = Clock()
        hub = Hub(now=clock.seconds)
        devices = DeviceFactory(hub, Guard(clock), "s3cret", clock)
        device, _, pump = ws_connect(devices, "/", port=6000)

        def listed():
            connections = json.loads(hub.pubsub.info_frame())["all_connections"]
            return [(c["client_name"], c["ip_address"]) for c in connections or ()]

        self.assertEqual(listed(), [])
        device.sendMessage(b"s3cret")
        pump.flush()
        self.assertEqual(listed(), [("device", "192.168.1.64:6000")])
        device.sendClose()
        pump.flush()
        self.assertEqual(listed(), [])


class WatcherTests(SynchronousTestCase):
    """
    The dashboard's view of the registry: publications and connection
    changes as they happen, and who is subscribed to what.
    """

    def test_connections_watched_and_listed(self):
        """
        Opening, subscribing, unsubscribing and closing are told; a repeated
        subscription is not a change; connections list their events.
        """
        changes = []
        pubsub = PubSub(deliver=lambda s, f: None, now=lambda: 0.0)
        pubsub.watch_connections(lambda: changes.append(1))
        pubsub.connected("a", "kitchen-pi", "10.0.0.1:5000")
        pubsub.subscribe("a", "weather")
        pubsub.subscribe("a", "weather")
        pubsub.subscribe("a", "news")
        self.assertEqual(len(changes), 3)
        [(entry, events)] = pubsub.connections()
        self.assertEqual(entry["client_name"], "kitchen-pi")
        self.assertEqual(events, ["weather", "news"])
        pubsub.unsubscribe("a", "news")
        pubsub.unsubscribe("a", "news")
        self.assertEqual(len(changes), 4)
        pubsub.disconnected("a")
        self.assertEqual(pubsub.connections(), [])
        self.assertGreaterEqual(len(changes), 5)
