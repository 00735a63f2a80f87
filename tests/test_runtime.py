"""
Process-wide tuning at start-up.
"""

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.runtime import FreezeStartupObjects


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
