"""
Process-wide tuning at start-up.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.server.runtime import FreezeStartupObjects, StopInOrder


class SlowToStop(Service):
    """
    A service whose stop finishes only when the test says so.
    """

    def __init__(self, name, stopped) -> None:
        self.name = name
        self._stopped = stopped
        self.stopping = None

    def stopService(self):
        super().stopService()
        self._stopped.append(self.name)
        self.stopping = Deferred()
        return self.stopping


class StopInOrderTests(SynchronousTestCase):
    """
    L{StopInOrder} stops its children last-added first, one at a time.
    """

    def test_one_after_another(self):
        """
        A child is stopped only once the one added after it has finished
        stopping; the whole stop finishes with the first-added child.
        """
        stopped = []
        top = StopInOrder()
        store, pool, listener = (SlowToStop(n, stopped) for n in ("store", "pool", "listener"))
        for service in (store, pool, listener):
            service.setServiceParent(top)
        top.startService()
        done = top.stopService()
        self.assertEqual(stopped, ["listener"])
        listener.stopping.callback(None)
        self.assertEqual(stopped, ["listener", "pool"])
        pool.stopping.callback(None)
        self.assertEqual(stopped, ["listener", "pool", "store"])
        self.assertNoResult(done)
        store.stopping.callback(None)
        self.successResultOf(done)

    def test_failure_does_not_stop_the_rest(self):
        """
        A child whose stop fails is logged, and the others are still stopped.
        """
        stopped = []
        top = StopInOrder()
        first, second = SlowToStop("first", stopped), SlowToStop("second", stopped)
        first.setServiceParent(top)
        second.setServiceParent(top)
        top.startService()
        done = top.stopService()
        second.stopping.errback(RuntimeError("boom"))
        self.assertEqual(stopped, ["second", "first"])
        first.stopping.callback(None)
        self.successResultOf(done)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FakeCollector:
    """
    Records the calls made to the C{gc} module.
    """

    def __init__(self) -> None:
        self.calls: list = []

    def __getattr__(self, name):
        return lambda: self.calls.append(name)


class FreezeStartupObjectsTests(SynchronousTestCase):
    """
    L{FreezeStartupObjects} freezes what start-up left once the reactor
    runs, garbage collected first, and unfreezes when stopped.
    """

    def test_freeze_when_running(self):
        """
        Nothing happens until the reactor runs; then garbage is collected
        and the rest frozen.  Stopping unfreezes.
        """
        collector, reactor = FakeCollector(), MemoryReactor()
        service = FreezeStartupObjects(reactor, collector)
        service.startService()
        self.assertEqual(collector.calls, [])
        reactor.run()
        self.assertEqual(collector.calls, ["collect", "freeze"])
        service.stopService()
        self.assertEqual(collector.calls, ["collect", "freeze", "unfreeze"])

    def test_stopped_before_running(self):
        """
        A service stopped before the reactor ran freezes nothing.
        """
        collector, reactor = FakeCollector(), MemoryReactor()
        service = FreezeStartupObjects(reactor, collector)
        service.startService()
        service.stopService()
        reactor.run()
        self.assertEqual(collector.calls, ["unfreeze"])
