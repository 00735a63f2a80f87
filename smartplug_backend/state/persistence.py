"""
The state store in the running server: the SQLite journal on one writer
thread, and the service that opens it and loads the hub at start-up.

Every SQLite call runs on the store's own single-thread pool, one at a time,
in the order the calls were made, and their answers come back to the
reactor thread in that order: a report is committed before the hub accepts
it, and the reports of one plug are committed in arrival order.

Group commit: while the writer thread is busy, the writes asked for queue
up here; when it is free, all the writes at the head of the queue go to it
together and are committed in one transaction (one fsync), and then each
caller's Deferred fires, in order.  A write asked for while the writer is
idle waits for the end of the reactor's turn, so the reports read from the
network in the same turn share its commit too.  A 200 still means
"committed"; under load many reports share one commit instead of waiting
for one each, and the thread hop, the writer's wake-up and the
hand-overs of the interpreter lock between the two threads are paid once
per group.  A write that fails fails alone (L{Store.write_together}).
"""

import os
import sqlite3
from collections import deque
from functools import partial
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ..core.display import Display, LastOn
from ..core.journal import StoreFailed
from ..core.limits import LOW_DISK, ROOMY_DISK, WAL_PAGES
from ..server.services import StartupError, ThreadPoolService
from .lock import Locked, hold, lock_path
from .store import UPGRADES, Store, UnusableDatabase

_log = Logger(namespace="smartplug_backend.state.store")

# At most this many writes share one transaction: a bound on how long one
# commit keeps the writer thread (and the first of them) waiting.
MAX_GROUP = 1000

Runner = Callable[..., Deferred]


class SQLiteJournal:
    """
    The hub's journal on a L{Store}.

    @param run: C{run(f, *args)} calls C{f(*args)} on the writer thread and
        returns a Deferred of its result (tests pass a synchronous one).
    @param store: an open L{Store}, or C{None} until L{open} is called.
    @param turn_end: C{turn_end(f)} calls C{f()} once the reactor has
        handled everything that is ready now (C{reactor.callLater(0, f)});
        C{None} hands a write to an idle writer at once.
    """

    def __init__(self, run: Runner, store: Optional[Store] = None,
                 turn_end: Optional[Callable[[Callable[[], None]], Any]] = None) -> None:
        self._run_in_thread = run
        self.store = store
        self._turn_end = turn_end
        self._closing = False
        # What open() left out of the last state on, for the log.
        self.ignored: list[str] = []
        # (is a write, f, args, Deferred) not yet handed to the writer thread
        self._queue: deque = deque()
        self._busy = False
        # Waiting for the end of the turn to hand the queue over.
        self._gathering = False
        # The store's log length last logged (Store.fit_log): a server
        # that starts on a nearly full disk says so as it opens the store.
        self._log_pages = WAL_PAGES

    def open(self, path: str, keep: int,
             before_upgrade: Optional[Callable[[int], str]] = None) -> tuple[list, Optional[Display], list, LastOn]:
        """
        Open the database at C{path} (created if missing) as this journal's
        store, here and now (start-up, before anything is queued).

        @param before_upgrade: see L{Store.open}.
        @return: the stored plugs, display state, pub/sub streams and what
            the display was last when on, to restore the hub.
        @raise sqlite3.Error, UnusableDatabase: the file cannot be used.
        """
        self.store = Store.open(path, keep, before_upgrade)
        self._log_length(self.store.log_pages, self.store.log_free)
        last_on, self.ignored = self.store.last_on()
        return self.store.plugs(), self.store.display(), self.store.streams(), last_on

    def _run(self, f: Callable[..., Any], *args) -> Deferred:
        """
        C{f(*args)} on the writer thread, alone, after every call made
        before it.
        """
        return self._enqueue(False, f, args)

    def _write(self, f: Callable[..., Any], *args) -> Deferred:
        """
        The store's write C{f(*args)} on the writer thread, committed with
        the writes queued beside it; fails with L{StoreFailed} when SQLite
        refuses it (nothing of it is kept).
        """
        return self._enqueue(True, f, args)

    def _enqueue(self, write: bool, f: Callable[..., Any], args: tuple) -> Deferred:
        # Once closing, nothing more is queued: a stopped pool would drop the
        # call silently and its caller would wait for good.
        if self._closing:
            return fail(StoreFailed("the server is stopping"))
        done = Deferred()
        self._queue.append((write, f, args, done))
        if self._turn_end is None or self._busy:
            self._next()
        elif not self._gathering:
            self._gathering = True
            self._turn_end(self._gathered)
        return done

    def _gathered(self) -> None:
        self._gathering = False
        self._next()

    def _next(self) -> None:
        """
        Hand the head of the queue to the writer thread, unless it is busy:
        every write up to the next read (or L{MAX_GROUP}) together, or one
        read.
        """
        if self._busy or not self._queue:
            return
        write, f, args, done = self._queue.popleft()
        # Busy before the call: a synchronous runner (tests) answers at once.
        self._busy = True
        if not write:
            self._run_in_thread(f, *args).addBoth(self._answered, [done])
            return
        writes, waiting = [(f, args)], [done]
        while self._queue and self._queue[0][0] and len(writes) < MAX_GROUP:
            _, f, args, done = self._queue.popleft()
            writes.append((f, args))
            waiting.append(done)
        self._run_in_thread(self.store.write_together, writes).addBoth(self._committed, waiting)

    def _committed(self, outcomes, waiting: list) -> None:
        if isinstance(outcomes, Failure):
            outcomes = [outcomes] * len(waiting)
        # Read while the writer thread is idle, said once the callers have
        # their answers.
        length = (self.store.log_pages, self.store.log_free)
        self._answered([_as_failure(outcome) for outcome in outcomes], waiting, each=True)
        self._log_length(*length)

    def _log_length(self, pages: int, free: Optional[int]) -> None:
        """
        Say so when the store has changed its log's length (C{pages}) for
        the room left on its disk (C{free} bytes, C{None} if unknown;
        L{Store.fit_log}).
        """
        if pages == self._log_pages:
            return
        self._log_pages = pages
        path = self.store.path
        # Rounded down: "64 MiB" is never said below the 64 MiB threshold.
        room = None if free is None else f"{free >> 20} MiB"
        fields = dict(path=path, room=room, free=free, pages=pages, roomy=ROOMY_DISK >> 20)
        if pages == WAL_PAGES:
            _log.info("STATE_DB: {path}: {room} free on its disk again: SQLite's write-ahead log is back to "
                      "its usual length (about 4 MB)", **fields)
        elif self.store.disk_size is not None and self.store.disk_size < ROOMY_DISK:
            # The long log can never come back: news, not a warning at every
            # start, unless the disk is nearly full as well.
            size = self.store.disk_size >> 20
            if free is not None and free < LOW_DISK:
                _log.warn("STATE_DB: {path}: only {room} free on its disk of {size} MiB: SQLite's write-ahead "
                          "log is kept short (a few hundred KB); make room on the disk", size=size, **fields)
            else:
                _log.info("STATE_DB: {path}: its disk holds only {size} MiB: SQLite's write-ahead log is kept "
                          "short (a few hundred KB)", size=size, **fields)
        elif free is None:
            _log.warn("STATE_DB: {path}: the room left on its disk cannot be told: SQLite's write-ahead log "
                      "is kept short (a few hundred KB)", **fields)
        else:
            _log.warn("STATE_DB: {path}: only {room} free on its disk: SQLite's write-ahead log is kept short "
                      "(a few hundred KB) until {roomy} MiB are free; make room on the disk", **fields)

    def _answered(self, result, waiting: list, each: bool = False) -> None:
        # The writer thread is free: give it what queued up meanwhile
        # before answering these callers, so the next commit's fsync runs
        # while the answers go out.  The answers still come in call order:
        # those of the next turn come back through the reactor, later, and
        # writes made by these callbacks queue behind it.
        self._busy = False
        self._next()
        for done, outcome in zip(waiting, result if each else [result], strict=True):
            if isinstance(outcome, Failure):
                done.errback(outcome)
            else:
                done.callback(outcome)

    def save_report(self, plug_id: str, value: int, at: float, source: str, publication=None) -> Deferred:
        if publication is None:
            return self._write(self.store.save_report, plug_id, value, at, source)
        p, keep, oldest = publication
        stored = (p.event, p.epoch, p.offset, p.data_json, p.created_at, keep, oldest)
        return self._write(self.store.save_report, plug_id, value, at, source, stored)

    def save_display(self, display) -> Deferred:
        return self._write(self.store.save_display, display)

    def history(self, plug_id: str, limit: int) -> Deferred:
        return self._run(self.store.history, plug_id, limit)

    def save_publication(self, publication, keep: int, oldest: float) -> Deferred:
        p = publication
        return self._write(self.store.save_publication, p.event, p.epoch, p.offset, p.data_json, p.created_at, keep, oldest)

    def save_command(self, command: str) -> Deferred:
        # A one-off command changes no state: nothing to write.
        return succeed(None)

    def close(self) -> Deferred:
        """
        Close the store after every call already made; refuse later ones.
        """
        closed = self._run(self.store.close)
        self._closing = True
        return closed


def _as_failure(outcome):
    """
    One write's outcome from L{Store.write_together}, for its Deferred:
    C{None}, or a L{Failure} (L{StoreFailed} for SQLite's refusals: the
    transaction, or its savepoint, was rolled back).
    """
    if outcome is None or isinstance(outcome, Failure):
        return outcome
    if isinstance(outcome, sqlite3.Error):
        return Failure(StoreFailed(str(outcome)))
    return Failure(outcome)


class StoreService(ThreadPoolService):
    """
    Owns the state database: locks and opens it and loads the hub before any
    listener starts, runs the writer thread, closes it all at shutdown.

    Add the service to the application before the listeners: they bind in
    C{privilegedStartService}, which runs in the order services were added.

    @param journal: the L{SQLiteJournal} the hub was built on; it runs its
        calls on C{pool}.
    @param hub: the hub to load at start-up.
    @param pool: the writer thread (one thread).
    """

    _log = _log

    def __init__(self, path: str, keep: int, journal: SQLiteJournal, hub, pool: ThreadPool, reactor,
                 before_upgrade: Optional[Callable[[int], str]] = None) -> None:
        super().__init__(pool, reactor)
        self.path = path
        self._keep = keep
        self._before_upgrade = before_upgrade
        self.hub = hub
        self.journal = journal
        self._lock = None

    @classmethod
    def with_hub(cls, path: str, keep: int, reactor, make_hub: Callable[[SQLiteJournal], Any],
                 before_upgrade: Optional[Callable[[int], str]] = None) -> "StoreService":
        """
        The service, its one-thread writer pool and its journal, with the hub
        that C{make_hub(journal)} builds on that journal.

        @param before_upgrade: see L{Store.open}.
        """
        pool = ThreadPool(minthreads=1, maxthreads=1, name="smartplug-store")
        journal = SQLiteJournal(partial(deferToThreadPool, reactor, pool), turn_end=partial(reactor.callLater, 0))
        return cls(path, keep, journal, make_hub(journal), pool, reactor, before_upgrade)

    def privilegedStartService(self) -> None:
        # Before the reactor runs, nothing waits on this thread, so the
        # opening and loading run here, synchronously: a corrupt file can
        # then stop start-up with one line before any port is open.  (It
        # runs after twistd has daemonised: locks do not survive a fork.)
        super().privilegedStartService()
        try:
            self._lock = hold(self.path)
            plugs, display, streams, last_on = self.journal.open(self.path, self._keep, self._before_upgrade)
            if streams and not self.hub.pubsub.history.enabled:
                # PUBSUB_HISTORY = 0 records nothing from now on: offsets
                # stored now would be reused later under the same epoch.
                self.journal.store.forget_streams()
                streams = []
        except sqlite3.Error as e:
            raise StartupError(f"STATE_DB: {self.path} cannot be read ({e})") from e
        except (Locked, UnusableDatabase) as e:
            raise StartupError(f"STATE_DB: {e}") from e
        except OSError as e:
            directory = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(directory):
                raise StartupError(f"STATE_DB: {self.path}: its directory {directory} does not exist") from e
            raise StartupError(f"STATE_DB: cannot lock {e.filename or lock_path(self.path)}: {e.strerror}") from e
        self.hub.restore(plugs, display, streams, last_on)
        self._log.info(
            "state from {path}: {count} plugs, display {packet}, {events} pub/sub events",
            path=self.path, count=len(plugs), packet=self.hub.display().packet(), events=len(streams),
        )
        for why in self.journal.ignored:
            self._log.warn("{path}: {why}; ignored", path=self.path, why=why)
        upgraded = self.journal.store.upgraded_from
        if upgraded is not None:
            self._log.info(
                "{path} was written by an older smartplug (schema {old}) and is upgraded to schema {new}, which "
                "older versions refuse; a backup of it as it was is in {backup}: to go back to such a version, "
                "restore it with that version",
                path=self.path, old=upgraded[0], new=len(UPGRADES), backup=upgraded[1],
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
