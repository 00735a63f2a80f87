"""
Tests for pub/sub history (SPEC 3.6): the core's numbering and kept
publications (smartplug_backend.core.history), the frames and the replay of
the registry, the hub's journaled publications with the replay/live race,
the /subscribe route over iosim, and C{GET /events/<E>/history}.
"""

import itertools
import json
import urllib.parse

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.history import History, Publication
from smartplug_backend.core.hub import Hub
from smartplug_backend.core.journal import MemoryJournal, StoreFailed
from smartplug_backend.core.pubsub import PubSub, recovered_frame, report_publisher
from smartplug_backend.ws.apps import AppFactory

from .helpers import http_client, ws_connect

FRAME_1 = b'{"action":"publish","event":"e","data":1,"created_at":"1970-01-01T00:00:01.000Z"}\n'
POSITIONED_1 = (
    b'{"action":"publish","event":"e","data":1,"created_at":"1970-01-01T00:00:01.000Z","offset":1,"epoch":"E1"}\n'
)


def epochs():
    """
    Predictable epochs: E1, E2, ...
    """
    return (f"E{n}" for n in itertools.count(1)).__next__


def make_history(clock: Clock, keep: int = 100, seconds: float = 86400) -> History:
    return History(keep, seconds, now=clock.seconds, make_epoch=epochs())


def offsets(frames) -> list:
    """
    The offsets of the publication frames among C{frames} (bytes or
    decoded), "R" for a recovered message.
    """
    found = []
    for frame in frames:
        message = json.loads(frame) if isinstance(frame, (bytes, str)) else frame
        found.append(message["offset"] if message["action"] == "publish" else "R")
    return found


class HistoryTests(SynchronousTestCase):
    """
    Offsets, epochs and the bounds of the kept publications, without any
    network.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1)

    def publish(self, history: History, event: str, count: int) -> None:
        for _ in range(count):
            history.accept(history.number(event, "1"))

    def test_offsets_per_event_and_epochs(self):
        """
        Each event counts its publications 1, 2, 3... on its own, with an
        epoch of its own that does not change while history is kept.
        """
        history = make_history(self.clock)
        numbered = [history.number(e, "0") for e in ["a", "a", "b", "a"]]
        self.assertEqual([(p.event, p.offset, p.epoch) for p in numbered],
                         [("a", 1, "E1"), ("a", 2, "E1"), ("b", 1, "E2"), ("a", 3, "E1")])
        for p in numbered:
            history.accept(p)
        self.assertEqual(history.position("a"), (3, "E1"))
        self.assertEqual(history.position("b"), (1, "E2"))

    def test_new_epoch_is_random(self):
        """
        Without a given maker, epochs are random strings that need no JSON
        escaping, different for each event.
        """
        history = History()
        first, second = history.position("a")[1], history.position("b")[1]
        self.assertNotEqual(first, second)
        self.assertRegex(first, r"^[A-Za-z0-9_-]{8}$")

    def test_count_bound(self):
        """
        Only the newest PUBSUB_HISTORY publications are kept: recovery from
        an offset whose successor fell out is refused, from one after it
        replays the rest.
        """
        history = make_history(self.clock, keep=3)
        self.publish(history, "e", 5)
        self.assertEqual([p.offset for p in history.page("e", 0, 100)[1]], [3, 4, 5])
        self.assertFalse(history.since("e", 1, "E1").recovered)
        recovery = history.since("e", 2, "E1")
        self.assertEqual((recovery.recovered, [p.offset for p in recovery.publications]), (True, [3, 4, 5]))
        self.assertEqual((recovery.offset, recovery.epoch), (5, "E1"))

    def test_age_bound(self):
        """
        Publications older than PUBSUB_HISTORY_SECONDS are no longer kept:
        no last value, no recovery over them; the offsets go on.
        """
        history = make_history(self.clock, seconds=10)
        self.publish(history, "e", 2)
        self.clock.advance(5)
        self.publish(history, "e", 1)
        self.clock.advance(6)
        self.assertEqual([p.offset for p in history.page("e", 0, 100)[1]], [3])
        self.assertFalse(history.since("e", 1, "E1").recovered)
        self.assertTrue(history.since("e", 2, "E1").recovered)
        self.clock.advance(5)
        self.assertIsNone(history.last("e"))
        self.assertEqual(history.number("e", "1").offset, 4)

    def test_since_refusals(self):
        """
        Recovery is refused, with nothing to replay, for another epoch or an
        offset the event never reached; an offset that is the newest one
        recovers with nothing to replay.
        """
        history = make_history(self.clock)
        self.publish(history, "e", 2)
        for offset, epoch in [(1, "E9"), (3, "E1"), (0, "")]:
            recovery = history.since("e", offset, epoch)
            self.assertEqual((recovery.recovered, recovery.publications, recovery.offset), (False, [], 2))
        recovery = history.since("e", 2, "E1")
        self.assertEqual((recovery.recovered, recovery.publications), (True, []))

    def test_never_published(self):
        """
        An event never published has offset 0 and an epoch already, which
        its first publication keeps: a client that learnt it recovers.
        """
        history = make_history(self.clock)
        self.assertEqual(history.position("new"), (0, "E1"))
        self.assertTrue(history.since("new", 0, "E1").recovered)
        self.publish(history, "new", 1)
        self.assertEqual([p.offset for p in history.since("new", 0, "E1").publications], [1])

    def test_history_off(self):
        """
        With PUBSUB_HISTORY = 0 nothing is kept, but offsets go on: only a
        client that missed nothing recovers.
        """
        history = make_history(self.clock, keep=0)
        self.assertFalse(history.enabled)
        self.publish(history, "e", 2)
        self.assertIsNone(history.last("e"))
        self.assertTrue(history.since("e", 2, "E1").recovered)
        self.assertFalse(history.since("e", 1, "E1").recovered)

    def test_refused_offset_leaves_a_gap(self):
        """
        A publication numbered but never accepted (the store refused it)
        leaves its offset unused; recovery across the gap still works.
        """
        history = make_history(self.clock)
        self.publish(history, "e", 1)
        history.number("e", "lost")
        self.publish(history, "e", 1)
        recovery = history.since("e", 1, "E1")
        self.assertEqual((recovery.recovered, [p.offset for p in recovery.publications]), (True, [3]))

    def test_refused_newest_offset_given_again(self):
        """
        A publication the store refused while nothing later was numbered
        leaves no hole: its offset goes to the next one, so a client that
        saw nothing (offset 0) recovers everything.  Refused in a group,
        oldest first, the same.
        """
        history = make_history(self.clock)
        lost = history.number("e", "lost")
        history.refused(lost)
        self.publish(history, "e", 1)
        self.assertEqual(history.position("e")[0], 1)
        recovery = history.since("e", 0, "E1")
        self.assertEqual((recovery.recovered, [p.offset for p in recovery.publications]), (True, [1]))
        group = [history.number("e", "a"), history.number("e", "b")]
        for publication in group:
            history.refused(publication)
        self.publish(history, "e", 1)
        self.assertEqual(history.position("e")[0], 2)
        # An accepted one is never given again.
        history.refused(history.page("e", 0, 10)[1][0])
        self.assertEqual(history.number("e", "c").offset, 3)

    def test_restore(self):
        """
        Streams loaded from the store come back with their epoch and newest
        offset; only what the bounds allow is kept, and numbering goes on.
        """
        history = make_history(self.clock, keep=2, seconds=100)
        self.clock.advance(1000)
        rows = [(3, '"old"', 800.0), (4, '"a"', 950.0), (5, '"b"', 960.0), (6, '"c"', 970.0)]
        history.restore([("e", "X", 7, rows), ("f", "Y", 2, [])])
        self.assertEqual([p.data_json for p in history.page("e", 0, 10)[1]], ['"b"', '"c"'])
        self.assertEqual(history.position("e"), (7, "X"))
        self.assertEqual(history.position("f"), (2, "Y"))
        self.assertEqual(history.number("e", "1").offset, 8)


class HistoryBoundTests(SynchronousTestCase):
    """
    What clients send cannot grow the history without bound: reads make no
    stream, and streams, unpublished epochs, kept bytes and kept age are
    bounded.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1)

    def test_read_makes_no_stream(self):
        """
        Reading events never published (page, since, last, position) keeps
        no stream; the epoch handed out is stable, and the event's first
        publication adopts it, so a reader resumes without loss.
        """
        history = make_history(self.clock)
        for n in range(50):
            history.page(f"unknown{n}", 0, 10)
            history.since(f"unknown{n}", 0, "x")
            history.last(f"unknown{n}")
        self.assertEqual(history.events(), 0)
        epoch = history.page("new", 0, 10)[0]
        self.assertEqual(history.since("new", 0, "nope").epoch, epoch)
        history.accept(history.number("new", "1"))
        recovery = history.since("new", 0, epoch)
        self.assertEqual((recovery.recovered, [p.offset for p in recovery.publications]), (True, [1]))

    def test_unpublished_epochs_bounded(self):
        """
        Only the newest max_unpublished handed-out epochs are remembered; a
        client holding an older one is told recovered false, with the
        event's real epoch.
        """
        history = History(now=self.clock.seconds, make_epoch=epochs(), max_unpublished=3)
        first = history.position("a")[1]
        for event in "bcd":
            history.position(event)
        self.assertEqual(len(history._unpublished), 3)
        history.accept(history.number("a", "1"))
        recovery = history.since("a", 0, first)
        self.assertFalse(recovery.recovered)
        self.assertNotEqual(recovery.epoch, first)

    def test_streams_bounded(self):
        """
        Past max_streams the least recently published event is forgotten;
        published again, it starts over under a new epoch, so a client
        resuming with the old one is told recovered false.
        """
        history = History(now=self.clock.seconds, make_epoch=epochs(), max_streams=2)
        history.accept(history.number("a", "1"))
        old = history.position("a")
        for event in "bca":
            history.accept(history.number(event, "1"))
        self.assertEqual(history.events(), 2)
        self.assertEqual(history.position("a")[0], 1)
        self.assertNotEqual(history.position("a")[1], old[1])
        self.assertFalse(history.since("a", *old).recovered)

    def test_bytes_bounded(self):
        """
        Kept data over max_bytes, across events, is trimmed from the least
        recently published events' oldest publications.
        """
        history = History(now=self.clock.seconds, make_epoch=epochs(), max_bytes=130)
        for event in "ab":
            for _ in range(3):
                history.accept(history.number(event, '"' + "x" * 18 + '"'))
        self.assertEqual(history.kept_bytes, 120)
        history.accept(history.number("c", '"' + "x" * 18 + '"'))
        self.assertEqual(history.kept_bytes, 120)
        self.assertEqual([p.offset for p in history.page("a", 0, 10)[1]], [2, 3])
        self.assertEqual([p.offset for p in history.page("b", 0, 10)[1]], [1, 2, 3])
        self.assertEqual(history.kept_bytes, sum(
            len(p.data_json) for e in "abc" for p in history.page(e, 0, 10)[1]))

    def test_age_trimmed_on_publish(self):
        """
        Publications past PUBSUB_HISTORY_SECONDS are dropped when any event
        is published, without the old events being read.
        """
        history = make_history(self.clock, seconds=10)
        history.accept(history.number("old", '"' + "x" * 1000 + '"'))
        self.clock.advance(11)
        history.accept(history.number("new", "1"))
        self.assertEqual(history.kept_bytes, 1)
        self.assertEqual(history.position("old")[0], 1)


class FrameTests(SynchronousTestCase):
    """
    The registry with history: who gets which frame, and what a subscriber
    that asks for the last value or a recovery gets first.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1)
        self.sent = []
        self.pubsub = PubSub(deliver=lambda subs, frame: self.sent.append((frame, subs)), now=self.clock.seconds,
                             history=make_history(self.clock))

    def test_positioned_frame_bytes(self):
        """
        The frame for a connection that asked is PiCloud's, byte for byte,
        with ,"offset":N,"epoch":"X" before the closing brace; Go's escapes
        are kept.
        """
        publication = Publication("e", 1, "E1", "1", 1.0)
        self.assertEqual(publication.frame('"e"'), FRAME_1)
        self.assertEqual(publication.positioned_frame('"e"'), POSITIONED_1)
        self.pubsub.subscribe("p", "<&>", last=True)
        self.pubsub.publish("<&>", "<b>")
        self.assertEqual(
            self.sent[0][0],
            b'{"action":"publish","event":"\\u003c\\u0026\\u003e","data":"\\u003cb\\u003e",'
            b'"created_at":"1970-01-01T00:00:01.000Z","offset":1,"epoch":"E1"}\n',
        )

    def test_recovered_frame_bytes(self):
        """
        The recovered message is compact JSON in SPEC 3.6's key order, with
        a newline.
        """
        self.assertEqual(
            recovered_frame("e", True, 7, "E1"),
            b'{"action":"recovered","event":"e","recovered":true,"offset":7,"epoch":"E1"}\n',
        )

    def test_only_those_who_asked_get_offsets(self):
        """
        Subscribers that asked for nothing get PiCloud's bytes unchanged;
        those that used last or since get offsets; each frame is made once
        for its whole group.  A plain re-subscribe keeps the offsets.
        """
        self.pubsub.subscribe("plain", "e")
        self.pubsub.subscribe("asked", "e", last=True)
        self.pubsub.subscribe("asked", "e")
        self.pubsub.subscribe("recovering", "e", since=(0, "E1"))
        self.assertEqual(self.pubsub.publish("e", 1), 3)
        self.assertEqual(self.sent, [(POSITIONED_1, ["asked", "recovering"]), (FRAME_1, ["plain"])])

    def test_last(self):
        """
        last sends the newest kept publication first (nothing when none is
        kept), and subscribes.
        """
        self.assertEqual(self.pubsub.subscribe("a", "e", last=True), [])
        self.pubsub.publish("e", 0)
        self.pubsub.publish("e", 1)
        [frame] = self.pubsub.subscribe("b", "e", last=True)
        self.assertEqual((json.loads(frame)["offset"], json.loads(frame)["data"]), (2, 1))
        self.assertEqual(len(list(self.pubsub.subscriptions())[0][1]), 2)

    def test_since(self):
        """
        since replays the kept publications after the offset, then the
        recovered message; a stale epoch replays nothing and says false;
        the subscription stands either way.
        """
        for n in range(3):
            self.pubsub.publish("e", n)
        frames = self.pubsub.subscribe("a", "e", since=(1, "E1"))
        self.assertEqual(offsets(frames), [2, 3, "R"])
        self.assertEqual(frames[-1], recovered_frame("e", True, 3, "E1"))
        self.assertEqual(self.pubsub.subscribe("b", "e", since=(1, "stale")), [recovered_frame("e", False, 3, "E1")])
        self.assertEqual(self.pubsub.publish("e", 3), 2)

    def test_history_page_body(self):
        """
        The history route's body: the epoch and the frame objects after the
        offset, oldest first, at most limit; an event with nothing kept
        gives an empty list.
        """
        for n in range(3):
            self.pubsub.publish("e", n)
        body = self.pubsub.history_page("e", 1, 1)
        self.assertEqual(
            body,
            b'{"epoch":"E1","publications":[{"action":"publish","event":"e","data":1,'
            b'"created_at":"1970-01-01T00:00:01.000Z","offset":2,"epoch":"E1"}]}',
        )
        self.assertEqual(json.loads(self.pubsub.history_page("none", 0, 100)), {"epoch": "E2", "publications": []})


class DelayedJournal(MemoryJournal):
    """
    A journal that answers publications only when the test says, as the
    SQLite journal answers later from its writer thread (in call order).
    """

    def __init__(self):
        super().__init__()
        self.pending: list = []
        self.saved: list = []

    def save_publication(self, publication, keep, oldest):
        answer = Deferred()
        self.pending.append((publication, answer))
        return answer

    def answer(self, count: int = 1, failure=None) -> None:
        for _ in range(count):
            publication, answer = self.pending.pop(0)
            if failure is None:
                self.saved.append(publication.offset)
                answer.callback(None)
            else:
                answer.errback(failure)


class HubPublishTests(SynchronousTestCase):
    """
    Publications through the hub are journaled before anyone gets them, and
    a recovering subscriber never misses or repeats one, even while some are
    still being journaled.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1)
        self.journal = DelayedJournal()
        self.hub = Hub(now=self.clock.seconds, journal=self.journal, history=make_history(self.clock))
        self.events = []
        self.patch(self.hub, "_log", Logger(observer=self.events.append))
        self.received: dict = {}
        self.hub.pubsub.deliver_with(self.deliver)

    def deliver(self, subscribers, frame):
        for subscriber in subscribers:
            self.received.setdefault(subscriber, []).append(frame)

    def subscribe(self, subscriber, **kwargs):
        self.received.setdefault(subscriber, []).extend(self.hub.pubsub.subscribe(subscriber, "e", **kwargs))

    def test_journaled_before_delivery(self):
        """
        Nobody gets a publication before the journal has it; then the
        Deferred fires with the number of subscribers.
        """
        self.subscribe("a")
        published = self.hub.publish("e", 1, "peer")
        self.assertNoResult(published)
        self.assertEqual(self.received["a"], [])
        self.journal.answer()
        self.assertEqual(self.successResultOf(published), 1)
        self.assertEqual(self.received["a"], [FRAME_1])

    def test_replay_race(self):
        """
        A subscriber recovers while publications 3 and 4 are still being
        journaled and 5 arrives after it: it gets 2 from the replay, the
        recovered message with offset 2, then 3, 4, 5 live: every offset
        once, in order.
        """
        for _ in range(2):
            self.hub.publish("e", 0, "peer")
        self.journal.answer(2)
        self.hub.publish("e", 0, "peer")
        self.hub.publish("e", 0, "peer")
        self.subscribe("r", since=(1, "E1"))
        self.subscribe("l", last=True)
        self.hub.publish("e", 0, "peer")
        self.journal.answer(3)
        self.assertEqual(offsets(self.received["r"]), [2, "R", 3, 4, 5])
        self.assertEqual(json.loads(self.received["r"][1])["offset"], 2)
        self.assertEqual(offsets(self.received["l"]), [2, 3, 4, 5])

    def test_refused_publication(self):
        """
        A publication the journal refuses answers None, reaches no one and
        is not kept; the next one is delivered with the following offset.
        """
        self.subscribe("a", last=True)
        refused = self.hub.publish("e", 0, "peer")
        accepted = self.hub.publish("e", 1, "peer")
        self.journal.answer(failure=StoreFailed("disk is full"))
        self.journal.answer()
        self.assertIsNone(self.successResultOf(refused))
        self.assertEqual(self.successResultOf(accepted), 1)
        self.assertEqual(offsets(self.received["a"]), [2])
        self.assertEqual([p.offset for p in self.hub.pubsub.history.page("e", 0, 10)[1]], [2])
        self.assertEqual([e.get("why") for e in self.events if e["log_level"].name == "error"], ["disk is full"])

    def test_refused_first_publication_leaves_no_hole(self):
        """
        When the journal refuses an event's very first publication and
        nothing later was numbered meanwhile, the next one gets offset 1: a
        client that learnt the epoch at offset 0 recovers it.
        """
        epoch = self.hub.pubsub.history.page("e", 0, 10)[0]
        refused = self.hub.publish("e", 0, "peer")
        self.journal.answer(failure=StoreFailed("locked"))
        self.assertIsNone(self.successResultOf(refused))
        accepted = self.hub.publish("e", 1, "peer")
        self.journal.answer()
        self.assertEqual(self.successResultOf(accepted), 0)
        self.subscribe("late", since=(0, epoch))
        self.assertEqual(offsets(self.received["late"]), [1, "R"])
        self.assertIn(b'"recovered":true', self.received["late"][-1])

    def test_reports_published_with_their_report(self):
        """
        A hub that publishes reports numbers each report's smartplug
        publication and hands it to the journal with the report; the
        publisher sends it once the report is accepted; with history off it
        is published at once instead.
        """
        saved = []
        journal = MemoryJournal()
        journal.save_report = lambda *args: saved.append(args) or succeed(None)
        hub = Hub(now=self.clock.seconds, journal=journal, history=make_history(self.clock), publish_reports=True)
        hub.listen(report_publisher(hub))
        hub.pubsub.deliver_with(self.deliver)
        self.received["s"] = hub.pubsub.subscribe("s", "smartplug", last=True)
        report = self.successResultOf(hub.report("p", 1, "http", "peer"))
        [(plug_id, value, at, source, (publication, keep, oldest))] = saved
        self.assertEqual((publication.event, publication.offset, keep), ("smartplug", 1, 100))
        self.assertIs(report.publication, publication)
        self.assertEqual(offsets(self.received["s"]), [1])
        self.assertEqual(json.loads(self.received["s"][0])["data"], '{"id": "p", "value": 1}')

        off = Hub(now=self.clock.seconds, history=make_history(self.clock, keep=0), publish_reports=True)
        off.listen(report_publisher(off))
        off.pubsub.deliver_with(self.deliver)
        off.pubsub.subscribe("t", "smartplug")
        self.assertIsNone(self.successResultOf(off.report("p", 0, "http", "peer")).publication)
        self.assertEqual(len(self.received["t"]), 1)

    def test_history_off_journals_nothing(self):
        """
        With PUBSUB_HISTORY = 0 a publication is not journaled: it is
        delivered at once, as PiCloud did.
        """
        hub = Hub(now=self.clock.seconds, journal=self.journal, history=make_history(self.clock, keep=0))
        hub.pubsub.deliver_with(self.deliver)
        hub.pubsub.subscribe("a", "e")
        self.assertEqual(self.successResultOf(hub.publish("e", 1, "peer")), 1)
        self.assertEqual(self.journal.pending, [])
        self.assertEqual(self.received["a"], [FRAME_1])


class RouteTests(SynchronousTestCase):
    """
    last and since on the /subscribe route, over iosim, against
    publications from another connection.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1)
        self.journal = DelayedJournal()
        self.hub = Hub(now=self.clock.seconds, journal=self.journal, history=make_history(self.clock))
        self.factory = AppFactory(self.hub, info_interval=5, clock=self.clock)
        self.hub.pubsub.deliver_with(self.factory.send_to_all)
        self.pub, _, self.pub_pump = ws_connect(self.factory, "/publish?clientName=p", port=4000)

    def publish(self, *data) -> None:
        for d in data:
            self.pub.sendMessage(json.dumps({"event": "e", "data": d}).encode())

    def test_plain_subscriber_bytes_unchanged(self):
        """
        A subscriber that asks for nothing gets PiCloud's frame byte for
        byte, while one that asked for the last value gets offsets.
        """
        plain, _, plain_pump = ws_connect(self.factory, "/subscribe?clientName=a", port=4001)
        last, _, last_pump = ws_connect(self.factory, "/subscribe?clientName=b", port=4002)
        plain.sendMessage(b'{"action": "subscribe", "event": "e"}')
        last.sendMessage(b'{"action": "subscribe", "event": "e", "last": true}')
        plain_pump.flush()
        last_pump.flush()
        self.publish(1)
        self.pub_pump.flush()
        self.journal.answer()
        plain_pump.flush()
        last_pump.flush()
        self.assertEqual(plain.messages, [FRAME_1])
        self.assertEqual(last.messages, [POSITIONED_1])

    def test_last_value_on_subscribe(self):
        """
        A display subscribing with last gets the newest publication at once,
        then live ones; "last" that is not true asks for nothing.
        """
        self.publish(20, 21)
        self.pub_pump.flush()
        self.journal.answer(2)
        sub, _, pump = ws_connect(self.factory, "/subscribe?clientName=d", port=4001)
        sub.sendMessage(b'{"action": "subscribe", "event": "e", "last": true}')
        other, _, other_pump = ws_connect(self.factory, "/subscribe?clientName=o", port=4002)
        other.sendMessage(b'{"action": "subscribe", "event": "e", "last": "yes"}')
        pump.flush()
        other_pump.flush()
        self.assertEqual([(m["data"], m["offset"]) for m in sub.json()], [(21, 2)])
        self.assertEqual(other.messages, [])
        self.publish(22)
        self.pub_pump.flush()
        self.journal.answer()
        pump.flush()
        other_pump.flush()
        self.assertEqual([(m["data"], m["offset"], m["epoch"]) for m in sub.json()], [(21, 2, "E1"), (22, 3, "E1")])
        self.assertNotIn("offset", other.json()[0])

    def test_replay_live_race_interleaved(self):
        """
        Publications keep arriving, and keep being journaled, between the
        subscribe message being sent, read, and its replay being written,
        in every order the pumps allow: the subscriber always gets each
        offset after its own once, in order, with the recovered message
        between replay and live.
        """
        self.publish(*range(3))
        self.pub_pump.flush()
        self.journal.answer(3)
        # Each step: publish two, pump the subscriber's side (the server reads
        # the subscribe and writes its replay), answer the journal, or pump
        # the publisher's side (the server reads publications); every order.
        for order in itertools.permutations(["publish", "sub", "answer", "pub_pump"]):
            sub, _, sub_pump = ws_connect(self.factory, "/subscribe?clientName=s", port=4100)
            start = self.hub.pubsub.history.position("e")[0]
            sub.sendMessage(json.dumps({"action": "subscribe", "event": "e", "since": {"offset": start - 2, "epoch": "E1"}}).encode())
            for step in order:
                if step == "publish":
                    self.publish("x", "y")
                elif step == "sub":
                    sub_pump.flush()
                elif step == "answer":
                    self.journal.answer(len(self.journal.pending))
                else:
                    self.pub_pump.flush()
            self.pub_pump.flush()
            self.journal.answer(len(self.journal.pending))
            sub_pump.flush()
            got = offsets(sub.messages)
            end = self.hub.pubsub.history.position("e")[0]
            self.assertEqual([o for o in got if o != "R"], list(range(start - 1, end + 1)), order)
            recovered = json.loads(sub.messages[got.index("R")])
            self.assertTrue(recovered["recovered"])
            # The replay ends at the offset the recovered message names.
            self.assertEqual(got[got.index("R") - 1], recovered["offset"], order)
            sub.sendClose()
            sub_pump.flush()

    def test_large_replay_to_reading_peer(self):
        """
        A since replay of 100 publications of 60 KB (6 MB, over the 1 MiB
        unsent limit) reaches a subscriber that reads, as the transport
        drains, with a publication made meanwhile after the recovered
        message; a large "last" frame (Go's escaping makes 20 KB of "<"
        120 KB) arrives too.
        """
        from .test_wsbase import PacedTransport

        self.publish(*["%03d" % n + "x" * 60000 for n in range(99)])
        self.publish("<" * 20000)
        self.pub_pump.flush()
        self.journal.answer(100)
        last, _, last_pump = ws_connect(self.factory, "/subscribe?clientName=l", port=4002)
        last.sendMessage(b'{"action": "subscribe", "event": "e", "last": true}')
        last_pump.flush()
        self.assertEqual([m["data"] for m in last.json()], ["<" * 20000])
        sub, server, pump = ws_connect(self.factory, "/subscribe?clientName=s", port=4001)
        paced = PacedTransport(server, pump)
        sub.sendMessage(b'{"action": "subscribe", "event": "e", "since": {"offset": 0, "epoch": "E1"}}')
        pump.flush()
        self.publish("live")
        self.pub_pump.flush()
        self.journal.answer()
        for _ in range(300):
            paced.drain()
        self.assertIsNone(sub.closed)
        self.assertEqual(self.factory.slow_dropped, 0)
        self.assertEqual(offsets(sub.messages), [*range(1, 101), "R", 101])
        self.assertEqual(sub.json()[99]["data"], "<" * 20000)

    def test_since_stale_epoch_and_bad_since(self):
        """
        A stale epoch gets recovered false and nothing replayed, yet live
        publications follow; a malformed since is ignored (logged) and
        subscribes to nothing.
        """
        self.publish(1, 2)
        self.pub_pump.flush()
        self.journal.answer(2)
        sub, _, pump = ws_connect(self.factory, "/subscribe?clientName=s", port=4001)
        for bad in [{"offset": -1, "epoch": "E1"}, {"offset": "1", "epoch": "E1"}, {"offset": 1}, [1, "E1"], {"offset": True, "epoch": "E1"}]:
            sub.sendMessage(json.dumps({"action": "subscribe", "event": "f", "since": bad}).encode())
        sub.sendMessage(b'{"action": "subscribe", "event": "e", "since": {"offset": 1, "epoch": "old"}}')
        pump.flush()
        self.assertEqual(
            sub.messages, [b'{"action":"recovered","event":"e","recovered":false,"offset":2,"epoch":"E1"}\n']
        )
        self.assertEqual([event for event, _ in self.hub.pubsub.subscriptions()], ["e"])
        self.publish(3)
        self.pub_pump.flush()
        self.journal.answer()
        pump.flush()
        self.assertEqual(offsets(sub.messages), ["R", 3])


class HistoryRouteTests(SynchronousTestCase):
    """
    C{GET /events/<E>/history} on the HTTP port.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1)
        self.hub = Hub(now=self.clock.seconds, history=make_history(self.clock))
        for n in range(5):
            self.hub.publish("room/temp", n, "peer")

    def get(self, path, api_key=None, headers=None):
        client = http_client(self.hub, api_key=api_key)
        response = self.successResultOf(client.get("http://pi" + path, headers=headers))
        return response.code, self.successResultOf(response.content()), response.headers

    def test_history(self):
        """
        The publications after since, oldest first, at most limit (100 by
        default), as frame objects with offsets, and the epoch; an unknown
        event gives an empty list.
        """
        code, body, headers = self.get("/events/room/temp/history?since=1&limit=2")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        answer = json.loads(body)
        self.assertEqual(answer["epoch"], "E1")
        self.assertEqual([(p["offset"], p["data"], p["event"]) for p in answer["publications"]],
                         [(2, 1, "room/temp"), (3, 2, "room/temp")])
        self.assertEqual([p["offset"] for p in json.loads(self.get("/events/room/temp/history")[1])["publications"]],
                         [1, 2, 3, 4, 5])
        self.assertEqual(json.loads(self.get("/events/nothing/history")[1])["publications"], [])

    def test_any_event_name(self):
        """
        An event named with line breaks reads back too, escaped.
        """
        for event in ("a\nb", "end\n"):
            self.hub.publish(event, 1, "peer")
            code, body, _ = self.get(f"/events/{urllib.parse.quote(event, safe='')}/history")
            self.assertEqual((code, [p["event"] for p in json.loads(body)["publications"]]), (200, [event]))

    def test_not_loaded_yet(self):
        """
        A node on Redis that has not loaded the state yet answers 503: the
        history, its offsets and its epochs are not known.
        """
        self.hub.display_known = False
        code, body, _ = self.get("/events/room/temp/history")
        self.assertEqual((code, json.loads(body)),
                         (503, {"error": "state store cannot be read: pub/sub history not known yet"}))

    def test_bad_parameters(self):
        """
        A since or limit that is not a whole number in range gets a JSON 400
        naming it.
        """
        for query, name in [("since=-1", "since"), ("since=x", "since"), ("since=", "since"), ("limit=0", "limit"),
                            ("limit=1001", "limit"), ("limit=1e3", "limit"), ("since=" + "9" * 40, "since")]:
            code, body, _ = self.get("/events/e/history?" + query)
            self.assertEqual(code, 400, query)
            self.assertIn(name, json.loads(body)["error"])
        self.assertEqual(self.get("/events/e/history?limit=1000")[0], 200)
        # An event name no publication may have (PUBSUB_MAX_EVENT).
        code, body, _ = self.get("/events/" + "e" * 257 + "/history")
        self.assertEqual((code, json.loads(body)), (400, {"error": "event name of 257 characters: at most 256"}))
        self.assertEqual(self.get("/events/" + "e" * 256 + "/history")[0], 200)

    def test_api_key(self):
        """
        With API_KEY set, a wrong or missing key gets PiCloud's 401 "Invalid
        API Key"; the key in the header or the apiKey parameter is accepted.
        """
        self.assertEqual(self.get("/events/e/history?apiKey=nope", api_key="k3y")[:2], (401, b"Invalid API Key\n"))
        self.assertEqual(self.get("/events/e/history", api_key="k3y")[:2], (401, b"Invalid API Key\n"))
        self.assertEqual(self.get("/events/e/history?apiKey=k3y", api_key="k3y")[0], 200)
        self.assertEqual(self.get("/events/e/history", api_key="k3y", headers={"X-API-Key": "k3y"})[0], 200)

