"""
Stand-in writers for the state store, for C{bench/store.py --floors} only:
they show what group commit would cost with one fsync per group and no
SQLite, and with no store work at all.

A server's settings file is ordinary Python, so the bench loads one of these
into the server's process from the settings it writes (L{settings}), and it
replaces L{Store.write_together} there, before the store opens.  Everything
else (the writer thread, the queue, the Deferreds, the reactor's turn) is the
server's own.  Nothing in the server knows this module.

    - C{"fdatasync"}: each group appends a line of about 100 bytes per write
      to a file beside the database, preallocated, and C{fdatasync}s it: one
      durable write per group, the least a "200 means on disk" can cost.
    - C{"nothing"}: each group returns at once: the cost of the mechanism.
"""

import os

from twisted.logger import Logger

from smartplug_backend.state.store import Store

KINDS = ("fdatasync", "nothing")
# The file is written round and round in this much room, preallocated, so
# that no append changes its size (which would make fdatasync write
# metadata too).
ROOM = 1 << 20


def settings(kind: str) -> str:
    """
    Lines of a settings file that put the stand-in C{kind} in place.
    """
    if kind not in KINDS:
        raise ValueError(f"no stand-in writer {kind!r}; there are {', '.join(KINDS)}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return f"import sys\nsys.path.insert(0, {root!r})\nfrom bench import standin\nstandin.install({kind!r})\n"


# What the bench waits for in the server's log: the stand-in is in place.
INSTALLED = "store writer replaced by the bench's stand-in: {kind}"


def install(kind: str) -> None:
    """
    Replace L{Store.write_together} in this process with the stand-in C{kind},
    and log that it did (L{INSTALLED}).
    """
    Store.write_together = _fdatasync if kind == "fdatasync" else _nothing
    Logger(namespace="bench.standin").info(INSTALLED, kind=kind)


def _nothing(store: Store, writes: list) -> list:
    return [None] * len(writes)


class _Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.pwrite(self.fd, b"\0" * ROOM, 0)
        os.fsync(self.fd)
        self.at = 0


_logs: dict = {}


def _fdatasync(store: Store, writes: list) -> list:
    log = _logs.get(store)
    if log is None:
        log = _logs[store] = _Log(store._path + ".standin")
    line = b"x" * (100 * len(writes) - 1) + b"\n"
    if log.at + len(line) > ROOM:
        log.at = 0
    os.pwrite(log.fd, line, log.at)
    log.at += len(line)
    os.fdatasync(log.fd)
    return [None] * len(writes)
