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
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

_log = Logger(namespace="smartplug_backend")


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


class GoingAway(Service):
    """
    Closes every WebSocket connection when the server stops, each with 1001
    ("going away"), so that apps and lamps see a server that stops rather
    than a connection that broke (1006).  Added before the listeners, it
    stops after them: no new connection comes meanwhile.

    @param factories: the WebSocket listeners' factories (each with
        C{connections} and C{go_away}, as
        L{smartplug_backend.ws.base.LimitedServerFactory}).
    @param timeout: seconds the peers have to answer the close before the
        ones left are dropped.
    """

    def __init__(self, factories, timeout: float) -> None:
        self._factories = list(factories)
        self._timeout = timeout

    def stopService(self):
        super().stopService()
        count = sum(len(factory.connections) for factory in self._factories)
        if not count:
            return None
        _log.info("stopping: closing {count} WebSocket connection{s} (1001 going away)",
                       count=count, s="" if count == 1 else "s")
        return DeferredList([factory.go_away(self._timeout) for factory in self._factories])


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
