"""
Tests for smartplug_backend.state.store: the schema, its upgrades, every query and
the history bound, on temporary database files.
"""

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.display import Display, LastOn
from smartplug_backend.core.hub import Plug
from smartplug_backend.core.journal import HistoryEntry
from smartplug_backend.state import store
from smartplug_backend.state.store import APPLICATION_ID, UPGRADES, Store, UnusableDatabase

from .disk import fill, release, small_disk


def fingerprint(path: str) -> tuple:
    """
    What a file holds, and which SQLite side files sit next to it.
    """
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return digest, [s for s in ("-wal", "-shm", "-journal") if os.path.exists(path + s)]


def pragma(path: str, name: str):
    db = sqlite3.connect(path)
    try:
        return db.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        db.close()


def build_v1(path: str, rows=()) -> None:
    """
    Write a schema-1 file by hand, as the first release of the store wrote
    it, with C{rows} of C{(plug_id, value, at, source)} reports.
    """
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        f"""
        PRAGMA journal_mode = WAL;
        BEGIN;
        PRAGMA application_id = {APPLICATION_ID};
        CREATE TABLE plugs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
                            value INTEGER NOT NULL, updated_at REAL NOT NULL);
        CREATE TABLE history (seq INTEGER PRIMARY KEY, plug_id TEXT NOT NULL,
                              value INTEGER NOT NULL, at REAL NOT NULL, source TEXT NOT NULL);
        CREATE INDEX history_by_plug ON history (plug_id, seq);
        PRAGMA user_version = 1;
        COMMIT;
        """
    )
    for plug_id, value, at, source in rows:
        db.execute(
            "INSERT INTO plugs (id, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (plug_id, value, at),
        )
        db.execute("INSERT INTO history (plug_id, value, at, source) VALUES (?, ?, ?, ?)", (plug_id, value, at, source))
    db.close()


def build_v2(path: str, rows=(), display: str = '{"mode": 0}') -> None:
    """
    A schema-2 file as issue 4's release wrote it: schema 1 plus the display
    table holding C{display}.
    """
    build_v1(path, rows)
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        f"""
        BEGIN;
        CREATE TABLE display (only INTEGER PRIMARY KEY CHECK (only = 1), state TEXT NOT NULL);
        INSERT INTO display (only, state) VALUES (1, '{display}');
        PRAGMA user_version = 2;
        COMMIT;
        """
    )
    db.close()


def last_on(opened: Store) -> tuple:
    """
    What C{opened} remembers: the last display state that was on, and the
    last colour.
    """
    remembered, ignored = opened.last_on()
    assert ignored == [], ignored
    return remembered.state, remembered.colour


def build_v3(path: str, rows=(), display: str = '{"mode": 0}') -> None:
    """
    A schema-3 file as issue 14's release wrote it: schema 2 plus the
    pub/sub tables, before the last display state that was on was kept.
    """
    build_v2(path, rows, display)
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        """
        BEGIN;
        CREATE TABLE pubsub_events (event TEXT PRIMARY KEY, epoch TEXT NOT NULL, latest INTEGER NOT NULL);
        CREATE TABLE pubsub_history (event TEXT NOT NULL, offset INTEGER NOT NULL, data TEXT NOT NULL,
                                     created_at REAL NOT NULL, PRIMARY KEY (event, offset)) WITHOUT ROWID;
        PRAGMA user_version = 3;
        COMMIT;
        """
    )
    db.close()


class SchemaTests(SynchronousTestCase):
    """
    A new file gets the newest schema, marked as ours, in WAL mode; files
    that are not ours are refused and never written.
    """

    def setUp(self):
        self.path = self.mktemp()

    def open(self, keep=10000) -> Store:
        opened = Store.open(self.path, keep)
        self.addCleanup(opened.close)
        return opened

    def test_created_on_first_open(self):
        """
        Opening a path where no file is creates the database: our application
        id, the newest schema version, WAL mode, no plugs.
        """
        self.assertEqual(self.open().plugs(), [])
        self.assertEqual(pragma(self.path, "application_id"), APPLICATION_ID)
        self.assertEqual(pragma(self.path, "user_version"), len(UPGRADES))
        self.assertEqual(pragma(self.path, "journal_mode"), "wal")

    def test_empty_file_is_new(self):
        """
        An empty file (zero bytes, as `touch` makes) is taken as a new database.
        """
        open(self.path, "wb").close()
        self.open().save_report("p", 1, 1.0, "http")
        self.assertEqual(pragma(self.path, "user_version"), len(UPGRADES))

    def test_reopen_keeps_everything(self):
        """
        What one Store wrote, the next one on the same file reads.
        """
        first = Store.open(self.path, 10)
        first.save_report("p", 1, 1.0, "http")
        first.close()
        self.assertEqual(self.open().plugs(), [Plug("p", 1, 1.0)])

    def assertRefused(self, fragment: str) -> None:
        """
        Opening the file raises UnusableDatabase naming it and C{fragment},
        saying it was left untouched, and the file and its side files are
        exactly as they were.
        """
        before = fingerprint(self.path)
        error = self.assertRaises(UnusableDatabase, Store.open, self.path, 10)
        self.assertIn(self.path, str(error))
        self.assertIn(fragment, str(error))
        self.assertIn("left untouched", str(error))
        self.assertNotIn("\n", str(error))
        self.assertEqual(fingerprint(self.path), before)

    def test_garbage_refused(self):
        """
        A file that is not SQLite at all is refused, unchanged.
        """
        with open(self.path, "wb") as f:
            f.write(b"PLUGS=1\n" * 500)
        self.assertRefused("not an SQLite database")

    def test_foreign_database_refused(self):
        """
        Another program's SQLite file (tables, no application id) is refused,
        unchanged.
        """
        db = sqlite3.connect(self.path)
        db.execute("CREATE TABLE contacts (name TEXT)")
        db.commit()
        db.close()
        self.assertRefused("not a smartplug state database")

    def test_other_application_id_refused(self):
        """
        An SQLite file marked with another application id is refused, even
        without tables.
        """
        db = sqlite3.connect(self.path)
        db.execute("PRAGMA application_id = 42")
        db.close()
        self.assertRefused("not a smartplug state database")

    def test_newer_schema_refused(self):
        """
        A file from a newer version (higher schema) is refused, unchanged.
        """
        build_v1(self.path)
        db = sqlite3.connect(self.path)
        db.execute(f"PRAGMA user_version = {len(UPGRADES) + 1}")
        db.close()
        self.assertRefused(f"schema {len(UPGRADES) + 1}")

    def test_damaged_database_refused(self):
        """
        A state database whose pages were overwritten is refused, unchanged.
        """
        built = Store.open(self.path, 10000)
        for n in range(300):
            built.save_report(f"plug-{n}", n % 2, float(n), "http")
        built.close()
        size = os.path.getsize(self.path)
        with open(self.path, "r+b") as f:
            f.seek(size // 2)
            f.write(b"\xff" * 8192)
        self.assertRefused("damaged")

    def test_directory_refused(self):
        """
        A directory at STATE_DB is refused with a line saying so.
        """
        os.makedirs(self.path)
        error = self.assertRaises(UnusableDatabase, Store.open, self.path, 10)
        self.assertIn("is a directory", str(error))


class UpgradeTests(SynchronousTestCase):
    """
    Older files are brought to the newest schema, step by step, keeping
    their data; a failing step leaves the file at its old version.
    """

    def setUp(self):
        self.path = self.mktemp()

    def test_v1_file_upgraded(self):
        """
        A schema-1 file written by hand (plugs and history, before the
        display state was stored) opens with its plugs and history, is
        upgraded to the newest schema, and can store a display state.
        """
        build_v1(self.path, [("a", 1, 1.0, "http"), ("b", 0, 2.0, "device"), ("a", 0, 3.0, "device")])
        opened = Store.open(self.path, 10)
        self.addCleanup(opened.close)
        self.assertEqual(opened.plugs(), [Plug("a", 0, 3.0), Plug("b", 0, 2.0)])
        self.assertEqual(opened.history("a", 10), [HistoryEntry(0, 3.0, "device"), HistoryEntry(1, 1.0, "http")])
        self.assertEqual(pragma(self.path, "user_version"), len(UPGRADES))
        self.assertIsNone(opened.display())
        opened.save_display(Display(1, weather=2, intensity=5))
        self.assertEqual(opened.display(), Display(1, weather=2, intensity=5))

    def test_v2_file_upgraded(self):
        """
        A schema-2 file (before pub/sub history was stored) keeps its plugs,
        history and display state, is upgraded to the newest schema, has no
        pub/sub streams yet, and can store publications.
        """
        build_v2(self.path, [("a", 1, 1.0, "http")], '{"mode": 1, "weather": 3, "intensity": 9}')
        opened = Store.open(self.path, 10)
        self.addCleanup(opened.close)
        self.assertEqual(pragma(self.path, "user_version"), len(UPGRADES))
        self.assertEqual(len(UPGRADES), 4)
        self.assertEqual(opened.plugs(), [Plug("a", 1, 1.0)])
        self.assertEqual(opened.history("a", 10), [HistoryEntry(1, 1.0, "http")])
        self.assertEqual(opened.display(), Display(1, weather=3, intensity=9))
        self.assertEqual(opened.streams(), [])
        opened.save_publication("e", "E1", 1, '"x"', 5.0, 100, 0.0)
        self.assertEqual(opened.streams(), [("e", "E1", 1, [(1, '"x"', 5.0)])])

    def test_v3_file_upgraded(self):
        """
        A schema-3 file (before the last display state that was on was
        kept) keeps its state and is upgraded to the newest schema; its
        display state, if on, counts as the last one on (and a colour as the
        last colour); an off one leaves nothing remembered (a bare ON gives
        white, as before).
        """
        red = Display(2, color=(255, 0, 0), pulse=4)
        build_v3(self.path, [("a", 1, 1.0, "http")], '{"mode": 2, "color": [255, 0, 0], "pulse": 4}')
        opened = Store.open(self.path, 10)
        self.addCleanup(opened.close)
        self.assertEqual(pragma(self.path, "user_version"), len(UPGRADES))
        self.assertEqual(opened.plugs(), [Plug("a", 1, 1.0)])
        self.assertEqual((opened.display(), last_on(opened)), (red, (red, red)))
        opened.save_display(Display())
        self.assertEqual((opened.display(), last_on(opened)), (Display(), (red, red)))
        for display, remembered in [('{"mode": 1, "weather": 3, "intensity": 9}', (Display(1, weather=3, intensity=9), None)),
                                    ('{"mode": 0}', (None, None))]:
            path = self.mktemp()
            build_v3(path, [], display)
            older = Store.open(path, 10)
            self.addCleanup(older.close)
            self.assertEqual(last_on(older), remembered)
        never_set = self.mktemp()
        build_v1(never_set)
        older = Store.open(never_set, 10)
        self.addCleanup(older.close)
        self.assertEqual(last_on(older), (None, None))

    def test_kept_before_upgrade(self):
        """
        A file at an older schema is handed to C{before_upgrade} with its
        schema before it is upgraded (older versions refuse the upgraded
        file); what that returns is told.  A new file, and one at the
        newest schema, are not handed over.
        """
        build_v3(self.path, [("a", 1, 1.0, "http")], '{"mode": 1, "weather": 3, "intensity": 9}')
        asked = []

        def keep(schema):
            asked.append((schema, pragma(self.path, "user_version")))
            return "backups/before.tar.gz"

        opened = Store.open(self.path, 10, keep)
        self.addCleanup(opened.close)
        self.assertEqual((asked, opened.upgraded_from), ([(3, 3)], (3, "backups/before.tar.gz")))
        again = Store.open(self.path, 10, keep)
        self.addCleanup(again.close)
        fresh = Store.open(self.mktemp(), 10, keep)
        self.addCleanup(fresh.close)
        self.assertEqual((len(asked), again.upgraded_from, fresh.upgraded_from), (1, None, None))

    def test_no_upgrade_without_its_backup(self):
        """
        When C{before_upgrade} refuses, the file is not upgraded: its
        refusal is the one line, and the file is left as it was.
        """
        build_v3(self.path, [("a", 1, 1.0, "http")], '{"mode": 0}')

        def refuse(schema):
            raise UnusableDatabase(f"schema {schema}: no room for its backup")

        error = self.assertRaises(UnusableDatabase, Store.open, self.path, 10, refuse)
        self.assertEqual(str(error), "schema 3: no room for its backup")
        self.assertEqual(pragma(self.path, "user_version"), 3)

    def test_upgrade_step_runs_once(self):
        """
        With a new step appended, a file at the previous version runs only
        that step, keeps its data and ends at the new version; opening it
        again runs nothing.
        """
        build_v1(self.path, [("a", 1, 1.0, "http")])
        runs = []

        def add_notes(db):
            runs.append(1)
            db.execute("ALTER TABLE plugs ADD COLUMN note TEXT NOT NULL DEFAULT ''")

        self.patch(store, "UPGRADES", store.UPGRADES + [add_notes])
        for _ in range(2):
            Store.open(self.path, 10).close()
        self.assertEqual(runs, [1])
        self.assertEqual(pragma(self.path, "user_version"), len(UPGRADES) + 1)
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT id, value, note FROM plugs").fetchall(), [("a", 1, "")])

    def test_failed_step_leaves_old_version(self):
        """
        A step that fails half-way is rolled back: the file stays at its old
        version with its old tables, and start-up is refused with one line.
        """
        build_v1(self.path, [("a", 1, 1.0, "http")])

        def broken(db):
            db.execute("CREATE TABLE half (x)")
            db.execute("INSERT INTO nowhere VALUES (1)")

        self.patch(store, "UPGRADES", store.UPGRADES + [broken])
        error = self.assertRaises(UnusableDatabase, Store.open, self.path, 10)
        self.assertIn("no such table: nowhere", str(error))
        self.assertEqual(pragma(self.path, "user_version"), len(UPGRADES))
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0], 0)

    def test_version_0_with_our_mark_is_created(self):
        """
        A file marked as ours at version 0 (nothing else in it) gets the
        whole schema.
        """
        db = sqlite3.connect(self.path)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.close()
        opened = Store.open(self.path, 10)
        self.addCleanup(opened.close)
        opened.save_report("p", 1, 1.0, "http")
        self.assertEqual(opened.plugs(), [Plug("p", 1, 1.0)])


class QueryTests(SynchronousTestCase):
    """
    Every query of the store.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.store = Store.open(self.path, keep=3)
        self.addCleanup(self.store.close)

    def test_plugs_in_first_report_order(self):
        """
        plugs() lists each plug once, with its latest value and time, in the
        order the plugs first reported.
        """
        self.store.save_report("b", 1, 1.0, "http")
        self.store.save_report("a", 1, 2.0, "http")
        self.store.save_report("b", 0, 3.5, "device")
        self.assertEqual(self.store.plugs(), [Plug("b", 0, 3.5), Plug("a", 1, 2.0)])

    def test_history_newest_first_with_source(self):
        """
        history() lists one plug's reports newest first, with value, time and
        source, at most limit of them.
        """
        self.store.save_report("a", 1, 1.0, "http")
        self.store.save_report("b", 1, 1.5, "http")
        self.store.save_report("a", 0, 2.0, "device")
        self.assertEqual(self.store.history("a", 10), [HistoryEntry(0, 2.0, "device"), HistoryEntry(1, 1.0, "http")])
        self.assertEqual(self.store.history("a", 1), [HistoryEntry(0, 2.0, "device")])
        self.assertEqual(self.store.history("nobody", 10), [])

    def test_publications(self):
        """
        Publications are stored per event with the event's epoch and newest
        offset, read back oldest first; each event keeps its newest keep
        publications and none made before oldest, while its epoch and
        offset stay when none is left.
        """
        for offset in range(1, 6):
            self.store.save_publication("a", "EA", offset, str(offset), float(offset), 3, 0.0)
        self.store.save_publication("b", "EB", 1, '{"x":1}', 1.0, 3, 0.0)
        self.assertEqual(
            self.store.streams(),
            [("a", "EA", 5, [(3, "3", 3.0), (4, "4", 4.0), (5, "5", 5.0)]), ("b", "EB", 1, [(1, '{"x":1}', 1.0)])],
        )
        self.store.save_publication("a", "EA", 7, "7", 10.0, 3, 9.0)
        self.store.save_publication("b", "EB", 2, "2", 20.0, 3, 20.5)
        self.assertEqual(self.store.streams(), [("a", "EA", 7, [(7, "7", 10.0)]), ("b", "EB", 2, [])])

    def test_history_bound_per_plug(self):
        """
        Each plug keeps only its newest `keep` entries; a busy plug does not
        push out another plug's history.
        """
        self.store.save_report("quiet", 1, 0.5, "http")
        for n in range(10):
            self.store.save_report("busy", n % 2, float(n), "http")
        self.assertEqual([e.at for e in self.store.history("busy", 100)], [9.0, 8.0, 7.0])
        self.assertEqual(self.store.history("quiet", 100), [HistoryEntry(1, 0.5, "http")])
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT count(*) FROM history").fetchone()[0], 4)

    def test_bound_holds_through_refusals_and_groups(self):
        """
        The bound stays exact when a report is refused (its transaction
        rolled back) and when reports are committed together in one
        transaction (L{Store.write_together}), however many there are.
        """
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        for n in range(3):
            self.store.save_report("p", 1, float(n), "http")
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON history WHEN NEW.at = 99 BEGIN SELECT RAISE(ABORT, 'no'); END")
        db.commit()
        self.assertRaises(sqlite3.IntegrityError, self.store.save_report, "p", 0, 99.0, "http")
        self.store.save_report("p", 0, 3.0, "http")
        self.assertEqual([e.at for e in self.store.history("p", 10)], [3.0, 2.0, 1.0])
        outcomes = self.store.write_together(
            [(self.store.save_report, ("p", 1, float(n), "http")) for n in range(4, 9)]
            + [(self.store.save_report, ("p", 1, 99.0, "http")), (self.store.save_report, ("p", 0, 10.0, "http"))]
        )
        self.assertEqual([o is None for o in outcomes], [True] * 5 + [False, True])
        self.assertEqual([e.at for e in self.store.history("p", 10)], [10.0, 8.0, 7.0])
        self.assertEqual(db.execute("SELECT count(*) FROM history").fetchone()[0], 3)

    def test_lower_bound_trims_on_next_report(self):
        """
        After HISTORY_KEEP is lowered, the next report of a plug trims its
        history to the new bound.
        """
        for n in range(3):
            self.store.save_report("p", 1, float(n), "http")
        self.store.close()
        smaller = Store.open(self.path, keep=1)
        self.addCleanup(smaller.close)
        smaller.save_report("p", 0, 9.0, "http")
        self.assertEqual(smaller.history("p", 10), [HistoryEntry(0, 9.0, "http")])

    def test_display(self):
        """
        No display state is recorded at first; the last one saved is read
        back, in each of its modes.
        """
        self.assertIsNone(self.store.display())
        for display in [Display(2, color=(255, 65, 174), pulse=3), Display(1, weather=9, intensity=0), Display()]:
            self.store.save_display(display)
            self.assertEqual(self.store.display(), display)

    def test_last_on(self):
        """
        Each display state saved records, in the same statement, what it
        sets of the last state that was on and the last colour; off keeps
        them.  Nothing is remembered at first.
        """
        self.assertEqual(last_on(self.store), (None, None))
        red = Display(2, color=(255, 0, 0), pulse=4)
        rain = Display(1, weather=5, intensity=9)
        self.store.save_display(red)
        self.assertEqual(last_on(self.store), (red, red))
        self.store.save_display(rain)
        self.store.save_display(Display())
        self.assertEqual((self.store.display(), last_on(self.store)), (Display(), (rain, red)))

    def test_last_on_not_valid_ignored(self):
        """
        A last state on or last colour that is not a valid state of its kind
        (edited by hand: not a state, off, a weather as the last colour) is
        left out and said, not taken: a bare ON would give off, a new colour
        a packet with no pulse.  It is only remembered, so it does not stop
        the server as an unusable display state does.
        """
        self.store.save_display(Display(2, color=(1, 2, 3), pulse=4))
        red = Display(2, color=(1, 2, 3), pulse=4)
        for column, value, kept, why in (
            ("last_colour", '{"mode": 2, "color": [1, 2], "pulse": 0}', LastOn(red, None),
             "the last colour is not valid (color must be a list of three whole numbers"),
            ("last_colour", "not json", LastOn(red, None), "the last colour is not valid ("),
            ("last_on", '{"mode": 0}', LastOn(None, red), "the last display state that was on is not a state that is on"),
            ("last_colour", '{"mode": 1, "weather": 2, "intensity": 3}', LastOn(red, None),
             "the last colour is not a colour"),
        ):
            db = sqlite3.connect(self.path)
            db.execute(f"UPDATE display SET {column} = ?", (value,))
            db.commit()
            db.close()
            remembered, ignored = self.store.last_on()
            self.assertEqual(remembered, kept)
            self.assertEqual(len(ignored), 1)
            self.assertTrue(ignored[0].startswith(why), ignored)
            self.store.save_display(red)

    def test_invalid_display_row(self):
        """
        A display row that is not a valid state (edited by hand) is refused
        with one line naming the file, not taken as the display.
        """
        db = sqlite3.connect(self.path)
        db.execute("""INSERT INTO display (only, state) VALUES (1, '{"mode": 2, "color": [999, 0, 0], "pulse": 0}')""")
        db.commit()
        db.close()
        error = self.assertRaises(UnusableDatabase, self.store.display)
        self.assertIn(self.path, str(error))
        self.assertIn("color", str(error))

    def test_report_all_or_nothing(self):
        """
        If any part of recording a report fails, none of it is kept: the
        plug's state stays as it was.
        """
        self.store.save_report("p", 1, 1.0, "http")
        db = sqlite3.connect(self.path)
        db.execute(
            "CREATE TRIGGER full BEFORE INSERT ON history BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        db.commit()
        db.close()
        error = self.assertRaises(sqlite3.Error, self.store.save_report, "p", 0, 2.0, "http")
        self.assertIn("disk full", str(error))
        self.assertEqual(self.store.plugs(), [Plug("p", 1, 1.0)])
        self.assertEqual(self.store.history("p", 10), [HistoryEntry(1, 1.0, "http")])


def dump(path: str) -> dict:
    """
    Every row of every table of the store at C{path} (with its C{seq},
    where the table has one: the order rows were added in).
    """
    db = sqlite3.connect(path)
    try:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {table: sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in tables}
    finally:
        db.close()


@st.composite
def write_lists(draw):
    """
    Writes as the journal queues them: reports of a few plugs, with or
    without their publication of C{smartplug}, publications of two
    events, display states; offsets rising per event, clocks forward.
    """
    offsets = {"smartplug": 0, "other": 0}
    writes = []
    for n in range(draw(st.integers(1, 40))):
        at = 1000.0 + n
        kind = draw(st.sampled_from(["report", "report", "published report", "publication", "display"]))
        keep, window = draw(st.sampled_from([(2, 5.0), (3, 100.0), (100, 3.0)]))
        if kind == "display":
            writes.append(("save_display", (Display(2, color=(n % 256, 0, 0), pulse=0),)))
            continue
        event = "smartplug" if kind != "publication" else draw(st.sampled_from(["smartplug", "other"]))
        offsets[event] += 1
        publication = (event, "epoch", offsets[event], f'"{n}"', at, keep, at - window)
        if kind == "publication":
            writes.append(("save_publication", publication))
            continue
        report = (draw(st.sampled_from(["a", "b", "c"])), n % 2, at, "http")
        writes.append(("save_report", report + ((publication,) if kind == "published report" else ())))
    return writes


class GroupTests(SynchronousTestCase):
    """
    Writes committed together (L{Store.write_together}) leave the database
    exactly as the same writes committed one by one.
    """

    @settings(max_examples=150, deadline=None)
    @given(write_lists(), st.integers(1, 4), st.sampled_from([2, 5]))
    def test_together_same_as_one_by_one(self, writes, groups, keep):
        directory = self.mktemp()
        os.mkdir(directory)
        paths = [os.path.join(directory, name) for name in ("alone.sqlite", "together.sqlite")]
        alone, together = (Store.open(path, keep=keep) for path in paths)
        try:
            for name, args in writes:
                getattr(alone, name)(*args)
            size = -(-len(writes) // groups)
            for start in range(0, len(writes), size):
                outcomes = together.write_together(
                    [(getattr(together, name), args) for name, args in writes[start:start + size]]
                )
                self.assertEqual(outcomes, [None] * len(outcomes))
        finally:
            alone.close()
            together.close()
        self.assertEqual(dump(paths[1]), dump(paths[0]))

    def test_a_group_costs_a_few_statements(self):
        """
        Sixteen reports of eight plugs with their publications are recorded
        with one statement, not several per report: each statement the
        writer thread runs hands the interpreter lock back and forth.  Once
        the plugs' counts are known, that statement is the whole commit.
        """
        path = self.mktemp()
        group_store = Store.open(path, keep=100)
        self.addCleanup(group_store.close)
        run = CountingConnection(group_store._db)
        group_store._db = run
        group_store.write_together([
            (group_store.save_report, (f"p{n % 8}", n % 2, float(n), "http",
                                       ("smartplug", "e", n + 1, "{}", float(n), 100, 0.0)))
            for n in range(16)
        ])
        # BEGIN, the rows, a count per plug (the first time only), COMMIT.
        self.assertEqual(run.statements, ["BEGIN IMMEDIATE", "INSERT INTO incoming"]
                         + ["SELECT count(*) FROM history WHERE plug_id = ?"] * 8 + ["COMMIT"])
        run.statements.clear()
        group_store.write_together([(group_store.save_report, ("p0", 1, 20.0, "http")),
                                    (group_store.save_publication, ("other", "e", 1, "{}", 20.0, 100, 0.0)),
                                    (group_store.save_report, ("p1", 1, 20.0, "http"))])
        # Plugs whose count is known and within the bound: the INSERT alone,
        # a transaction of its own.
        self.assertEqual(run.statements, ["INSERT INTO incoming"])
        self.assertFalse(group_store._db.in_transaction)
        self.assertEqual(len(group_store.history("p0", 100)), 3)
        self.assertEqual(group_store.streams()[0][:3], ("other", "e", 1))


    def test_big_group_with_a_refusal(self):
        """
        A group larger than one INSERT takes, with one report SQLite
        refuses: the others are recorded once each and the refused one not
        at all (no part of the group stays committed before the retry).
        """
        path = self.mktemp()
        big = Store.open(path, keep=10000)
        self.addCleanup(big.close)
        for plug in ("p", "q"):
            big.save_report(plug, 0, 0.5, "http")
        big._db.execute(
            "CREATE TEMP TRIGGER refuse BEFORE INSERT ON history WHEN NEW.at = 99 BEGIN SELECT RAISE(ABORT, 'no'); END")
        writes = [(big.save_report, ("pq"[n % 2], n % 2, 100.0 + n, "http")) for n in range(store.ROWS_PER_INSERT + 10)]
        writes[store.ROWS_PER_INSERT + 5] = (big.save_report, ("p", 1, 99.0, "http"))
        outcomes = big.write_together(writes)
        self.assertEqual([n for n, o in enumerate(outcomes) if o is not None], [store.ROWS_PER_INSERT + 5])
        self.assertEqual(len(big.history("p", 10000)) + len(big.history("q", 10000)), 2 + len(writes) - 1)

    def test_failed_commit_forgets_counts(self):
        """
        A report whose COMMIT fails is rolled back, and the plug's count of
        history entries with it: the bound stays exact afterwards.
        """
        path = self.mktemp()
        bounded = Store.open(path, keep=3)
        self.addCleanup(bounded.close)
        for n in range(2):
            bounded.save_report("p", 1, float(n), "http")
        real = bounded._db
        bounded._db = FailingCommit(real)
        self.assertRaises(sqlite3.OperationalError, bounded.save_report, "p", 0, 5.0, "http")
        bounded._db = real
        for n in range(6, 9):
            bounded.write_together([(bounded.save_report, ("p", 1, float(n), "http")),
                                    (bounded.save_report, ("p", 0, n + 0.5, "http"))])
        self.assertEqual([e.at for e in bounded.history("p", 10)], [8.5, 8.0, 7.5])

    def test_new_epoch_replaces_the_old(self):
        """
        When an event's offsets begin again under a new epoch, nothing of
        the old epoch stays stored, alone or in a group, even where the
        epoch changes inside the group.
        """
        path = self.mktemp()
        epochs = Store.open(path, keep=100)
        self.addCleanup(epochs.close)
        for offset in range(1, 6):
            epochs.save_publication("a", "old", offset, str(offset), float(offset), 3, 0.0)
        epochs.save_publication("a", "new", 1, "n1", 10.0, 3, 0.0)
        self.assertEqual(epochs.streams(), [("a", "new", 1, [(1, "n1", 10.0)])])
        epochs.write_together([(epochs.save_publication, ("a", "new", n, f"n{n}", 10.0 + n, 3, 0.0)) for n in (2, 3, 4)]
                              + [(epochs.save_publication, ("a", "newer", n, f"m{n}", 20.0 + n, 3, 0.0)) for n in (1, 2)])
        self.assertEqual(epochs.streams(), [("a", "newer", 2, [(1, "m1", 21.0), (2, "m2", 22.0)])])


class FailingCommit:
    """
    A connection whose COMMITs fail (no room for the log), as SQLite's can.
    """

    def __init__(self, db) -> None:
        self._db = db

    def execute(self, sql: str, *args):
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._db, name)


class CountingConnection:
    """
    A connection that notes each statement run through C{execute} (up to
    its values).
    """

    def __init__(self, db) -> None:
        self._db = db
        self.statements: list = []

    def execute(self, sql: str, *args):
        self.statements.append(sql.split(" VALUES")[0])
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._db, name)


class FullDiskTests(SynchronousTestCase):
    """
    The state database on a 2 MiB tmpfs that fills up (issue 11): writes
    fail while it is full and heal by themselves once there is room; a full
    disk at start-up is told apart from a damaged file.
    """

    def setUp(self):
        self.directory = small_disk(self)
        self.path = os.path.join(self.directory, "state.sqlite")

    def write_until_full(self, db: Store) -> sqlite3.Error:
        for i in range(2000):
            try:
                db.save_report(f"plug{i % 20}", i % 2, float(i), "http")
            except sqlite3.Error as e:
                return e
        self.fail("2000 reports fitted on the small disk")

    def test_heals_once_there_is_room(self):
        """
        Once the disk is full a report fails (an SQLite disk error, nothing
        kept); after a little room is freed, the next reports all succeed:
        the write-ahead log that filled the disk is emptied into the
        database and gives its space back.
        """
        db = Store.open(self.path, 10000)
        self.addCleanup(db.close)
        filler = fill(self.directory, leave=400 * 1024)
        error = self.write_until_full(db)
        self.assertTrue(store.disk_trouble(error), error)
        self.assertRaises(sqlite3.Error, db.save_report, "late", 1, 1.0, "http")
        self.assertIsNone(next((p for p in db.plugs() if p.id == "late"), None))
        release(filler, 64 * 1024)
        for i in range(200):
            db.save_report("after", i % 2, float(i), "http")
        self.assertEqual(len(db.history("after", 1000)), 200)
        db.save_display(Display(2, color=(1, 2, 3), pulse=4))
        self.assertEqual(db.display(), Display(2, color=(1, 2, 3), pulse=4))

    def test_full_disk_at_start_up(self):
        """
        A good database on a disk with no room left is refused at start-up as
        a disk problem (DiskTrouble, with the free space), never as a
        damaged or foreign file; once there is room it opens with its data.
        """
        db = Store.open(self.path, 10000)
        db.save_report("0xb00bf0cc", 1, 1.0, "http")
        db.close()
        filler = fill(self.directory)
        with self.assertRaises(store.DiskTrouble) as caught:
            Store.open(self.path, 10000)
        message = str(caught.exception)
        self.assertNotIn("damaged", message)
        self.assertNotIn("not an SQLite", message)
        self.assertIn("bytes free on its file system", message)
        self.assertIn("make room", message)
        os.remove(filler)
        db = Store.open(self.path, 10000)
        self.addCleanup(db.close)
        self.assertEqual([p.id for p in db.plugs()], ["0xb00bf0cc"])

    def test_disk_trouble_codes(self):
        """
        Disk errors (full, I/O, read-only, cannot open) count as disk
        trouble; a file that is not a database does not.
        """
        with open(self.path, "wb") as f:
            f.write(b"not a database at all" * 100)
        db = store.connect(self.path)
        self.addCleanup(db.close)
        with self.assertRaises(sqlite3.DatabaseError) as caught:
            db.execute("PRAGMA user_version").fetchone()
        self.assertFalse(store.disk_trouble(caught.exception))
        self.assertFalse(store.disk_trouble(ValueError("x")))


class LogSizeTests(SynchronousTestCase):
    """
    The write-ahead log's length follows the room on the database's disk:
    SQLite's default of 1000 pages while there is room, copies every 80
    pages on a nearly full disk, on real file systems.
    """

    def report_many(self, db: Store, count: int) -> None:
        # Reports of twenty plugs, four to a group, as the server's writer
        # sends them.
        for n in range(0, count, 4):
            outcomes = db.write_together(
                [(db.save_report, (f"plug{i % 20}", i % 2, float(i), "http")) for i in range(n, n + 4)])
            self.assertEqual(outcomes, [None] * 4)

    def log_pages(self, path: str) -> int:
        """
        Pages of log now in the file beside the database at C{path}.
        """
        return os.path.getsize(path + "-wal") // 4096

    def pragmas(self, db: Store) -> tuple:
        """
        The store's log length as its connection has it: C{(log_pages,
        wal_autocheckpoint, journal_size_limit)}.
        """
        return (db.log_pages, db._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
                db._db.execute("PRAGMA journal_size_limit").fetchone()[0])

    def room(self, free: int) -> None:
        """
        From now on the store sees C{free} bytes free on its disk.
        """
        self.patch(store, "disk_room", lambda directory: free)

    def test_long_log_with_room(self):
        """
        On a disk with room (this test's temporary directory) the log grows
        past 80 pages before SQLite copies it into the database.
        """
        path = self.mktemp()
        free = store.disk_room(".")
        self.assertGreaterEqual(free, store.ROOMY_DISK, "the test needs a disk with 128 MiB free")
        db = Store.open(path, 10000)
        self.addCleanup(db.close)
        self.assertEqual(self.pragmas(db), (1000, 1000, -1))
        self.report_many(db, 800)
        self.assertGreater(self.log_pages(path), 300)

    def test_short_log_on_a_nearly_full_disk(self):
        """
        A 200 MiB disk: the long log while more than 64 MiB are free; below
        that the log file is cut back to 512 KiB within a few writes and then
        kept under 80 pages and a group; once 128 MiB are free again, the
        long log is back.  Between the two thresholds the log stays as it
        was.
        """
        directory = small_disk(self, "200m")
        path = os.path.join(directory, "state.sqlite")
        db = Store.open(path, 10000)
        self.addCleanup(db.close)
        self.assertEqual(db.log_pages, 1000)
        filler = fill(directory, leave=96 * 1024 * 1024)
        self.report_many(db, 800)
        self.assertEqual(db.log_pages, 1000)
        self.assertGreater(self.log_pages(path), 300)
        os.remove(filler)
        filler = fill(directory, leave=32 * 1024 * 1024)
        self.report_many(db, 4)
        self.assertEqual(self.pragmas(db), (80, 80, 512 * 1024))
        self.report_many(db, 40)
        self.assertLessEqual(self.log_pages(path), 128)
        self.report_many(db, 800)
        self.assertLessEqual(self.log_pages(path), 128)
        release(filler, 80 * 1024 * 1024)
        self.report_many(db, 4)
        self.assertEqual(db.log_pages, 80)
        release(filler, 32 * 1024 * 1024)
        self.report_many(db, 800)
        self.assertEqual(self.pragmas(db), (1000, 1000, -1))
        self.assertGreater(self.log_pages(path), 300)
        # Every report is kept: 40 of each plug per 800, 2 per 40, and one
        # of plugs 0-3 per 4.
        self.assertEqual(len(db.history("plug3", 10000)), 3 * 40 + 2 + 2)
        self.assertEqual(len(db.history("plug4", 10000)), 3 * 40 + 2)

    def test_short_log_waits_for_no_reader(self):
        """
        A backup reading the database when the disk gets nearly full does
        not hold up the writes: they are committed together, as ever, and
        the log file is cut back once the reader is done.
        """
        self.room(200 << 20)
        path = self.mktemp()
        db = Store.open(path, 10000)
        self.addCleanup(db.close)
        self.report_many(db, 800)
        reader = store.connect(path)
        self.addCleanup(reader.close)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM history").fetchone()
        self.room(32 << 20)
        # A checkpoint that waits for readers (TRUNCATE, RESTART or FULL)
        # would hold the writes up for SQLite's busy timeout, 5 s.
        statements = []
        db._db.set_trace_callback(statements.append)
        self.report_many(db, 40)
        db._db.set_trace_callback(None)
        self.assertEqual([s for s in statements if "wal_checkpoint" in s], [])
        self.assertEqual(db.log_pages, 80)
        self.assertFalse(db.needs_checkpoint)
        # Not cut back yet: the reader still reads the old log.
        self.assertGreater(self.log_pages(path), 300)
        reader.execute("COMMIT")
        self.report_many(db, 40)
        self.assertLessEqual(self.log_pages(path), 128)

    def test_long_log_left_from_before_a_restart(self):
        """
        A store opened on a nearly full disk next to a long log left by a
        server that was killed cuts that log back within a few writes, and
        keeps every report in it.
        """
        self.room(200 << 20)
        path = self.mktemp()
        db = Store.open(path, 10000)
        self.addCleanup(db.close)
        self.report_many(db, 800)
        self.assertGreater(self.log_pages(path), 300)
        # What a kill -9 leaves: the database and its log, not yet copied.
        killed = self.mktemp()
        shutil.copyfile(path, killed)
        shutil.copyfile(path + "-wal", killed + "-wal")
        self.room(32 << 20)
        again = Store.open(killed, 10000)
        self.addCleanup(again.close)
        self.assertEqual(again.log_pages, 80)
        self.assertEqual(len(again.history("plug0", 10000)), 40)
        self.report_many(again, 40)
        self.assertLessEqual(self.log_pages(killed), 128)
        self.assertEqual(len(again.history("plug0", 10000)), 42)

    def test_short_log_when_opened_between_thresholds(self):
        """
        Opened with 64-128 MiB free, the store keeps the short log: it is
        safe, and the disk may be filling up.
        """
        directory = small_disk(self, "100m")
        db = Store.open(os.path.join(directory, "state.sqlite"), 10000)
        self.addCleanup(db.close)
        self.assertEqual(db.log_pages, 80)
        self.assertTrue(store.LOW_DISK <= db.log_free < store.ROOMY_DISK, db.log_free)

    def test_room_unknown(self):
        """
        When the room on the disk cannot be told, the log stays as it is.
        """
        self.room(200 << 20)
        db = Store.open(self.mktemp(), 10000)
        self.addCleanup(db.close)
        self.room(None)
        db.fit_log()
        self.assertEqual((db.log_pages, db.log_free), (1000, None))

    def test_disk_size(self):
        """
        The store knows the most room its disk can have: about the size of
        a 100 MiB disk, even when it is nearly full.
        """
        directory = small_disk(self, "100m")
        fill(directory, leave=1 << 20)
        db = Store.open(os.path.join(directory, "state.sqlite"), 10000)
        self.addCleanup(db.close)
        self.assertTrue(99 << 20 <= db.disk_size <= 100 << 20, db.disk_size)
        self.assertLess(store.disk_room(directory), 2 << 20)
        self.assertGreater(store.disk_size("."), store.ROOMY_DISK)
        self.assertIsNone(store.disk_size(os.path.join(directory, "nowhere")))

    def test_room_of_the_linked_file(self):
        """
        When STATE_DB is a link, the room is that of the disk the database
        is on, not the link's.
        """
        directory = small_disk(self, "100m")
        target = os.path.join(directory, "state.sqlite")
        link = os.path.abspath(self.mktemp())
        self.assertGreaterEqual(store.disk_room(os.path.dirname(link)), store.ROOMY_DISK,
                                "the test needs a disk with 128 MiB free")
        os.symlink(target, link)
        db = Store.open(link, 10000)
        self.addCleanup(db.close)
        self.assertEqual(db.log_pages, 80)
        self.assertTrue(os.path.exists(target + "-wal"))


class ReadOnlyTests(SynchronousTestCase):
    """
    A database the server may read but not write is refused at open, with
    what to fix, rather than found out at the first report.
    """

    def test_read_only_file_refused_at_open(self):
        """
        A store file of mode 0444, opened by a process that may not override
        file modes, is refused: the error names the file, its -wal and -shm
        and their directory, and blames permissions, not the disk's room.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "state.sqlite")
        Store.open(path, 10).close()
        os.chmod(path, 0o444)
        # Root writes any file: drop its power to override file modes for
        # the child that opens the store (util-linux's setpriv, a Debian
        # essential).
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
        code = (
            "import sys\n"
            "from smartplug_backend.state.store import Store, DiskTrouble\n"
            "try:\n"
            "    Store.open(sys.argv[1], 10)\n"
            "except DiskTrouble as e:\n"
            "    print(e)\n"
            "else:\n"
            "    print('opened')\n"
        )
        result = subprocess.run(prefix + [sys.executable, "-c", code, path], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.stderr, "")
        self.assertIn(f"{path} cannot be written (attempt to write a readonly database)", result.stdout)
        self.assertIn(f"let the server's user write {path}, its -wal and -shm files beside it and their directory "
                      f"{directory}", result.stdout)
        self.assertNotIn("bytes free", result.stdout)
