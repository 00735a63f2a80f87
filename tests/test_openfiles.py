"""
Tests for smartplug_backend.server.openfiles: the open-files limit is raised at
start to fit MAX_CONNECTIONS, as far as the hard limit allows, and said so.
"""

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.server.openfiles import SPARE, make_room, raise_open_files_limit


class FakeResource:
    """
    The parts of the C{resource} module that openfiles uses.
    """

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft, hard):
        self.limits = (soft, hard)

    def getrlimit(self, which):
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which, limits):
        assert which == self.RLIMIT_NOFILE
        self.limits = limits


class OpenFilesTests(SynchronousTestCase):
    """
    L{raise_open_files_limit} and L{make_room}.
    """

    def test_raised_to_fit(self):
        """
        A soft limit of 1024 is raised to MAX_CONNECTIONS plus the spare
        descriptors when the hard limit allows; the hard limit is kept, and
        the log says so.
        """
        fake = FakeResource(1024, 1048576)
        with capturedLogs() as events:
            make_room(10000, fake)
        self.assertEqual(fake.limits, (10000 + SPARE, 1048576))
        self.assertEqual(
            [formatEvent(e) for e in events],
            [f"raised the open-files limit from 1024 to {10000 + SPARE} for MAX_CONNECTIONS (10000)"],
        )

    def test_hard_limit_too_low(self):
        """
        Below the need, the soft limit is raised to the hard limit and a
        warning says what to do.
        """
        fake = FakeResource(1024, 4096)
        with capturedLogs() as events:
            make_room(10000, fake)
        self.assertEqual(fake.limits, (4096, 4096))
        self.assertIn("fewer than MAX_CONNECTIONS (10000) connections fit", formatEvent(events[-1]))

    def test_never_lowered(self):
        """
        A soft limit already large enough, or unlimited, is left alone and
        nothing is logged.
        """
        for limits in [(65536, 65536), (-1, -1)]:
            fake = FakeResource(*limits)
            with capturedLogs() as events:
                make_room(100, fake)
            self.assertEqual((fake.limits, events), (limits, []))
        self.assertEqual(raise_open_files_limit(5000, FakeResource(1024, -1)), (1024, 5000 + SPARE, None))
