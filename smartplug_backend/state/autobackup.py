"""
Automatic backups (SPEC 7a): every C{BACKUP_INTERVAL} seconds the running
server writes a backup and keeps the newest C{BACKUP_KEEP} of its own.

The backup itself runs off the reactor thread; a failed one is logged and
the next one is tried at the next interval.
"""

import os
from typing import Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from . import backup


def automatic_backup(db_path: str, settings_path: Optional[str], directory: str, keep: int) -> tuple:
    """
    Write an automatic backup and delete the automatic ones beyond C{keep}.
    Backups taken by hand are never deleted.  A settings file that is gone
    or unreadable (moved while the server runs) does not cost the state's
    backup: it is taken without it, and the note says so.

    @return: C{(new backup, [deleted backups], note or None)}.
    """
    note = None
    if settings_path is not None and not os.access(settings_path, os.R_OK):
        note = f"the settings file {settings_path} cannot be read any more: this backup holds the state only"
        settings_path = None
    written = backup.take(db_path, settings_path, directory, prefix=backup.AUTOMATIC)
    return written, backup.prune(directory, keep, prefix=backup.AUTOMATIC), note


class BackupService(Service):
    """
    Call C{take()} every C{interval} seconds of C{clock} through C{run(f)}
    (which runs C{f} in a thread and returns a Deferred of its result).
    C{take} returns what L{automatic_backup} does.

    The first comes one interval after the newest automatic backup
    (C{last()}, seconds since the epoch, or C{None}), at once if that is
    past or if there is none: a server restarted more often than the
    interval still takes its backups, the very first one included.

    @param where: the backups' directory, for the start-up line.
    """

    _log = Logger(namespace="smartplug_backend.state.backup")

    def __init__(self, take: Callable[[], tuple], interval: float, clock,
                 run: Callable[..., Deferred], last: Callable[[], Optional[float]] = lambda: None,
                 where: str = backup.DEFAULT_DIRECTORY, keep: Optional[int] = None) -> None:
        self._take = take
        self._interval = interval
        self._clock = clock
        self._run = run
        self._last = last
        self._where = where
        self._keep = keep
        self._loop = None
        self._first = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        last = self._last()
        delay = 0.0 if last is None else min(self._interval, max(0.0, last + self._interval - self._clock.seconds()))
        self._log.info(
            "automatic backups every {interval:g} s into {where}{keeping}; the next in {delay:.0f} s",
            interval=self._interval, where=self._where, delay=delay,
            keeping="" if self._keep is None else f", keeping the newest {self._keep}",
        )
        # _tick never fails, so the loop never stops by itself.
        self._first = self._clock.callLater(delay, self._loop.start, self._interval, True)

    def _tick(self) -> Deferred:
        # LoopingCall waits for this Deferred: backups never overlap.
        return maybeDeferred(self._run, self._take).addCallbacks(self._done, self._failed)

    def _done(self, result: tuple) -> None:
        written, deleted, note = result
        if note:
            self._log.warn("automatic backup: {note}", note=note)
        self._log.info("automatic backup written to {path}", path=written)
        for path in deleted:
            self._log.info("old automatic backup {path} deleted", path=path)

    def _failed(self, failure) -> None:
        if failure.check(backup.BackupError):
            self._log.error("automatic backup failed: {why}", why=failure.getErrorMessage())
        else:
            self._log.failure("automatic backup failed", failure)

    def stopService(self):
        super().stopService()
        if self._first is not None and self._first.active():
            self._first.cancel()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
