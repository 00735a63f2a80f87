"""
Tests for smartplug_backend.state.persistence: the SQLite journal under the hub and
the HTTP API (with a synchronous stand-in for the writer thread), and the
service that locks, opens and loads the state database at start-up.
"""

import io
import json
import os
import sqlite3
import sys
import time

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend import tap
from smartplug_backend.core.display import OFF, Display
from smartplug_backend.core.history import History
from smartplug_backend.core.hub import Hub, Plug
from smartplug_backend.core.journal import HistoryEntry, StoreFailed
from smartplug_backend.core.pubsub import report_publisher
from smartplug_backend.server.services import StartupError
from smartplug_backend.state import persistence
from smartplug_backend.state import store as store_module
from smartplug_backend.state.autobackup import BackupService
from smartplug_backend.state.backup import before_upgrade
from smartplug_backend.state.persistence import SQLiteJournal, StoreService
from smartplug_backend.state.store import Store

from .fake_mqtt import home_assistant
from .helpers import SynchronousReactor, http_client
from .test_store import build_v3


def fill(path: str, reports) -> None:
    """
    Write C{(plug_id, value, at, source)} reports into the database at C{path}.
    """
    filled = Store.open(path, 10000)
    for report in reports:
        filled.save_report(*report)
    filled.close()


class JournalTests(SynchronousTestCase):
    """
    The hub on the SQLite journal: a report is in the database before the
    hub accepts it; one the database refuses is answered 503 and changes
    nothing anywhere.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.store = Store.open(self.path, keep=5)
        self.addCleanup(self.store.close)
        self.journal = SQLiteJournal(run=maybeDeferred, store=self.store)
        self.clock = Clock()
        self.clock.advance(1000)
        self.hub = Hub(now=self.clock.seconds, journal=self.journal)
        self.events = []
        self.patch(self.hub, "_log", Logger(observer=self.events.append))
        self.heard = []
        self.hub.listen(lambda report: self.heard.append((report.plug.id, report.plug.value)))
        self.client = http_client(self.hub)

    def post(self, body: bytes, path: str = "/data"):
        response = self.successResultOf(self.client.post("http://smartplug.test" + path, data=body))
        return response.code, json.loads(self.successResultOf(response.content()))

    def break_table(self, table: str) -> None:
        """
        Make every write to C{table} fail from now on, as a full disk would.
        """
        db = sqlite3.connect(self.path)
        db.execute(
            f"CREATE TRIGGER full_{table} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, 'disk is full'); END"
        )
        db.commit()
        db.close()

    def test_report_is_stored_before_it_is_heard(self):
        """
        When a listener hears of a report, the database already has it, with
        its time and source.
        """
        stored = []
        self.hub.listen(lambda report: stored.append(self.store.plugs()))
        self.assertEqual(self.post(b'{"id": "a", "value": 1}'), (200, {}))
        self.assertEqual(stored, [[Plug("a", 1, 1000.0)]])
        self.assertEqual(self.store.history("a", 10), [HistoryEntry(1, 1000.0, "http")])

    def test_store_failure_answers_503_and_changes_nothing(self):
        """
        A report the database refuses gets a JSON 503; the hub's state, the
        listeners and the database are as before, and the log has the
        database's reason.
        """
        self.post(b'{"id": "a", "value": 1}')
        self.break_table("history")
        code, body = self.post(b'{"id": "a", "value": 0}')
        self.assertEqual((code, list(body)), (503, ["error"]))
        self.assertIn("state store cannot write", body["error"])
        self.assertEqual(self.hub.plug("a"), Plug("a", 1, 1000.0))
        self.assertEqual(self.heard, [("a", 1)])
        self.assertEqual(self.store.plugs(), [Plug("a", 1, 1000.0)])
        self.assertEqual(len(self.store.history("a", 10)), 1)
        self.assertEqual([e.get("why") for e in self.events if e["log_level"].name == "error"], ["disk is full"])

    def test_nothing_queued_once_closing(self):
        """
        Once the journal is closing, a report is refused at once (503, state
        unchanged) instead of being queued for a writer thread that is going
        away, where its caller would wait for good.
        """
        self.successResultOf(self.journal.close())
        code, body = self.post(b'{"id": "late", "value": 1}')
        self.assertEqual(code, 503)
        self.assertIsNone(self.hub.plug("late"))
        self.assertEqual(self.heard, [])

    def test_closing_refusal_is_a_store_failure(self):
        """
        A report that arrives while the store is closing fails with
        L{StoreFailed} (an ordinary 503, logged as one line), never with the
        start-up exit helper's C{SystemExit} inside the hub.
        """
        self.successResultOf(self.journal.close())
        self.failureResultOf(self.journal.save_report("late", 1, 1000.0, "http"), StoreFailed)
        self.post(b'{"id": "late", "value": 1}')
        errors = [e for e in self.events if e["log_level"].name in ("error", "critical")]
        self.assertEqual([e.get("why") for e in errors], ["the server is stopping"])
        self.assertNotIn("log_failure", errors[0])

    def test_display_is_stored(self):
        """
        POST /display stores the state before it answers; one the database
        refuses gets a JSON 503 and leaves the display as it was.
        """
        colour = {"mode": 2, "color": [255, 65, 174], "pulse": 0}
        self.assertEqual(self.post(json.dumps(colour).encode(), "/display")[0], 200)
        self.assertEqual(self.store.display(), Display(2, color=(255, 65, 174), pulse=0))
        self.break_table("display")
        code, body = self.post(b'{"mode": 0}', "/display")
        self.assertEqual(code, 503)
        self.assertIn("state store cannot write: display state not recorded", body["error"])
        self.assertEqual(self.hub.display(), Display(2, color=(255, 65, 174), pulse=0))
        self.assertEqual(self.store.display(), Display(2, color=(255, 65, 174), pulse=0))

    def test_last_on_refused_with_its_display(self):
        """
        The last state that was on is written with the display state that
        sets it: a state the database refuses (503) is remembered neither
        in the database nor in the hub.
        """
        colour = Display(2, color=(255, 65, 174), pulse=0)
        self.post(b'{"mode": 2, "color": [255, 65, 174], "pulse": 0}', "/display")
        self.break_table("display")
        self.assertEqual(self.post(b'{"mode": 1, "weather": 3, "intensity": 9}', "/display")[0], 503)
        for remembered in (self.store.last_on()[0], self.hub.last_on()):
            self.assertEqual((remembered.state, remembered.colour), (colour, colour))

    def test_publication_is_stored_before_the_201(self):
        """
        POST /publish answers 201 once the database has the publication, its
        epoch and offset; subscribers get it after that.  One the database
        refuses gets a JSON 503 and reaches no one.
        """
        stored = []
        self.hub.pubsub.deliver_with(lambda subscribers, frame: stored.append(self.store.streams()))
        self.hub.pubsub.subscribe("s", "e")
        response = self.successResultOf(
            self.client.post("http://smartplug.test/publish?clientName=c", data=b'{"event": "e", "data": [1]}')
        )
        self.assertEqual(response.code, 201)
        epoch = self.hub.pubsub.history.position("e")[1]
        self.assertEqual(stored, [[("e", epoch, 1, [(1, "[1]", 1000.0)])]])
        self.break_table("pubsub_history")
        code, body = self.post(b'{"event": "e", "data": 2}', "/publish?clientName=c")
        self.assertEqual(code, 503)
        self.assertIn("publication not recorded", body["error"])
        self.assertEqual(len(stored), 1)
        self.assertEqual(self.store.streams(), stored[0])

    def test_report_and_its_publication_in_one_commit(self):
        """
        With reports published as event smartplug, a report and its
        publication are committed together: both are in the database when
        the listeners hear of it; a database that cannot take the
        publication refuses the report too (503), and nobody hears of either.
        """
        hub = Hub(now=self.clock.seconds, journal=self.journal, publish_reports=True)
        hub.listen(report_publisher(hub))
        frames = []
        hub.pubsub.deliver_with(lambda subscribers, frame: frames.append(frame))
        hub.pubsub.subscribe("s", "smartplug")
        stored = []
        hub.listen(lambda report: stored.append((self.store.plugs(), self.store.streams())))
        client = http_client(hub)
        response = self.successResultOf(client.post("http://smartplug.test/data", data=b'{"id": "a", "value": 1}'))
        self.assertEqual(response.code, 200)
        epoch = hub.pubsub.history.position("smartplug")[1]
        data = json.dumps('{"id": "a", "value": 1}')
        self.assertEqual(stored, [([Plug("a", 1, 1000.0)], [("smartplug", epoch, 1, [(1, data, 1000.0)])])])
        self.assertEqual(len(frames), 1)
        self.break_table("pubsub_history")
        response = self.successResultOf(client.post("http://smartplug.test/data", data=b'{"id": "a", "value": 0}'))
        self.assertEqual(response.code, 503)
        self.assertEqual(hub.plug("a").value, 1)
        self.assertEqual(self.store.plugs(), [Plug("a", 1, 1000.0)])
        self.assertEqual((len(stored), len(frames)), (1, 1))

    def test_history_route_reads_the_database(self):
        """
        GET /plugs/<id>/history answers from the database, bounded by keep.
        """
        for n in range(7):
            self.clock.advance(1)
            self.post(json.dumps({"id": "a", "value": n % 2}).encode())
        response = self.successResultOf(self.client.get("http://smartplug.test/plugs/a/history?limit=50"))
        entries = json.loads(self.successResultOf(response.content()))
        self.assertEqual([e["value"] for e in entries], [0, 1, 0, 1, 0])
        self.assertEqual(entries[0]["at"], "1970-01-01T00:16:47.000Z")


class ManualWriter:
    """
    A stand-in for the writer thread that runs each call only when the
    test says so, so that writes can queue up behind a busy writer.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, f, *args):
        done = Deferred()
        self.calls.append((f, args, done))
        return done

    def run_next(self):
        f, args, done = self.calls.pop(0)
        done.callback(f(*args))


class GroupCommitTests(SynchronousTestCase):
    """
    Writes that queue up while the writer thread is busy are committed
    together, in one transaction, and answered in the order they were made;
    one that fails does not fail the others.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.store = Store.open(self.path, keep=100)
        self.addCleanup(self.store.close)
        self.statements = []
        self.store._db.set_trace_callback(self.statements.append)
        self.writer = ManualWriter()
        self.journal = SQLiteJournal(run=self.writer, store=self.store)

    def commits(self) -> int:
        return sum(1 for s in self.statements if s == "COMMIT")

    def test_queued_writes_share_one_transaction(self):
        """
        While the first write is on the writer thread, three reports and a
        display state queue up; they go to the writer in one call, are
        committed with one COMMIT, and their Deferreds fire in call order,
        only after it.
        """
        answered = []
        first = self.journal.save_report("a", 1, 1.0, "http")
        first.addCallback(lambda _: answered.append("first"))
        queued = [self.journal.save_report(p, v, 2.0, "http") for p, v in [("a", 0), ("b", 1), ("a", 1)]]
        queued.append(self.journal.save_display(Display(2, color=(1, 2, 3), pulse=0)))
        for n, d in enumerate(queued):
            d.addCallback(lambda _, n=n: answered.append(n))
        self.assertEqual(len(self.writer.calls), 1)
        self.writer.run_next()
        self.assertEqual((answered, self.commits()), (["first"], 1))
        [(f, (writes,), _)] = self.writer.calls
        self.assertEqual(len(writes), 4)
        self.writer.run_next()
        self.assertEqual((answered, self.commits()), (["first", 0, 1, 2, 3], 2))
        self.assertEqual([e.value for e in self.store.history("a", 10)], [1, 0, 1])
        self.assertEqual(self.store.plugs(), [Plug("a", 1, 2.0), Plug("b", 1, 2.0)])
        self.assertEqual(self.store.display(), Display(2, color=(1, 2, 3), pulse=0))

    def test_a_read_keeps_its_place(self):
        """
        A history read queued between writes runs alone, after the writes
        before it and before those after it.
        """
        self.journal.save_report("a", 1, 1.0, "http")
        self.journal.save_report("a", 0, 2.0, "http")
        read = self.journal.history("a", 10)
        self.journal.save_report("a", 1, 3.0, "http")
        self.writer.run_next()
        self.writer.run_next()
        self.assertNoResult(read)
        self.writer.run_next()
        self.assertEqual([e.value for e in self.successResultOf(read)], [0, 1])
        self.writer.run_next()
        self.assertEqual(self.writer.calls, [])
        self.assertEqual(len(self.store.history("a", 10)), 3)

    def test_one_bad_write_fails_alone(self):
        """
        In a group, a write SQLite refuses fails with L{StoreFailed} and
        leaves nothing behind; the group is rolled back and the others are
        tried again alone and committed, in their order.
        """
        db = sqlite3.connect(self.path)
        db.execute(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON history WHEN NEW.plug_id = 'bad'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        db.commit()
        db.close()
        self.journal.save_report("first", 1, 1.0, "http")
        group = [self.journal.save_report(p, 1, 2.0, "http") for p in ("a", "bad", "b")]
        self.writer.run_next()
        self.writer.run_next()
        self.successResultOf(group[0])
        self.assertIn("refused", str(self.failureResultOf(group[1], StoreFailed).value))
        self.successResultOf(group[2])
        self.assertEqual([p.id for p in self.store.plugs()], ["first", "a", "b"])
        self.assertEqual(self.store.history("bad", 10), [])
        self.assertEqual(self.commits(), 3)
        self.assertIn("ROLLBACK", self.statements)

    def test_failed_commit_retries_each_alone(self):
        """
        When the group's transaction fails as a whole (here its COMMIT),
        each write is tried again alone, so each is answered by its own
        fate: here all are committed, one transaction each.
        """
        self.journal.save_report("first", 1, 1.0, "http")
        group = [self.journal.save_report(p, 1, 2.0, "http") for p in ("a", "b")]
        self.writer.run_next()
        real = self.store._db
        self.store._db = FailingCommit(real)
        self.writer.run_next()
        for d in group:
            self.successResultOf(d)
        self.assertEqual([p.id for p in self.store.plugs()], ["first", "a", "b"])
        self.assertEqual(self.commits(), 3)


    def test_log_length_change_is_logged(self):
        """
        When the store shortens its write-ahead log for a nearly full disk,
        and lengthens it again, the server says so once each time, with the
        file and the room left.
        """
        events = []
        self.patch(persistence, "_log", Logger(observer=events.append))
        room = [200 << 20]
        self.patch(store_module, "disk_room", lambda directory: room[0])
        db = Store.open(self.mktemp(), 10)
        self.addCleanup(db.close)
        journal = SQLiteJournal(run=maybeDeferred, store=db)
        for free in (200 << 20, 32 << 20, 32 << 20, 100 << 20, 200 << 20, 200 << 20):
            room[0] = free
            self.successResultOf(journal.save_report("a", 1, 1.0, "http"))
        said = [(e["log_level"].name, e["pages"], e["free"]) for e in events]
        self.assertEqual(said, [("warn", 80, 32 << 20), ("info", 1000, 200 << 20)])
        self.assertEqual(
            formatEvent(events[0]),
            f"STATE_DB: {db.path}: only 32 MiB free on its disk: SQLite's write-ahead log is kept short "
            "(a few hundred KB) until 128 MiB are free; make room on the disk")
        self.assertEqual(
            formatEvent(events[1]),
            f"STATE_DB: {db.path}: 200 MiB free on its disk again: SQLite's write-ahead log is back to its "
            "usual length (about 4 MB)")
        self.assertEqual(len(db.history("a", 10)), 6)

    def test_nearly_full_disk_at_start_up_is_logged(self):
        """
        A server that starts on a nearly full disk says so as it opens the
        store, once; one with room says nothing.
        """
        events = []
        self.patch(persistence, "_log", Logger(observer=events.append))
        self.patch(store_module, "disk_room", lambda directory: 200 << 20)
        roomy = SQLiteJournal(run=maybeDeferred)
        roomy.open(self.mktemp(), 10)
        self.addCleanup(roomy.store.close)
        self.successResultOf(roomy.save_report("a", 1, 1.0, "http"))
        self.assertEqual(events, [])
        self.patch(store_module, "disk_room", lambda directory: 100 << 20)
        journal = SQLiteJournal(run=maybeDeferred)
        journal.open(self.mktemp(), 10)
        self.addCleanup(journal.store.close)
        self.assertEqual([(e["pages"], e["free"]) for e in events], [(80, 100 << 20)])
        self.successResultOf(journal.save_report("a", 1, 1.0, "http"))
        self.assertEqual(len(events), 1)

    def test_small_disk_is_not_warned_about(self):
        """
        A disk that can never have 128 MiB free keeps the short log for
        good: the server says so once, as news, without asking for room
        it cannot make.
        """
        events = []
        self.patch(persistence, "_log", Logger(observer=events.append))
        self.patch(store_module, "disk_room", lambda directory: 90 << 20)
        self.patch(store_module, "disk_size", lambda directory: (100 << 20) - 1)
        journal = SQLiteJournal(run=maybeDeferred)
        journal.open(self.mktemp(), 10)
        self.addCleanup(journal.store.close)
        self.successResultOf(journal.save_report("a", 1, 1.0, "http"))
        self.assertEqual([(e["log_level"].name, formatEvent(e)) for e in events], [
            ("info", f"STATE_DB: {journal.store.path}: its disk holds only 99 MiB: SQLite's write-ahead log "
                     "is kept short (a few hundred KB)")])

    def test_small_disk_nearly_full_is_warned_about(self):
        """
        Such a disk with less than 64 MiB free is warned about, without the
        128 MiB it cannot have.
        """
        events = []
        self.patch(persistence, "_log", Logger(observer=events.append))
        self.patch(store_module, "disk_room", lambda directory: 1 << 20)
        self.patch(store_module, "disk_size", lambda directory: 20 << 20)
        journal = SQLiteJournal(run=maybeDeferred)
        journal.open(self.mktemp(), 10)
        self.addCleanup(journal.store.close)
        self.assertEqual([(e["log_level"].name, formatEvent(e)) for e in events], [
            ("warn", f"STATE_DB: {journal.store.path}: only 1 MiB free on its disk of 20 MiB: SQLite's "
                     "write-ahead log is kept short (a few hundred KB); make room on the disk")])

    def test_room_unknown_is_logged(self):
        """
        When the room on the disk cannot be told as the store opens, the
        log is kept short, and the server says why.
        """
        events = []
        self.patch(persistence, "_log", Logger(observer=events.append))
        self.patch(store_module, "disk_room", lambda directory: None)
        journal = SQLiteJournal(run=maybeDeferred)
        journal.open(self.mktemp(), 10)
        self.addCleanup(journal.store.close)
        self.assertEqual([formatEvent(e) for e in events], [
            f"STATE_DB: {journal.store.path}: the room left on its disk cannot be told: SQLite's write-ahead "
            "log is kept short (a few hundred KB)"])


class FailingCommit:
    """
    An sqlite3 connection whose first COMMIT fails, as on a full disk.
    """

    def __init__(self, db):
        self._db = db
        self.failed = False

    def __getattr__(self, name):
        return getattr(self._db, name)

    def execute(self, sql, *args):
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)


class StoreServiceTests(SynchronousTestCase):
    """
    At start-up the service takes the database's lock, opens it and loads
    the hub; a file it cannot use, or a lock someone holds, stops start-up
    with one line.
    """

    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def start(self, history=None) -> StoreService:
        service = StoreService.with_hub(
            self.path, 10, SynchronousReactor(), lambda journal: Hub(journal=journal, history=history)
        )
        service.privilegedStartService()
        # What stopService does on the writer thread.
        self.addCleanup(lambda: os.close(service._lock))
        self.addCleanup(service.journal.store.close)
        return service

    def assertStops(self, fragment: str) -> None:
        error = self.assertRaises(StartupError, self.start)
        self.assertNotIn("\n", str(error))
        self.assertTrue(str(error).startswith("STATE_DB: "))
        self.assertIn(fragment, str(error))

    def test_loads_hub(self):
        """
        The hub starts with every stored plug, in first-report order, with
        its stored value and time, and with the stored display state.
        """
        fill(self.path, [("b", 1, 1.0, "http"), ("a", 0, 2.0, "device"), ("b", 0, 3.0, "http")])
        stored = Store.open(self.path, 10)
        stored.save_display(Display(1, weather=5, intensity=2))
        stored.close()
        service = self.start()
        self.assertEqual(service.hub.plugs(), [Plug("b", 0, 3.0), Plug("a", 0, 2.0)])
        self.assertEqual(service.hub.display(), Display(1, weather=5, intensity=2))

    def test_loads_pubsub_history(self):
        """
        The hub starts with the stored pub/sub streams: the same epoch, the
        kept publications, and offsets that go on from the stored newest.
        """
        stored = Store.open(self.path, 10)
        # The service's hub runs on the real time: recent publications.
        stored.save_publication("e", "EPOCH", 1, '"a"', time.time() - 60, 100, 0.0)
        stored.save_publication("e", "EPOCH", 2, '"b"', time.time() - 30, 100, 0.0)
        stored.close()
        service = self.start()
        history = service.hub.pubsub.history
        self.assertEqual(history.position("e"), (2, "EPOCH"))
        self.assertEqual(history.number("e", "1").offset, 3)
        self.assertEqual(history.last("e").data_json, '"b"')

    def test_history_off_forgets_pubsub_history(self):
        """
        Started with PUBSUB_HISTORY = 0, the server drops the stored pub/sub
        history: it will record no offsets, so a later start with history on
        must begin new epochs instead of reusing offsets under old ones.
        """
        stored = Store.open(self.path, 10)
        stored.save_publication("e", "EPOCH", 1, '"a"', time.time(), 100, 0.0)
        stored.close()
        service = self.start(History(keep=0))
        self.assertNotEqual(service.hub.pubsub.history.position("e"), (1, "EPOCH"))
        self.assertEqual(service.journal.store.streams(), [])

    def test_creates_database(self):
        """
        Without a file, start-up creates the database and the hub is empty,
        its display off.
        """
        service = self.start()
        self.assertEqual((service.hub.plugs(), service.hub.display()), ([], OFF))
        self.assertTrue(os.path.isfile(self.path))

    def test_second_server_refused(self):
        """
        While one server holds the database, another one cannot start on it:
        one line naming the holder's pid.
        """
        self.start()
        self.assertStops(f"in use by a running server (pid {os.getpid()}")

    def test_missing_directory_stops_startup(self):
        """
        A STATE_DB in a directory that does not exist stops start-up with
        one line naming the path.
        """
        self.path = os.path.join(self.path, "no", "such", "state.sqlite")
        self.assertStops(f"{self.path}: its directory {os.path.dirname(self.path)} does not exist")

    def test_corrupt_file_stops_startup(self):
        """
        A file that is not a state database stops start-up with one line,
        and is left as it was.
        """
        with open(self.path, "wb") as f:
            f.write(b"not a database" * 100)
        self.assertStops("not an SQLite database")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"not a database" * 100)


class WiringTests(SynchronousTestCase):
    """
    makeService puts the store first, so that the hub is loaded before any
    listener binds, and adds automatic backups when asked.
    """

    def make(self, settings_text: str):
        path = self.mktemp() + ".py"
        with open(path, "w") as f:
            f.write(settings_text)
        options = tap.Options()
        options.parseOptions(["--settings", path, "--www", "tcp:0", "--ws", "tcp:0"])
        return tap.makeService(options, reactor=SynchronousReactor())

    def test_store_first_and_loaded(self):
        """
        With STATE_DB set, the first service is the store (so it starts
        before any listener); once started, its hub holds the stored plugs.
        """
        db = os.path.abspath(self.mktemp())
        fill(db, [("p", 1, 5.0, "http")])
        top = self.make(f"STATE_DB = {db!r}\n")
        services = list(top)
        self.assertIsInstance(services[0], StoreService)
        self.assertFalse(any(isinstance(s, BackupService) for s in services))
        top.privilegedStartService()
        self.addCleanup(lambda: os.close(services[0]._lock))
        self.addCleanup(services[0].journal.store.close)
        self.assertEqual(services[0].hub.plug("p"), Plug("p", 1, 5.0))

    def test_backups_when_asked(self):
        """
        BACKUP_INTERVAL adds the automatic backup service.
        """
        db = os.path.abspath(self.mktemp())
        top = self.make(f"STATE_DB = {db!r}\nBACKUP_INTERVAL = 3600\n")
        self.assertEqual(sum(isinstance(s, BackupService) for s in top), 1)

    def test_no_store_without_state_db(self):
        """
        With STATE_DB = None there is no store and no backup service, even
        with BACKUP_INTERVAL set.
        """
        top = self.make("STATE_DB = None\nBACKUP_INTERVAL = 60\n")
        self.assertFalse(any(isinstance(s, (StoreService, BackupService)) for s in top))


class Running:
    """
    The server's store and hub as it starts them on the database at
    C{path} (the store's service loads the hub), its writes run at once, with
    Home Assistant connected through an MQTT bridge; C{packets} are what
    the lamps get.
    """

    def __init__(self, testcase, path: str) -> None:
        self.journal = SQLiteJournal(run=maybeDeferred)
        self.hub = Hub(journal=self.journal)
        self.service = StoreService(path, 10, self.journal, self.hub, ThreadPool(), SynchronousReactor(),
                                    before_upgrade(path, None, path + "-backups"))
        self.service.privilegedStartService()
        self.packets = []
        self.hub.watch_display(lambda event: self.packets.append(event.packet))
        self.home_assistant = home_assistant(testcase, self.hub)

    def light(self, *payloads: bytes) -> list:
        """
        Send Home Assistant's light commands.

        @return: the packets the lamps got for them.
        """
        del self.packets[:]
        for payload in payloads:
            self.home_assistant.light(payload)
        return self.packets

    def stop(self) -> None:
        """
        Close the database and let go of its lock, as a stop does (once).
        """
        if self.service._lock is not None:
            self.journal.close()
            os.close(self.service._lock)
            self.service._lock = None


class LastOnRestartTests(SynchronousTestCase):
    """
    With STATE_DB, what the display was last when on outlives a restart
    (SPEC 12): a bare ON from Home Assistant restores it, and a new colour
    keeps the last colour's pulse.
    """

    def setUp(self):
        self.path = os.path.abspath(self.mktemp())

    def start(self) -> Running:
        running = Running(self, self.path)
        self.addCleanup(running.stop)
        return running

    def restart(self, before: Running) -> Running:
        before.stop()
        return self.start()

    def test_colour_then_off(self):
        """
        A colour, then off, then a restart: a bare ON restores the colour.
        """
        first = self.start()
        first.light(b'{"state": "ON", "color": {"r": 255, "g": 65, "b": 174}}', b'{"state": "OFF"}')
        self.assertEqual(self.restart(first).light(b"ON"), ["[cc:2:255,65,174:0]"])

    def test_weather_then_off(self):
        """
        A weather, then off, then a restart: a bare ON restores the weather.
        """
        first = self.start()
        first.light(b'{"state": "ON", "effect": "rain", "brightness": 255}', b'{"state": "OFF"}')
        self.assertEqual(self.restart(first).light(b'{"state": "ON"}'), ["[cc:1:5:9]"])

    def test_pulse_kept(self):
        """
        A colour with a pulse (set as POST /display does), then a weather,
        then a restart: a new colour from Home Assistant keeps that pulse.
        """
        first = self.start()
        first.hub.set_display(Display(2, color=(1, 2, 3), pulse=4), "10.0.0.1")
        first.light(b'{"state": "ON", "effect": "snow"}')
        after = self.restart(first)
        self.assertEqual(after.light(b'{"state": "ON", "color": {"r": 9, "g": 8, "b": 7}}'), ["[cc:2:9,8,7:4]"])

    def test_last_on_not_valid_ignored(self):
        """
        A last state on edited by hand into one that is off is left out,
        with a warning naming the file: the server starts, and a bare ON
        gives white rather than off.
        """
        first = self.start()
        first.light(b'{"state": "ON", "effect": "snow"}', b"OFF")
        first.stop()
        db = sqlite3.connect(self.path)
        db.execute("""UPDATE display SET last_on = '{"mode": 0}'""")
        db.commit()
        db.close()
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.assertEqual(self.start().light(b"ON"), ["[cc:2:255,255,255:0]"])
        self.assertIn(f"{self.path}: the last display state that was on is not a state that is on; ignored",
                      [formatEvent(e) for e in logged])

    def test_database_from_before(self):
        """
        A database written before the last state on was kept loads; its
        display state, a colour, counts as the last one on, through an off
        and a restart.  One whose display is off remembers nothing: a bare
        ON gives white, as before.
        """
        build_v3(self.path, [("a", 1, 1.0, "http")], '{"mode": 2, "color": [255, 0, 0], "pulse": 4}')
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        first = self.start()
        self.assertEqual(first.hub.plugs(), [Plug("a", 1, 1.0)])
        # The way back to an older version is kept, and said.
        (kept,) = os.listdir(self.path + "-backups")
        self.assertIn(f"{self.path} was written by an older smartplug (schema 3) and is upgraded to schema 4, which "
                      f"older versions refuse; a backup of it as it was is in {self.path}-backups/{kept}: to go back "
                      "to such a version, restore it with that version", [formatEvent(e) for e in logged])
        first.light(b"OFF")
        self.assertEqual(self.restart(first).light(b"ON"), ["[cc:2:255,0,0:4]"])
        self.path = os.path.abspath(self.mktemp())
        build_v3(self.path)
        self.assertEqual(self.start().light(b"ON"), ["[cc:2:255,255,255:0]"])
