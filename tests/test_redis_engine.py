"""
Tests for the Redis engine and journal (SPEC 11), against a real
redis-server that each test starts on a free loopback port: several engines
(nodes) in this process share it, each with its own hub.
"""

import collections
import json
import time

import redis
from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from smartplug_backend import config
from smartplug_backend.core.display import NEVER_ON, Display
from smartplug_backend.core.history import History
from smartplug_backend.core.hub import Hub
from smartplug_backend.core.journal import StoreFailed
from smartplug_backend.core.limits import REDIS_EMPTY_GRACE
from smartplug_backend.core.pubsub import report_publisher
from smartplug_backend.http.dashboard.feed import public_settings
from smartplug_backend.integrations import redis_engine
from smartplug_backend.integrations.redis_engine import RedisEngine
from smartplug_backend.integrations.redis_store import EMPTY_SEED, NODES, RedisState, node_key
from smartplug_backend.server.guard import Guard

from .fake_mqtt import home_assistant
from .helpers import until
from .redis_server import start_redis


class Node:
    """
    One engine with its hub, recording what its listeners are told.
    """

    def __init__(self, testcase, url: str, name: str, info_interval: float = 5, history: int = 100,
                 max_bytes: int = 32 * 1024 * 1024, max_streams: int = 10000):
        self.engine = RedisEngine(
            url, name, reactor, keep=5, info_interval=info_interval,
            make_hub=lambda journal: Hub(now=reactor.seconds, journal=journal, node=name, publish_reports=True,
                                         history=History(keep=history, now=reactor.seconds, max_bytes=max_bytes,
                                                         max_streams=max_streams)),
        )
        self.hub = self.engine.hub
        self.reports = []
        self.packets = []
        # subscriber -> frames it was sent, decoded
        self.frames = collections.defaultdict(list)
        self.hub.listen(self.reports.append)
        self.hub.listen(report_publisher(self.hub))
        self.hub.pubsub.deliver_with(self._deliver)
        self.hub.watch_display(lambda event: self.packets.append(event.packet))
        self.testcase = testcase

    def _deliver(self, subscribers, frame):
        for subscriber in subscribers:
            self.frames[subscriber].append(json.loads(frame))

    def subscribe(self, subscriber, event, **kwargs):
        for frame in self.hub.pubsub.subscribe(subscriber, event, **kwargs):
            self.frames[subscriber].append(json.loads(frame))

    @inlineCallbacks
    def start(self):
        self.engine.privilegedStartService()
        self.engine.startService()
        self.testcase.addCleanup(self.stop)
        yield until(lambda: self.engine.mode == redis_engine.UP, "the engine to load and subscribe")

    def stop(self):
        if self.engine.running:
            return self.engine.stopService()


class EngineTests(TestCase):
    """
    Two nodes on one Redis act as one.
    """

    timeout = 60

    def setUp(self):
        self.redis = start_redis(self)
        self.logged = []
        observer = self.logged.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def lines(self, text: str) -> list:
        return [formatEvent(e) for e in self.logged if text in formatEvent(e)]

    @inlineCallbacks
    def nodes(self, count=2, **kwargs):
        made = [Node(self, self.redis.url, f"node-{i}", **kwargs) for i in range(count)]
        for node in made:
            yield node.start()
        return made

    def start_away(self, url: str, name: str = "node") -> Node:
        """
        Start a node on C{url} that cannot load the state there: it starts
        all the same, not up.
        """
        node = Node(self, url, name)
        node.engine.privilegedStartService()
        node.engine.startService()
        self.addCleanup(node.stop)
        self.assertFalse(node.engine.up)
        return node

    @inlineCallbacks
    def report_until_taken(self, node, plug_id: str, value: int):
        """
        Report until C{node} takes it: after Redis lost its data the first
        try is refused while the node seeds Redis again.
        """
        for _ in range(50):
            report = yield node.hub.report(plug_id, value, "http", "x")
            if report is not None:
                return report
            yield until(lambda: node.engine.mode == redis_engine.UP, "the node to load again", timeout=20)
        self.fail(f"{plug_id} -> {value} never taken")

    @inlineCallbacks
    def back(self, node):
        """
        Wait until C{node} has loaded the state again; check that it takes
        changes and that the log said once that Redis was away and once
        that it is back.
        """
        yield until(lambda: node.engine.mode == redis_engine.UP, "the node to load again", timeout=30)
        report = yield node.hub.report("p", 0, "http", "x")
        self.assertEqual(report.plug.value, 0)
        self.assertEqual(len(self.lines("unreachable (")), 1)
        self.assertEqual(len(self.lines("is back:")), 1)

    @inlineCallbacks
    def test_report_reaches_every_node(self):
        """
        A report accepted on A is A's (not remote) and reaches B's listeners
        marked remote, with the same time stamp and source; both hubs hold
        it, and its history is read from Redis on either node.
        """
        a, b = yield self.nodes()
        report = yield a.hub.report("0xb00b", 1, "http", "10.0.0.1")
        self.assertFalse(report.remote)
        yield until(lambda: b.reports, "B to be told")
        (seen,) = b.reports
        self.assertEqual((seen.plug, seen.remote, seen.source, seen.previous), (report.plug, True, "http", None))
        self.assertEqual(b.hub.plug("0xb00b"), a.hub.plug("0xb00b"))
        history = yield b.hub.history("0xb00b", 10)
        self.assertEqual([(e.value, e.at, e.source) for e in history], [(1, report.plug.updated_at, "http")])

    @inlineCallbacks
    def test_one_order_everywhere(self):
        """
        Reports of one plug sent from both nodes at once are applied in one
        order on both: the listeners see the same sequence, with the same
        "previous" values, and both end on the same state.
        """
        a, b = yield self.nodes()
        sent = []
        for i in range(20):
            node = (a, b)[i % 2]
            sent.append(node.hub.report("p", i % 3 == 0 and 1 or 0, "http", "x"))
        for d in sent:
            self.assertIsNotNone((yield d))
        yield until(lambda: len(a.reports) == len(b.reports) == 20, "both nodes to see all 20")
        order = [[(r.plug.value, r.plug.updated_at, r.previous) for r in n.reports] for n in (a, b)]
        self.assertEqual(order[0], order[1])
        self.assertEqual(a.hub.plug("p"), b.hub.plug("p"))

    @inlineCallbacks
    def test_publications_numbered_once_for_all_nodes(self):
        """
        Publications made on both nodes get one sequence of offsets under
        one epoch, assigned by Redis; each reaches the subscribers of both
        nodes once, with the same offset and epoch; both nodes keep the same
        history.
        """
        a, b = yield self.nodes()
        a.subscribe("on-a", "door", last=True)
        b.subscribe("on-b", "door")
        for i, node in enumerate((a, b, a, b)):
            self.assertEqual((yield node.hub.publish("door", f"d{i}", "peer")), 1)
        yield until(lambda: len(a.frames["on-a"]) == len(b.frames["on-b"]) == 4, "both subscribers")
        self.assertEqual([(f["offset"], f["data"]) for f in a.frames["on-a"]],
                         [(1, "d0"), (2, "d1"), (3, "d2"), (4, "d3")])
        self.assertEqual(len({f["epoch"] for f in a.frames["on-a"]}), 1)
        self.assertEqual([f["data"] for f in b.frames["on-b"]], ["d0", "d1", "d2", "d3"])
        self.assertNotIn("offset", b.frames["on-b"][0])  # PiCloud's frame for those that asked for nothing
        self.assertEqual(a.hub.pubsub.history_page("door", 0, 10), b.hub.pubsub.history_page("door", 0, 10))

    @inlineCallbacks
    def test_recovery_across_nodes(self):
        """
        A client that saw offsets 1-2 on A, then reconnects to B after
        publications 3-4 were made there, recovers 3 and 4 on B, then
        "recovered": true with B's position, which is A's too.
        """
        a, b = yield self.nodes()
        a.subscribe("client", "door", last=True)
        for i in range(2):
            yield a.hub.publish("door", i, "peer")
        seen = a.frames["client"]
        position = {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}
        a.hub.pubsub.disconnected("client")
        for i in range(2, 4):
            yield b.hub.publish("door", i, "peer")
        yield until(lambda: a.hub.pubsub.history.position("door")[0] == 4, "A to have all four")
        b.subscribe("again", "door", since=(position["offset"], position["epoch"]))
        frames = b.frames["again"]
        self.assertEqual([f.get("offset") for f in frames], [3, 4, 4])
        self.assertEqual((frames[-1]["action"], frames[-1]["recovered"], frames[-1]["epoch"]),
                         ("recovered", True, position["epoch"]))

    @inlineCallbacks
    def test_report_publication_on_every_node_once(self):
        """
        A report's smartplug publication is numbered with the report, in one
        commit, and reaches each node's subscribers once; with history off
        too (PUBSUB_HISTORY = 0), where Redis still numbers it.
        """
        for history in (100, 0):
            self.redis = start_redis(self)
            a = Node(self, self.redis.url, "a", history=history)
            b = Node(self, self.redis.url, "b", history=history)
            yield a.start()
            yield b.start()
            a.subscribe("s", "smartplug")
            b.subscribe("s", "smartplug")
            yield a.hub.report("p", 1, "http", "x")
            yield b.hub.report("p", 0, "http", "x")
            yield a.hub.report("q", 1, "http", "x")
            # Changes come in one order: a duplicate would come before the last.
            yield until(lambda a=a, b=b: a.frames["s"][-1:] == b.frames["s"][-1:] != [] and "q" in
                        a.frames["s"][-1]["data"], "both subscribers to see the last report")
            self.assertEqual([f["data"] for f in a.frames["s"]],
                             ['{"id": "p", "value": 1}', '{"id": "p", "value": 0}', '{"id": "q", "value": 1}'],
                             history)
            self.assertEqual(a.frames["s"], b.frames["s"])
            self.assertEqual(a.hub.pubsub.history.position("smartplug"), b.hub.pubsub.history.position("smartplug"))
            self.assertEqual(a.hub.pubsub.history.position("smartplug")[0], 3)

    @inlineCallbacks
    def test_display_and_commands_reach_every_node(self):
        """
        A display state set on A and a reset command given on B reach both
        nodes' devices, in one order; the state is the same on both.
        """
        a, b = yield self.nodes()
        red = Display(2, color=(255, 0, 0), pulse=1)
        self.assertEqual((yield a.hub.set_display(red, "p")), red)
        self.assertEqual((yield b.hub.display_command("reset", "p")), "[cc:r:?:?]")
        expected = ["[cc:2:255,0,0:1]", "[cc:r:?:?]"]
        yield until(lambda: a.packets == expected and b.packets == expected, "both nodes' packets")
        self.assertEqual((a.hub.display(), b.hub.display()), (red, red))

    @inlineCallbacks
    def test_a_starting_node_loads_the_state(self):
        """
        A node that starts after changes were made loads plugs (in
        first-report order) and the display state from Redis.
        """
        (a,) = yield self.nodes(1)
        yield a.hub.report("second", 0, "device", "x")
        yield a.hub.report("first", 1, "http", "x")
        yield a.hub.report("second", 1, "http", "x")
        weather = Display(1, weather=3, intensity=9)
        yield a.hub.set_display(weather, "x")
        late = Node(self, self.redis.url, "late")
        yield late.start()
        self.assertEqual(late.hub.plugs(), a.hub.plugs())
        self.assertEqual([p.id for p in late.hub.plugs()], ["second", "first"])
        self.assertEqual(late.hub.display(), weather)
        self.assertEqual(late.reports, [])

    @inlineCallbacks
    def light(self, node, payload: bytes, packet: str):
        """
        Home Assistant sends C{payload} to C{node}'s MQTT bridge; wait until
        the lamps of C{node} got C{packet}, the command committed in Redis.
        """
        del node.packets[:]
        if not hasattr(node, "home_assistant"):
            node.home_assistant = home_assistant(self, node.hub)
        node.home_assistant.light(payload)
        yield until(lambda: node.packets, "the light command to be committed")
        self.assertEqual(node.packets, [packet])

    @inlineCallbacks
    def test_last_on_on_a_node_started_after_off(self):
        """
        A colour with a pulse, a weather, then off, all on A; a node started
        after that restores the weather on a bare ON, and its new colour
        keeps the pulse; every node sees both.
        """
        (a,) = yield self.nodes(1)
        yield a.hub.set_display(Display(2, color=(1, 2, 3), pulse=3), "x")
        yield a.hub.set_display(Display(1, weather=7, intensity=4), "x")
        yield a.hub.set_display(Display(), "x")
        late = Node(self, self.redis.url, "late")
        yield late.start()
        yield self.light(late, b"ON", "[cc:1:7:4]")
        yield self.light(late, b'{"state": "ON", "color": {"r": 9, "g": 8, "b": 7}}', "[cc:2:9,8,7:3]")
        yield until(lambda: a.packets[-2:] == ["[cc:1:7:4]", "[cc:2:9,8,7:3]"], "A to see both")

    @inlineCallbacks
    def test_last_on_of_data_from_before(self):
        """
        Redis data written before the last state on was kept: a node that
        loads it takes its display state, a colour, as the last one on; the
        first display change keeps that in Redis, so a node started after
        the display went off agrees with the others.
        """
        red = Display(2, color=(255, 0, 0), pulse=0)
        (a,) = yield self.nodes(1)
        yield a.hub.set_display(red, "x")
        a.engine.state.client.delete("smartplug:last-on", "smartplug:last-colour")
        b = Node(self, self.redis.url, "b")
        yield b.start()
        yield b.hub.set_display(Display(), "x")
        yield until(lambda: a.hub.display() == Display(), "A to see the display off")
        late = Node(self, self.redis.url, "late")
        yield late.start()
        for node in (a, b, late):
            self.assertEqual((node.hub.last_on().state, node.hub.last_on().colour), (red, red))
        yield self.light(late, b"ON", "[cc:2:255,0,0:0]")

    @inlineCallbacks
    def test_last_on_of_an_older_node(self):
        """
        A node of an older version writes the display without the last
        state on: a newer node's next display change takes the state it
        replaces as the last one on, so a node started after an off agrees
        with the nodes that saw it.
        """
        red, blue = Display(2, color=(255, 0, 0), pulse=0), Display(2, color=(0, 0, 255), pulse=5)
        (a,) = yield self.nodes(1)
        yield a.hub.set_display(red, "x")
        # What an older node's script does: the display alone.
        a.engine.state.client.set("smartplug:display", '{"mode": 2, "color": [0, 0, 255], "pulse": 5}')
        yield a.hub.set_display(Display(), "x")
        late = Node(self, self.redis.url, "late")
        yield late.start()
        self.assertEqual((late.hub.last_on().state, late.hub.last_on().colour), (blue, blue))

    @inlineCallbacks
    def test_last_on_not_valid_ignored(self):
        """
        A last state on in Redis that is not JSON, or off, and a last colour
        that is a weather, are ignored with a warning: the node loads the
        rest (they are only remembered), and a bare ON gives white.
        """
        (a,) = yield self.nodes(1)
        client = a.engine.state.client
        for last_on, colour in (("not json", '{"mode": 1, "weather": 2, "intensity": 6}'),
                                ('{"mode": 0}', "{")):
            yield a.hub.set_display(Display(), "x")
            client.set("smartplug:last-on", last_on)
            client.set("smartplug:last-colour", colour)
            late = Node(self, self.redis.url, "late")
            yield late.start()
            self.assertEqual(late.hub.last_on(), NEVER_ON)
            yield self.light(late, b"ON", "[cc:2:255,255,255:0]")
            yield late.stop()
        self.assertEqual(len(self.lines(": the last display state that was on is not")), 2)
        self.assertEqual(len(self.lines(": the last colour is not")), 2)

    @inlineCallbacks
    def test_reload_takes_last_on_from_redis(self):
        """
        Changes a node missed (here written into Redis by hand while it
        reconnects) may have set the last state on: after it loads the state
        again, it restores Redis' one, as a node started then would.
        """
        a, b = yield self.nodes()
        yield a.hub.set_display(Display(2, color=(255, 0, 0), pulse=0), "x")
        yield until(lambda: b.hub.display() != Display(), "B to see the colour")
        client = a.engine.state.client
        client.set("smartplug:last-on", '{"mode": 1, "weather": 2, "intensity": 6}')
        client.set("smartplug:display", '{"mode": 0}')
        client.client_kill_filter(_type="pubsub")  # both nodes reconnect and load the state
        yield until(lambda: a.hub.display() == b.hub.display() == Display(), "both nodes to load the display")
        yield until(lambda: a.engine.mode == b.engine.mode == redis_engine.UP, "both nodes up", timeout=20)
        yield self.light(b, b"ON", "[cc:1:2:6]")

    @inlineCallbacks
    def test_last_on_seeded_again(self):
        """
        A Redis that restarts without its data is seeded again with a
        node's last state on too: a node started after that restores it.
        """
        (a,) = yield self.nodes(1)
        yield a.hub.set_display(Display(1, weather=4, intensity=2), "x")
        yield a.hub.set_display(Display(), "x")
        self.redis.kill()
        yield until(lambda: a.engine.mode == redis_engine.DOWN, "A to notice")
        self.redis.start()
        yield until(lambda: a.engine.mode == redis_engine.UP, "A to seed Redis again", timeout=20)
        late = Node(self, self.redis.url, "late")
        yield late.start()
        yield self.light(late, b"ON", "[cc:1:4:2]")

    @inlineCallbacks
    def test_redis_away_and_back(self):
        """
        With Redis gone, changes fail with StoreFailed (the hub answers None
        and tells no one) while reads go on from the node's copy; the log
        says so once, and once again when Redis is back, after which changes
        are accepted again.  The refused changes are logged once, and the
        rest summed up once Redis is back, even if no change comes then:
        the next outage's first refusal is logged whole again.
        """
        (a,) = yield self.nodes(1)
        self.assertTrue(a.engine.link.up)
        yield a.hub.report("p", 1, "http", "x")
        self.redis.stop()
        yield until(lambda: a.engine.mode == redis_engine.DOWN, "the node to notice")
        # The dashboard and /metrics see it too, with the log's reason.
        self.assertFalse(a.engine.link.up)
        self.assertIn(a.engine.link.why, "\n".join(self.lines("unreachable (")))
        for _ in range(10):
            self.assertIsNone((yield a.hub.report("p", 0, "http", "x")))
            self.assertIsNone((yield a.hub.set_display(Display(0), "x")))
        self.assertEqual(a.hub.plug("p").value, 1)
        self.assertEqual(len(a.reports), 1)
        self.failureResultOf(a.hub.history("p", 10), StoreFailed)
        # The refusals of one outage are one line (then summed up), not 20.
        self.assertEqual(len(self.lines("refused: state store cannot write")), 1)
        self.redis.start()
        yield until(lambda: a.engine.mode == redis_engine.UP, "the node to load again", timeout=30)
        self.assertEqual(len(self.lines("19 more changes refused")), 1)
        self.assertEqual((a.engine.link.up, a.engine.link.why), (True, None))
        self.redis.stop()
        yield until(lambda: a.engine.mode == redis_engine.DOWN, "the node to notice again")
        self.assertIsNone((yield a.hub.publish("door", "open", "x")))
        self.assertEqual(len(self.lines("refused: state store cannot write")), 2)
        # Redis numbers publications: the refused one has no number to tell.
        self.assertEqual(len(self.lines("publication of door from x refused")), 1)
        self.redis.start()
        yield until(lambda: a.engine.mode == redis_engine.UP, "the node to load again", timeout=30)
        report = yield a.hub.report("p", 0, "http", "x")
        self.assertEqual(report.plug.value, 0)

    @inlineCallbacks
    def test_redis_hangs(self):
        """
        A Redis that hangs (frozen: its connections stay open, nothing
        answers) is noticed without any change to commit, by the node's
        presence write timing out; changes then answer at once, refused,
        and reads go on.  The log says so once; when Redis answers again the
        node loads the state and accepts changes.
        """
        (a,) = yield self.nodes(1, info_interval=1)
        yield a.hub.report("p", 1, "http", "x")
        self.redis.pause()
        self.addCleanup(self.redis.resume)
        yield until(lambda: a.engine.mode == redis_engine.DOWN, "the node to notice a Redis that hangs", timeout=20)
        refused = a.hub.report("p", 0, "http", "x")
        self.assertIsNone(self.successResultOf(refused))
        # While a try to load again waits for the hung Redis, changes are
        # still refused at once, not queued behind it.
        a.engine._resync()
        self.assertIsNone(self.successResultOf(a.hub.report("p", 0, "http", "x")))
        self.assertEqual(a.hub.plug("p").value, 1)
        self.failureResultOf(a.hub.history("p", 10), StoreFailed)
        self.assertEqual(len(self.lines("unreachable (Timeout")), 1)
        self.redis.resume()
        yield self.back(a)

    @inlineCallbacks
    def test_change_answered_503_never_applied(self):
        """
        A change sent to a Redis that hangs, answered 503 when its command
        times out, is not applied when Redis goes on: the change carries a
        deadline in Redis' clock, and the script refuses it past that (a
        probe saw such changes reach every node, apps and subscribers).
        """
        a, b = yield self.nodes()
        yield a.hub.report("p", 1, "http", "x")
        self.redis.pause()
        self.addCleanup(self.redis.resume)
        self.assertIsNone((yield a.hub.report("ghost", 1, "http", "x")))
        self.assertIsNone((yield b.hub.publish("door", "ghost", "x")))
        self.redis.resume()
        yield until(lambda: a.engine.mode == b.engine.mode == redis_engine.UP, "both nodes up", timeout=30)
        yield self.report_until_taken(a, "after", 1)
        yield until(lambda: b.hub.plug("after") is not None, "B to see the next report")
        client = a.engine.state.client
        self.assertFalse(client.hexists("smartplug:plugs", "ghost"))
        self.assertEqual((a.hub.plug("ghost"), b.hub.plug("ghost")), (None, None))
        self.assertEqual((a.hub.pubsub.history.position("door")[0], b.hub.pubsub.history.position("door")[0]),
                         (0, 0))

    @inlineCallbacks
    def test_deadline_after_a_clock_step(self):
        """
        A clock that stepped since Redis' was last read (NTP setting a
        Raspberry Pi's clock after boot) may make a change late: it is
        refused, said with how late, and the clock is read again at once,
        so the next change goes through.
        """
        (a,) = yield self.nodes(1)
        a.engine.state.clock_offset -= 10
        self.assertIsNone((yield a.hub.report("p", 1, "http", "x")))
        (line,) = self.lines("past its deadline")
        self.assertRegex(line, r"it took the change 5\.\d+ s past its deadline \(in Redis' clock\)")
        self.assertEqual((yield a.hub.report("p", 1, "http", "x")).plug.value, 1)
        self.assertTrue(a.engine.up)

    @inlineCallbacks
    def test_deadline_counts_from_the_send(self):
        """
        A change that waits its turn on the Redis thread (behind a long
        load, say) longer than a command's timeout still goes through: its
        deadline counts from when it is sent.
        """
        (a,) = yield self.nodes(1)
        busy = a.engine._run(time.sleep, redis_engine.REDIS_COMMAND_TIMEOUT + 1)
        report = yield a.hub.report("p", 1, "http", "x")
        yield busy
        self.assertEqual(report.plug.value, 1)
        self.assertEqual(self.lines("past its deadline"), [])

    @inlineCallbacks
    def test_changes_during_the_reload(self):
        """
        Changes that arrive while the node tries to load the state again
        are refused at once until Redis has answered, and do not make the
        node mistake the hang it is leaving for a new one: once loaded, it
        takes changes and stays up.
        """
        (a,) = yield self.nodes(1, info_interval=1)
        self.redis.pause()
        self.addCleanup(self.redis.resume)
        yield until(lambda: a.engine.mode == redis_engine.DOWN, "the node to notice a Redis that hangs", timeout=20)
        # Each load is followed at once by a change, queued on the Redis
        # thread right behind it; the reactor takes the loaded state only
        # after that change has run there (as when the reactor is busy).
        resync, synced = a.engine._resync, a.engine._synced
        during = []

        def resync_then_report():
            resync()
            during.append(a.hub.report("p", len(during) % 2, "http", "x"))

        self.patch(a.engine, "_resync", resync_then_report)
        self.patch(a.engine, "_synced", lambda *args: reactor.callLater(0.3, synced, *args))
        self.redis.resume()
        yield until(lambda: a.engine.mode == redis_engine.UP, "the node to load again", timeout=30)
        self.assertTrue(during)
        # Refused at once while Redis has not answered yet (not queued to
        # wait out a timeout), and no sign that Redis went away again.
        for change in during:
            yield change
        # A second of changes after: all taken, the node stays up.
        later = []
        for i in range(50):
            later.append((yield a.hub.report("q", i % 2, "http", "x")))
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertNotIn(None, later)
        self.assertEqual(a.engine.mode, redis_engine.UP)
        self.assertEqual(len(self.lines("unreachable (")), 1)
        self.assertEqual(len(self.lines("is back:")), 1)

    @inlineCallbacks
    def test_late_change_of_lost_data_ignored(self):
        """
        A change committed on data that Redis has since lost, reaching a
        node after it loaded the new data, is dropped quietly: no second
        load, no warning.
        """
        (a,) = yield self.nodes(1)
        old = a.engine._incarnation
        yield a.hub.report("p", 1, "http", "x")
        a.engine.state.client.flushall()
        yield self.report_until_taken(a, "p", 0)
        self.assertNotEqual(a.engine._incarnation, old)
        warned = len(self.lines("holds other data"))
        a.engine._received(json.dumps({"seq": 1, "incarnation": old, "kind": "report", "plug": "p", "value": 1,
                                       "at": 1.0, "source": "http", "node": "gone", "origin": "x"}).encode())
        self.assertEqual(a.engine.mode, redis_engine.UP)
        self.assertEqual(len(self.lines("holds other data")), warned)
        self.assertEqual(a.hub.plug("p").value, 0)

    @inlineCallbacks
    def test_refused_without_asking_is_no_news(self):
        """
        Work that the Redis thread refused without asking Redis (it had
        just stopped answering) does not count as Redis going away again;
        a load that succeeds lets the work behind it ask Redis.
        """
        (a,) = yield self.nodes(1)
        a.engine._unanswered.set()
        refused = a.engine.read(lambda: "asked")
        yield until(lambda: refused.called, "the refusal")
        self.failureResultOf(refused, StoreFailed)
        self.assertEqual(a.engine.mode, redis_engine.UP)
        self.assertEqual(self.lines("unreachable ("), [])
        yield threads.deferToThreadPool(reactor, a.engine.pool, a.engine._load, [], None)
        self.assertFalse(a.engine._unanswered.is_set())
        self.assertEqual((yield a.engine.read(lambda: "asked")), "asked")

    @inlineCallbacks
    def test_commit_times_out(self):
        """
        A change sent while Redis hangs answers refused after the command
        timeout; the node is then down, so the next one is refused at once.
        """
        (a,) = yield self.nodes(1, info_interval=60)
        self.redis.pause()
        self.addCleanup(self.redis.resume)
        first = yield a.hub.report("p", 1, "http", "x")
        self.assertIsNone(first)
        self.assertFalse(a.engine.up)
        self.assertIsNone(self.successResultOf(a.hub.report("p", 1, "http", "x")))

    @inlineCallbacks
    def test_redis_emptied_while_connected(self):
        """
        Redis loses its data without dropping a connection (FLUSHALL,
        eviction): the node that commits next seeds it again; the other
        notices the new data in that node's change, loads it, and so gets
        the change; both agree on the new epochs.
        """
        a, b = yield self.nodes()
        b.subscribe("watcher", "smartplug")
        yield a.hub.report("p", 1, "http", "x")
        yield a.hub.publish("door", "open", "x")
        yield until(lambda: b.hub.pubsub.history.position("door")[0] == 1, "B to have the publication")
        epoch = b.hub.pubsub.history.position("door")[1]
        a.engine.state.client.flushall()
        yield self.report_until_taken(a, "fl", 1)
        yield until(lambda: b.hub.plug("fl") is not None, "B to load the new data", timeout=20)
        self.assertEqual(len(self.lines("holds other data than this node loaded")), 1)
        # B's subscribers got the report's publication too, though it was
        # made before B loaded the new data.
        yield until(lambda: any(f.get("data", "").startswith('{"id": "fl"') for f in b.frames["watcher"]),
                    "B's subscriber to get the first publication after the loss")
        yield until(lambda: b.engine.mode == redis_engine.UP, "B up", timeout=20)
        yield a.hub.publish("door", "again", "x")
        yield until(lambda: b.hub.pubsub.history.position("door") == a.hub.pubsub.history.position("door"),
                    "both nodes on the same position")
        self.assertNotEqual(b.hub.pubsub.history.position("door")[1], epoch)

    @inlineCallbacks
    def test_epoch_before_first_publication_is_shared(self):
        """
        Every node hands out the same epoch for an event never published,
        so a client that learnt it on B and missed the first publications,
        made on A, recovers them on B.
        """
        a, b = yield self.nodes()
        a.subscribe("ca", "fresh", since=(0, "unknown"))
        b.subscribe("cb", "fresh", since=(0, "unknown"))
        epoch = b.frames["cb"][-1]["epoch"]
        self.assertEqual(a.frames["ca"][-1]["epoch"], epoch)
        self.assertEqual(a.hub.pubsub.history.page("fresh", 0, 10)[0], epoch)
        for i in range(2):
            yield a.hub.publish("fresh", i, "peer")
        yield until(lambda: b.hub.pubsub.history.position("fresh")[0] == 2, "B to have both")
        b.subscribe("again", "fresh", since=(0, epoch))
        frames = b.frames["again"]
        self.assertEqual([(f.get("offset"), f.get("data")) for f in frames[:2]], [(1, 0), (2, 1)])
        self.assertEqual((frames[-1]["recovered"], frames[-1]["epoch"]), (True, epoch))

    @inlineCallbacks
    def test_start_without_redis(self):
        """
        A node that starts while Redis is away starts all the same, refuses
        changes and says so once; once Redis answers it loads the state and
        tells its listeners what it did not know.
        """
        # Redis keeps its data across the restart here, as advised.
        self.redis = start_redis(self, persist=True)
        (a,) = yield self.nodes(1)
        yield a.hub.report("p", 1, "http", "x")
        yield a.hub.set_display(Display(1, weather=3, intensity=9), "x")
        self.redis.stop()
        late = self.start_away(self.redis.url, "late")
        self.assertFalse(late.hub.display_known)
        self.assertFalse(late.engine.link.up)
        self.assertIn("Connection refused", late.engine.link.why)
        self.assertIsNone((yield late.hub.report("q", 1, "http", "x")))
        self.assertEqual(len(self.lines("unreachable at start")), 1)
        self.redis.start()
        yield until(lambda: late.engine.mode == redis_engine.UP, "the late node to load", timeout=20)
        self.assertTrue(late.engine.link.up)
        self.assertEqual([(r.plug.id, r.plug.value, r.remote) for r in late.reports], [("p", 1, True)])
        self.assertEqual(late.hub.plugs(), a.hub.plugs())
        # Devices connected meanwhile got no packet; the loaded one reaches them.
        self.assertEqual(late.packets, ["[cc:1:3:9]"])
        self.assertTrue(late.hub.display_known)

    @inlineCallbacks
    def test_wrong_password_named(self):
        """
        A Redis that refuses the node's password is away, as an unreachable
        one is, and the log line says to check the password (never quoting
        it); once Redis takes it, the node loads.
        """
        (a,) = yield self.nodes(1)
        yield a.hub.report("p", 1, "http", "x")
        admin = redis.Redis.from_url(self.redis.url)
        admin.config_set("requirepass", "right")
        admin.close()
        node = self.start_away(self.redis.url.replace("redis://", "redis://:wr0ng@"))
        (line,) = self.lines("unreachable at start")
        self.assertIn("(it refuses the user name or password in REDIS_URL: invalid username-password pair", line)
        self.assertNotIn("wr0ng", line)
        admin = redis.Redis.from_url(self.redis.url, password="right")
        admin.config_set("requirepass", "wr0ng")
        admin.close()
        yield until(lambda: node.engine.mode == redis_engine.UP, "the node to load", timeout=20)
        self.assertEqual(node.hub.plug("p").value, 1)

    def test_database_number_out_of_range_named(self):
        """
        A database number that Redis does not have is away too (Redis may be
        set up with more), and the line says what to check.
        """
        node = self.start_away(self.redis.url.rsplit("/", 1)[0] + "/99")
        (line,) = self.lines("unreachable at start")
        self.assertIn("(DB index is out of range: it has fewer databases (its 'databases' setting, 16 by default, "
                      "numbered from 0) than the number that ends REDIS_URL)", line)
        self.assertFalse(node.engine.up)

    def test_tls_to_plain_port_named(self):
        """
        C{rediss://} to Redis' plain port (the TLS handshake is never
        answered) asks whether that is the TLS port.
        """
        self.start_away(self.redis.url.replace("redis://", "rediss://"))
        (line,) = self.lines("unreachable at start")
        self.assertIn("rediss:// speaks TLS: is that Redis' TLS port?", line)

    @inlineCallbacks
    def test_node_without_state_does_not_seed(self):
        """
        A node that could never load the state (Redis was down when it
        started) does not seed an empty Redis with its nothing, which would
        wipe the other nodes' copies: it says so and waits; a node with a
        copy seeds it, and the waiting node loads that.
        """
        (a,) = yield self.nodes(1)
        yield a.hub.report("p", 1, "http", "x")
        self.redis.kill()
        yield until(lambda: a.engine.mode == redis_engine.DOWN, "A to notice")
        late = Node(self, self.redis.url, "late")
        late.engine.privilegedStartService()
        late.engine.startService()
        self.addCleanup(late.stop)
        self.assertFalse(late.hub.display_known)
        # A is held back, so that the late node finds Redis empty first.
        self.patch(a.engine, "_resync", lambda: None)
        self.redis.start()
        yield until(lambda: self.lines("answers, but it holds no state"), "the late node to refuse to seed", timeout=30)
        self.assertEqual(late.engine.mode, redis_engine.DOWN)
        # The dashboard says Redis answers but is not in use, not that it
        # cannot be reached.
        self.assertEqual((late.engine.link.up, late.engine.link.answers), (False, True))
        self.assertIn("it holds no state", late.engine.link.why)
        self.patch(a.engine, "_resync", redis_engine.RedisEngine._resync.__get__(a.engine))
        a.engine._resync()
        yield until(lambda: late.engine.mode == redis_engine.UP, "the late node to load A's copy", timeout=30)
        self.assertEqual(late.hub.plug("p").value, 1)

    @inlineCallbacks
    def test_node_without_state_seeds_a_redis_that_stays_empty(self):
        """
        A node that started before its Redis (a fresh deployment, a single
        node) and then finds it empty is not stuck: it waits
        L{REDIS_EMPTY_GRACE} s (on the engine's clock, a fake one here) for
        a node that holds the state, and waits on while another node shows
        its presence; then it seeds Redis with an empty state, says so in
        one line, and takes changes.  A change refused while it waits says
        Redis answers; a ban it made meanwhile reaches Redis once a change
        made the empty seed a state.
        """
        self.redis.stop()
        node = self.start_away(self.redis.url)
        clock = Clock()
        node.engine._now = clock.seconds
        (guard,) = self.guards(node)
        self.assertTrue(guard.failure("203.0.113.12", "test"))
        self.redis.start()

        @inlineCallbacks
        def tried():
            # One more try to load, after the first: DOWN again, not seeded.
            node.engine._resync()
            yield until(lambda: node.engine.mode == redis_engine.DOWN, "the try to end", timeout=20)

        yield until(lambda: self.lines("answers, but it holds no state"), "the node to find Redis empty", timeout=30)
        self.assertEqual(node.engine.mode, redis_engine.DOWN)
        self.assertIsNone((yield node.hub.report("w", 1, "http", "x")))
        self.assertEqual(len(self.lines(f"refused: state store cannot write: Redis at {self.redis.url} answers, but "
                                        "holds no state this node can load yet")), 1)
        clock.advance(REDIS_EMPTY_GRACE - 1)
        yield tried()
        # Another node shows its presence: it may hold the state.
        other = RedisState(redis.Redis.from_url(self.redis.url))
        self.addCleanup(other.client.close)
        yield threads.deferToThread(other.show_node, "other-node", "[]", 60)
        clock.advance(2)
        yield tried()
        self.assertEqual(self.lines("stayed empty"), [])
        yield threads.deferToThread(other.hide_node, "other-node")
        node.engine._resync()
        yield until(lambda: node.engine.mode == redis_engine.UP, "the node to seed Redis", timeout=20)
        (line,) = self.lines("stayed empty")
        self.assertIn("stayed empty for 31 s and no node that has loaded a state is on it: seeded it with an empty "
                      "state", line)
        self.assertTrue(node.hub.display_known)
        self.assertEqual(node.packets, ["[cc:0:?:?]"])
        self.assertEqual(len(self.lines("answers: state loaded (0 plugs), changes accepted")), 1)
        self.assertFalse(node.engine.state.client.hexists("smartplug:bans", "203.0.113.12"))
        # Another node's ban, which this node reads with its own.
        node.engine.state.client.hset("smartplug:bans", "203.0.113.14", json.dumps([reactor.seconds() + 30, 30]))
        report = yield node.hub.report("p", 1, "http", "x")
        self.assertEqual(report.plug.value, 1)
        yield until(lambda: node.engine.state.client.hexists("smartplug:bans", "203.0.113.12"),
                    "the ban held back from the empty seed to reach Redis")

    @inlineCallbacks
    def test_node_with_only_an_empty_seed_does_not_seed(self):
        """
        A node that only loaded an empty seed (here its own, made at start
        on an empty Redis) has no copy either: when Redis comes back empty,
        it waits for a node that has one (L{REDIS_EMPTY_GRACE}), as a node
        that never loaded does, rather than seeding it again at once.  Once
        none has (on the engine's clock, a fake one here), it seeds an empty
        seed again and says how long it waited.
        """
        (fresh,) = yield self.nodes(1)
        self.assertTrue(self.snapshot().empty_seed)
        clock = Clock()
        fresh.engine._now = clock.seconds
        seeded = len(self.lines("seeded it with an empty state"))
        self.redis.kill()
        yield until(lambda: fresh.engine.mode == redis_engine.DOWN, "the node to notice")
        self.redis.start()
        yield until(lambda: self.lines("answers, but it holds no state")
                    or len(self.lines("seeded it with an empty state")) > seeded,
                    "the node to find Redis empty", timeout=30)
        self.assertEqual(len(self.lines("seeded it with an empty state")), seeded)
        self.assertIsNone(self.snapshot())
        self.assertEqual(fresh.engine.mode, redis_engine.DOWN)
        clock.advance(REDIS_EMPTY_GRACE + 1)
        fresh.engine._resync()
        yield until(lambda: fresh.engine.mode == redis_engine.UP, "the node to seed Redis", timeout=20)
        (line,) = self.lines("stayed empty")
        self.assertIn("stayed empty for 31 s and no node that has loaded a state is on it: seeded it with an empty "
                      "state", line)
        self.assertTrue(self.snapshot().empty_seed)

    @inlineCallbacks
    def fresh_node_on_an_empty_seed(self):
        """
        Node A with plug p, held back while Redis restarts empty; a fresh
        node seeds it with an empty seed.

        @return: a Deferred of C{(A, the fresh node)}.
        """
        (a,) = yield self.nodes(1)
        yield a.hub.report("p", 1, "http", "x")
        yield self.restart_empty_holding_back(a)
        fresh = Node(self, self.redis.url, "fresh")
        yield fresh.start()
        return a, fresh

    @inlineCallbacks
    def restart_empty_holding_back(self, *nodes):
        """
        Redis restarts without its data while C{nodes} are kept from
        loading it again (L{come_back} lets them): they stay down.
        """
        self.redis.kill()
        yield until(lambda: all(n.engine.mode == redis_engine.DOWN for n in nodes), "the nodes to notice")
        for node in nodes:
            self.patch(node.engine, "_resync", lambda: None)
        self.redis.start()

    def come_back(self, *nodes) -> None:
        """
        Let C{nodes} load the state again, all at once.
        """
        for node in nodes:
            self.patch(node.engine, "_resync", redis_engine.RedisEngine._resync.__get__(node.engine))
        for node in nodes:
            node.engine._resync()

    def snapshot(self):
        state = RedisState(redis.Redis.from_url(self.redis.url))
        self.addCleanup(state.client.close)
        return state.snapshot()

    @inlineCallbacks
    def test_copy_replaces_a_fresh_nodes_empty_seed(self):
        """
        A node started afresh while Redis is empty seeds it with an empty
        state, marked as such.  A node that holds a copy and comes back
        before any change was made on it puts its copy in place of it (a new
        incarnation: pub/sub epochs change), says so in one line, and the
        fresh node loads that copy at once (its listeners are told) and
        says so too; both then take changes.
        """
        (a,) = yield self.nodes(1)
        yield a.hub.report("p", 1, "http", "x")
        epoch = a.hub.pubsub.history.position("smartplug")[1]
        yield self.restart_empty_holding_back(a)
        fresh = Node(self, self.redis.url, "fresh")
        yield fresh.start()
        self.assertIsNone(fresh.hub.plug("p"))
        self.assertTrue(self.snapshot().empty_seed)
        self.come_back(a)
        yield until(lambda: fresh.hub.plug("p") is not None, "the fresh node to load A's copy", timeout=20)
        self.assertEqual(fresh.hub.plug("p"), a.hub.plug("p"))
        self.assertEqual([(r.plug.id, r.remote) for r in fresh.reports], [("p", True)])
        # A says so once its load is back on the reactor thread, which may
        # be after the fresh node heard the notice and loaded the copy.
        yield until(lambda: self.lines("replaced it with"), "A to say it replaced the seed", timeout=20)
        (line,) = self.lines("replaced it with")
        self.assertIn(f"Redis at {self.redis.url} held an empty state seeded by a node without a copy, and no "
                      "change since: replaced it with this node's copy (1 plugs); pub/sub epochs change", line)
        (line,) = self.lines("in place of the empty state")
        self.assertIn("holds a node's copy now, in place of the empty state this node had loaded: loaded it "
                      "(1 plugs)", line)
        yield until(lambda: a.engine.mode == fresh.engine.mode == redis_engine.UP, "both nodes up", timeout=20)
        self.assertEqual(fresh.engine._incarnation, a.engine._incarnation)
        self.assertFalse(self.snapshot().empty_seed)
        self.assertNotEqual(a.hub.pubsub.history.position("smartplug")[1], epoch)
        yield self.report_until_taken(fresh, "q", 1)
        yield until(lambda: a.hub.plug("q") is not None, "A to see the fresh node's report", timeout=20)

    @inlineCallbacks
    def test_copy_replaces_an_empty_seed_renewed_meanwhile(self):
        """
        An empty seed that gets a new incarnation between the snapshot of a
        node with a copy and its replace (another node renewed it: Redis
        restarted) is still an empty seed: the node tries again on the new
        one, and its copy takes its place, rather than being lost under the
        empty state it would otherwise load.  The fresh node loads the copy
        at its next change.
        """
        a, fresh = yield self.fresh_node_on_an_empty_seed()
        self.assertTrue(self.snapshot().empty_seed)
        state = a.engine.state
        replace = state.replace
        renewed = []

        def renewed_first(empty_seed, *args):
            # (Redis thread) As another node would, in between.
            if not renewed:
                renewed.append(state.renew(empty_seed, "renewed", "N"))
            return replace(empty_seed, *args)

        self.patch(state, "replace", renewed_first)
        self.come_back(a)
        yield until(lambda: renewed and a.engine.mode == redis_engine.UP, "A to load", timeout=20)
        self.assertEqual(renewed, [True])
        snapshot = self.snapshot()
        self.assertEqual(([p[0] for p in snapshot.plugs], snapshot.empty_seed), (["p"], False))
        self.assertEqual(a.engine._incarnation, snapshot.incarnation)
        self.assertFalse(a.engine._no_copy)
        self.assertEqual(len(self.lines("replaced it with this node's copy (1 plugs)")), 1)
        yield self.report_until_taken(fresh, "q", 1)
        self.assertEqual(fresh.hub.plug("p"), a.hub.plug("p"))
        yield until(lambda: a.hub.plug("q") is not None, "A to see the fresh node's report", timeout=20)

    @inlineCallbacks
    def test_empty_seed_never_loaded_over_a_copy(self):
        """
        A node with a copy whose replace is refused each time, the seed
        changing under it every time (renewed by hand here), gives up that
        load after a few tries and stays down, rather than loading the empty
        seed over its copy; at its next try it puts its copy in place.
        """
        a, fresh = yield self.fresh_node_on_an_empty_seed()
        state = a.engine.state
        replace = state.replace
        tries = []

        def renewed_first(empty_seed, *args):
            # (Redis thread) As another node would, in between, every time.
            tries.append(state.renew(empty_seed, f"renewed-{len(tries)}", "N"))
            return replace(empty_seed, *args)

        self.patch(state, "replace", renewed_first)
        self.come_back(a)
        # A is down from the start: a load has given up once it says so (the
        # channel coming back may have started a second load, whose tries
        # count too, and the next load starts after a delay).
        yield until(lambda: self.lines("changed under each of"), "A to give up a load", timeout=20)
        self.assertEqual(a.engine.mode, redis_engine.DOWN)
        self.assertGreaterEqual(len(tries), redis_engine._REPLACE_TRIES)
        self.assertTrue(all(tries))
        # Said as a Redis that answers, not as an unreachable one.
        self.assertEqual(len(self.lines("answers, but the empty seed in it changed under each of 3 tries")), 1)
        self.assertEqual(self.lines("unreachable (the empty seed"), [])
        self.assertFalse(a.engine._no_copy)
        self.assertEqual(a.hub.plug("p").value, 1)
        self.assertTrue(self.snapshot().empty_seed)
        self.patch(state, "replace", replace)
        yield until(lambda: a.engine.mode == redis_engine.UP, "A to try again", timeout=20)
        self.assertEqual([p[0] for p in self.snapshot().plugs], ["p"])

    @inlineCallbacks
    def test_change_refused_on_a_replaced_empty_seed(self):
        """
        A change made on an empty seed after a node's copy took its place
        (the fresh node heard so, but has not loaded the copy yet: held back
        here) is refused, and the log says why in words that say so, not
        that Redis lost its data (it lost nothing); the node
        then loads the copy, and the change goes through on it.
        """
        a, fresh = yield self.fresh_node_on_an_empty_seed()
        resyncs = []
        self.patch(fresh.engine, "_resync", lambda: resyncs.append(True))
        self.come_back(a)
        yield until(lambda: resyncs, "the fresh node to hear of A's copy", timeout=20)
        self.assertIsNone((yield fresh.hub.report("q", 1, "http", "x")))
        copy_now = "holds a node's copy now, in place of the empty state this node had loaded"
        (line,) = self.lines(f"{copy_now}: loading it again")
        self.assertIn(f"Redis at {self.redis.url} {copy_now}: loading it again", line)
        (line,) = self.lines("report plug q -> 1 from x refused")
        self.assertIn(f"state store cannot write: Redis {copy_now}; loading it again", line)
        self.assertEqual(self.lines("lost its data"), [])
        self.patch(fresh.engine, "_resync", redis_engine.RedisEngine._resync.__get__(fresh.engine))
        fresh.engine._resync()
        yield self.report_until_taken(fresh, "q", 1)
        self.assertEqual(fresh.hub.plug("p"), a.hub.plug("p"))

    @inlineCallbacks
    def test_change_refused_on_data_redis_no_longer_holds(self):
        """
        A change made on data Redis no longer holds, with no notice of why
        (here Redis was emptied by hand), is refused with neutral words:
        Redis no longer holds the data this node loaded.
        """
        (a,) = yield self.nodes(1)
        a.engine.state.client.flushall()
        self.assertIsNone((yield a.hub.report("p", 1, "http", "x")))
        (line,) = self.lines("report plug p -> 1 from x refused")
        self.assertIn("state store cannot write: Redis no longer holds the data this node loaded; loading it again",
                      line)
        (line,) = self.lines(": loading it again")
        self.assertIn(f"Redis at {self.redis.url} no longer holds the data this node loaded: loading it again", line)

    @inlineCallbacks
    def test_change_on_an_empty_seed_wins(self):
        """
        Once a change was made on an empty seed, it is Redis' state like
        any other: the first change ends the mark, and a node with a copy
        that comes back after it loads Redis' state instead of replacing
        it: its plugs that Redis does not hold go (GET /plugs is the same
        on every node), and one line says how many.
        """
        a, fresh = yield self.fresh_node_on_an_empty_seed()
        self.assertTrue(self.snapshot().empty_seed)
        yield fresh.hub.report("q", 1, "http", "x")
        self.assertFalse(self.snapshot().empty_seed)
        self.come_back(a)
        yield until(lambda: a.hub.plug("q") is not None, "A to load Redis' state", timeout=20)
        yield until(lambda: a.engine.mode == redis_engine.UP, "A up", timeout=20)
        self.assertEqual(a.engine._incarnation, fresh.engine._incarnation)
        self.assertEqual([p[0] for p in self.snapshot().plugs], ["q"])
        self.assertIsNone(fresh.hub.plug("p"))
        self.assertEqual([p.id for p in a.hub.plugs()], ["q"])
        self.assertIsNone(a.hub.plug("p"))
        self.assertEqual(self.lines("replaced it with"), [])
        (line,) = self.lines("dropped this node's")
        self.assertIn(f"Redis at {self.redis.url} holds other data than this node had loaded (it lost that data, or "
                      "may have lost its latest changes, since): loaded it (1 plugs) and dropped this node's 1 plugs "
                      "that Redis does not hold; pub/sub epochs change", line)

    @inlineCallbacks
    def test_state_kinds_are_those_that_end_the_mark(self):
        """
        The kinds of change the node counts as changing the state (after
        which it holds a copy) are the kinds whose commit deletes the empty
        seed's mark in Redis: the engine's list and the Lua scripts are
        written apart, and must not drift.
        """
        (node,) = yield self.nodes(1)
        engine, client = node.engine, node.engine.state.client
        guard = Guard(reactor, ban_after=10, ban_seconds=30, shared=engine.bans)
        changes = {
            "report": lambda: node.hub.report("q", 1, "http", "x"),
            "publication": lambda: node.hub.publish("door", "open", "x"),
            "display": lambda: node.hub.set_display(Display(1, weather=3, intensity=9), "x"),
            "command": lambda: node.hub.display_command("reset", "x"),
            "failure": lambda: guard.failure("203.0.113.9", "test"),
            "ban": lambda: engine.bans.share("203.0.113.9", reactor.seconds() + 30, 30),
            "lift": lambda: engine.bans.lifted("203.0.113.9"),
        }
        ends = {}
        for kind, change in changes.items():
            client.set(EMPTY_SEED, engine._incarnation)
            engine._no_copy = True
            applied = engine._applied
            yield change()
            yield until(lambda applied=applied: engine._applied > applied, f"the {kind} to come back from Redis")
            ends[kind] = (not client.exists(EMPTY_SEED), not engine._no_copy)
        self.assertEqual(ends, {kind: (kind in redis_engine._STATE_KINDS,) * 2 for kind in changes})

    @inlineCallbacks
    def test_copy_replaces_an_empty_seed_after_the_grace(self):
        """
        A node without a copy that seeded Redis with an empty state after
        waiting L{REDIS_EMPTY_GRACE} s for one (a node that holds one was
        cut off longer) gives way to that node's copy when it comes back
        before any change, and loads it.
        """
        (a,) = yield self.nodes(1)
        yield a.hub.report("p", 1, "http", "x")
        self.redis.kill()
        yield until(lambda: a.engine.mode == redis_engine.DOWN, "A to notice")
        self.patch(a.engine, "_resync", lambda: None)
        away = self.start_away(self.redis.url, "away")
        clock = Clock()
        away.engine._now = clock.seconds
        self.redis.start()
        yield until(lambda: self.lines("answers, but it holds no state"), "the node to find Redis empty", timeout=30)
        clock.advance(REDIS_EMPTY_GRACE + 1)
        away.engine._resync()
        yield until(lambda: away.engine.mode == redis_engine.UP, "the node to seed Redis", timeout=20)
        self.assertEqual(len(self.lines("stayed empty")), 1)
        self.assertTrue(self.snapshot().empty_seed)
        self.come_back(a)
        yield until(lambda: away.hub.plug("p") is not None, "the node to load A's copy", timeout=20)
        # A says so once its load is back on the reactor thread, which may
        # be after the other node heard the notice and loaded the copy.
        yield until(lambda: a.engine.mode == away.engine.mode == redis_engine.UP, "both nodes up", timeout=20)
        self.assertEqual(len(self.lines("replaced it with this node's copy (1 plugs)")), 1)
        self.assertEqual(away.engine._incarnation, a.engine._incarnation)
        self.assertEqual(away.hub.plug("p"), a.hub.plug("p"))

    @inlineCallbacks
    def test_two_copies_one_replaces(self):
        """
        Two nodes with copies (that differ: here made so by hand) come back
        at once to an empty seed: one copy takes its place, whole, and the
        other node and the fresh node load it: all three list its plugs, in
        its order, and no others; the losing node drops its own plug, and
        says so in one line.
        """
        a, b = yield self.nodes()
        yield a.hub.report("p", 1, "http", "x")
        yield until(lambda: b.hub.plug("p") is not None, "B to have the plug")
        yield self.restart_empty_holding_back(a, b)
        a.hub.apply_report("only-a", 1, 5.0, "http", "test")
        b.hub.apply_report("only-b", 1, 5.0, "http", "test")
        fresh = Node(self, self.redis.url, "fresh")
        yield fresh.start()
        self.come_back(a, b)
        nodes = (a, b, fresh)
        yield until(lambda: all(n.engine.mode == redis_engine.UP for n in nodes)
                    and len({n.engine._incarnation for n in nodes}) == 1
                    and fresh.hub.plug("p") is not None, "the three nodes on one copy", timeout=30)
        self.assertEqual(len(self.lines("replaced it with this node's copy (2 plugs)")), 1)
        order = [p[0] for p in self.snapshot().plugs]
        self.assertIn(order, (["p", "only-a"], ["p", "only-b"]))
        for node in nodes:
            self.assertEqual([p.id for p in node.hub.plugs()], order, node.engine.node_name)
        (line,) = self.lines("dropped this node's")
        self.assertIn("loaded it (2 plugs) and dropped this node's 1 plugs that Redis does not hold", line)

    @inlineCallbacks
    def test_copy_that_lost_the_race_is_dropped(self):
        """
        A node whose copy comes second to an empty seed (another node's
        copy took its place between this node's snapshot and its replace:
        made by hand here) loads the winning copy as it is: it drops its
        plugs that the copy does not hold, takes the copy's order, and says
        in one line that another node's copy won and how many it dropped.
        """
        (b,) = yield self.nodes(1)
        yield b.hub.report("p", 1, "http", "x")
        yield b.hub.report("q", 1, "http", "x")
        yield self.restart_empty_holding_back(b)
        fresh = Node(self, self.redis.url, "fresh")
        yield fresh.start()
        state = b.engine.state
        replace = state.replace

        def other_first(empty_seed, *args):
            # (Redis thread) Another node's copy takes the seed's place.
            notice = json.dumps({"kind": "replaced", "incarnation": "won", "replaced": empty_seed})
            replace(empty_seed, "won", [("w", 1, 1.0, "http"), ("q", 0, 2.0, "http")], None, notice)
            return replace(empty_seed, *args)

        self.patch(state, "replace", other_first)
        self.come_back(b)
        yield until(lambda: b.engine.mode == fresh.engine.mode == redis_engine.UP
                    and b.engine._incarnation == fresh.engine._incarnation == "won", "both nodes on the copy",
                    timeout=20)
        self.assertEqual([(p.id, p.value) for p in b.hub.plugs()], [("w", 1), ("q", 0)])
        self.assertEqual(b.hub.plugs(), fresh.hub.plugs())
        self.assertFalse(b.engine._no_copy)
        (line,) = self.lines("won over this node's")
        self.assertIn(f"Redis at {self.redis.url} holds another node's copy, which won over this node's: loaded it "
                      "(2 plugs) and dropped this node's 1 plugs that Redis does not hold; pub/sub epochs change", line)

    @inlineCallbacks
    def test_redis_restarted_empty(self):
        """
        A Redis that restarts without its data is seeded again with a node's
        copy under a new incarnation; the other node notices and loads it;
        both accept changes again.
        """
        a, b = yield self.nodes()
        yield a.hub.report("p", 1, "http", "x")
        yield a.hub.publish("door", "open", "x")
        epoch = a.hub.pubsub.history.position("door")[1]
        yield until(lambda: b.hub.plug("p") is not None, "B to have the plug")
        before = a.engine._incarnation
        seeded = len(self.lines("held no state: seeded it"))  # the fresh Redis of setUp
        self.redis.kill()
        yield until(lambda: a.engine.mode == b.engine.mode == redis_engine.DOWN, "both nodes to notice")
        self.redis.start()
        yield until(lambda: a.engine.mode == b.engine.mode == redis_engine.UP, "both nodes to reload", timeout=20)
        self.assertNotEqual(a.engine._incarnation, before)
        self.assertEqual(a.engine._incarnation, b.engine._incarnation)
        self.assertEqual(len(self.lines("held no state: seeded it")), seeded + 1)
        self.assertEqual(b.hub.plug("p"), a.hub.plug("p"))
        # Pub/sub history was lost with Redis' data: new epochs.
        self.assertNotEqual(a.hub.pubsub.history.position("door")[1], epoch)
        report = yield b.hub.report("p", 0, "http", "x")
        self.assertIsNotNone(report)
        yield until(lambda: a.hub.plug("p").value == 0, "A to see B's report")

    @inlineCallbacks
    def test_seed_overtaken_by_the_channel(self):
        """
        A node's load that seeds an empty Redis with its copy, overtaken by
        a newer load (its channel came back meanwhile), is told as the seed
        it is: the newer load finds the node's own data, not "other data".
        """
        a, = yield self.nodes(1)
        yield a.hub.report("p", 1, "http", "x")
        initialise = a.engine.state.initialise

        def overtaken(*args, **kwargs):
            seeded = initialise(*args, **kwargs)
            # On the Redis thread, as the seed is written: the channel
            # subscribes again, and a newer load is queued behind this one.
            threads.blockingCallFromThread(reactor, a.engine._subscribed)
            return seeded

        self.patch(a.engine.state, "initialise", overtaken)
        seeded = len(self.lines("held no state: seeded it with this node's copy (1 plugs)"))
        self.redis.kill()
        yield until(lambda: a.engine.mode == redis_engine.DOWN, "the node to notice")
        self.redis.start()
        yield until(lambda: a.engine.mode == redis_engine.UP, "the node to seed and load", timeout=20)
        self.assertEqual(len(self.lines("held no state: seeded it with this node's copy (1 plugs)")), seeded + 1)
        self.assertEqual(self.lines("holds other data"), [])
        self.assertEqual(a.engine.state.snapshot().incarnation, a.engine._incarnation)
        self.assertEqual(a.hub.plug("p").value, 1)

    @inlineCallbacks
    def test_redis_lost_its_latest_changes(self):
        """
        A Redis that comes back with fewer changes than a node saw (its
        append-only file missed the last writes: here its sequence is set
        back by hand) gets new epochs for every event, once, so offsets
        given again cannot be mistaken for the lost ones; both nodes load
        them.
        """
        a, b = yield self.nodes()
        for i in range(3):
            yield a.hub.publish("door", i, "peer")
        yield until(lambda: b.hub.pubsub.history.position("door")[0] == 3, "B to have all three")
        epoch = a.hub.pubsub.history.position("door")[1]
        client = a.engine.state.client
        client.set("smartplug:seq", 1)
        client.client_kill_filter(_type="pubsub")  # both nodes reconnect and load the state
        yield until(lambda: a.hub.pubsub.history.position("door")[1] != epoch
                    and b.hub.pubsub.history.position("door")[1] != epoch, "new epochs on both nodes", timeout=20)
        yield until(lambda: a.engine.mode == b.engine.mode == redis_engine.UP, "both nodes up", timeout=20)
        self.assertEqual(a.hub.pubsub.history.position("door"), b.hub.pubsub.history.position("door"))
        self.assertGreaterEqual(len(self.lines("lost its latest changes")), 1)
        yield a.hub.publish("door", "after", "peer")
        self.assertEqual(a.hub.pubsub.history.position("door")[1], b.hub.pubsub.history.position("door")[1])

    @inlineCallbacks
    def publish(self, node, event: str, *data):
        for item in data:
            self.assertIsNotNone((yield node.hub.publish(event, item, "peer")))

    @inlineCallbacks
    def test_power_cut_with_a_snapshot_file(self):
        """
        SPEC 3.6 and 11: Redis without the append-only file (appendonly no)
        and every node die together after publications that Redis' snapshot
        file misses; restarted from that file, with nodes that keep nothing
        of their own, Redis gives the lost offsets again, but under a new
        epoch: a client that saw them resumes with recovered: false, not
        silently past the new ones.  Said once in the log.
        """
        (a,) = yield self.nodes(1)
        yield self.publish(a, "pc", "pc1", "pc2", "pc3", "pc4")
        yield threads.deferToThread(a.engine.state.client.save)
        yield self.publish(a, "pc", "p1", "p2", "p3")
        seen = a.hub.pubsub.history.position("pc")
        self.assertEqual(seen[0], 7)
        self.redis.kill()
        yield a.stop()
        self.redis.start()
        b = Node(self, self.redis.url, "b")
        yield b.start()
        yield self.publish(b, "pc", "q1", "q2", "q3")
        offset, epoch = b.hub.pubsub.history.position("pc")
        self.assertEqual(offset, 7)
        self.assertNotEqual(epoch, seen[1])
        b.subscribe("client", "pc", since=seen)
        self.assertEqual([(f["action"], f["recovered"], f["epoch"]) for f in b.frames["client"]],
                         [("recovered", False, epoch)])
        self.assertEqual(len(self.lines("restarted since its data was last checked")), 1)

    @inlineCallbacks
    def test_restart_with_every_write_on_disk(self):
        """
        A Redis that writes every change to disk before it answers
        (appendonly yes, appendfsync always) loses nothing when it dies: after
        a restart, epochs stay, and a client resumes where it was.
        """
        self.redis = start_redis(self, persist=True)
        (a,) = yield self.nodes(1)
        yield self.publish(a, "pc", "p1", "p2", "p3")
        seen = a.hub.pubsub.history.position("pc")
        self.redis.kill()
        yield a.stop()
        self.redis.start()
        b = Node(self, self.redis.url, "b")
        yield b.start()
        yield self.publish(b, "pc", "q1")
        self.assertEqual(b.hub.pubsub.history.position("pc"), (4, seen[1]))
        b.subscribe("client", "pc", since=seen)
        self.assertEqual([(f.get("data"), f["action"]) for f in b.frames["client"]],
                         [("q1", "publish"), (None, "recovered")])
        self.assertTrue(b.frames["client"][-1]["recovered"])
        self.assertEqual(self.lines("restarted since its data was last checked"), [])

    @inlineCallbacks
    def test_recovery_asked_before_the_first_load(self):
        """
        A subscriber that asks a node that has not loaded the state yet
        (Redis unreachable at its start) for what it missed, or for the
        last publication, gets its answer once the node has loaded it,
        under the epoch every node shares: not recovered false under an
        epoch of the node's own.
        """
        self.redis = start_redis(self, persist=True)
        (a,) = yield self.nodes(1)
        yield self.publish(a, "ev", "p1", "p2")
        epoch = a.hub.pubsub.history.position("ev")[1]
        self.redis.kill()
        late = self.start_away(self.redis.url, "late")
        late.subscribe("resumes", "ev", since=(1, epoch))
        late.subscribe("last", "ev", last=True)
        late.subscribe("plain", "ev")
        self.assertEqual((late.frames["resumes"], late.frames["last"]), ([], []))
        self.redis.start()
        yield until(lambda: late.engine.mode == a.engine.mode == redis_engine.UP and late.frames["resumes"],
                    "both nodes to load", timeout=20)
        self.assertEqual([(f["action"], f.get("data"), f["offset"], f["epoch"]) for f in late.frames["resumes"]],
                         [("publish", "p2", 2, epoch), ("recovered", None, 2, epoch)])
        self.assertTrue(late.frames["resumes"][-1]["recovered"])
        self.assertEqual([(f["data"], f["offset"], f["epoch"]) for f in late.frames["last"]], [("p2", 2, epoch)])
        yield self.publish(a, "ev", "p3")
        yield until(lambda: len(late.frames["plain"]) == 1, "the late node to deliver p3")
        self.assertEqual([f["data"] for f in late.frames["resumes"][2:]], ["p3"])
        self.assertEqual([f["offset"] for f in late.frames["last"][1:]], [3])

    @inlineCallbacks
    def test_snapshot_file_restart_under_running_nodes(self):
        """
        Nodes that stay up while Redis restarts from its snapshot file (here
        a clean one: nothing was lost, but Redis cannot tell) get new epochs,
        once, the same on both; until one of them checked it, Redis takes no
        change, and both take changes again afterwards.
        """
        a, b = yield self.nodes()
        yield self.publish(a, "door", "d1", "d2")
        yield until(lambda: b.hub.pubsub.history.position("door")[0] == 2, "B to have both")
        epoch = a.hub.pubsub.history.position("door")[1]
        yield threads.deferToThread(a.engine.state.client.save)
        self.redis.kill()
        self.redis.start()
        yield until(lambda: a.hub.pubsub.history.position("door")[1] != epoch
                    and b.hub.pubsub.history.position("door")[1] != epoch
                    and a.engine.mode == b.engine.mode == redis_engine.UP, "new epochs on both nodes", timeout=30)
        self.assertEqual(a.hub.pubsub.history.position("door"), b.hub.pubsub.history.position("door"))
        self.assertEqual(len(self.lines("restarted since its data was last checked")), 1)
        yield self.report_until_taken(b, "p", 1)
        yield self.publish(a, "door", "d3")
        self.assertEqual(a.hub.pubsub.history.position("door")[0], 3)

    @inlineCallbacks
    def test_history_bytes_kept_in_redis(self):
        """
        SPEC 6.3 and 11: Redis keeps no more publication data over all
        events than a node does (PUBSUB_HISTORY_BYTES, here 1000), the least
        recently published events losing their oldest first; a node that
        starts later loads the same history as the one that published.
        """
        (a,) = yield self.nodes(1, max_bytes=1000)
        payload = "x" * 298  # 300 bytes as JSON
        yield self.publish(a, "a", payload, payload, payload)
        yield self.publish(a, "b", payload)
        yield self.publish(a, "c", payload)
        client = a.engine.state.client
        kept = yield threads.deferToThread(
            lambda: sum(len(fields[b"d"]) for e in "abc" for _, fields in client.xrange(f"smartplug:stream:{e}")))
        self.assertEqual(kept, 900)
        late = Node(self, self.redis.url, "late", max_bytes=1000)
        yield late.start()
        for event in "abc":
            self.assertEqual(late.hub.pubsub.history_page(event, 0, 10), a.hub.pubsub.history_page(event, 0, 10))
        self.assertEqual([[f["offset"] for f in json.loads(late.hub.pubsub.history_page(e, 0, 10))["publications"]]
                          for e in "abc"], [[3], [1], [1]])

    @inlineCallbacks
    def test_events_kept_in_redis(self):
        """
        SPEC 6.3, 3.6 and 11: Redis keeps the numbering of no more events
        than a node does (PUBSUB_STREAMS, here 3): the least recently
        published is forgotten, and published again (on any node) starts
        over at offset 1 under a new epoch, the same on every node; a
        client that saw its old offsets learns it (recovered: false).
        """
        a, b = yield self.nodes(2, max_streams=3)
        yield self.publish(a, "door", "d1", "d2")
        seen = a.hub.pubsub.history.position("door")
        for event in ("e1", "e2", "e3"):
            yield self.publish(a, event, "x")
        client = a.engine.state.client
        events = yield threads.deferToThread(client.smembers, "smartplug:events")
        self.assertEqual(sorted(events), [b"e1", b"e2", b"e3"])
        yield self.publish(b, "door", "again")
        offset, epoch = b.hub.pubsub.history.position("door")
        self.assertEqual(offset, 1)
        self.assertNotEqual(epoch, seen[1])
        yield until(lambda: a.hub.pubsub.history.position("door") == (1, epoch), "A to have it")
        a.subscribe("client", "door", since=seen)
        self.assertEqual([(f["action"], f["recovered"]) for f in a.frames["client"]], [("recovered", False)])

    @inlineCallbacks
    def test_publication_while_the_streams_load(self):
        """
        The streams are loaded in pieces, apart from the rest of the state:
        a publication made on another node after its stream was read, but
        before the rest, reaches the loading node's subscribers once, and
        its history, from the change channel.
        """
        a, b = yield self.nodes()
        yield self.publish(a, "door", "d1", "d2")
        yield until(lambda: b.hub.pubsub.history.position("door")[0] == 2, "B to have both")
        b.subscribe("s", "door")
        read = b.engine.state._streams
        made = []

        def piece(keys, args):
            found = read(keys=keys, args=args)
            if not made:
                change = {"origin": "elsewhere", "node": "x", "token": "t", "incarnation": a.engine._incarnation,
                          "kind": "publication", "event": "door", "data": '"mid"', "created_at": 5.0}
                made.append(a.engine.state.commit_publication(
                    a.engine._incarnation, json.dumps(change), "door", "-", '"mid"', 5.0, 100, 60))
            return found

        b.engine.state._streams = piece
        b.engine._resync()
        yield until(lambda: b.engine.mode == redis_engine.UP and made, "B to load again")
        yield until(lambda: a.hub.pubsub.history.position("door")[0] == 3, "A to have the third")
        self.assertEqual([f["data"] for f in b.frames["s"]], ["mid"])
        self.assertEqual(b.hub.pubsub.history_page("door", 0, 10), a.hub.pubsub.history_page("door", 0, 10))

    @inlineCallbacks
    def test_info_frame_lists_every_node(self):
        """
        Each node's info frame lists its own connections and the other
        node's, each with its node name; a node that stops leaves the list
        at once, and one that dies (no refresh) when its entry expires.
        """
        a, b = yield self.nodes(info_interval=0.1)
        a.hub.pubsub.connected("conn-a", "alice", "10.0.0.1:1")
        a.hub.pubsub.subscribe("conn-a", "door")
        b.hub.pubsub.connected("conn-b", "bob", "10.0.0.2:2")
        b.hub.pubsub.subscribe("conn-b", "door")

        def seen(node):
            frame = json.loads(node.hub.pubsub.info_frame())
            return (
                sorted((c["client_name"], c["node"]) for c in frame["all_connections"]),
                [(s["name"], sorted(c["client_name"] for c in s["connections"])) for s in frame["subscriptions"]],
            )

        both = ([("alice", "node-0"), ("bob", "node-1")], [("door", ["alice", "bob"])])
        yield until(lambda: seen(a) == both and seen(b) == both, "both nodes to list both")
        yield b.stop()
        yield until(lambda: seen(a) == ([("alice", "node-0")], [("door", ["alice"])]), "B to leave A's list")
        # A dead node: its entry is there, then expires (no one refreshes it).
        a.engine.state.client.set(node_key("dead"), json.dumps(
            {"subscriptions": [], "all_connections": [{"client_name": "ghost", "node": "dead"}]}), px=3000)
        a.engine.state.client.sadd(NODES, "dead")
        yield until(lambda: ("ghost", "dead") in seen(a)[0], "the dead node to show")
        yield until(lambda: ("ghost", "dead") not in seen(a)[0], "the dead node to drop out")

    @inlineCallbacks
    def test_failures_count_on_every_node(self):
        """
        Authentication failures of one address on two nodes count together:
        BAN_AFTER of them ban it on both.
        """
        a, b = yield self.nodes()
        guard_a, guard_b = self.guards(a, b, ban_after=2)
        self.assertFalse(guard_a.failure("203.0.113.7", "test"))
        yield until(lambda: guard_b.failures("203.0.113.7") == 1, "B to count A's failure")
        self.assertTrue(guard_b.failure("203.0.113.7", "test"))
        yield until(lambda: guard_a.banned("203.0.113.7"), "A to ban the address")

    @inlineCallbacks
    def test_bans_are_shared(self):
        """
        An address banned on A is banned on B too, and on a node that starts
        later, for what is left of the ban.
        """
        a, b = yield self.nodes()
        guard_a, guard_b = self.guards(a, b)
        self.assertTrue(guard_a.failure("203.0.113.9", "test"))
        yield until(lambda: guard_b.banned("203.0.113.9"), "B to ban the address")
        late = Node(self, self.redis.url, "late")
        (guard_late,) = self.guards(late)
        yield late.start()
        self.assertTrue(guard_late.banned("203.0.113.9"))

    def guards(self, *nodes, ban_after: int = 1) -> list:
        """
        A guard on each of C{nodes} (C{ban_after} failures ban for 30 s),
        whose lifts are cancelled when the test ends.
        """
        guards = [Guard(reactor, ban_after=ban_after, ban_seconds=30, shared=node.engine.bans) for node in nodes]

        def cancel():
            for call in reactor.getDelayedCalls():
                if any(call.func == guard._lift for guard in guards):
                    call.cancel()

        self.addCleanup(cancel)
        return guards

    @inlineCallbacks
    def banned_on_two_nodes(self, address: str):
        """
        Two nodes with guards, on a state (not an empty seed: they hold a
        copy to seed Redis with again), and C{address} banned on A, on B and
        in Redis.

        @return: a Deferred of C{(A, B, A's guard, B's guard)}.
        """
        a, b = yield self.nodes()
        yield a.hub.report("first", 1, "http", "x")
        guard_a, guard_b = self.guards(a, b)
        self.assertTrue(guard_a.failure(address, "test"))
        client = a.engine.state.client
        # B bans it on counting A's failure; the ban itself reaches Redis
        # a moment later.
        yield until(lambda: guard_b.banned(address) and client.hexists("smartplug:bans", address),
                    "the ban to reach B and Redis")
        return a, b, guard_a, guard_b

    @inlineCallbacks
    def test_bans_redis_lost_are_shared_again(self):
        """
        A ban Redis lost with its data (FLUSHALL), or made while Redis was
        away, is shared again once the node that holds it has loaded the
        state: every node, and one that starts later, has it (SPEC 11).
        """
        a, b, guard_a, guard_b = yield self.banned_on_two_nodes("203.0.113.9")
        client = a.engine.state.client
        client.flushall()
        yield self.report_until_taken(a, "p", 1)
        yield until(lambda: client.hexists("smartplug:bans", "203.0.113.9"), "the ban to be shared again")
        self.redis.stop()
        yield until(lambda: a.engine.mode == redis_engine.DOWN, "A to notice")
        self.assertTrue(guard_a.failure("203.0.113.10", "test"))
        self.assertFalse(guard_b.banned("203.0.113.10"))
        self.redis.start()
        yield until(lambda: guard_b.banned("203.0.113.10"), "B to ban the address banned on A meanwhile", timeout=30)
        late = Node(self, self.redis.url, "late")
        (guard_late,) = self.guards(late)
        yield late.start()
        self.assertTrue(guard_late.banned("203.0.113.9") and guard_late.banned("203.0.113.10"))
        self.assertEqual(len(self.lines("does not hold the ban on 203.0.113.10 this node holds: shared it again")), 1)

    @inlineCallbacks
    def test_bans_redis_kept_not_shared_again(self):
        """
        A Redis that kept its data across a restart holds every node's bans:
        none is shared again, though each node timed its ban from when it
        heard of it (its end a few milliseconds after Redis').
        """
        self.redis = start_redis(self, persist=True)
        a, b, _, _ = yield self.banned_on_two_nodes("203.0.113.13")
        self.redis.kill()
        yield until(lambda: a.engine.mode == b.engine.mode == redis_engine.DOWN, "both nodes to notice")
        self.redis.start()
        yield until(lambda: a.engine.mode == b.engine.mode == redis_engine.UP, "both nodes to load", timeout=30)
        self.assertEqual(self.lines("shared it again"), [])

    @inlineCallbacks
    def test_ban_made_again_during_an_outage(self):
        """
        An address banned again on a node while Redis hung, where Redis
        still holds its older, ended ban, has the new ban shared once Redis
        answers again: the older one does not stand for it.
        """
        a, b = yield self.nodes(2, info_interval=1)
        yield a.hub.report("first", 1, "http", "x")
        guard_a, guard_b = self.guards(a, b)
        client = a.engine.state.client
        client.hset("smartplug:bans", "203.0.113.11", json.dumps([reactor.seconds() - 5, 30]))
        self.redis.pause()
        self.addCleanup(self.redis.resume)
        yield until(lambda: a.engine.mode == redis_engine.DOWN, "A to notice a Redis that hangs", timeout=20)
        self.assertTrue(guard_a.failure("203.0.113.11", "test"))
        self.redis.resume()
        yield until(lambda: guard_b.banned("203.0.113.11"), "B to ban the address banned on A meanwhile", timeout=30)

    def test_where_hides_the_password(self):
        """
        Logs name Redis by its URL without its password, in the user
        information or in the query (redis-py reads C{?password=} too),
        exactly as the dashboard shows C{REDIS_URL}: one function hides it
        for both.
        """
        for url, where in [
            ("redis://:s3cret@db.example:6380/2", "redis://:***@db.example:6380/2"),
            ("rediss://user:s3cret@db.example/0", "rediss://user:***@db.example/0"),
            ("redis://127.0.0.1:6379/0?username=u&password=s3cret", "redis://127.0.0.1:6379/0?username=u&password=***"),
        ]:
            engine = Node(self, url, "node").engine
            self.assertEqual(engine.where, where)
            self.assertEqual(public_settings(config.settings_from({"REDIS_URL": url}))["REDIS_URL"], where)
