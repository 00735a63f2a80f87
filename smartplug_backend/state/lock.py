"""
The lock a running server holds on its state database.

A server holds an exclusive C{flock} on C{STATE_DB + ".lock"} for as long as
it runs; the kernel drops it when the process ends, even by C{kill -9}, so
a stale lock cannot outlive its server.  C{restore} takes the same lock, so
it cannot replace the database under a running server, and no server can
start while a restore is under way.  (A lock on the database file itself
would not do: SQLite takes and drops its own POSIX locks on it.)
"""

import fcntl
import os


class Locked(Exception):
    """
    Someone else holds the lock; C{str(error)} says who, in one line.
    """


def lock_path(db_path: str) -> str:
    """
    The lock file that goes with the database at C{db_path}.
    """
    return db_path + ".lock"


def hold(db_path: str) -> int:
    """
    Take the lock of C{db_path} without waiting, and write our pid into it.

    @return: the file descriptor; closing it (or exiting) releases the lock.
    @raise Locked: if another process holds it.
    """
    path = lock_path(db_path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise Locked(f"{db_path} is in use by a running server (pid {holder}; lock {path})") from None
    os.ftruncate(fd, 0)
    try:
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    except OSError:
        # A full disk: the lock holds without the pid, which only makes
        # the message of a second server less helpful.  The state database
        # then says what is wrong with the disk.
        pass
    return fd
