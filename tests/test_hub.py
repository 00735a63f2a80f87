"""
Tests for the hub (smartplug_backend.core.hub) and report parsing (reports).
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.display import OFF, Display, LastOn
from smartplug_backend.core.hub import Hub, KeptPlugs, Plug, utc_rfc3339
from smartplug_backend.core.journal import HistoryEntry, MemoryJournal, StoreAway, StoreFailed
from smartplug_backend.core.reports import InvalidReport, broadcast_bytes, parse_report


class HubTests(SynchronousTestCase):
    """
    The hub holds plugs and tells listeners about reports.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1700000000.25)
        self.hub = Hub(now=self.clock.seconds)

    def test_report_records_plug(self):
        """
        A report is stored with its time and can be read back.
        """
        self.hub.report("p1", 1, "http", "10.0.0.1")
        plug = self.hub.plug("p1")
        self.assertEqual((plug.id, plug.value, plug.updated_at), ("p1", 1, 1700000000.25))
        self.assertEqual(plug.as_json(), {"id": "p1", "value": 1, "updated_at": "2023-11-14T22:13:20.250Z"})

    def test_changes_from_other_nodes(self):
        """
        Changes another node committed (SPEC 11) are applied without the
        journal: a report with its own time, marked remote, told to the
        listeners with the right "previous"; a display state and a command
        sent to the display listeners.
        """
        class NoJournal:
            shared = True

            def __getattr__(self, name):
                raise AssertionError("applied changes are not journaled again")

        hub = Hub(now=self.clock.seconds, journal=NoJournal())
        reports, packets = [], []
        hub.listen(reports.append)
        hub.watch_display(lambda event: packets.append(event.packet))
        hub.apply_report("p1", 1, 5.5, "device", "node B")
        hub.apply_report("p1", 0, 6.5, "http", "node B")
        self.assertEqual([(r.plug, r.previous, r.remote) for r in reports],
                         [(Plug("p1", 1, 5.5), None, True), (Plug("p1", 0, 6.5), 1, True)])
        weather = Display(1, weather=3, intensity=9)
        self.assertEqual(hub.apply_display(weather, "node B"), weather)
        self.assertEqual(hub.apply_command("reset", "node B"), "[cc:r:?:?]")
        self.assertEqual((packets, hub.display()), (["[cc:1:3:9]", "[cc:r:?:?]"], weather))

    def test_keep_plugs_drops_the_others(self):
        """
        keep_plugs() keeps the plugs it is given, in its order, and drops
        the others: no longer listed, their history unknown (None), the keep
        listeners told once with the plugs kept and dropped; ids of no known
        plug are skipped.  A new order alone is told too; nothing changed is
        not.  Nothing is journaled, and the report listeners are not told.
        """
        for plug_id in ("a", "b", "c", "d"):
            self.hub.report(plug_id, 1, "http", "x")
        reports, kept = [], []
        self.hub.listen(reports.append)
        self.hub.watch_kept(kept.append)
        dropped = self.hub.keep_plugs(["c", "unknown", "a"])
        self.assertEqual([p.id for p in dropped], ["b", "d"])
        self.assertEqual(kept, [KeptPlugs([self.hub.plug("c"), self.hub.plug("a")], dropped)])
        self.assertEqual([p.id for p in self.hub.plugs()], ["c", "a"])
        self.assertIsNone(self.hub.plug("b"))
        self.assertIsNone(self.successResultOf(self.hub.history("b", 10)))
        self.assertEqual(self.hub.keep_plugs(["c", "a"]), [])
        self.assertEqual((len(kept), reports), (1, []))
        self.assertEqual(self.hub.keep_plugs(["a", "c"]), [])
        self.assertEqual(kept[1:], [KeptPlugs([self.hub.plug("a"), self.hub.plug("c")], [])])
        self.assertEqual([p.id for p in self.hub.plugs()], ["a", "c"])

    def test_unknown_plug(self):
        """
        An id that never reported is None.
        """
        self.assertIsNone(self.hub.plug("nope"))

    def test_plugs_in_first_report_order(self):
        """
        plugs() lists every plug once, in the order they first reported.
        """
        for plug_id, value in [("b", 1), ("a", 0), ("b", 0)]:
            self.hub.report(plug_id, value, "http", "x")
        self.assertEqual([(p.id, p.value) for p in self.hub.plugs()], [("b", 0), ("a", 0)])

    def test_listeners_see_changes(self):
        """
        Listeners get every report in subscription order; a first report and
        a new value count as changes, a repeated value does not.
        """
        seen = []
        self.hub.listen(lambda r: seen.append(("first", r.plug.value, r.previous, r.changed)))
        self.hub.listen(lambda r: seen.append(("second", r.plug.value, r.previous, r.changed)))
        self.hub.report("p", 1, "http", "x")
        self.hub.report("p", 1, "http", "x")
        self.hub.report("p", 0, "device", "x")
        self.assertEqual(
            seen,
            [
                ("first", 1, None, True), ("second", 1, None, True),
                ("first", 1, 1, False), ("second", 1, 1, False),
                ("first", 0, 1, True), ("second", 0, 1, True),
            ],
        )

    def test_failing_listener_does_not_stop_others(self):
        """
        A listener that raises is logged; later listeners still run and the
        state is updated.
        """
        seen = []

        def broken(report):
            raise RuntimeError("boom")

        self.hub.listen(broken)
        self.hub.listen(seen.append)
        self.hub.report("p", 1, "http", "x")
        self.assertEqual(len(seen), 1)
        self.assertEqual(self.hub.plug("p").value, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop_listening(self):
        """
        The function returned by listen() stops further calls.
        """
        seen = []
        stop = self.hub.listen(seen.append)
        stop()
        self.hub.report("p", 1, "http", "x")
        self.assertEqual(seen, [])

    def test_rfc3339(self):
        """
        Times are UTC RFC 3339 with milliseconds and Z.
        """
        self.assertEqual(utc_rfc3339(0), "1970-01-01T00:00:00.000Z")


class SlowJournal:
    """
    A journal whose saves answer only when the test says so.

    @ivar pending: C{(arguments, Deferred)} of every save not yet answered.
    """

    def __init__(self):
        self.pending = []

    def save_report(self, plug_id, value, at, source):
        d = Deferred()
        self.pending.append(((plug_id, value, at, source), d))
        return d

    def save_display(self, display):
        d = Deferred()
        self.pending.append(((display,), d))
        return d

    def save_command(self, command):
        d = Deferred()
        self.pending.append(((command,), d))
        return d

    def history(self, plug_id, limit):
        raise AssertionError("not used")

    def commit(self):
        """
        Answer the oldest pending save with success.
        """
        self.pending.pop(0)[1].callback(None)

    def refuse(self, why="disk I/O error", error=StoreFailed):
        """
        Answer the oldest pending save with a store failure.
        """
        self.pending.pop(0)[1].errback(error(why))


class JournalTests(SynchronousTestCase):
    """
    The hub records a report in its journal first, and only then changes
    its state and tells its listeners.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(100)
        self.journal = SlowJournal()
        self.hub = Hub(now=self.clock.seconds, journal=self.journal)
        self.seen = []
        self.hub.listen(lambda r: self.seen.append((r.plug.id, r.plug.value, r.previous, r.source)))
        self.events = []
        self.patch(self.hub, "_log", Logger(observer=self.events.append))

    def test_nothing_changes_before_commit(self):
        """
        Until the journal has the report, the plug is unknown and no listener
        heard of it; once it commits, the report is accepted with the time it
        arrived and the Deferred fires with it.
        """
        result = self.hub.report("p", 1, "http", "10.0.0.1")
        self.assertNoResult(result)
        self.assertEqual(self.journal.pending[0][0], ("p", 1, 100, "http"))
        self.assertEqual((self.hub.plug("p"), self.hub.plugs(), self.seen), (None, [], []))
        self.clock.advance(5)
        self.journal.commit()
        report = self.successResultOf(result)
        self.assertEqual(report.plug, Plug("p", 1, 100))
        self.assertEqual(self.hub.plug("p"), Plug("p", 1, 100))
        self.assertEqual(self.seen, [("p", 1, None, "http")])

    def test_commits_accepted_in_order(self):
        """
        Reports of one plug in flight together are accepted in the order they
        arrived, each with the previous value before it.
        """
        results = [self.hub.report("p", v, "device", "x") for v in (1, 0, 1)]
        for _ in results:
            self.journal.commit()
        self.assertEqual([self.successResultOf(r).previous for r in results], [None, 1, 0])
        self.assertEqual(self.seen, [("p", 1, None, "device"), ("p", 0, 1, "device"), ("p", 1, 0, "device")])
        self.assertEqual(self.hub.plug("p").value, 1)

    def test_refused_report_changes_nothing(self):
        """
        A report the store cannot write fires with None, leaves the state as
        it was, reaches no listener, and is logged with the store's reason.
        """
        self.hub.report("p", 1, "http", "x")
        self.journal.commit()
        result = self.hub.report("p", 0, "http", "10.0.0.9")
        self.journal.refuse("database or disk is full")
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(self.hub.plug("p").value, 1)
        self.assertEqual(self.seen, [("p", 1, None, "http")])
        errors = [e for e in self.events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["why"], "database or disk is full")
        self.assertEqual((errors[0]["change"], errors[0]["peer"]), ("report plug p -> 0", "10.0.0.9"))

    def test_refusals_while_the_store_is_away_are_paced(self):
        """
        While the store is away (L{StoreAway}: Redis unreachable), the first
        refused change is logged whole, the others summed up in one line at
        most every 10 s, and what is left once the store takes a change
        again; a store failure that is no outage is logged for each change.
        """
        def refused(count, error=StoreAway, why="Redis at redis://db:6379/0 unreachable"):
            for i in range(count):
                self.hub.set_display(Display(2, color=(1, 2, 3), pulse=0), f"10.0.0.{i}")
                self.journal.refuse(why, error)
                self.clock.advance(0.2)

        def errors():
            return [formatEvent(e) for e in self.events if e["log_level"].name == "error"]

        refused(25)  # 5 s of an outage
        self.assertEqual(len(errors()), 1)
        self.assertIn("display [cc:2:1,2,3:0] from 10.0.0.0 refused: state store cannot write: Redis at "
                      "redis://db:6379/0 unreachable", errors()[0])
        refused(30)  # 6 s more: one summary, 10 s after the first line
        self.assertEqual(len(errors()), 2)
        self.assertEqual(errors()[1], "50 more changes refused in the last 10 s: state store cannot write: "
                                      "Redis at redis://db:6379/0 unreachable")
        self.assertEqual(self.hub.refused, {})  # displays are not counted as reports
        self.hub.set_display(OFF, "x")
        self.journal.commit()
        self.assertEqual(len(errors()), 3)
        self.assertIn("4 more changes refused in the last 1 s, until the state store took changes again",
                      errors()[2])
        # The next outage is logged again, and other failures every time.
        refused(2)
        refused(2, StoreFailed, "database or disk is full")
        self.assertEqual(len(errors()), 6)
        self.assertIn("refused: state store cannot write: Redis", errors()[3])
        self.assertIn("database or disk is full", errors()[4])
        self.assertIn("database or disk is full", errors()[5])

    def test_unexpected_journal_error(self):
        """
        A journal that raises instead of answering is logged with its
        traceback and the report is refused the same way; the Deferred does
        not fail, so a caller that drops it leaves no unhandled error.
        """
        def broken(*args):
            raise RuntimeError("bug")

        self.patch(self.journal, "save_report", broken)
        self.assertIsNone(self.successResultOf(self.hub.report("p", 1, "http", "x")))
        self.assertEqual((self.hub.plugs(), self.seen), ([], []))
        self.assertEqual([e["log_failure"].type for e in self.events if "log_failure" in e], [RuntimeError])

    def test_display_after_commit(self):
        """
        A display state is shown (state changed, display listeners told)
        only once the journal has it; the Deferred then fires with it.
        """
        shown = []
        self.hub.watch_display(lambda event: shown.append(event.packet))
        red = Display(2, color=(255, 0, 0), pulse=1)
        result = self.hub.set_display(red, "x")
        self.assertNoResult(result)
        self.assertEqual((self.hub.display(), shown), (OFF, []))
        self.assertEqual(self.journal.pending[0][0], (red,))
        self.journal.commit()
        self.assertEqual(self.successResultOf(result), red)
        self.assertEqual((self.hub.display(), shown), (red, ["[cc:2:255,0,0:1]"]))

    def test_refused_display_changes_nothing(self):
        """
        A display state the store cannot write fires with None, is logged,
        and leaves the display and its listeners alone.
        """
        shown = []
        self.hub.watch_display(shown.append)
        result = self.hub.set_display(Display(1, weather=3, intensity=9), "10.0.0.2")
        self.journal.refuse()
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual((self.hub.display(), shown), (OFF, []))
        errors = [e for e in self.events if e["log_level"].name == "error"]
        self.assertEqual([(e["change"], e["peer"]) for e in errors], [("display [cc:1:3:9]", "10.0.0.2")])

    def test_refused_display_keeps_last_on(self):
        """
        A display state the journal refuses is not remembered as the last
        one on either (the journal kept neither).
        """
        red = Display(2, color=(255, 0, 0), pulse=1)
        self.hub.set_display(red, "x")
        self.journal.commit()
        self.hub.set_display(Display(1, weather=3, intensity=9), "x")
        self.journal.refuse()
        self.assertEqual(self.hub.last_on(), LastOn(red, red))

    def test_commands_pass_through_the_journal(self):
        """
        A one-off display command is handed to the journal (a shared one
        passes it to the other nodes) and sent once the journal answers; it
        changes no state.
        """
        shown = []
        self.hub.watch_display(lambda event: shown.append(event.packet))
        result = self.hub.display_command("reset", "x")
        self.assertEqual((shown, [args for args, _ in self.journal.pending]), ([], [("reset",)]))
        self.journal.commit()
        self.assertEqual((self.successResultOf(result), shown, self.hub.display()), ("[cc:r:?:?]", ["[cc:r:?:?]"], OFF))

    def test_refused_command_reaches_no_one(self):
        """
        A command the journal refuses (Redis unreachable) reaches no device,
        and the Deferred fires with None.
        """
        shown = []
        self.hub.watch_display(lambda event: shown.append(event.packet))
        result = self.hub.display_command("update", "x")
        self.journal.refuse("Redis unreachable")
        self.assertEqual((self.successResultOf(result), shown), (None, []))

    def test_bug_after_commit_is_logged(self):
        """
        Should accepting a committed report itself fail (a bug, not a
        listener: those are caught one by one), the failure is logged and
        the Deferred still fires, with None.
        """
        def broken(*args):
            raise RuntimeError("bug in accept")

        self.patch(self.hub, "_accept", broken)
        result = self.hub.report("p", 1, "http", "x")
        self.journal.commit()
        self.assertIsNone(self.successResultOf(result))
        failures = [e for e in self.events if "log_failure" in e]
        self.assertEqual([e["log_failure"].type for e in failures], [RuntimeError])
        self.assertIn("saved but not applied", failures[0]["log_format"])

    def test_restore(self):
        """
        restore() takes loaded plugs and display as the state, the plugs in
        the given order, and tells no listener; a later report knows the
        restored value.
        """
        shown = []
        self.hub.watch_display(shown.append)
        lamp = Display(2, color=(1, 2, 3), pulse=0)
        self.hub.restore([Plug("b", 0, 1.0), Plug("a", 1, 2.0)], lamp)
        self.assertEqual([p.id for p in self.hub.plugs()], ["b", "a"])
        self.assertEqual(self.hub.display(), lamp)
        self.assertEqual((self.seen, shown), ([], []))
        result = self.hub.report("b", 1, "http", "x")
        self.journal.commit()
        self.assertEqual(self.successResultOf(result).previous, 0)


class MemoryJournalTests(SynchronousTestCase):
    """
    Without a store the hub keeps a bounded history in memory and accepts
    reports at once, as the original did.
    """

    def test_report_is_immediate(self):
        """
        With the default journal a report is accepted before report() returns.
        """
        hub = Hub(now=lambda: 7.0)
        result = hub.report("p", 1, "http", "x")
        self.assertEqual(hub.plug("p"), Plug("p", 1, 7.0))
        self.assertEqual(self.successResultOf(result).plug, Plug("p", 1, 7.0))

    def test_history_newest_first_and_bounded(self):
        """
        History lists the newest entries first, at most limit of them, and
        keeps at most `keep` per plug; other plugs keep their own.
        """
        clock = Clock()
        hub = Hub(now=clock.seconds, journal=MemoryJournal(keep=3))
        for value in (1, 0, 1, 0, 1):
            clock.advance(1)
            hub.report("p", value, "device", "x")
        hub.report("q", 0, "http", "x")
        history = self.successResultOf(hub.history("p", 10))
        self.assertEqual(history, [HistoryEntry(1, 5, "device"), HistoryEntry(0, 4, "device"), HistoryEntry(1, 3, "device")])
        self.assertEqual(self.successResultOf(hub.history("p", 2)), history[:2])
        self.assertEqual(self.successResultOf(hub.history("q", 10)), [HistoryEntry(0, 5, "http")])

    def test_restore_without_display(self):
        """
        With no recorded display state (None), restore() leaves it off.
        """
        hub = Hub()
        hub.restore([], None)
        self.assertEqual(hub.display(), OFF)

    def test_history_of_unknown_plug(self):
        """
        History of a plug that never reported is None.
        """
        self.assertIsNone(self.successResultOf(Hub().history("nope", 10)))


class ReportTests(SynchronousTestCase):
    """
    parse_report accepts exactly the reports of SPEC 1.1.
    """

    def test_valid(self):
        """
        Valid reports, with booleans read as 1/0 and extra keys ignored.
        """
        self.assertEqual(parse_report(b'{"id": "0xb00bf0cc", "value": 1}'), ("0xb00bf0cc", 1))
        self.assertEqual(parse_report('{"id": "a", "value": 0, "rssi": -60}'), ("a", 0))
        self.assertEqual(parse_report(b'{"id": "a", "value": true}'), ("a", 1))
        self.assertEqual(parse_report(b'{"id": "a", "value": false}'), ("a", 0))
        self.assertEqual(parse_report(b'{"id": "' + b"x" * 128 + b'", "value": 1}')[0], "x" * 128)

    def test_invalid(self):
        """
        Every kind of bad report is refused with a message naming the field.
        """
        cases = {
            b"": "empty body",
            b"  \n": "empty body",
            b"{": "not valid JSON",
            b"\xff": "not valid JSON",
            b"[" * 100000: "not valid JSON",
            b"[1]": "JSON object",
            b"null": "JSON object",
            b'{"value": 1}': "missing field: id",
            b'{"id": "a"}': "missing field: value",
            b'{"id": "", "value": 1}': "id must be a non-empty string",
            b'{"id": 5, "value": 1}': "id must be a non-empty string",
            b'{"id": "' + b"x" * 129 + b'", "value": 1}': "at most 128",
            b'{"id": "a", "value": 2}': "value must be 0 or 1",
            b'{"id": "a", "value": "1"}': "value must be 0 or 1",
            b'{"id": "a", "value": 1.0}': "value must be 0 or 1",
            b'{"id": "a", "value": null}': "value must be 0 or 1",
        }
        for body, expected in cases.items():
            error = self.assertRaises(InvalidReport, parse_report, body)
            self.assertIn(expected, str(error), body[:40])

    def test_broadcast_bytes(self):
        """
        The broadcast is the original's json.dumps output, byte for byte.
        """
        self.assertEqual(broadcast_bytes("0xb00bf0cc", 1), b'{"id": "0xb00bf0cc", "value": 1}')
