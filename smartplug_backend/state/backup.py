"""
Backups of the state database (SPEC 7a): take one, prune old ones, restore.

A backup is one file, C{<prefix>-<UTC time>.tar.gz}, holding C{state.sqlite}
(a copy made with SQLite's online backup API: one consistent snapshot, even
while the server writes) and C{settings.py} (the settings file, when there is
one).  Plain synchronous code: the command line runs it directly, the server
in a thread of its own (L{smartplug_backend.state.autobackup}).
"""

import calendar
import contextlib
import errno
import io
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
from typing import Callable, Iterator, Optional

from . import lock, store

DEFAULT_DIRECTORY = "backups"
ARCHIVE_DB = "state.sqlite"
ARCHIVE_SETTINGS = "settings.py"
MANUAL = "smartplug-backup"
AUTOMATIC = "smartplug-auto"
# Taken before a state database is upgraded to a newer schema; never pruned.
BEFORE_UPGRADE = "smartplug-before-upgrade"


class BackupError(Exception):
    """
    A backup or restore that cannot be done; C{str(error)} is one line.

    @ivar advice: what the owner can do about it (C{"make room on ..."}),
        or C{None}.
    """

    def __init__(self, text: str, advice: Optional[str] = None):
        super().__init__(text)
        self.advice = advice


# Why writing a backup failed, from the error's errno: no room (the disk,
# or the user's quota, is full), or no permission.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM})
# SQLite's codes for a failed write of the copy (permissions, no room, the
# file or its shared memory file), told apart from reading the database:
# READONLY, FULL, CANTOPEN, and the IOERR_<...> of writing (their high byte).
_SQLITE_WRITING = frozenset({8, 13, 14})
_SQLITE_IO_WRITING = frozenset({3, 4, 5, 6, 18, 19, 21})
# Of those, what a full disk gives (FULL, and IOERR: a write or the shared
# memory file's growth refused) and what permissions give (the rest).
_SQLITE_NO_ROOM = frozenset({10, 13})
ROOM, PERMISSION, READ_ONLY = "room", "permission", "read-only"


class _CopyFailed(Exception):
    """
    Writing the snapshot's copy failed with C{error}: the backups' disk,
    not the database, is at fault.
    """

    def __init__(self, error: sqlite3.Error):
        super().__init__(str(error))
        self.cause = ROOM if (getattr(error, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_NO_ROOM else PERMISSION


def _writing(error: sqlite3.Error) -> bool:
    """
    Whether C{error}, from SQLite's backup step, came from writing the copy.
    """
    code = getattr(error, "sqlite_errorcode", 0)
    return (code & 0xFF) in _SQLITE_WRITING or ((code & 0xFF) == 10 and (code >> 8) in _SQLITE_IO_WRITING)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _cause(error: OSError) -> Optional[str]:
    if error.errno == errno.EROFS:
        return READ_ONLY
    return ROOM if error.errno in _NO_ROOM else PERMISSION if error.errno in _NO_PERMISSION else None


def _cannot_write(directory: str, why: str, cause: Optional[str], needed: Optional[int] = None,
                  what: str = "cannot write the backup to") -> BackupError:
    """
    The error for a backup that C{directory} cannot take (C{what}
    C{directory}: C{why}); when the C{cause} is a lack of L{ROOM}, with the
    room left on its file system and about the C{needed} bytes.
    """
    place = os.path.abspath(directory)
    if cause == ROOM:
        room = store.disk_room(directory)
        if room is not None:
            why += f", {room} bytes free on its file system"
            if needed is not None:
                why += f" (taking the backup needs about {needed} there)"
        advice = f"make room on the file system of {place} (or fix the disk)"
    elif cause == PERMISSION:
        advice = f"let the server's user write {place}"
    elif cause == READ_ONLY:
        advice = f"mount the file system of {place} read-write"
    else:
        advice = None
    return BackupError(f"{what} {directory}: {why}", advice)


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _numbered(directory: str, prefix: str) -> list:
    """
    The backups named C{prefix-<time>[-<n>].tar.gz} in C{directory}, oldest
    first, as C{((time, n), path)}.
    """
    pattern = re.compile(re.escape(prefix) + r"-(\d{8}T\d{6}Z)(?:-(\d+))?\.tar\.gz$")
    found = []
    for name in os.listdir(directory):
        match = pattern.match(name)
        if match:
            found.append(((match.group(1), int(match.group(2) or 1)), os.path.join(directory, name)))
    return sorted(found)


def newest(directory: str, prefix: str) -> Optional[float]:
    """
    When the newest backup named C{prefix-<time>...} in C{directory} was
    taken (seconds since the epoch), or C{None} if there is none.
    """
    try:
        found = _numbered(directory, prefix)
    except OSError:
        return None
    for (stamp, _), _path in reversed(found):
        try:
            return float(calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ")))
        except ValueError:
            continue  # a name that only looks like ours
    return None


def _free_name(directory: str, prefix: str, now: float) -> str:
    stamp = _stamp(now)
    # Past the highest number of the same second: reusing a lower one that
    # pruning freed would make the new backup sort as older than it is.
    taken = [n for (at, n), _ in _numbered(directory, prefix) if at == stamp]
    n = max(taken, default=0) + 1
    suffix = "" if n == 1 else f"-{n}"
    return os.path.join(directory, f"{prefix}-{stamp}{suffix}.tar.gz")


@contextlib.contextmanager
def _checked(path: str, label: str) -> Iterator[tuple]:
    """
    An open connection to the state database at C{path}, checked to be one
    of ours, and its schema version; closed afterwards.  Every problem,
    then or while it is used, is a L{BackupError} naming C{label}.
    """
    try:
        db = store.connect(path)
    except sqlite3.Error as e:
        raise BackupError(f"{label}: cannot open ({e})") from None
    try:
        yield db, store.check(db, label)
    except store.UnusableDatabase as e:
        raise BackupError(str(e)) from None
    except sqlite3.Error as e:
        raise BackupError(f"{label}: cannot read ({e})") from None
    finally:
        db.close()


def _snapshot(db_path: str, target: str) -> None:
    """
    Copy the database at C{db_path} to C{target} as one consistent snapshot,
    without writing to the source.
    """
    with _checked(db_path, db_path) as (source, _):
        try:
            copy = sqlite3.connect(target)
        except sqlite3.Error as e:
            raise _CopyFailed(e) from None
        try:
            # pages=-1: the whole file in one step, inside one read
            # transaction; in WAL mode the server's writes go on meanwhile.
            try:
                source.backup(copy)
            except sqlite3.Error as e:
                if _writing(e):
                    raise _CopyFailed(e) from None
                raise
            try:
                # One self-contained file in the archive, no WAL beside it.
                copy.execute("PRAGMA journal_mode = DELETE")
                problem = store.damage(copy)
            except sqlite3.Error as e:
                if _writing(e):
                    raise _CopyFailed(e) from None
                raise
        finally:
            copy.close()
    if problem:
        raise BackupError(f"{db_path}: the copy is damaged ({problem})")


def take(db_path: str, settings_path: Optional[str], directory: str, prefix: str = MANUAL,
         now: Callable[[], float] = time.time) -> str:
    """
    Write a backup of the database at C{db_path} and of the settings file
    into C{directory} (created if need be).

    @return: the path of the new backup; it appears whole or not at all.
    @raise BackupError: if no consistent backup could be written.
    """
    if not os.path.isfile(db_path):
        raise BackupError(f"{db_path}: no state database here (has the server ever run with this STATE_DB?)")
    try:
        # A backup holds settings.py and so every secret in it: only the
        # owner may read backups (a directory made here is the owner's only).
        os.makedirs(directory, mode=0o700, exist_ok=True)
        work = tempfile.mkdtemp(prefix=".backup-", dir=directory)
    except OSError as e:
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise BackupError(f"cannot write to {directory}: it is a file, not a directory") from None
        raise _cannot_write(directory, e.strerror, _cause(e), what="cannot write to") from None
    # The copy, then the archive beside it (at most as large).
    needed = 2 * sum(_size(path) for path in (db_path, db_path + "-wal"))
    try:
        copy = os.path.join(work, ARCHIVE_DB)
        _snapshot(db_path, copy)
        partial = os.path.join(work, "backup.tar.gz")
        with tarfile.open(partial, "w:gz") as archive:
            archive.add(copy, ARCHIVE_DB)
            if settings_path is not None:
                try:
                    archive.add(settings_path, ARCHIVE_SETTINGS)
                except OSError as e:
                    raise BackupError(f"cannot read the settings file {settings_path}: {e.strerror}",
                                      f"let the server's user read {os.path.abspath(settings_path)}") from None
        os.chmod(partial, 0o600)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        # A link never replaces: two backups taken in the same second (the
        # dashboard's button, the CLI, the automatic one) each get a name.
        for _ in range(100):
            final = _free_name(directory, prefix, now())
            try:
                os.link(partial, final)
            except FileExistsError:
                continue
            return final
        raise BackupError(f"cannot find a free backup name in {directory}")
    except _CopyFailed as e:
        raise _cannot_write(directory, str(e), e.cause, needed) from None
    except OSError as e:
        raise _cannot_write(directory, str(e), _cause(e), needed) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def before_upgrade(db_path: str, settings_path: Optional[str], directory: str,
                   now: Callable[[], float] = time.time) -> Callable[[int], str]:
    """
    What L{store.Store.open} calls before it upgrades the database at
    C{db_path} from an older schema, which older versions then refuse: a
    backup of it as it is (and of the settings file), named
    C{smartplug-before-upgrade-<UTC time>.tar.gz}, that the older version's
    C{restore} takes back.

    @return: C{take(schema)}, returning the backup's path, or raising
        L{store.UnusableDatabase} (nothing is upgraded then).
    """
    def take_before(schema: int) -> str:
        try:
            return take(db_path, settings_path, directory, prefix=BEFORE_UPGRADE, now=now)
        except BackupError as e:
            advice = f": {e.advice} and start again" if e.advice else ""
            raise store.UnusableDatabase(
                f"{db_path} is at schema {schema} and needs an upgrade, but a backup of it as it is could not be "
                f"taken first ({e}); left untouched{advice}"
            ) from None

    return take_before


def prune(directory: str, keep: int, prefix: str = AUTOMATIC) -> list[str]:
    """
    Delete all but the newest C{keep} backups named C{prefix-...}.

    @return: the paths deleted.
    """
    old = [path for _, path in _numbered(directory, prefix)][:-keep]
    for path in old:
        os.remove(path)
    return old


def _read_db(archive_path: str) -> bytes:
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            member = archive.getmember(ARCHIVE_DB)
            if not member.isfile():
                raise KeyError(ARCHIVE_DB)
            # Read the member ourselves: nothing is extracted to a path the
            # archive chose.
            return archive.extractfile(member).read()
    except FileNotFoundError:
        raise BackupError(f"{archive_path}: no such file") from None
    except KeyError:
        raise BackupError(f"{archive_path}: not a smartplug backup (no {ARCHIVE_DB} inside)") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BackupError(f"{archive_path}: not a readable backup ({e})") from None


def restore(db_path: str, archive_path: str, now: Callable[[], float] = time.time) -> Optional[str]:
    """
    Put the database of a backup at C{db_path}, while no server holds it.

    The database it replaces (with its WAL, if any) is moved aside to
    C{<db_path>.before-restore-<UTC time>}, never deleted.

    @return: where the replaced database went, or C{None} if there was none.
    @raise BackupError: if the backup is unusable; nothing was changed.
    @raise lock.Locked: if a server holds the database; nothing was changed.
    """
    if os.path.isdir(db_path):
        raise BackupError(f"{db_path} is a directory, not a database file: nothing restored")
    data = _read_db(archive_path)
    held = lock.hold(db_path)
    try:
        directory = os.path.dirname(os.path.abspath(db_path))
        fd, incoming = tempfile.mkstemp(prefix=".restore-", dir=directory)
        try:
            with io.FileIO(fd, "wb") as f:
                f.write(data)
                os.fsync(f.fileno())
            _check_restorable(incoming, archive_path)
            _renew_epochs(incoming, archive_path)
            _same_owner_and_mode(incoming, db_path)
            aside = _move_aside(db_path, now)
            os.replace(incoming, db_path)
        except BaseException:
            if os.path.exists(incoming):
                os.remove(incoming)
            raise
        _fsync_directory(directory)
        return aside
    finally:
        os.close(held)


def _same_owner_and_mode(incoming: str, db_path: str) -> None:
    # The restored file is the server's, as the one it replaces was (a
    # restore run with sudo must not leave a file the server cannot open).
    try:
        old = os.stat(db_path)
    except FileNotFoundError:
        return
    if os.geteuid() == 0:
        os.chown(incoming, old.st_uid, old.st_gid)
    os.chmod(incoming, old.st_mode & 0o7777)


def _check_restorable(path: str, archive_path: str) -> None:
    with _checked(path, f"{archive_path}: {ARCHIVE_DB}") as (db, version):
        problem = store.damage(db)
    if problem:
        raise BackupError(f"{archive_path}: {ARCHIVE_DB} is damaged ({problem})")
    if version == 0:
        raise BackupError(f"{archive_path}: {ARCHIVE_DB} is empty")


def _renew_epochs(path: str, archive_path: str) -> None:
    # Clients saw offsets past the backup's with the same epochs; new ones
    # make them re-read instead of resuming into publications they never saw.
    with _checked(path, f"{archive_path}: {ARCHIVE_DB}") as (db, _):
        store.renew_epochs(db)


def _move_aside(db_path: str, now: Callable[[], float]) -> Optional[str]:
    if not os.path.exists(db_path):
        return None
    base = aside = f"{db_path}.before-restore-{_stamp(now())}"
    n = 1
    while os.path.exists(aside):
        n += 1
        aside = f"{base}-{n}"
    # The WAL belongs to the old file: left in place, SQLite would replay it
    # into the restored one.  Moved together, the old set stays openable.
    for suffix in ("-wal", "-shm", ""):
        if os.path.exists(db_path + suffix):
            os.replace(db_path + suffix, aside + suffix)
    return aside


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
