"""
Small services every part of the server uses, and the one way start-up ends
when it cannot go on.

A part that finds start-up impossible (a state file it cannot use, a
listener that cannot bind, a bad setting) raises L{StartupError} with a line
for the owner.  Only two places turn it into the process's exit, through
L{exit_startup}: C{tap.makeService} (settings, TLS, endpoints) and the root
service (L{runtime.StopInOrder}) while it starts its children.
"""

import sys

from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class StartupError(Exception):
    """
    Start-up cannot go on; C{str(error)} is one line saying why.
    """


def say_startup_refused(message: str) -> None:
    """
    C{message} as one line on stderr (twistd's log, once it has started).
    """
    sys.stderr.write(f"smartplug: {message}\n")
    sys.stderr.flush()


def exit_startup(message: str) -> None:
    """
    End the process with C{message} as one line on stderr: no traceback.
    """
    say_startup_refused(message)
    raise SystemExit(1)


class ThreadPoolService(Service):
    """
    Starts a thread pool with the service and stops it when the service stops.

    With a C{reactor}, the workers are joined from the reactor's own pool, so
    the reactor keeps running meanwhile: needed where a worker may be waiting
    in C{blockingCallFromThread} (the WSGI pool).  Without one, they are
    joined at once.
    """

    def __init__(self, pool: ThreadPool, reactor=None) -> None:
        self.pool = pool
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        if self._reactor is None:
            self.pool.stop()
            return None
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self.pool.stop)
