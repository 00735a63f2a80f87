"""
Process-wide behaviour of the running server: the order of its shutdown, and
tuning done once when it has started.
"""

import gc

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from ..internals import tell_daemon_parent
from .services import StartupError, say_startup_refused


class StopInOrder(MultiService):
    """
    A MultiService that stops its children one at a time, the last added
    first, each once the one before has finished stopping.

    Twisted's MultiService stops them all at once.  Here that would close
    the state store while the WSGI pool still runs requests that write to
    it: their reports would fail, or wait for good on a store whose thread
    is gone, and the process would never exit.  Added in the order store,
    WSGI pool, listeners, the server stops taking connections, then finishes
    the requests it has, then closes the store.

    As the root service it is also where a child's L{StartupError} ends
    start-up: one line on stderr, exit status 1; under C{twistd smartplug}
    (a daemon) that line goes to the log, and the command waiting in the
    foreground is told, so that it prints it and exits 1.

    @param twistd_config: twistd's own options (the plugin options'
        C{parent}), or C{None}.
    """

    _log = Logger(namespace="smartplug_backend")

    def __init__(self, twistd_config=None) -> None:
        super().__init__()
        self._twistd_config = twistd_config

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            self._refuse(str(e))

    def startService(self) -> None:
        try:
            super().startService()
        except StartupError as e:
            self._refuse(str(e))

    def _refuse(self, line: str) -> None:
        # The log has the line before the waiting command (a daemon's
        # parent) is told and returns.
        say_startup_refused(line)
        tell_daemon_parent(self._twistd_config, f"smartplug: {line}")
        raise SystemExit(1)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        done = Deferred()
        children = list(self)

        def next_one(_=None) -> None:
            if not children:
                done.callback(None)
                return
            child = children.pop()
            stopping = maybeDeferred(child.stopService)
            stopping.addErrback(lambda f: self._log.failure("stopping {service!r}", f, service=child))
            stopping.addCallback(next_one)

        next_one()
        return done


class FreezeStartupObjects(Service):
    """
    Once the reactor runs (every service built and started), move every
    object that exists then into the garbage collector's permanent
    generation.

    Start-up leaves some 64,000 long-lived objects (Twisted, Autobahn,
    Bottle and what they import).  Each full collection walked them all:
    13-30 ms with the whole process stopped, about once a second under a
    steady stream of reports, which showed as the slowest answers.  Frozen,
    they are never walked again and a full collection of the objects made
    since takes well under a millisecond (thousands of open connections
    still take their share).  Frozen objects are still freed when their
    last reference goes; only a reference cycle among them would never be
    collected, so garbage is collected just before the freeze.

    @param reactor: its C{callWhenRunning} schedules the freeze.
    @param collector: the C{gc} module, or a stand-in in tests.
    """

    def __init__(self, reactor, collector=gc) -> None:
        self._reactor = reactor
        self._gc = collector

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._freeze)

    def _freeze(self) -> None:
        if self.running:
            self._gc.collect()
            self._gc.freeze()

    def stopService(self):
        self._gc.unfreeze()
        return super().stopService()
