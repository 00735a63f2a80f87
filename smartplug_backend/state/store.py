"""
The state database (SPEC 7): SQLite schema, its upgrades, and every query.

Plain synchronous code on one C{sqlite3} connection.  The server runs it on a
single writer thread (L{smartplug_backend.state.persistence}); the backup command
runs it directly.  Nothing here knows about Twisted.

The file is recognised by its SQLite application id, and its schema version
is C{PRAGMA user_version}.  A file that is not one of ours, is damaged, or
comes from a newer version is refused with L{UnusableDatabase} before a
single byte of it is written.
"""

import contextlib
import json
import os
import sqlite3
from typing import Callable, Iterator, Optional

from ..core.display import NEVER_ON, Display, InvalidDisplay, LastOn, remembered, validate_display
from ..core.history import new_epoch
from ..core.hub import Plug
from ..core.journal import HistoryEntry
from ..core.limits import LOW_DISK, ROOMY_DISK, WAL_BYTES_LOW_DISK, WAL_PAGES, WAL_PAGES_LOW_DISK

# "SmPg": marks the file as ours (PRAGMA application_id, bytes 68-71).
APPLICATION_ID = 0x536D5067
# Rows one INSERT writes at most (11 values each: well below SQLite's limit
# of 32766 parameters).
ROWS_PER_INSERT = 250

# Reports and publications go in as rows of this view, many rows to one
# INSERT; its trigger records each row as the separate statements would
# have (a report: its plug and a history entry; a publication: its event's
# epoch and newest offset, the publication, and its event's trim).  One
# statement for a whole group: each statement hands the interpreter lock to
# the reactor thread and back, which under load cost more than the SQL.
# TEMP: it lives in this connection only, never in the file.
#
# An event's row and its trim are written once per statement, on the last
# of its rows (the others have no "below"): the trim drops, like the history
# in memory (core/history.py), the oldest publications: those at or below
# "below" (the highest offset - keep of the rows) and then, up to the first
# made at or after "before" (the latest oldest time kept), those made
# before it.  Made in offset order, that is what trimming after each
# publication would have dropped; and both steps walk the primary key from
# the oldest kept on, not the whole event.  Anything above the newest offset
# is left from an earlier epoch of the event (its history was lost and its
# offsets began again) and goes too.
INCOMING = """
CREATE TEMP VIEW incoming (plug_id, value, at, source, event, epoch, offset, data, created_at, below, before)
    AS SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL;
CREATE TEMP TRIGGER incoming_row INSTEAD OF INSERT ON incoming BEGIN
    INSERT OR REPLACE INTO pubsub_history (event, offset, data, created_at)
        SELECT NEW.event, NEW.offset, NEW.data, NEW.created_at WHERE NEW.event IS NOT NULL;
    INSERT INTO pubsub_events (event, epoch, latest)
        SELECT NEW.event, NEW.epoch, NEW.offset WHERE NEW.below IS NOT NULL
        ON CONFLICT (event) DO UPDATE SET epoch = excluded.epoch, latest = excluded.latest;
    DELETE FROM pubsub_history WHERE NEW.below IS NOT NULL AND event = NEW.event AND offset < coalesce(
        (SELECT offset FROM pubsub_history WHERE event = NEW.event AND offset > NEW.below
            AND created_at >= NEW.before ORDER BY offset LIMIT 1),
        NEW.offset + 1);
    DELETE FROM pubsub_history WHERE NEW.below IS NOT NULL AND event = NEW.event AND offset > NEW.offset;
    INSERT INTO plugs (id, value, updated_at)
        SELECT NEW.plug_id, NEW.value, NEW.at WHERE NEW.plug_id IS NOT NULL
        ON CONFLICT (id) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;
    INSERT INTO history (plug_id, value, at, source)
        SELECT NEW.plug_id, NEW.value, NEW.at, NEW.source WHERE NEW.plug_id IS NOT NULL;
END;
"""
_NO_REPORT = (None, None, None, None)
_NO_PUBLICATION = (None,) * 7
_ELEVEN = "(" + ", ".join("?" * 11) + ")"


class _Incoming:
    """
    Rows of the C{incoming} view for a run of reports and publications,
    built in one pass: each event's trim ("below" and "before", the highest
    of its rows since its epoch last changed) on its last row only, and how
    many history entries each plug gains.
    """

    __slots__ = ("rows", "added", "_events")

    def __init__(self) -> None:
        self.rows: list = []
        # plug id -> history entries added
        self.added: dict = {}
        # event -> (index of its last row, epoch, below, before)
        self._events: dict = {}

    def report(self, plug_id: str, value: int, at: float, source: str, publication: Optional[tuple] = None) -> None:
        self.added[plug_id] = self.added.get(plug_id, 0) + 1
        self._add((plug_id, value, at, source), publication)

    def publication(self, *publication) -> None:
        self._add(_NO_REPORT, publication)

    def _add(self, report: tuple, publication: Optional[tuple]) -> None:
        if publication is None:
            self.rows.append(report + _NO_PUBLICATION)
            return
        event, epoch, offset, data_json, created_at, keep, oldest = publication
        below = offset - keep
        known = self._events.get(event)
        if known is not None and known[1] == epoch:
            below, oldest = max(below, known[2]), max(oldest, known[3])
        self._events[event] = (len(self.rows), epoch, below, oldest)
        self.rows.append(report + (event, epoch, offset, data_json, created_at, None, None))

    def finished(self) -> list:
        """
        The rows, each event's trim on its last row.
        """
        rows = self.rows
        for n, _, below, before in self._events.values():
            rows[n] = rows[n][:9] + (below, before)
        self._events = {}
        return rows


def _v1(db: sqlite3.Connection) -> None:
    # plugs.seq keeps the order plugs first reported (GET /plugs lists them
    # so); an upsert keeps the row, and so its seq.
    db.execute(
        "CREATE TABLE plugs ("
        " seq INTEGER PRIMARY KEY,"
        " id TEXT NOT NULL UNIQUE,"
        " value INTEGER NOT NULL,"
        " updated_at REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE history ("
        " seq INTEGER PRIMARY KEY,"
        " plug_id TEXT NOT NULL,"
        " value INTEGER NOT NULL,"
        " at REAL NOT NULL,"
        " source TEXT NOT NULL)"
    )
    # Newest-first reads and the per-plug bound both walk this index.
    db.execute("CREATE INDEX history_by_plug ON history (plug_id, seq)")


def _v2(db: sqlite3.Connection) -> None:
    # The display state (issue 4) as GET /display shows it, minus the packet:
    # one row, JSON, read back through the same validation as POST /display.
    db.execute("CREATE TABLE display (only INTEGER PRIMARY KEY CHECK (only = 1), state TEXT NOT NULL)")


def _v3(db: sqlite3.Connection) -> None:
    # Pub/sub history (issue 14, SPEC 3.6): each event's epoch and newest
    # offset, which outlive its kept publications, and those publications,
    # their data as the JSON text the frames carry.
    db.execute(
        "CREATE TABLE pubsub_events ("
        " event TEXT PRIMARY KEY,"
        " epoch TEXT NOT NULL,"
        " latest INTEGER NOT NULL)"
    )
    db.execute(
        "CREATE TABLE pubsub_history ("
        " event TEXT NOT NULL,"
        " offset INTEGER NOT NULL,"
        " data TEXT NOT NULL,"
        " created_at REAL NOT NULL,"
        " PRIMARY KEY (event, offset)) WITHOUT ROWID"
    )


def _v4(db: sqlite3.Connection) -> None:
    # What the display was last when on (SPEC 12: a bare ON restores it) and
    # the last colour (a new colour keeps its pulse), JSON like the state,
    # NULL until known; written with the state that sets them.  A file from
    # before knows only its current state, which counts if it is on.
    db.execute("ALTER TABLE display ADD COLUMN last_on TEXT")
    db.execute("ALTER TABLE display ADD COLUMN last_colour TEXT")
    db.execute("UPDATE display SET last_on = state WHERE json_valid(state) AND json_extract(state, '$.mode') IN (1, 2)")
    db.execute("UPDATE display SET last_colour = state WHERE json_valid(state) AND json_extract(state, '$.mode') = 2")


# UPGRADES[n] brings a file from schema version n to n + 1.  Append only:
# a released step never changes, or files already past it would differ.
UPGRADES = [_v1, _v2, _v3, _v4]


class UnusableDatabase(Exception):
    """
    The file at STATE_DB cannot be used; it has not been changed.
    C{str(error)} is one line for a human.
    """


class DiskTrouble(UnusableDatabase):
    """
    The file at STATE_DB could not be read or written because of its disk
    (no space, an I/O error, permissions), not because of what it holds: it
    was not judged, and must not be thrown away.
    """


# SQLite's primary result codes that blame the disk or the file system, not
# the file's contents: PERM, READONLY, IOERR, FULL, CANTOPEN.
_DISK_CODES = frozenset({3, 8, 10, 13, 14})


def disk_trouble(error: BaseException) -> bool:
    """
    True when C{error} is an SQLite error about the disk (no space, I/O,
    permissions) rather than about the database's contents.
    """
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _DISK_CODES


def disk_of(path: str) -> str:
    """
    The directory the file C{path} is in, links followed: the file system
    SQLite writes it on.
    """
    return os.path.dirname(os.path.realpath(path))


def _statvfs(directory: str) -> Optional[os.statvfs_result]:
    try:
        return os.statvfs(directory)
    except OSError:
        return None


def disk_room(directory: str) -> Optional[int]:
    """
    The bytes free on the file system of C{directory}, or C{None} if that
    cannot be told.
    """
    stat = _statvfs(directory)
    return None if stat is None else stat.f_bavail * stat.f_frsize


def disk_size(directory: str) -> Optional[int]:
    """
    The most bytes the file system of C{directory} can ever have free for
    this server (its size less what is kept for root), or C{None} if that
    cannot be told.
    """
    stat = _statvfs(directory)
    return None if stat is None else (stat.f_blocks - (stat.f_bfree - stat.f_bavail)) * stat.f_frsize


# Of _DISK_CODES, those that blame permissions, not room: PERM, READONLY,
# CANTOPEN.
_PERMISSION_CODES = frozenset({3, 8, 14})


def disk_advice(error: BaseException, path: str) -> str:
    """
    What the owner should do about C{error}, a L{disk_trouble} error with
    the file C{path}: fix permissions, or make room on the disk.
    """
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF
    if code in _PERMISSION_CODES:
        return (f"let the server's user write {path}, its -wal and -shm files beside it and their directory "
                f"{disk_of(path)}, and start again")
    return "make room on its disk (or fix the disk) and start again"


def disk_detail(error: BaseException, path: str) -> str:
    """
    C{error}'s text, with the free space on the disk of C{path} when the
    disk may be full.
    """
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF
    return f"{error}" if code in _PERMISSION_CODES else f"{error}{free_space(path)}"


def free_space(path: str) -> str:
    """
    ", N bytes free on its file system" for the file system of C{path}, or
    "" if that cannot be told.
    """
    free = disk_room(disk_of(path))
    return "" if free is None else f", {free} bytes free on its file system"


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    if db.in_transaction:
        # One write of a group commit (Store.write_together), which begins,
        # commits or rolls back the transaction they share.
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        # A COMMIT that fails (no room for the log) leaves the transaction
        # open: it is rolled back below, or every later BEGIN would fail.
        db.execute("COMMIT")
    except BaseException:
        # SQLite rolls some failures back by itself (a full disk among
        # them); a second ROLLBACK would fail and hide the first error.
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


def connect(path: str) -> sqlite3.Connection:
    """
    A connection to C{path} in autocommit mode (transactions are explicit).

    It may be handed to another thread, as long as one thread at a time
    uses it.
    """
    return sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)


def check(db: sqlite3.Connection, path: str) -> int:
    """
    Make sure C{db} is a smartplug state database this version can use,
    reading only.

    @return: its schema version; 0 for a new, empty file.
    @raise UnusableDatabase: for a foreign, damaged or newer file.
    """
    try:
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        objects = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if application_id == 0 and version == 0 and objects == 0:
            return 0
        if application_id != APPLICATION_ID:
            raise UnusableDatabase(f"{path} is not a smartplug state database (another program's SQLite file)")
        if version > len(UPGRADES):
            raise UnusableDatabase(
                f"{path} was written by a newer smartplug (schema {version}, this one knows up to "
                f"{len(UPGRADES)})"
            )
        problem = damage(db, thorough=False)
    except sqlite3.DatabaseError as e:
        if disk_trouble(e):
            raise DiskTrouble(
                f"{path} cannot be read ({disk_detail(e, path)}); its contents were not checked and it is "
                f"left untouched: {disk_advice(e, path)}"
            ) from None
        raise UnusableDatabase(f"{path} is damaged or not an SQLite database ({e})") from None
    if problem:
        raise UnusableDatabase(f"{path} is damaged ({problem})")
    return version


def damage(db: sqlite3.Connection, thorough: bool = True) -> str:
    """
    The first problem SQLite's own check finds in C{db}, as one line, or ""
    if there is none.  C{thorough=False} runs the faster C{quick_check}.
    """
    pragma = "integrity_check" if thorough else "quick_check"
    report = db.execute(f"PRAGMA {pragma}(1)").fetchone()[0]
    if report == "ok":
        return ""
    lines = [line for line in report.splitlines() if not line.startswith("***")]
    return (lines or [report])[0]


def upgrade(db: sqlite3.Connection, version: int) -> None:
    """
    Bring a checked database from schema C{version} to the newest, one
    transaction per step, so a crash leaves it at some whole version.
    """
    for step in range(version, len(UPGRADES)):
        with _transaction(db):
            if step == 0:
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            UPGRADES[step](db)
            db.execute(f"PRAGMA user_version = {step + 1}")


def renew_epochs(db: sqlite3.Connection) -> None:
    """
    Give every pub/sub event in C{db} a new epoch, keeping its offsets: its
    history is not the one clients saw (a restored backup), so none of them
    may recover across it (SPEC 3.6).  Nothing for a file before schema 3.
    """
    if db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'pubsub_events'").fetchone()[0] == 0:
        return
    with _transaction(db):
        events = [row[0] for row in db.execute("SELECT event FROM pubsub_events")]
        db.executemany("UPDATE pubsub_events SET epoch = ? WHERE event = ?", [(new_epoch(), e) for e in events])


def _json(display: Optional[Display]) -> Optional[str]:
    """
    A display state as recorded: JSON as C{GET /display} shows it, without
    the packet (L{validate_display} reads it back); C{None} stays C{None}.
    """
    if display is None:
        return None
    state = display.as_json()
    del state["packet"]
    return json.dumps(state)


class Store:
    """
    The state database, open and at the newest schema.

    @param keep: history entries kept per plug (C{HISTORY_KEEP}).
    @param path: the file, for messages.
    """

    def __init__(self, db: sqlite3.Connection, keep: int, path: str) -> None:
        self._db = db
        self._keep = keep
        self._path = path
        # plug id -> its number of history entries, as far as known
        self._counts: dict[str, int] = {}
        # Set while a write has failed for want of disk and the log could
        # not be emptied since: the next write empties it first.
        self.needs_checkpoint = False
        # Pages of log after which SQLite copies it into the database
        # (fit_log); Store.open sets the short log's.
        self.log_pages = WAL_PAGES_LOW_DISK
        # Bytes free on the disk when fit_log last looked, if it could tell.
        self.log_free: Optional[int] = None
        # (schema, where): the file was at that older schema when opened,
        # and is kept as it was there (Store.open's before_upgrade).
        self.upgraded_from: Optional[tuple[int, str]] = None
        self._disk = disk_of(path)
        # The most room the disk can have (disk_size): one smaller than
        # ROOMY_DISK never gets the long log back.
        self.disk_size = disk_size(self._disk)

    @property
    def path(self) -> str:
        """
        The database file, as C{STATE_DB} names it.
        """
        return self._path

    @classmethod
    def open(cls, path: str, keep: int, before_upgrade: Optional[Callable[[int], str]] = None) -> "Store":
        """
        Open (creating it if need be) and upgrade the database at C{path}.

        @param before_upgrade: called with the file's schema before a file
            at an older one is upgraded (older versions refuse the upgraded
            file): keeps it as it is, returns where (see
            L{upgraded_from}), or raises L{UnusableDatabase}, and then the
            file is not upgraded.

        @raise UnusableDatabase: if the file cannot be used; it is not changed.
        """
        if os.path.isdir(path):
            raise UnusableDatabase(f"{path} is a directory, not a database file")
        try:
            db = connect(path)
        except sqlite3.Error as e:
            raise UnusableDatabase(f"{path} cannot be opened ({e})") from None
        try:
            try:
                version = check(db, path)
            except DiskTrouble:
                raise
            except UnusableDatabase as e:
                raise UnusableDatabase(f"{e}; left untouched: move it away or point STATE_DB at another file") from None
            kept = None
            if before_upgrade is not None and 0 < version < len(UPGRADES):
                kept = before_upgrade(version)
            # WAL: readers (the backup) never block the writer, and a commit
            # is one append.  Set on every open: a restored backup has none.
            db.execute("PRAGMA journal_mode = WAL")
            # The short log until the disk is known to have room (fit_log).
            db.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES_LOW_DISK}")
            db.execute(f"PRAGMA journal_size_limit = {WAL_BYTES_LOW_DISK}")
            upgrade(db, version)
            # FULL: a commit is on disk, not only in the OS's cache, before
            # the HTTP 200 goes out; a power cut then loses nothing either.
            db.execute("PRAGMA synchronous = FULL")
            # The incoming view's schema in memory, not in a temporary file.
            db.execute("PRAGMA temp_store = MEMORY")
            db.executescript(INCOMING)
            # A file the server may read but not write (its mode, or a -shm
            # file left by another user) would refuse every report later:
            # refuse it now.  The header's own version, written back
            # unchanged and rolled back, changes nothing.
            db.execute("BEGIN IMMEDIATE")
            try:
                (user_version,) = db.execute("PRAGMA user_version").fetchone()
                db.execute(f"PRAGMA user_version = {int(user_version)}")
            finally:
                # SQLite may have rolled back already (its error then is
                # the one to tell).
                if db.in_transaction:
                    db.execute("ROLLBACK")
        except sqlite3.Error as e:
            db.close()
            if disk_trouble(e):
                raise DiskTrouble(
                    f"{path} cannot be written ({disk_detail(e, path)}); it is left untouched: "
                    f"{disk_advice(e, path)}"
                ) from None
            raise UnusableDatabase(f"{path} cannot be written ({e})") from None
        except BaseException:
            db.close()
            raise
        store = cls(db, keep, path)
        store.upgraded_from = (version, kept) if kept is not None else None
        store.fit_log()
        return store

    def fit_log(self) -> None:
        """
        Size the write-ahead log for the room left on the database's disk.

        SQLite copies the log into the database every 1000 pages (4 MB) by
        default, and that is kept while the disk has room: each copy rewrites
        the pages the commits since the last one touched and syncs the
        database file, so a longer log means fewer of both, which matters to
        a flash card's wear and to a report's cost (3-11 µs of the writer's
        CPU per report under load, against copies every 80 pages).

        On a nearly full disk (less than L{LOW_DISK} free) the log could take
        the last room, and then a copy, which needs a little room for the
        database to grow, could not run to give it back.  So there the log
        is copied every 80 pages (a dozen reports or more, each with its
        smartplug publication), and a longer log file is cut back to
        L{WAL_BYTES_LOW_DISK} when SQLite next starts the log over (once it
        is copied and no reader, such as a backup, still needs it: nothing
        here waits for a reader); from L{ROOMY_DISK} free the long log comes
        back.  Between the two, the log stays as it is, and a store opens
        with the short one.  Run before each group of writes; a disk whose
        room cannot be told keeps the log as it is.
        """
        free = self.log_free = disk_room(self._disk)
        if free is None:
            return
        if free < LOW_DISK or (free < ROOMY_DISK and self.log_pages != WAL_PAGES):
            pages, limit = WAL_PAGES_LOW_DISK, WAL_BYTES_LOW_DISK
        else:
            pages, limit = WAL_PAGES, -1
        if pages == self.log_pages:
            return
        try:
            self._db.execute(f"PRAGMA journal_size_limit = {limit}")
            self._db.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        except sqlite3.Error:
            return
        self.log_pages = pages

    def _write(self, work, *args) -> None:
        """
        Run the transaction C{work(*args)}, healing from a full disk.

        In WAL mode every commit is appended to the write-ahead log, which
        is only emptied by a checkpoint, and SQLite's own checkpoint waits
        for 1000 pages (4 MB) of log while the disk has room (L{fit_log}).
        When a disk fills up faster than that, the log fills it first, and
        then every later write fails too, even once some room is freed,
        since the log only grows.  So after a write that fails for want of
        disk, the log is copied into the database and truncated
        (C{wal_checkpoint(TRUNCATE)}), which gives back all of its space,
        and the write is tried once more; if the checkpoint cannot run
        either (no room for the database to grow), the next write tries it
        first.
        """
        if self._db.in_transaction:
            # Part of a group (L{write_together}): on any failure the group
            # is rolled back and each write tried alone, healing then.
            work(*args)
            return
        if self.needs_checkpoint:
            self.checkpoint()
        try:
            work(*args)
        except sqlite3.Error as e:
            if not disk_trouble(e) or not self.checkpoint():
                self.needs_checkpoint = self.needs_checkpoint or disk_trouble(e)
                raise
            work(*args)

    def checkpoint(self) -> bool:
        """
        Copy the write-ahead log into the database and truncate it to
        nothing.

        @return: True if that was done; False if it could not be (no room,
            an I/O error, or a reader holding an old snapshot), in which
            case L{needs_checkpoint} is set.
        """
        try:
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            busy = 1
        self.needs_checkpoint = bool(busy)
        return not busy

    def save_report(self, plug_id: str, value: int, at: float, source: str,
                    publication: Optional[tuple] = None) -> None:
        """
        Record a report: the plug's state and a history entry, trimming the
        plug's history to C{keep} entries, and its pub/sub publication if
        given (the arguments of L{save_publication}); all or nothing.
        """
        self._write(self._save_report, plug_id, value, at, source, publication)

    def _save_report(self, plug_id: str, value: int, at: float, source: str, publication: Optional[tuple]) -> None:
        incoming = _Incoming()
        incoming.report(plug_id, value, at, source, publication)
        with self._changing():
            self._record(incoming)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """
        L{_transaction}, forgetting the plugs' history counts when it is
        rolled back (its COMMIT included).
        """
        try:
            with _transaction(self._db):
                yield
        except BaseException:
            self._counts.clear()
            raise

    def _record(self, incoming: _Incoming) -> None:
        """
        The rows of C{incoming}, in order, with one INSERT (per
        L{ROWS_PER_INSERT}), then the history bound of each plug reported.
        """
        rows = incoming.finished()
        if not rows:
            return
        try:
            for start in range(0, len(rows), ROWS_PER_INSERT):
                chunk = rows[start:start + ROWS_PER_INSERT]
                self._db.execute(
                    "INSERT INTO incoming VALUES " + ", ".join([_ELEVEN] * len(chunk)),
                    [v for row in chunk for v in row],
                )
            for plug_id, count in incoming.added.items():
                self._trim(plug_id, count)
        except BaseException:
            self._counts.clear()
            raise

    def _trim(self, plug_id: str, added: int) -> None:
        # Counting the plug's entries once and then keeping count makes the
        # trim cost one index step per report; finding the keep-th newest
        # entry instead (ORDER BY seq DESC LIMIT 1 OFFSET keep) walked the
        # whole history every time: 1.5 ms a report at 5000 entries.  The
        # counts are forgotten whenever a transaction is rolled back.
        count = self._counts.get(plug_id)
        if count is None:
            count = self._db.execute("SELECT count(*) FROM history WHERE plug_id = ?", (plug_id,)).fetchone()[0]
        else:
            count += added
        if count > self._keep:
            self._db.execute(
                "DELETE FROM history WHERE seq IN"
                " (SELECT seq FROM history WHERE plug_id = ? ORDER BY seq LIMIT ?)",
                (plug_id, count - self._keep),
            )
            count = self._keep
        self._counts[plug_id] = count

    def write_together(self, writes: list) -> list:
        """
        Group commit: run C{writes}, C{(method, args)} pairs of this store's
        write methods (L{save_report}, L{save_display}...), in order in one
        transaction, so that they cost one commit (one fsync) between them.

        If any of them fails, or the transaction itself (its BEGIN or
        COMMIT), the whole transaction is rolled back and every write is
        tried again alone, in order, each in a transaction of its own: so
        each one fails or succeeds on its own, as if there had been no
        group, and a bad write never takes good ones down with it.

        @return: one outcome per write, in order: C{None} when it is
            committed, or the exception that refused it.
        """
        self.fit_log()
        if len(writes) == 1 or self.needs_checkpoint:
            # Alone, or after a full disk: each write heals on its own
            # (L{_write}), which it cannot inside a shared transaction.
            return self._one_by_one(writes)
        runs = self._runs(writes)
        alone = runs[0] if len(runs) == 1 and isinstance(runs[0], _Incoming) else None
        if alone is not None and len(alone.rows) <= ROWS_PER_INSERT and self._within_bounds(alone.added):
            # Only reports and publications, as many as one INSERT takes,
            # and no history to trim: one statement, which is a transaction
            # of its own (all or nothing).
            try:
                self._record(alone)
            except Exception:
                return self._one_by_one(writes)
            return [None] * len(writes)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for run in runs:
                if isinstance(run, _Incoming):
                    self._record(run)
                else:
                    method, args = run
                    method(*args)
            self._db.execute("COMMIT")
        except Exception:
            with contextlib.suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            self._counts.clear()
            return self._one_by_one(writes)
        return [None] * len(writes)

    def _runs(self, writes: list) -> list:
        """
        C{writes} in order, each run of reports and publications as one
        L{_Incoming} (recorded together by L{_record}), every other write as
        its C{(method, args)}.
        """
        save_report, save_publication = self.save_report, self.save_publication
        runs: list = []
        for method, args in writes:
            if method == save_report or method == save_publication:
                if not runs or not isinstance(runs[-1], _Incoming):
                    runs.append(_Incoming())
                if method == save_report:
                    runs[-1].report(*args)
                else:
                    runs[-1].publication(*args)
            else:
                runs.append((method, args))
        return runs

    def _within_bounds(self, added: dict) -> bool:
        """
        Whether every plug in C{added} (plug id -> entries added) has a known
        count of history entries that stays within the bound with them:
        nothing to count or trim.
        """
        counts, keep = self._counts, self._keep
        for plug_id, count in added.items():
            known = counts.get(plug_id)
            if known is None or known + count > keep:
                return False
        return True

    @staticmethod
    def _one_by_one(writes: list) -> list:
        outcomes = []
        for method, args in writes:
            try:
                method(*args)
            except Exception as e:
                outcomes.append(e)
            else:
                outcomes.append(None)
        return outcomes

    def plugs(self) -> list[Plug]:
        """
        Every plug, in the order they first reported.
        """
        rows = self._db.execute("SELECT id, value, updated_at FROM plugs ORDER BY seq")
        return [Plug(*row) for row in rows]

    def history(self, plug_id: str, limit: int) -> list[HistoryEntry]:
        """
        At most C{limit} entries of the plug's history, newest first.
        """
        rows = self._db.execute(
            "SELECT value, at, source FROM history WHERE plug_id = ? ORDER BY seq DESC LIMIT ?",
            (plug_id, limit),
        )
        return [HistoryEntry(*row) for row in rows]

    def save_display(self, display: Display) -> None:
        """
        Record the display state and, in the same commit, what it sets of
        what the display was last when on (L{last_on}).
        """
        fresh = NEVER_ON.after(display)
        self._write(self._save_display, _json(display), _json(fresh.state), _json(fresh.colour))

    def _save_display(self, state: str, last_on: Optional[str], last_colour: Optional[str]) -> None:
        with _transaction(self._db):
            # NULL: this state is not one to remember; the old one stays.
            self._db.execute(
                "INSERT INTO display (only, state, last_on, last_colour) VALUES (1, ?, ?, ?)"
                " ON CONFLICT (only) DO UPDATE SET state = excluded.state,"
                " last_on = coalesce(excluded.last_on, last_on),"
                " last_colour = coalesce(excluded.last_colour, last_colour)",
                (state, last_on, last_colour),
            )

    def display(self) -> Optional[Display]:
        """
        The recorded display state, or C{None} if none was ever set.

        @raise UnusableDatabase: if what is recorded is not a display state.
        """
        row = self._db.execute("SELECT state FROM display").fetchone()
        return None if row is None else self._recorded(row[0], "display state")

    def last_on(self) -> tuple[LastOn, list[str]]:
        """
        What the display was last when it was not off, and the last colour,
        as recorded (L{NEVER_ON} if never on, or not known: a file from
        before they were kept, whose display was off).

        @return: that, and what was left out of it for not being a display
            state of its kind (see L{remembered}): only remembered, it does
            not stop the server, as an unusable display state would.
        """
        row = self._db.execute("SELECT last_on, last_colour FROM display").fetchone()
        if row is None:
            return NEVER_ON, []
        return remembered(*row)

    def _recorded(self, text: str, what: str) -> Display:
        try:
            display = validate_display(json.loads(text))
        except (ValueError, InvalidDisplay) as e:
            raise UnusableDatabase(f"{self._path}: the recorded {what} is not valid ({e})") from None
        if not isinstance(display, Display):
            raise UnusableDatabase(f"{self._path}: the recorded {what} is a command")
        return display

    def save_publication(self, event: str, epoch: str, offset: int, data_json: str, created_at: float,
                         keep: int, oldest: float) -> None:
        """
        Record a pub/sub publication and its event's epoch and newest
        offset, dropping the event's publications beyond the newest C{keep}
        or made before C{oldest}; all or nothing.
        """
        self._write(self._save_publication, event, epoch, offset, data_json, created_at, keep, oldest)

    def _save_publication(self, *publication) -> None:
        incoming = _Incoming()
        incoming.publication(*publication)
        with self._changing():
            self._record(incoming)

    def streams(self) -> list[tuple[str, str, int, list]]:
        """
        Every pub/sub event as C{(event, epoch, newest offset,
        [(offset, data_json, created_at), ...] oldest first)}.
        """
        kept: dict[str, list] = {}
        rows = self._db.execute("SELECT event, offset, data, created_at FROM pubsub_history ORDER BY event, offset")
        for event, offset, data, created_at in rows:
            kept.setdefault(event, []).append((offset, data, created_at))
        events = self._db.execute("SELECT event, epoch, latest FROM pubsub_events ORDER BY event")
        return [(event, epoch, latest, kept.get(event, [])) for event, epoch, latest in events]

    def forget_streams(self) -> None:
        """
        Drop every pub/sub event and publication: with history off nothing
        is recorded, so what is stored would go stale as offsets move on.
        """
        with _transaction(self._db):
            self._db.execute("DELETE FROM pubsub_history")
            self._db.execute("DELETE FROM pubsub_events")

    def close(self) -> None:
        """
        Close the connection (SQLite checkpoints the WAL into the file).
        """
        self._db.close()
