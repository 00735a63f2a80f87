"""
Tests for backups: taking, pruning and restoring them (smartplug_backend.state.backup),
the command line (cli), and the automatic backups of the running server
(autobackup), on temporary files with a fake clock.
"""

import errno
import io
import os
import re
import sqlite3
import stat
import tarfile
import time
from typing import Optional

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.hub import Plug
from smartplug_backend.state import backup, cli, lock, store
from smartplug_backend.state.autobackup import BackupService, automatic_backup
from smartplug_backend.state.store import Store

from .test_persistence import Running, fill
from .test_store import build_v3, pragma

SETTINGS = b"# mine\nHISTORY_KEEP = 50\n"


def contents(archive_path: str, directory: str) -> tuple:
    """
    Unpack a backup into C{directory}.

    @return: C{(member names, plugs in its database, settings bytes or None)}.
    """
    with tarfile.open(archive_path) as archive:
        names = sorted(archive.getnames())
        archive.extractall(directory, filter="data")
    db_path = os.path.join(directory, backup.ARCHIVE_DB)
    db = Store.open(db_path, 10)
    try:
        plugs = db.plugs()
    finally:
        db.close()
    settings_path = os.path.join(directory, backup.ARCHIVE_SETTINGS)
    settings = open(settings_path, "rb").read() if os.path.exists(settings_path) else None
    return names, plugs, settings


class Files(SynchronousTestCase):
    """
    A state database, a settings file and a backup directory in a fresh
    temporary directory.
    """

    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.db = os.path.join(self.root, "state.sqlite")
        self.settings = os.path.join(self.root, "settings.py")
        with open(self.settings, "wb") as f:
            f.write(SETTINGS + f"STATE_DB = {self.db!r}\n".encode())
        self.backups = os.path.join(self.root, "backups")
        self.seconds = 1700000000
        fill(self.db, [("a", 1, 1.0, "http"), ("b", 0, 2.0, "device")])

    def now(self) -> float:
        return self.seconds

    def take(self, prefix=backup.MANUAL) -> str:
        return backup.take(self.db, self.settings, self.backups, prefix=prefix, now=self.now)

    def scratch(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path


class TakeTests(Files):
    """
    A backup is one timestamped file holding a consistent copy of the
    database and the settings file.
    """

    def test_holds_database_and_settings(self):
        """
        The backup, named after the UTC time, holds the database (openable
        on its own, with every plug) and the settings file byte for byte.
        """
        path = self.take()
        self.assertEqual(os.path.basename(path), "smartplug-backup-20231114T221320Z.tar.gz")
        names, plugs, settings = contents(path, self.scratch())
        self.assertEqual(names, sorted([backup.ARCHIVE_DB, backup.ARCHIVE_SETTINGS]))
        self.assertEqual(plugs, [Plug("a", 1, 1.0), Plug("b", 0, 2.0)])
        self.assertEqual(settings, open(self.settings, "rb").read())

    def test_only_the_owner_may_read(self):
        """
        A backup holds settings.py and its secrets: the file is readable by
        its owner only, and so is a backup directory the backup creates,
        whatever the umask.
        """
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        path = self.take()
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(self.backups).st_mode & 0o777, 0o700)

    def test_one_self_contained_file(self):
        """
        The database in the backup is not in WAL mode: the one file is all
        of it.
        """
        unpacked = os.path.join(self.scratch(), backup.ARCHIVE_DB)
        with tarfile.open(self.take()) as archive, open(unpacked, "wb") as f:
            f.write(archive.extractfile(backup.ARCHIVE_DB).read())
        db = sqlite3.connect(f"file:{unpacked}?mode=ro", uri=True)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "delete")

    def test_without_settings_file(self):
        """
        With built-in settings (no file) the backup holds the database only.
        """
        path = backup.take(self.db, None, self.backups, now=self.now)
        self.assertEqual(contents(path, self.scratch())[0], [backup.ARCHIVE_DB])

    def test_snapshot_excludes_uncommitted_writes(self):
        """
        A backup taken while a writer is in the middle of a transaction holds
        the last committed state, not half of the transaction.
        """
        writer = sqlite3.connect(self.db, isolation_level=None)
        self.addCleanup(writer.close)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE plugs SET value = 0 WHERE id = 'a'")
        writer.execute("INSERT INTO plugs (id, value, updated_at) VALUES ('c', 1, 3.0)")
        path = self.take()
        writer.execute("COMMIT")
        self.assertEqual(contents(path, self.scratch())[1], [Plug("a", 1, 1.0), Plug("b", 0, 2.0)])

    def test_same_second_gets_new_name(self):
        """
        Two backups in the same second get two files.
        """
        first, second = self.take(), self.take()
        self.assertNotEqual(first, second)
        self.assertTrue(second.endswith("Z-2.tar.gz"), second)

    def test_racing_backup_not_overwritten(self):
        """
        A backup whose name another backup took in the same moment (two
        threads, or the CLI beside the server) is written under the next
        name; the other one is left whole.
        """
        first = self.take()
        with open(first, "rb") as f:
            before = f.read()
        real = backup._free_name
        names = iter([first])
        self.patch(backup, "_free_name", lambda *a: next(names, None) or real(*a))
        second = self.take()
        self.assertNotEqual(second, first)
        with open(first, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(len(os.listdir(self.backups)), 2)

    def assertFails(self, fragment: str, **kwargs) -> None:
        arguments = dict(db_path=self.db, settings_path=self.settings, directory=self.backups, now=self.now)
        arguments.update(kwargs)
        error = self.assertRaises(backup.BackupError, backup.take, **arguments)
        self.assertIn(fragment, str(error))
        self.assertNotIn("\n", str(error))
        if os.path.isdir(self.backups):
            self.assertEqual(os.listdir(self.backups), [], "a failed backup left files behind")

    def assertNoDirectory(self) -> None:
        self.assertFalse(os.path.exists(self.backups), "a failed backup created its directory")

    def test_no_database(self):
        """
        Without a database file there is nothing to back up: one clear line,
        and no backup directory is created.
        """
        self.assertFails("no state database", db_path=os.path.join(self.root, "missing.sqlite"))
        self.assertNoDirectory()

    def test_foreign_database(self):
        """
        A file that is not a state database is not backed up.
        """
        with open(self.db, "wb") as f:
            f.write(b"nope" * 1000)
        self.assertFails("not an SQLite database")

    def test_unwritable_directory(self):
        """
        A backup directory that cannot be created fails with one line naming it.
        """
        blocker = os.path.join(self.root, "file")
        open(blocker, "w").close()
        self.assertFails("cannot write to", directory=os.path.join(blocker, "backups"))
        self.assertFails(f"cannot write to {blocker}: it is a file, not a directory", directory=blocker)


def sqlite_error(text: str, code: int) -> sqlite3.OperationalError:
    """
    The error SQLite raises with C{text} and the extended result C{code}.
    """
    error = sqlite3.OperationalError(text)
    error.sqlite_errorcode = code
    return error


# A full disk as SQLite meets it on tmpfs: the copy, taken from a database
# in WAL mode, cannot grow its shared memory file (SQLITE_IOERR_SHMSIZE).
FULL = sqlite_error("disk I/O error", 4874)


class FullDiskTests(Files):
    """
    A backup that the backups' disk has no room for names that disk and
    the room left on it, not the database, which is fine.
    """

    def setUp(self):
        super().setUp()
        self.patch(store, "disk_room", lambda directory: 4096 if directory == self.backups else None)
        connect = sqlite3.connect

        def failing_connect(path, *args, **kwargs):
            raises = self.copy if path.startswith(self.backups) else self.source if path == self.db else {}

            class Failing(sqlite3.Connection):
                def execute(self, sql, *args):
                    if "execute" in raises and sql.startswith("PRAGMA journal_mode"):
                        raise raises["execute"]
                    return super().execute(sql, *args)

                def backup(self, target, **kwargs):
                    if "backup" in raises:
                        raise raises["backup"]
                    return super().backup(target, **kwargs)

            return connect(path, *args, factory=Failing, **kwargs)

        self.patch(sqlite3, "connect", failing_connect)
        self.failing()

    def failing(self, copy: Optional[dict] = None, source: Optional[dict] = None) -> None:
        """
        From now on the backup's copy raises as C{copy} says, and the
        database's connection as C{source} says (method name: error).
        """
        self.copy, self.source = copy or {}, source or {}

    def assertNothingLeft(self):
        self.assertEqual(os.listdir(self.backups), [])

    def room(self) -> str:
        """
        What the error says of the room: free, and about needed (the copy
        and the archive, each at most the database with its log).
        """
        needed = 2 * sum(os.path.getsize(p) for p in (self.db, self.db + "-wal") if os.path.exists(p))
        return f"4096 bytes free on its file system (taking the backup needs about {needed} there)"

    def advice(self, error, cause: str) -> None:
        place = os.path.abspath(self.backups)
        self.assertEqual(error.advice, {
            "room": f"make room on the file system of {place} (or fix the disk)",
            "permission": f"let the server's user write {place}",
        }[cause])

    def test_copy_on_a_full_disk(self):
        """
        The copy that cannot grow its files on the backups' disk is that
        disk's fault; the backup names it, says the room left there, and
        leaves nothing behind.
        """
        self.failing(copy={"execute": FULL})
        error = self.assertRaises(backup.BackupError, self.take)
        self.assertEqual(str(error), f"cannot write the backup to {self.backups}: disk I/O error, {self.room()}")
        self.advice(error, "room")
        self.assertNothingLeft()

    def test_backup_step_writing_or_reading(self):
        """
        SQLite's backup step fails on either side: writing the copy names
        the backups' disk, reading the database names the database, as
        does the copy finding it damaged.
        """
        self.failing(source={"backup": sqlite_error("database or disk is full", 13)})
        error = self.assertRaises(backup.BackupError, self.take)
        self.assertEqual(str(error), f"cannot write the backup to {self.backups}: database or disk is full, "
                                     f"{self.room()}")
        self.advice(error, "room")
        self.failing(source={"backup": sqlite_error("disk I/O error", 266)})  # SQLITE_IOERR_READ
        error = self.assertRaises(backup.BackupError, self.take)
        self.assertEqual(str(error), f"{self.db}: cannot read (disk I/O error)")
        self.assertIsNone(error.advice)
        # What the copy finds wrong with what it read is the database's.
        self.failing(copy={"execute": sqlite_error("database disk image is malformed", 11)})
        error = self.assertRaises(backup.BackupError, self.take)
        self.assertEqual(str(error), f"{self.db}: cannot read (database disk image is malformed)")
        self.assertNothingLeft()

    def test_archive_on_a_full_disk(self):
        """
        The archive that the disk has no room for says so, with the room.
        """
        def no_room(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(tarfile, "open", no_room)
        error = self.assertRaises(backup.BackupError, self.take)
        self.assertEqual(str(error), f"cannot write the backup to {self.backups}: [Errno 28] No space left on "
                                     f"device, {self.room()}")
        self.advice(error, "room")
        self.assertNothingLeft()

    def test_permissions_are_not_room(self):
        """
        A copy that may not be written is not a lack of room: no room is
        told, and making room is not the advice.
        """
        self.failing(copy={"execute": sqlite_error("attempt to write a readonly database", 8)})
        error = self.assertRaises(backup.BackupError, self.take)
        self.assertEqual(str(error), f"cannot write the backup to {self.backups}: attempt to write a readonly "
                                     "database")
        self.advice(error, "permission")

    def test_settings_unreadable(self):
        """
        A settings file that cannot be read is named as such, not as the
        backups' disk.
        """
        os.chmod(self.settings, 0)
        self.addCleanup(os.chmod, self.settings, 0o600)
        if os.access(self.settings, os.R_OK):
            # root reads anything: the refusal is played instead.
            add = tarfile.TarFile.add

            def refused(archive, name, *args, **kwargs):
                if name == self.settings:
                    raise PermissionError(errno.EACCES, "Permission denied", name)
                return add(archive, name, *args, **kwargs)

            self.patch(tarfile.TarFile, "add", refused)
        error = self.assertRaises(backup.BackupError, self.take)
        self.assertEqual(str(error), f"cannot read the settings file {self.settings}: Permission denied")
        self.assertEqual(error.advice, f"let the server's user read {self.settings}")
        self.assertNothingLeft()

    def test_read_only_file_system(self):
        """
        A backups folder on a read-only file system says so.
        """
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        self.patch(tarfile, "open", read_only)
        error = self.assertRaises(backup.BackupError, self.take)
        self.assertEqual(error.advice, f"mount the file system of {os.path.abspath(self.backups)} read-write")

    def test_no_upgrade_on_a_full_disk(self):
        """
        The upgrade refused for want of room for its backup says where to
        make room; the file stays as it was.
        """
        db = os.path.join(self.scratch(), "older.sqlite")
        build_v3(db, [("a", 1, 1.0, "http")], '{"mode": 0}')
        self.failing(copy={"execute": FULL})
        error = self.assertRaises(store.UnusableDatabase, store.Store.open, db, 10,
                                  backup.before_upgrade(db, self.settings, self.backups))
        needed = 2 * os.path.getsize(db)
        self.assertEqual(str(error), f"{db} is at schema 3 and needs an upgrade, but a backup of it as it is "
                                     f"could not be taken first (cannot write the backup to {self.backups}: disk "
                                     f"I/O error, 4096 bytes free on its file system (taking the backup needs about "
                                     f"{needed} there)); left untouched: make room on the file system of "
                                     f"{os.path.abspath(self.backups)} (or fix the disk) and start again")
        self.assertEqual(pragma(db, "user_version"), 3)


class PruneTests(Files):
    """
    Pruning keeps the newest automatic backups and never touches others.
    """

    def test_keeps_newest_automatic(self):
        """
        Of five automatic backups (two in the same second) the newest three
        are kept; backups taken by hand are all kept.  A later backup in the
        second of a pruned one sorts after the kept one of that second.
        """
        made = []
        for step in (0, 10, 0, 20, 30):
            self.seconds += step
            made.append(self.take(prefix=backup.AUTOMATIC))
        manual = self.take()
        deleted = backup.prune(self.backups, keep=3)
        self.assertEqual(deleted, made[:2])
        self.assertEqual(sorted(os.listdir(self.backups)), sorted(os.path.basename(p) for p in made[2:] + [manual]))
        self.seconds -= 50
        newest = self.take(prefix=backup.AUTOMATIC)
        self.assertEqual(backup.prune(self.backups, keep=3), [made[2]])
        self.assertTrue(os.path.exists(newest))


class RestoreTests(Files):
    """
    Restore puts a backup's database in place of STATE_DB, keeps the one it
    replaces, and refuses while a server holds the database.
    """

    def setUp(self):
        super().setUp()
        self.archive = self.take()
        fill(self.db, [("a", 0, 9.0, "http"), ("late", 1, 10.0, "http")])

    def plugs(self) -> list:
        db = Store.open(self.db, 10)
        try:
            return db.plugs()
        finally:
            db.close()

    def test_restore(self):
        """
        After restore STATE_DB holds the backup's state; the replaced
        database, with its WAL, is kept beside it and still opens with the
        later state.
        """
        live = Store.open(self.db, 10)
        live.save_report("wal-only", 1, 11.0, "http")
        # Leave committed data in the WAL, as a killed server does.
        os.link(self.db + "-wal", self.db + "-wal.keep")
        live.close()
        os.rename(self.db + "-wal.keep", self.db + "-wal")
        self.seconds += 60
        aside = backup.restore(self.db, self.archive, now=self.now)
        self.assertEqual(aside, self.db + ".before-restore-20231114T221420Z")
        self.assertEqual(self.plugs(), [Plug("a", 1, 1.0), Plug("b", 0, 2.0)])
        old = Store.open(aside, 10)
        self.addCleanup(old.close)
        self.assertEqual([p.id for p in old.plugs()], ["a", "b", "late", "wal-only"])

    def test_restore_renews_epochs(self):
        """
        A restored database keeps its pub/sub history and offsets under new
        epochs: a client that saw the later history cannot resume across
        the restore.
        """
        taken = Store.open(self.db, 10)
        taken.save_publication("e", "OLD", 1, '"a"', 1.0, 100, 0.0)
        taken.close()
        self.seconds += 1
        backup.restore(self.db, self.take(), now=self.now)
        restored = Store.open(self.db, 10)
        self.addCleanup(restored.close)
        [(event, epoch, latest, kept)] = restored.streams()
        self.assertEqual((event, latest, kept), ("e", 1, [(1, '"a"', 1.0)]))
        self.assertNotEqual(epoch, "OLD")

    def test_restore_without_database(self):
        """
        With no database at STATE_DB, restore just puts the backup's there.
        """
        os.remove(self.db)
        self.assertIsNone(backup.restore(self.db, self.archive))
        self.assertEqual(self.plugs(), [Plug("a", 1, 1.0), Plug("b", 0, 2.0)])

    def test_refused_while_server_holds_lock(self):
        """
        While a server holds the database's lock, restore refuses and
        changes nothing.
        """
        held = lock.hold(self.db)
        self.addCleanup(os.close, held)
        before = self.plugs()
        error = self.assertRaises(lock.Locked, backup.restore, self.db, self.archive)
        self.assertIn("in use by a running server", str(error))
        self.assertEqual(self.plugs(), before)

    def files(self) -> list:
        # The lock file appears once anyone took the lock; it holds no state.
        return sorted(name for name in os.listdir(self.root) if not name.endswith(".lock"))

    def assertRefused(self, archive_path: str, fragment: str) -> None:
        before = self.files()
        error = self.assertRaises(backup.BackupError, backup.restore, self.db, archive_path)
        self.assertIn(fragment, str(error))
        self.assertEqual(self.files(), before)
        self.assertEqual([p.id for p in self.plugs()], ["a", "b", "late"])

    def test_bad_archives(self):
        """
        A missing file, a file that is not a backup, a backup without a
        database, and one whose database is not ours are refused with one
        line, and STATE_DB is left as it was.
        """
        self.assertRefused(os.path.join(self.root, "missing.tar.gz"), "no such file")
        not_tar = os.path.join(self.root, "junk.tar.gz")
        with open(not_tar, "wb") as f:
            f.write(b"junk")
        self.assertRefused(not_tar, "not a readable backup")
        empty = os.path.join(self.scratch(), "empty.tar.gz")
        with tarfile.open(empty, "w:gz") as archive:
            archive.add(self.settings, backup.ARCHIVE_SETTINGS)
        self.assertRefused(empty, "not a smartplug backup")
        foreign_dir = self.scratch()
        foreign_db = os.path.join(foreign_dir, "foreign.sqlite")
        db = sqlite3.connect(foreign_db)
        db.execute("CREATE TABLE contacts (name)")
        db.commit()
        db.close()
        foreign = os.path.join(foreign_dir, "foreign.tar.gz")
        with tarfile.open(foreign, "w:gz") as archive:
            archive.add(foreign_db, backup.ARCHIVE_DB)
        self.assertRefused(foreign, "not a smartplug state database")


class LastOnTests(Files):
    """
    What the display was last when on (SPEC 12: a bare ON restores it) is
    in the backup's database, and comes back with a restore; a backup from
    before it was kept restores too.
    """

    def start(self) -> Running:
        running = Running(self, self.db)
        self.addCleanup(running.stop)
        return running

    def test_backup_carries_it(self):
        """
        A colour, then off, then a backup; a weather later, then a restore:
        after it a bare ON restores the colour, not the weather.
        """
        running = self.start()
        running.light(b'{"state": "ON", "color": {"r": 255, "g": 65, "b": 174}}', b"OFF")
        archive = self.take()
        running.light(b'{"state": "ON", "effect": "storm"}', b"OFF")
        running.stop()
        self.seconds += 60
        backup.restore(self.db, archive, now=self.now)
        self.assertEqual(self.start().light(b"ON"), ["[cc:2:255,65,174:0]"])

    def test_old_backup_restores(self):
        """
        A backup whose database was written before the last state on was
        kept restores (on the command line too); the server upgrades it
        as it opens it, its colour counting as the last state on, so a bare
        ON after an off and a restart restores that colour.
        """
        older = os.path.join(self.scratch(), "older.sqlite")
        build_v3(older, [("a", 1, 1.0, "http")], '{"mode": 2, "color": [0, 128, 255], "pulse": 2}')
        archive = backup.take(older, self.settings, self.backups, now=self.now)
        err = io.StringIO()
        self.assertEqual(cli.main(["restore", archive, "--settings", self.settings], out=io.StringIO(), err=err), 0)
        self.assertEqual(err.getvalue(), "")
        self.assertEqual(pragma(self.db, "user_version"), 3)
        running = self.start()
        self.assertEqual(pragma(self.db, "user_version"), 4)
        self.assertEqual(running.hub.plugs(), [Plug("a", 1, 1.0)])
        running.light(b"OFF")
        running.stop()
        self.assertEqual(self.start().light(b"ON"), ["[cc:2:0,128,255:2]"])


class BeforeUpgradeTests(Files):
    """
    A database upgraded to a newer schema is backed up first, so that the
    older version that refuses the upgraded file can restore it.
    """

    def test_backup_before_upgrade(self):
        """
        The backup holds the file as it was (its older schema) and the
        settings, is named as such, is not pruned with the automatic ones,
        and restores.
        """
        db = os.path.join(self.scratch(), "older.sqlite")
        build_v3(db, [("a", 1, 1.0, "http")], '{"mode": 2, "color": [0, 128, 255], "pulse": 2}')
        opened = store.Store.open(db, 10, backup.before_upgrade(db, self.settings, self.backups, now=self.now))
        self.addCleanup(opened.close)
        schema, archive = opened.upgraded_from
        self.assertEqual((schema, os.path.dirname(archive)), (3, self.backups))
        self.assertTrue(os.path.basename(archive).startswith("smartplug-before-upgrade-"))
        self.assertEqual(stat.S_IMODE(os.stat(archive).st_mode), 0o600)
        with tarfile.open(archive) as tar:
            self.assertEqual(sorted(tar.getnames()), ["settings.py", "state.sqlite"])
            inside = os.path.join(self.scratch(), "inside.sqlite")
            with open(inside, "wb") as f:
                f.write(tar.extractfile("state.sqlite").read())
        self.assertEqual(pragma(inside, "user_version"), 3)
        self.assertEqual(backup.prune(self.backups, 0), [])
        self.assertTrue(os.path.exists(archive))

    def test_no_upgrade_without_its_backup(self):
        """
        A backup that cannot be written (the folder is a file here) refuses
        the upgrade with one line saying why; the file stays as it was.
        """
        db = os.path.join(self.scratch(), "older.sqlite")
        build_v3(db, [("a", 1, 1.0, "http")], '{"mode": 0}')
        with open(self.backups, "w"):
            pass
        error = self.assertRaises(store.UnusableDatabase, store.Store.open, db, 10,
                                  backup.before_upgrade(db, self.settings, self.backups))
        self.assertEqual(str(error), f"{db} is at schema 3 and needs an upgrade, but a backup of it as it is "
                                     f"could not be taken first (cannot write to {self.backups}: it is a file, not "
                                     "a directory); left untouched")
        self.assertEqual(pragma(db, "user_version"), 3)


class CommandLineTests(Files):
    """
    python -m smartplug_backend backup/restore: one line of output, one
    line for an error, and a non-zero status on failure.
    """

    def run_cli(self, *argv) -> tuple:
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(list(argv), out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def assertOneLineError(self, result, fragment: str) -> None:
        status, out, err = result
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("smartplug: "), err)
        self.assertIn(fragment, err)

    def test_backup_and_restore(self):
        """
        backup --settings --to writes a backup and says where; restore FILE
        puts it back and says where the replaced database went.
        """
        status, out, err = self.run_cli("backup", "--settings", self.settings, "--to", self.backups)
        self.assertEqual((status, err), (0, ""))
        path = re.fullmatch(r"backup written to (.+\.tar\.gz)\n", out).group(1)
        self.assertEqual(contents(path, self.scratch())[2], open(self.settings, "rb").read())
        fill(self.db, [("later", 1, 3.0, "http")])
        status, out, err = self.run_cli("restore", path, "--settings", self.settings)
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"restored to {self.db}; the database it replaced is now {self.db}.before-restore-", out)
        db = Store.open(self.db, 10)
        self.addCleanup(db.close)
        self.assertEqual([p.id for p in db.plugs()], ["a", "b"])

    def test_restore_keeps_mode_and_says_where(self):
        """
        The restored file gets the mode of the one it replaces (a restore
        run by another user must not lock the server out); the message
        gives absolute paths.  A restore where there was no database says
        so, as a relative STATE_DB read from another directory would give;
        a directory at STATE_DB is refused, untouched.
        """
        status, out, err = self.run_cli("backup", "--settings", self.settings, "--to", self.backups)
        path = re.fullmatch(r"backup written to (.+\.tar\.gz)\n", out).group(1)
        os.chmod(self.db, 0o640)
        status, out, err = self.run_cli("restore", path, "--settings", self.settings)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(os.stat(self.db).st_mode & 0o777, 0o640)
        self.assertIn(f"restored to {os.path.abspath(self.db)}; the database it replaced is now ", out)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.db + suffix):
                os.rename(self.db + suffix, self.db + suffix + ".gone")
        status, out, err = self.run_cli("restore", path, "--settings", self.settings)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("there was no database there before", out)
        os.remove(self.db)
        os.mkdir(self.db)
        self.assertOneLineError(self.run_cli("restore", path, "--settings", self.settings),
                                "is a directory, not a database file: nothing restored")
        self.assertTrue(os.path.isdir(self.db))
        self.assertEqual([n for n in os.listdir(self.root) if ".before-restore-" in n and n.startswith("state.sqlite.before-restore-") and os.path.isdir(os.path.join(self.root, n))], [])

    def test_default_directory_and_settings(self):
        """
        Without options, the settings are ./settings.py and the backup goes
        to ./backups/.
        """
        cwd = os.getcwd()
        os.chdir(self.root)
        self.addCleanup(os.chdir, cwd)
        status, out, _ = self.run_cli("backup")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("backup written to backups/smartplug-backup-"), out)

    def test_restore_refused_while_running(self):
        """
        restore while a server holds the database fails with one line that
        says to stop it.
        """
        archive = self.take()
        held = lock.hold(self.db)
        self.addCleanup(os.close, held)
        self.assertOneLineError(self.run_cli("restore", archive, "--settings", self.settings), "stop it first")

    def test_errors_are_one_line(self):
        """
        Usage mistakes, bad settings, STATE_DB = None, REDIS_URL set (the
        state is in Redis) and failed backups are each one line on stderr
        with status 1.
        """
        memory = os.path.join(self.root, "memory.py")
        with open(memory, "w") as f:
            f.write("STATE_DB = None\n")
        typo = os.path.join(self.root, "typo.py")
        with open(typo, "w") as f:
            f.write("STATE_BD = 'x'\n")
        redis = os.path.join(self.root, "redis.py")
        with open(redis, "w") as f:
            f.write(f"STATE_DB = {os.path.join(self.root, 'unused.sqlite')!r}\nREDIS_URL = 'redis://127.0.0.1:6379/0'\n")
        cases = [
            ((), "required"),
            (("frobnicate",), "invalid choice"),
            (("restore",), "required: FILE"),
            (("backup", "--settings", memory), "STATE_DB is None"),
            (("backup", "--settings", redis), "REDIS_URL is set"),
            (("restore", "any.tar.gz", "--settings", redis), "back Redis up with its own snapshots"),
            (("backup", "--settings", typo), "did you mean STATE_DB"),
            (("backup", "--settings", os.path.join(self.root, "none.py")), "no such settings file"),
            (("restore", "nothing.tar.gz", "--settings", self.settings), "no such file"),
        ]
        for argv, fragment in cases:
            self.assertOneLineError(self.run_cli(*argv), fragment)
        # With REDIS_URL set, STATE_DB's file is not the state: none is made.
        self.assertFalse(os.path.exists(os.path.join(self.root, "unused.sqlite")))


class AutomaticBackupTests(Files):
    """
    The running server backs up every BACKUP_INTERVAL, keeping BACKUP_KEEP
    automatic backups; a failed backup is logged and the next one still runs.
    """

    def setUp(self):
        super().setUp()
        self.clock = Clock()
        self.events = []
        self.calls = []
        self.outcomes = []

    def start(self, take, last=lambda: None) -> BackupService:
        service = BackupService(take, 60, self.clock, run=maybeDeferred, last=last, keep=7)
        self.patch(service, "_log", Logger(observer=self.events.append))
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    def scripted(self):
        self.calls.append(self.clock.seconds())
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def logged(self, level: str) -> list:
        return [e for e in self.events if e["log_level"].name == level]

    def test_every_interval(self):
        """
        With no automatic backup yet, the first is taken at start (a server
        restarted more often than the interval would never take one), then
        one per interval; each is logged with its path.
        """
        self.outcomes = [("one", [], None), ("two", ["zero"], None)]
        self.start(self.scripted)
        self.clock.pump([0])
        self.assertEqual(self.calls, [0])
        self.clock.pump([59])
        self.assertEqual(self.calls, [0])
        self.clock.pump([1])
        self.assertEqual(self.calls, [0, 60])
        self.assertEqual([e.get("path") for e in self.logged("info")], [None, "one", "two", "zero"])
        self.assertIn("the next in 0 s", formatEvent(self.logged("info")[0]))

    def test_failure_logged_and_loop_goes_on(self):
        """
        A backup that fails is logged (one line for a BackupError, with the
        traceback for anything else) and the next interval tries again.
        """
        self.outcomes = [backup.BackupError("disk full"), RuntimeError("bug"), ("three", [], None)]
        self.start(self.scripted)
        self.clock.pump([0, 60, 60])
        self.assertEqual(self.calls, [0, 60, 120])
        self.assertEqual([e.get("why") for e in self.logged("error")], ["disk full"])
        self.assertEqual([e["log_failure"].type for e in self.events if "log_failure" in e], [RuntimeError])
        self.assertEqual(self.logged("info")[1]["path"], "three")

    def test_stop(self):
        """
        After the service stops, no more backups are taken.
        """
        self.outcomes = [("one", [], None)] * 3
        service = self.start(self.scripted, last=lambda: 0)
        self.clock.pump([60])
        service.stopService()
        self.clock.pump([60, 60])
        self.assertEqual(self.calls, [60])

    def test_real_backups_are_pruned(self):
        """
        automatic_backup writes an automatic backup and keeps the newest
        `keep` of them, leaving backups taken by hand alone.
        """
        manual = self.take()
        written = []
        for _ in range(4):
            path, _deleted, note = automatic_backup(self.db, self.settings, self.backups, keep=2)
            self.assertIsNone(note)
            written.append(path)
        self.assertEqual(sorted(os.listdir(self.backups)), sorted(os.path.basename(p) for p in [manual] + written[2:]))

    def test_first_backup_after_the_last_one(self):
        """
        After a restart the first backup comes one interval after the
        newest automatic backup, at once if that is past; the start-up line
        says when.
        """
        self.clock.advance(1000)
        self.outcomes = [("one", [], None)] * 2
        self.start(self.scripted, last=lambda: 970)
        self.clock.pump([29])
        self.assertEqual(self.calls, [])
        self.clock.pump([1])
        self.assertEqual(self.calls, [1030])
        line = self.logged("info")[0]
        self.assertEqual(formatEvent(line), "automatic backups every 60 s into backups, keeping the newest 7; "
                                            "the next in 30 s")
        self.calls.clear()
        self.events.clear()
        self.outcomes = [("two", [], None)]
        self.start(self.scripted, last=lambda: 100)
        self.clock.pump([0])
        self.assertEqual(self.calls, [1030])

    def test_settings_gone(self):
        """
        A settings file moved away while the server runs: the automatic
        backup holds the state without it, and a warning says so.
        """
        moved = self.settings + ".moved"
        os.rename(self.settings, moved)
        path, _deleted, note = automatic_backup(self.db, self.settings, self.backups, keep=2)
        self.assertIn(f"the settings file {self.settings} cannot be read any more", note)
        self.assertEqual(contents(path, self.scratch())[2], None)
        self.outcomes = [(path, [], note)]
        self.start(self.scripted)
        self.clock.pump([60])
        self.assertEqual([formatEvent(e) for e in self.logged("warn")], [f"automatic backup: {note}"])

    def test_newest(self):
        """
        backup.newest gives the time of the newest automatic backup, or None.
        """
        self.assertIsNone(backup.newest(os.path.join(self.root, "nowhere"), backup.AUTOMATIC))
        os.makedirs(self.backups, exist_ok=True)
        # Looks like ours, is no time: skipped, not a failed start.
        open(os.path.join(self.backups, "smartplug-auto-20241399T000000Z.tar.gz"), "w").close()
        self.assertIsNone(backup.newest(self.backups, backup.AUTOMATIC))
        path, _, _ = automatic_backup(self.db, self.settings, self.backups, keep=2)
        taken = backup.newest(self.backups, backup.AUTOMATIC)
        self.assertLessEqual(abs(taken - time.time()), 5)
