"""
The open files limit: raised at start so that MAX_CONNECTIONS fit.
"""

from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.limits import SPARE_FILES, OpenFilesLimitService, raise_open_files_limit

INFINITY = -1


class FakeRlimits:
    """
    The parts of the C{resource} module that L{raise_open_files_limit} uses.
    """

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = INFINITY

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)

    def getrlimit(self, which):
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which, limits):
        assert which == self.RLIMIT_NOFILE
        soft, hard = limits
        assert hard == self.limits[1] and (hard == INFINITY or soft <= hard)
        self.limits = limits


class RaiseOpenFilesLimitTests(SynchronousTestCase):
    """
    L{raise_open_files_limit} raises the soft limit as far as asked and the
    hard limit allows, and never lowers it.
    """

    def test_raised_to_wanted(self):
        """
        Below the wanted number, the soft limit is raised to it.
        """
        fake = FakeRlimits(1024, 524288)
        self.assertEqual(raise_open_files_limit(10256, fake), (1024, 10256))
        self.assertEqual(fake.limits, (10256, 524288))

    def test_capped_by_hard_limit(self):
        """
        The soft limit goes no higher than the hard limit.
        """
        fake = FakeRlimits(1024, 4096)
        self.assertEqual(raise_open_files_limit(10256, fake), (1024, 4096))
        self.assertEqual(fake.limits, (4096, 4096))

    def test_infinite_hard_limit(self):
        """
        An unlimited hard limit lets the soft limit reach the wanted number.
        """
        fake = FakeRlimits(1024, INFINITY)
        self.assertEqual(raise_open_files_limit(5000, fake), (1024, 5000))

    def test_never_lowered(self):
        """
        A soft limit already high enough is left as it is.
        """
        fake = FakeRlimits(65536, 65536)
        self.assertEqual(raise_open_files_limit(10256, fake), (65536, 65536))
        self.assertEqual(fake.limits, (65536, 65536))


class OpenFilesLimitServiceTests(SynchronousTestCase):
    """
    L{OpenFilesLimitService} raises the limit when started and says so.
    """

    def start(self, fake):
        with capturedLogs() as events:
            OpenFilesLimitService(10000, fake).startService()
        return events

    def test_logs_raise(self):
        """
        A raised limit is logged once, at info level.
        """
        fake = FakeRlimits(1024, 524288)
        events = self.start(fake)
        self.assertEqual(fake.limits[0], 10000 + SPARE_FILES)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.info])

    def test_warns_when_hard_limit_too_low(self):
        """
        A hard limit below what MAX_CONNECTIONS needs is a warning.
        """
        events = self.start(FakeRlimits(1024, 4096))
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])

    def test_quiet_when_enough(self):
        """
        Nothing is logged when the limit was already enough.
        """
        self.assertEqual(self.start(FakeRlimits(20000, 20000)), [])
