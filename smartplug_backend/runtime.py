"""
Process-wide tuning done once, when the server has started.
"""

import gc

from twisted.application.service import Service


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
