"""
The state store in the running server: the SQLite journal on one writer
thread, and the service that opens it and loads the hub at start-up.

Every SQLite call runs on the store's own single-thread pool, so calls run
one at a time, in the order they were made, and their answers come back to
the reactor thread in that order: a report is committed before the hub
accepts it, and the reports of one plug are committed in arrival order.
"""

import os
import sqlite3
from functools import partial
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ..http.channel import ThreadPoolService
from ..core.journal import StoreFailed
from ..server.listeners import fail
from .lock import Locked, hold
from .store import Store, UnusableDatabase

Runner = Callable[..., Deferred]


class SQLiteJournal:
    """
    The hub's journal on a L{Store}.

    @param run: C{run(f, *args)} calls C{f(*args)} on the writer thread and
        returns a Deferred of its result (tests pass a synchronous one).
    @ivar store: the open L{Store}; set by L{StoreService} at start-up.
    """

    def __init__(self, run: Runner) -> None:
        self._run_in_thread = run
        self.store = None
        self._closing = False

    def _run(self, f: Callable[..., Any], *args) -> Deferred:
        # Once closing, nothing more is queued: a stopped pool would drop the
        # call silently and its caller would wait for good.
        if self._closing:
            return fail(StoreFailed("the server is stopping"))
        return self._run_in_thread(f, *args)

    def _write(self, f: Callable[..., Any], *args) -> Deferred:
        def write():
            try:
                return f(*args)
            except sqlite3.Error as e:
                # The transaction was rolled back: nothing of it was kept.
                raise StoreFailed(str(e)) from e

        return self._run(write)

    def save_report(self, plug_id: str, value: int, at: float, source: str) -> Deferred:
        return self._write(self.store.save_report, plug_id, value, at, source)

    def save_display(self, display) -> Deferred:
        return self._write(self.store.save_display, display)

    def history(self, plug_id: str, limit: int) -> Deferred:
        return self._run(self.store.history, plug_id, limit)

    def close(self) -> Deferred:
        """
        Close the store after every call already made; refuse later ones.
        """
        closed = self._run(self.store.close)
        self._closing = True
        return closed


class StoreService(ThreadPoolService):
    """
    Owns the state database: locks and opens it and loads the hub before any
    listener starts, runs the writer thread, closes it all at shutdown.

    Build the hub on L{journal}, set L{hub}, and add the service to the
    application before the listeners: they bind in C{privilegedStartService},
    which runs in the order services were added.

    @ivar journal: the L{SQLiteJournal} to give the hub.
    @ivar hub: the hub to load at start-up.
    """

    _log = Logger(namespace="smartplug_backend.state.store")

    def __init__(self, path: str, keep: int, reactor) -> None:
        super().__init__(ThreadPool(minthreads=1, maxthreads=1, name="smartplug-store"), reactor)
        self.path = path
        self._keep = keep
        self.hub = None
        self.journal = SQLiteJournal(partial(deferToThreadPool, reactor, self.pool))
        self._lock = None

    def privilegedStartService(self) -> None:
        # Before the reactor runs, nothing waits on this thread, so the
        # opening and loading run here, synchronously: a corrupt file can
        # then stop start-up with one line before any port is open.  (It
        # runs after twistd has daemonised: locks do not survive a fork.)
        super().privilegedStartService()
        try:
            self._lock = hold(self.path)
            store = Store.open(self.path, self._keep)
            plugs, display = store.plugs(), store.display()
        except sqlite3.Error as e:
            fail(f"STATE_DB: {self.path} cannot be read ({e})")
        except (Locked, UnusableDatabase) as e:
            fail(f"STATE_DB: {e}")
        except OSError as e:
            fail(f"STATE_DB: cannot lock {e.filename}: {e.strerror}")
        self.journal.store = store
        self.hub.restore(plugs, display)
        self._log.info(
            "state from {path}: {count} plugs, display {packet}",
            path=self.path, count=len(plugs), packet=self.hub.display().packet(),
        )

    def stopService(self):
        # Queued behind every write already asked for; the pool stops after.
        closed = self.journal.close()
        closed.addErrback(lambda f: self._log.failure("closing {path}", f, path=self.path))
        closed.addCallback(lambda _: super(StoreService, self).stopService())
        closed.addCallback(self._unlock)
        return closed

    def _unlock(self, _) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
