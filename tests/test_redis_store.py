"""
Tests for the keys and Lua scripts of the shared state (SPEC 11), called
directly (blocking) against a real redis-server started by each test.
"""

import json

import redis
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.integrations import redis_store
from smartplug_backend.integrations.redis_store import CHANNEL, RedisState, Stale

from .redis_server import start_redis


def messages(channel) -> list:
    """
    The changes published on C{channel} since the last call, decoded.
    """
    found = []
    for _ in range(50):
        message = channel.get_message(timeout=0.1)
        if message is None:
            break
        found.append(json.loads(message["data"]))
    return found


def on_redis(testcase) -> None:
    """
    Give C{testcase} a Redis of its own (C{server}), a client on it
    (C{client}, C{state}) and a subscription to the change channel
    (C{channel}).
    """
    testcase.server = start_redis(testcase)
    testcase.client = redis.Redis.from_url(testcase.server.url)
    testcase.addCleanup(testcase.client.close)
    testcase.state = RedisState(testcase.client)
    testcase.channel = testcase.client.pubsub()
    testcase.channel.subscribe(CHANNEL)
    testcase.addCleanup(testcase.channel.close)
    testcase.assertEqual(testcase.channel.get_message(timeout=5)["type"], "subscribe")


class StateTests(SynchronousTestCase):
    """
    What one commit writes and publishes, and what a node loads.
    """

    def setUp(self):
        on_redis(self)
        self.assertTrue(self.state.initialise("inc-1", [], None))

    def messages(self):
        return messages(self.channel)

    def test_initialise_once(self):
        """
        A Redis with state is not seeded again: the first node's copy wins.
        """
        self.assertFalse(self.state.initialise("inc-2", [("p", 1, 5.0, "http")], None))
        self.assertEqual(self.state.snapshot().incarnation, "inc-1")

    def test_report_commit(self):
        """
        A report takes the next sequence number, sets the plug's state,
        keeps the newest `keep` history entries and publishes the change with
        "seq" first; a snapshot lists plugs in first-report order.
        """
        for i, (plug, value) in enumerate([("b", 1), ("a", 0), ("b", 0), ("b", 1)]):
            change = json.dumps({"origin": "n", "i": i})
            self.assertEqual(self.state.commit_report("inc-1", change, plug, value, 100.0 + i, "http", 2), i + 1)
        self.assertEqual([(m["seq"], m["i"]) for m in self.messages()], [(1, 0), (2, 1), (3, 2), (4, 3)])
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.seq, snapshot.plugs), (4, [("b", 1, 103.0, "http"), ("a", 0, 101.0, "http")]))
        self.assertEqual([(e.value, e.at) for e in self.state.history("b", 10)], [(1, 103.0), (0, 102.0)])

    def test_plug_first_reported_after_a_seed_comes_last(self):
        """
        The plugs of a seed keep the seeding node's order, and a plug whose
        first report is committed on the seed is listed after all of them
        (first-report order), though the sequence starts over from 0 on a
        fresh seed.
        """
        self.client.flushall()
        seeded = [("a1", 1, 1.0, "http"), ("a2", 0, 2.0, "http"), ("a3", 1, 3.0, "device")]
        self.assertTrue(self.state.initialise("copy", seeded, None))
        self.assertEqual(self.state.commit_report("copy", '{"o":1}', "new", 1, 9.0, "http", 5), 1)
        self.assertEqual([p[0] for p in self.state.snapshot().plugs], ["a1", "a2", "a3", "new"])

    def test_stale_incarnation_writes_nothing(self):
        """
        A node whose incarnation is not Redis' (Redis lost its data, or was
        seeded again) is refused, and nothing is written or published.
        """
        self.assertRaises(Stale, self.state.commit_report, "old", '{"o":1}', "p", 1, 1.0, "http", 5)
        self.assertRaises(Stale, self.state.commit_display, "old", '{"o":1}', '{"mode": 0}')
        self.assertEqual((self.messages(), self.state.snapshot().plugs, self.state.snapshot().seq), ([], [], 0))

    def test_publications(self):
        """
        Publications of one event are numbered 1, 2, 3 under one epoch (the
        one given first); the newest `keep` are kept and loaded with the
        snapshot; each message carries its offset and epoch.
        """
        numbered = [
            self.state.commit_publication("inc-1", json.dumps({"origin": "n"}), "door", f"e{i}", f'"d{i}"', 10.5 + i, 2, 60)
            for i in range(3)
        ]
        self.assertEqual(numbered, [(1, 1, "e0"), (2, 2, "e0"), (3, 3, "e0")])
        self.assertEqual([(m["offset"], m["epoch"]) for m in self.messages()], [(1, "e0"), (2, "e0"), (3, "e0")])
        self.assertEqual(self.state.snapshot().streams, [("door", "e0", 3, [(2, '"d1"', 11.5), (3, '"d2"', 12.5)])])

    def test_no_history_still_numbers(self):
        """
        With PUBSUB_HISTORY = 0 publications are numbered, and nothing is
        kept.
        """
        for _ in range(2):
            self.state.commit_publication("inc-1", '{"o":1}', "e", "x", "1", 1.0, 0, 60)
        self.assertEqual(self.state.snapshot().streams, [("e", "x", 2, [])])

    def test_report_with_its_publication(self):
        """
        A report and its smartplug publication are one commit: one sequence
        number, the plug's state, and the next offset of the event, in one
        message.
        """
        self.state.commit_publication("inc-1", '{"o":1}', "smartplug", "ep", '"x"', 1.0, 5, 60)
        found = self.state.commit_report("inc-1", '{"o":2}', "p", 1, 2.0, "http", 5,
                                         ("smartplug", "other", '"{}"', 2.0, 5, 60))
        self.assertEqual(found, (2, 2, "ep"))
        (_, message) = self.messages()
        self.assertEqual((message["seq"], message["offset"], message["epoch"], message["o"]), (2, 2, "ep", 2))
        snapshot = self.state.snapshot()
        self.assertEqual(snapshot.plugs, [("p", 1, 2.0, "http")])
        self.assertEqual(snapshot.streams, [("smartplug", "ep", 2, [(1, '"x"', 1.0), (2, '"{}"', 2.0)])])

    def test_display_commit_keeps_last_on(self):
        """
        A display commit writes, in the same script, the last state on and
        the last colour it is given; '' keeps what is there.  A snapshot
        carries them; a Redis seeded again gets the node's.
        """
        red, rain, off = ('{"mode": 2, "color": [255, 0, 0], "pulse": 4}',
                          '{"mode": 1, "weather": 5, "intensity": 9}', '{"mode": 0}')
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.last_on, snapshot.last_colour), (None, None))
        self.state.commit_display("inc-1", '{"o":1}', red, red, red)
        self.state.commit_display("inc-1", '{"o":2}', rain, rain, "")
        self.state.commit_display("inc-1", '{"o":3}', off, "", "")
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.display, snapshot.last_on, snapshot.last_colour),
                         tuple(json.loads(d) for d in (off, rain, red)))
        self.client.flushall()
        self.assertTrue(self.state.initialise("inc-2", [], off, rain, red))
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.last_on, snapshot.last_colour), (json.loads(rain), json.loads(red)))

    def test_last_on_of_data_from_before(self):
        """
        Data written before the last state on was kept (no such keys): the
        first display commit takes the state it replaces as the last state
        on (and, a colour, as the last colour), as every node took it when
        it loaded that data; an off state it replaces leaves nothing.
        """
        red, off = '{"mode": 2, "color": [255, 0, 0], "pulse": 4}', '{"mode": 0}'
        self.client.set(redis_store.DISPLAY, red)
        self.state.commit_display("inc-1", '{"o":1}', off)
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.last_on, snapshot.last_colour), (json.loads(red), json.loads(red)))
        self.client.delete(redis_store.LAST_ON, redis_store.LAST_COLOUR)
        self.state.commit_display("inc-1", '{"o":2}', off)
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.last_on, snapshot.last_colour), (None, None))
        self.client.set(redis_store.DISPLAY, "not JSON")
        self.state.commit_display("inc-1", '{"o":3}', off)
        self.assertEqual(self.state.snapshot().display, json.loads(off))

    def test_restart_from_a_snapshot_file(self):
        """
        A Redis restarted from its snapshot file (appendonly no), which
        misses the latest publication, says so in the snapshot and refuses
        every change as stale until its data is renewed: new epochs, under a
        new incarnation; then changes are taken again and offsets go on.
        """
        self.state.commit_publication("inc-1", '{"o":1}', "pc", "E", '"pc"', 1.0, 5, 60)
        self.client.save()
        self.state.commit_publication("inc-1", '{"o":1}', "pc", "E", '"p1"', 2.0, 5, 60)
        self.assertFalse(self.state.snapshot().restarted)
        self.server.kill()
        self.server.start()
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.restarted, snapshot.streams), (True, [("pc", "E", 1, [(1, '"pc"', 1.0)])]))
        self.assertRaises(Stale, self.state.commit_publication, "inc-1", '{"o":1}', "pc", "E", '"q1"', 3.0, 5, 60)
        self.assertRaises(Stale, self.state.commit_report, "inc-1", '{"o":1}', "p", 1, 1.0, "http", 5)
        self.assertFalse(self.state.persists_every_write())
        self.assertTrue(self.state.renew("inc-1", "inc-2", "N"))
        self.assertFalse(self.state.renew("inc-1", "inc-3", "M"))  # once
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.restarted, snapshot.incarnation, snapshot.streams),
                         (False, "inc-2", [("pc", "N1", 1, [])]))
        self.assertEqual(self.state.commit_publication("inc-2", '{"o":1}', "pc", "E", '"q1"', 3.0, 5, 60),
                         (2, 2, "N1"))

    def test_user_without_info(self):
        """
        A Redis user that may not run INFO (ACL's @dangerous) gets an
        error from every script before it writes anything: seeding, renewing,
        replacing an empty seed and committing leave Redis as it was.
        """
        self.client.acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                                categories=["+@all", "-@dangerous"])
        limited = redis.Redis(host="127.0.0.1", port=self.server.port, username="limited", password="pw")
        self.addCleanup(limited.close)
        before = sorted(self.client.keys("*"))
        self.client.delete(redis_store.INCARNATION)
        state = RedisState(limited)
        with self.assertRaises(redis.ResponseError):
            state.initialise("inc-2", [("p", 1, 1.0, "http")], None)
        self.assertEqual(self.client.exists(redis_store.INCARNATION, redis_store.PLUGS), 0)
        self.client.set(redis_store.INCARNATION, "inc-1")
        with self.assertRaises(redis.ResponseError):
            state.renew("inc-1", "inc-3", "X")
        self.assertEqual(self.client.get(redis_store.INCARNATION), b"inc-1")
        self.client.set(redis_store.EMPTY_SEED, "inc-1")
        with self.assertRaises(redis.ResponseError):
            state.replace("inc-1", "inc-4", [("p", 1, 1.0, "http")], None, "{}")
        self.assertEqual(self.client.get(redis_store.INCARNATION), b"inc-1")
        self.client.delete(redis_store.EMPTY_SEED)
        self.assertEqual(sorted(self.client.keys("*")), before)

    def test_restart_with_every_write_on_disk(self):
        """
        A Redis that writes every change to disk before it answers
        (appendonly yes, appendfsync always) is known to lose nothing: once
        checked, the data goes on under the same incarnation and epochs.
        """
        self.server = start_redis(self, persist=True)
        self.client = redis.Redis.from_url(self.server.url)
        self.addCleanup(self.client.close)
        self.state = RedisState(self.client)
        self.state.initialise("inc-1", [], None)
        self.state.commit_publication("inc-1", '{"o":1}', "pc", "E", '"p1"', 2.0, 5, 60)
        self.server.kill()
        self.server.start()
        self.assertTrue(self.state.snapshot().restarted)
        self.assertTrue(self.state.persists_every_write())
        self.assertFalse(self.state.checked("other"))
        self.assertTrue(self.state.checked("inc-1"))
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.restarted, snapshot.incarnation, snapshot.streams),
                         (False, "inc-1", [("pc", "E", 1, [(1, '"p1"', 2.0)])]))
        self.assertEqual(self.state.commit_publication("inc-1", '{"o":1}', "pc", "E", '"q1"', 3.0, 5, 60),
                         (2, 2, "E"))

    def test_persistence_that_cannot_be_told(self):
        """
        A Redis that refuses CONFIG (some hosted ones do) counts as one
        that may lose writes.
        """
        class Refusing:
            def info(self, section):
                return {"aof_enabled": 1}

            def config_get(self, name):
                raise redis.ResponseError("unknown command 'CONFIG'")

            def register_script(self, script):
                return None

        self.assertFalse(RedisState(Refusing()).persists_every_write())


class EmptySeedTests(SynchronousTestCase):
    """
    A seed made by a node without a copy of its own is marked as an empty
    seed until the first change to the state; meanwhile a node's copy may
    take its place, once.
    """

    def setUp(self):
        on_redis(self)

    def messages(self):
        return messages(self.channel)

    def test_marked_until_a_change_to_the_state(self):
        """
        A seed made with C{empty} is an empty seed; a display command or an
        authentication failure (announcements: no change to the state)
        leave it one; the first change of any other kind (report, report
        with its publication, publication, display, ban, lift) ends it in
        the same commit.  A seed of a node's copy is never one.
        """
        changes = {
            "report": lambda inc: self.state.commit_report(inc, '{"o":1}', "p", 1, 1.0, "http", 5),
            "report and publication": lambda inc: self.state.commit_report(
                inc, '{"o":1}', "p", 1, 1.0, "http", 5, ("smartplug", "E", '"x"', 1.0, 5, 60)),
            "publication": lambda inc: self.state.commit_publication(inc, '{"o":1}', "door", "E", '"x"', 1.0, 5, 60),
            "display": lambda inc: self.state.commit_display(inc, '{"o":1}', '{"mode": 0}'),
            "ban": lambda inc: self.state.commit_ban(inc, '{"o":1}', "10.0.0.1", 100.0, 60.0),
            "lift": lambda inc: self.state.commit_lift(inc, '{"o":1}', "10.0.0.1"),
        }
        for kind, change in changes.items():
            self.client.flushall()
            self.assertTrue(self.state.initialise("empty", [], None, empty=True))
            self.assertTrue(self.state.snapshot().empty_seed, kind)
            self.state.commit_announcement("empty", '{"kind":"command"}')
            self.assertTrue(self.state.snapshot().empty_seed, kind)
            change("empty")
            self.assertFalse(self.state.snapshot().empty_seed, kind)
        self.client.flushall()
        self.assertTrue(self.state.initialise("copy", [("p", 1, 1.0, "http")], '{"mode": 0}'))
        self.assertFalse(self.state.snapshot().empty_seed)

    def test_replaced_once(self):
        """
        A node's copy takes the place of an empty seed under a new
        incarnation, as it would seed an empty Redis (plugs in order, the
        display), and the nodes hear of it on the change channel (with the
        seed it replaced); the node that made the seed is refused as stale.
        A second copy, racing the first, does not replace it again.
        """
        self.assertTrue(self.state.initialise("empty", [], None, empty=True))
        plugs = [("b", 1, 2.5, "http"), ("a", 0, 1.5, "device")]
        notice = json.dumps({"kind": "replaced", "incarnation": "copy-1", "replaced": "empty"})
        self.assertTrue(self.state.replace("empty", "copy-1", plugs, '{"mode": 0}', notice))
        self.assertFalse(self.state.replace("empty", "copy-2", [("c", 1, 3.0, "http")], None, "{}"))
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.incarnation, snapshot.plugs, snapshot.display, snapshot.empty_seed, snapshot.seq),
                         ("copy-1", plugs, {"mode": 0}, False, 0))
        self.assertEqual(self.messages(),
                         [{"seq": 0, "kind": "replaced", "incarnation": "copy-1", "replaced": "empty"}])
        self.assertRaises(Stale, self.state.commit_report, "empty", '{"o":1}', "p", 1, 1.0, "http", 5)
        self.assertEqual(self.state.commit_report("copy-1", '{"o":1}', "p", 1, 1.0, "http", 5), 1)

    def test_replace_carries_last_on(self):
        """
        The copy that takes an empty seed's place brings its last state on
        and last colour, as a seed does: a bare ON on any node restores them.
        """
        red, rain, off = ('{"mode": 2, "color": [255, 0, 0], "pulse": 4}',
                          '{"mode": 1, "weather": 5, "intensity": 9}', '{"mode": 0}')
        self.assertTrue(self.state.initialise("empty", [], None, empty=True))
        self.assertTrue(self.state.replace("empty", "copy", [], off, "{}", rain, red))
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.display, snapshot.last_on, snapshot.last_colour),
                         tuple(json.loads(d) for d in (off, rain, red)))

    def test_not_replaced_after_a_change(self):
        """
        An empty seed that took a change, a seed of a node's copy, and an
        empty seed that is not the one the node found (Redis was seeded
        again meanwhile) are not replaced: nothing is written or published.
        """
        self.assertTrue(self.state.initialise("empty", [], None, empty=True))
        self.state.commit_report("empty", '{"o":1}', "p", 1, 1.0, "http", 5)
        self.messages()
        self.assertFalse(self.state.replace("empty", "copy", [("q", 1, 1.0, "http")], None, "{}"))
        self.assertFalse(self.state.replace("other", "copy", [("q", 1, 1.0, "http")], None, "{}"))
        self.client.flushall()
        self.assertTrue(self.state.initialise("seeded", [("p", 1, 1.0, "http")], '{"mode": 0}'))
        self.assertFalse(self.state.replace("seeded", "copy", [("q", 1, 1.0, "http")], None, "{}"))
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.incarnation, snapshot.plugs), ("seeded", [("p", 1, 1.0, "http")]))
        self.assertEqual(self.messages(), [])

    def test_copy_first_reported_after_a_replace_comes_last(self):
        """
        Likewise for a copy that takes an empty seed's place: the sequence
        goes on from the seed's, and a plug first reported after the copy
        is listed after the copy's plugs.
        """
        self.assertTrue(self.state.initialise("empty", [], None, empty=True))
        copy = [("a1", 1, 1.0, "http"), ("a2", 0, 2.0, "http"), ("a3", 1, 3.0, "device")]
        self.assertTrue(self.state.replace("empty", "copy", copy, None, "{}"))
        self.assertEqual(self.state.commit_report("copy", '{"o":1}', "new", 1, 9.0, "http", 5), 1)
        self.assertEqual([p[0] for p in self.state.snapshot().plugs], ["a1", "a2", "a3", "new"])

    def test_not_replaced_after_a_change_that_left_it_empty(self):
        """
        A ban, then its lift, on an empty seed leave its state as empty as
        it was; but changes were made on it: it is no longer marked, and no
        copy takes its place.
        """
        self.assertTrue(self.state.initialise("empty", [], None, empty=True))
        self.state.commit_ban("empty", '{"o":1}', "10.0.0.1", 100.0, 60.0)
        self.state.commit_lift("empty", '{"o":2}', "10.0.0.1")
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.plugs, snapshot.display, snapshot.bans, snapshot.streams, snapshot.empty_seed),
                         ([], None, {}, [], False))
        self.messages()
        self.assertFalse(self.state.replace("empty", "copy", [("q", 1, 1.0, "http")], None, "{}"))
        self.assertEqual((self.state.snapshot().incarnation, self.state.snapshot().plugs), ("empty", []))
        self.assertEqual(self.messages(), [])

    def test_not_replaced_with_a_change_of_an_older_version(self):
        """
        A node of an older version clears no mark when it commits: a seed
        that holds state all the same is not replaced.
        """
        self.assertTrue(self.state.initialise("empty", [], None, empty=True))
        self.client.hset(redis_store.PLUGS, "p", json.dumps([1, 1.0, "http"]))
        self.assertFalse(self.state.replace("empty", "copy", [("q", 1, 1.0, "http")], None, "{}"))
        self.assertEqual(self.state.snapshot().incarnation, "empty")

    def test_renewed_empty_seed_stays_one(self):
        """
        New epochs (a Redis that restarted and may have lost writes) give
        the data a new incarnation: an empty seed stays one under it.
        """
        self.assertTrue(self.state.initialise("empty", [], None, empty=True))
        self.assertTrue(self.state.renew("empty", "renewed", "N"))
        snapshot = self.state.snapshot()
        self.assertEqual((snapshot.incarnation, snapshot.empty_seed), ("renewed", True))


def data(name: str, size: int = 300) -> str:
    """
    A publication's data as JSON, C{size} bytes long.
    """
    return json.dumps(name + "x" * (size - 2 - len(name)))


class CapTests(SynchronousTestCase):
    """
    Redis keeps to the caps of a single node (SPEC 6.3, 11), and a node
    loads the streams in pieces, never in one long script.
    """

    def setUp(self):
        server = start_redis(self)
        self.client = redis.Redis.from_url(server.url)
        self.addCleanup(self.client.close)
        self.state = RedisState(self.client, max_bytes=1000)
        self.state.initialise("inc", [], None)

    def publish(self, event: str, *names: str) -> int:
        for name in names:
            seq, _, _ = self.state.commit_publication("inc", '{"o":1}', event, "E" + event, data(name), 1.0, 100, 60)
        return seq

    def kept(self) -> dict:
        return {event: (latest, [json.loads(d)[:2] for _, d, _ in kept])
                for event, _, latest, kept in self.state.snapshot().streams}

    def test_bytes_over_all_events(self):
        """
        The publications kept over all events hold at most max_bytes of data:
        past that the least recently published events lose their oldest
        first (the newest is kept); offsets and epochs stay.
        """
        self.publish("a", "a1", "a2", "a3")
        self.publish("b", "b1")
        self.assertEqual(self.kept(), {"a": (3, ["a2", "a3"]), "b": (1, ["b1"])})
        self.publish("c", "c1")
        self.publish("b", "b2")
        self.assertEqual(self.kept(), {"a": (3, []), "b": (2, ["b1", "b2"]), "c": (1, ["c1"])})
        self.assertEqual(int(self.client.get(redis_store.KEPT_BYTES)), 900)
        self.assertEqual(self.client.exists(redis_store.stream_key("a")), 0)
        # An emptied event starts keeping again, its numbering unchanged;
        # c, published before b2, is now the least recently published.
        self.publish("a", "a4")
        self.assertEqual(self.kept(), {"a": (4, ["a4"]), "b": (2, ["b1", "b2"]), "c": (1, [])})
        self.assertEqual(int(self.client.get(redis_store.KEPT_BYTES)), 900)

    def test_cap_holds_with_small_old_publications(self):
        """
        When the oldest publications are far smaller than the newest (plug
        reports beside a large one), one publication frees all that is
        over the cap, however many small ones that takes; the count stays
        what Redis holds.
        """
        self.state = RedisState(self.client, max_bytes=10000)
        for i in range(200):
            self.state.commit_publication("inc", '{"o":1}', "small", "E", data(f"s{i}", 40), 1.0, 1000, 60)
        self.assertEqual(int(self.client.get(redis_store.KEPT_BYTES)), 8000)
        self.state.commit_publication("inc", '{"o":1}', "big", "E", data("b", 5000), 1.0, 1000, 60)
        kept = int(self.client.get(redis_store.KEPT_BYTES))
        self.assertLessEqual(kept, 10000)
        held = sum(len(fields[b"d"]) for key in (redis_store.stream_key("small"), redis_store.stream_key("big"))
                   for _, fields in self.client.xrange(key))
        self.assertEqual(held, kept)
        self.assertEqual(len(self.kept()["small"][1]), 125)
        self.assertEqual(len(self.kept()["big"][1]), 1)

    def test_older_publications_not_taken_off_the_total(self):
        """
        Publications kept before the counting began (an older version) were
        never counted: dropping them takes nothing off the total, which
        stays what the counted ones hold.
        """
        self.state = RedisState(self.client, max_bytes=10**6)
        self.state.commit_publication("inc", '{"o":1}', "counted", "E", data("c", 3000), 1.0, 100, 60)
        self.client.hset(redis_store.event_key("old"), mapping={"epoch": "E", "offset": 3})
        self.client.sadd(redis_store.EVENTS, "old")
        for i in (1, 2, 3):
            self.client.xadd(redis_store.stream_key("old"), {"d": data("x", 1000), "t": "1.0"}, id=f"{i}-1")
        self.state.commit_publication("inc", '{"o":1}', "old", "E", data("n", 10), 1.0, 1, 60)
        self.assertEqual(int(self.client.get(redis_store.KEPT_BYTES)), 3010)

    def test_count_per_event_is_counted(self):
        """
        A publication dropped over the per-event count (PUBSUB_HISTORY)
        leaves the bytes count too.
        """
        for i in range(5):
            self.state.commit_publication("inc", '{"o":1}', "a", "E", data(f"a{i}", 100), 1.0, 2, 60)
        self.assertEqual(int(self.client.get(redis_store.KEPT_BYTES)), 200)
        self.assertEqual(self.kept(), {"a": (5, ["a3", "a4"])})

    def test_loaded_in_pieces(self):
        """
        The streams are read in pieces of bounded size, each a script of
        its own; publications made between two pieces are left to the
        change channel: the snapshot says, per event, up to which change
        its stream was read.
        """
        self.state = RedisState(self.client, max_bytes=10**6)
        for i in range(10):
            self.publish(f"e{i}", "x", "y")
        self.patch(redis_store, "STREAMS_PIECE_EVENTS", 4)
        self.patch(redis_store, "STREAMS_PIECE_BYTES", 500)
        pieces = []
        read = self.state._streams

        def piece(keys, args):
            found = read(keys=keys, args=args)
            pieces.append(found[3])
            if len(pieces) == 1:
                self.publish("late", "z")  # another node, in between
            return found

        self.state._streams = piece
        snapshot = self.state.snapshot()
        self.assertGreaterEqual(len(pieces), 10)
        # A piece takes no further event once it holds 500 bytes of data
        # (each e<i> holds 600, "late" 300).
        for found in pieces:
            sizes = [sum(len(field) for _, fields in entries for field in fields) for *_, entries in found]
            self.assertLess(sum(sizes[:-1]), 500, found)
        streams = {event: (latest, [json.loads(d)[0] for _, d, _ in kept])
                   for event, _, latest, kept in snapshot.streams}
        self.assertEqual({e: s for e, s in streams.items() if e != "late"},
                         {f"e{i}": (2, ["x", "y"]) for i in range(10)})
        self.assertEqual((snapshot.streams_from, snapshot.seq), (20, 21))
        first = next(e for e in snapshot.loaded_at if e != "late")
        self.assertEqual(snapshot.loaded_at[first], 20)

    def test_loaded_within_the_cap(self):
        """
        Streams written before Redis kept to the cap (an older version)
        load with their publications only up to max_bytes in all; the
        others load their numbering alone.
        """
        for i in range(5):
            self.client.hset(redis_store.event_key(f"e{i}"), mapping={"epoch": "E", "offset": 1})
            self.client.sadd(redis_store.EVENTS, f"e{i}")
            self.client.xadd(redis_store.stream_key(f"e{i}"), {"d": data("x"), "t": "1.0"}, id="1-1")
        streams = self.state.snapshot().streams
        self.assertEqual(sorted(latest for _, _, latest, _ in streams), [1] * 5)
        self.assertEqual(sum(len(d) for *_, kept in streams for _, d, _ in kept), 900)

    def test_events_kept(self):
        """
        Redis keeps the numbering of at most max_streams events: past that
        the least recently published is forgotten, with its stream and its
        bytes; published again, it starts at offset 1 under an epoch it
        never had, while an event never published still takes the epoch
        it is given (the one nodes hand out before its first publication).
        """
        self.state = RedisState(self.client, max_bytes=10**6, max_streams=3)
        for event in "abc":
            self.publish(event, "1", "2")
        self.publish("a", "3")
        self.publish("d", "1")
        self.assertEqual(sorted(self.kept()), ["a", "c", "d"])
        self.assertEqual(self.client.exists(redis_store.event_key("b"), redis_store.stream_key("b")), 0)
        self.assertEqual(sorted(self.client.smembers(redis_store.EVENTS)), [b"a", b"c", b"d"])
        self.assertEqual(int(self.client.get(redis_store.KEPT_BYTES)), 6 * 300)
        _, offset, epoch = self.state.commit_publication("inc", '{"o":1}', "b", "Eb", data("b"), 1.0, 100, 60)
        self.assertEqual(offset, 1)
        self.assertNotEqual(epoch, "Eb")
        self.assertEqual(sorted(self.kept()), ["a", "b", "d"])
        self.assertEqual(self.state.commit_publication("inc", '{"o":1}', "new", "En", data("n"), 1.0, 100, 60)[1:],
                         (1, "En"))
