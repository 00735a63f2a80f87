"""
Automatic backups (SPEC 7a): every C{BACKUP_INTERVAL} seconds the running
server writes a backup and keeps the newest C{BACKUP_KEEP} of its own.

The backup itself runs off the reactor thread; a failed one is logged and
the next one is tried at the next interval.
"""

from typing import Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from . import backup


def automatic_backup(db_path: str, settings_path: Optional[str], directory: str, keep: int) -> tuple:
    """
    Write an automatic backup and delete the automatic ones beyond C{keep}.
    Backups taken by hand are never deleted.

    @return: C{(new backup, [deleted backups])}.
    """
    written = backup.take(db_path, settings_path, directory, prefix=backup.AUTOMATIC)
    return written, backup.prune(directory, keep, prefix=backup.AUTOMATIC)


class BackupService(Service):
    """
    Call C{take()} every C{interval} seconds of C{clock}, the first time one
    interval after start, through C{run(f)} (which runs C{f} in a thread and
    returns a Deferred of its result).  C{take} returns what
    L{automatic_backup} does.
    """

    _log = Logger(namespace="smartplug_backend.state.backup")

    def __init__(self, take: Callable[[], tuple], interval: float, clock,
                 run: Callable[..., Deferred]) -> None:
        self._take = take
        self._interval = interval
        self._clock = clock
        self._run = run
        self._loop = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        # _tick never fails, so the loop never stops by itself.
        self._loop.start(self._interval, now=False)

    def _tick(self) -> Deferred:
        # LoopingCall waits for this Deferred: backups never overlap.
        return maybeDeferred(self._run, self._take).addCallbacks(self._done, self._failed)

    def _done(self, result: tuple) -> None:
        written, deleted = result
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
        if self._loop is not None and self._loop.running:
            self._loop.stop()
