"""
Two real C{twistd -n smartplug} nodes on one real redis-server (SPEC 11),
talked to by independent clients, as behind a load balancer.
"""

import json
import time

from twisted.trial.unittest import TestCase
from websockets.sync.client import connect

from .redis_server import start_redis
from .server import start_server
from .test_e2e import http

SECRET = "lamp-secret"


class TwoNodesTests(TestCase):
    """
    Whatever node a client talks to, it sees the one server.
    """

    def setUp(self):
        self.redis = start_redis(self)
        self.a = self.node("A")
        self.b = self.node("B")

    def node(self, name):
        settings = (
            f'REDIS_URL = "{self.redis.url}"\nNODE_NAME = "{name}"\nINFO_INTERVAL = 0.5\n'
            f'AUTH_SECRET = "{SECRET}"\n'
        )
        server = start_server(self, settings, listeners=("HTTP", "app WebSocket", "device WebSocket"))
        server.wait_for(r"state from Redis at redis://127\.0\.0\.1:\d+/0: .*this node is " + name)
        return server

    def ws(self, server, path="/", **kwargs):
        return connect(server.ws_url(path), open_timeout=5, **kwargs)

    def lamp(self, server):
        lamp = connect(f"ws://127.0.0.1:{server.ports['device WebSocket']}/", open_timeout=5)
        lamp.send(SECRET)
        self.assertEqual(lamp.recv(timeout=5), "ok")
        return lamp

    def info(self, server, until, timeout=10):
        """
        Read C{server}'s info frames until C{until(frame)} holds.
        """
        with self.ws(server, "/socket/info") as info:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                frame = json.loads(info.recv(timeout=5))
                if until(frame):
                    return frame
        raise AssertionError(f"no info frame as expected; the last: {frame}")

    def test_report_on_a_reaches_an_app_on_b(self):
        """
        A plug report POSTed to A reaches a PlugBuddy app connected to B, byte
        for byte; B lists the plug and its history; A tweets nothing twice
        (B's log says the report came from node A).
        """
        with self.ws(self.b) as app:
            self.b.wait_for(r"app connected from 127\.0\.0\.1")
            status, _ = http(self.a.url("/data"), b'{"id": "0xb00bf0cc", "value": 1}')
            self.assertEqual(status, 200)
            self.assertEqual(app.recv(timeout=5), '{"id": "0xb00bf0cc", "value": 1}')
        status, body = http(self.b.url("/plugs/0xb00bf0cc"))
        self.assertEqual((status, json.loads(body)["value"]), (200, 1))
        status, body = http(self.b.url("/plugs/0xb00bf0cc/history"))
        self.assertEqual([e["value"] for e in json.loads(body)], [1])
        self.b.wait_for(r"plug 0xb00bf0cc -> 1 from node A")

    def test_publication_on_b_reaches_a_subscriber_on_a(self):
        """
        A publication POSTed to B reaches a PiCloud subscriber on A as
        PiCloud's frame; one that asked for offsets on A gets B's offset and
        epoch; after more publications on B, the client resumes on A with
        "since" and recovers exactly what it missed.
        """
        with self.ws(self.a, "/subscribe?clientName=plain") as plain, \
                self.ws(self.a, "/subscribe?clientName=resumer") as resumer:
            # A "since" subscription is answered at once ("recovered"), which
            # proves A has read every message sent before it on that socket.
            plain.send('{"action": "subscribe", "event": "door"}')
            plain.send('{"action": "subscribe", "event": "sync", "since": {"offset": 0, "epoch": ""}}')
            resumer.send('{"action": "subscribe", "event": "door", "since": {"offset": 0, "epoch": ""}}')
            for socket in (plain, resumer):
                self.assertEqual(json.loads(socket.recv(timeout=5))["action"], "recovered")
            status, _ = http(self.b.url("/publish?clientName=pub"), b'{"event": "door", "data": "open"}')
            self.assertEqual(status, 201)
            frame = plain.recv(timeout=5)
            self.assertRegex(frame, r'^\{"action":"publish","event":"door","data":"open","created_at":"[^"]+"\}\n$')
            first = json.loads(resumer.recv(timeout=5))
            self.assertEqual((first["data"], first["offset"]), ("open", 1))
        for data in (b'"a"', b'"b"'):
            http(self.b.url("/publish?clientName=pub"), b'{"event": "door", "data": %s}' % data)
        since = json.dumps({"action": "subscribe", "event": "door",
                            "since": {"offset": first["offset"], "epoch": first["epoch"]}})
        with self.ws(self.a, "/subscribe?clientName=back") as back:
            back.send(since)
            frames = [json.loads(back.recv(timeout=5)) for _ in range(3)]
        self.assertEqual([f.get("data") for f in frames[:2]], ["a", "b"])
        self.assertEqual((frames[2]["action"], frames[2]["recovered"], frames[2]["offset"], frames[2]["epoch"]),
                         ("recovered", True, 3, first["epoch"]))

    def test_display_on_a_reaches_a_lamp_on_b(self):
        """
        A display state set on B and a reset command given on A reach a lamp
        connected to A and one connected to B; a lamp that connects later to
        either gets the state.
        """
        with self.lamp(self.a) as on_a, self.lamp(self.b) as on_b:
            self.assertEqual((on_a.recv(timeout=5), on_b.recv(timeout=5)), ("[cc:0:?:?]", "[cc:0:?:?]"))
            status, _ = http(self.b.url("/display"), b'{"mode": 1, "weather": 5, "intensity": 7}')
            self.assertEqual(status, 200)
            status, _ = http(self.a.url("/display"), b'{"command": "reset"}')
            self.assertEqual(status, 200)
            for lamp in (on_a, on_b):
                self.assertEqual([lamp.recv(timeout=5), lamp.recv(timeout=5)], ["[cc:1:5:7]", "[cc:r:?:?]"])
        with self.lamp(self.a) as late:
            self.assertEqual(late.recv(timeout=5), "[cc:1:5:7]")

    def test_info_socket_lists_both_nodes_and_drops_a_killed_one(self):
        """
        The info socket on A lists B's connections with B's node name beside
        its own; after kill -9 of B, A keeps serving and B's connections
        leave A's list (here within a few seconds: INFO_INTERVAL = 0.5).
        """
        with self.ws(self.b, "/subscribe?clientName=on-b") as sub:
            sub.send('{"action": "subscribe", "event": "door"}')
            self.b.wait_for(r"app connected from .*on-b")

            def both(frame):
                found = {(c["client_name"], c["node"]) for c in frame["all_connections"] or ()}
                return ("on-b", "B") in found

            frame = self.info(self.a, both)
            self.assertIn({"name": "door", "connections": [c for c in frame["all_connections"]
                                                            if c["client_name"] == "on-b"]},
                          frame["subscriptions"])
            self.b.process.kill()
            self.b.process.wait()
            frame = self.info(self.a, lambda frame: not both(frame))
        self.assertEqual(http(self.a.url("/data"), b'{"id": "p", "value": 0}')[0], 200)

    def test_redis_restart(self):
        """
        While Redis is down, changes answer 503 on both nodes and reads go on
        from each node's copy; each node logs one line when Redis goes and
        one when it is back; then changes are accepted and shared again.
        """
        self.assertEqual(http(self.a.url("/data"), b'{"id": "p", "value": 1}')[0], 200)
        self.b.wait_for(r"plug p -> 1 from node A")
        self.redis.stop()
        for node in (self.a, self.b):
            node.wait_for(r"Redis at redis://127\.0\.0\.1:\d+/0 unreachable")
        self.assertEqual(http(self.a.url("/data"), b'{"id": "p", "value": 0}')[0], 503)
        self.assertEqual(http(self.b.url("/display"), b'{"mode": 0}')[0], 503)
        self.assertEqual(http(self.a.url("/publish?clientName=p"), b'{"event": "e", "data": 1}')[0], 503)
        status, body = http(self.b.url("/plugs/p"))
        self.assertEqual((status, json.loads(body)["value"]), (200, 1))
        self.redis.start()
        for node in (self.a, self.b):
            node.wait_for(r"Redis at \S+ is back:", timeout=20)
        with self.ws(self.b) as app:
            self.b.wait_for(r"app connected from 127\.0\.0\.1")
            self.assertEqual(http(self.a.url("/data"), b'{"id": "p", "value": 0}')[0], 200, self.a.log())
            self.assertEqual(app.recv(timeout=5), '{"id": "p", "value": 0}')
        for node in (self.a, self.b):
            log = node.log()
            self.assertEqual(log.count("unreachable ("), 1, log)
            self.assertEqual(log.count("is back:"), 1, log)
