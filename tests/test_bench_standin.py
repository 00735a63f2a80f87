"""
The benchmark's stand-in store writers (bench/standin.py): the settings
lines it writes put them in place, and the fdatasync one writes a line per
group.  The benchmark's figures mean nothing if its stand-ins are not the
ones running.
"""

import os
import sys

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bench import standin
from smartplug_backend import config
from smartplug_backend.state.store import Store


class StandInTests(SynchronousTestCase):
    def setUp(self):
        # install() replaces the method for the whole process, and the
        # settings lines put the project on sys.path: put both back.
        self.patch(Store, "write_together", Store.write_together)
        self.patch(sys, "path", list(sys.path))
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def load(self, kind: str) -> config.Settings:
        path = self.mktemp() + ".py"
        with open(path, "w") as f:
            f.write('STATE_DB = "bench.sqlite"\n' + standin.settings(kind))
        return config.load(path)

    def test_settings_install_nothing(self):
        """
        A settings file with the lines for "nothing" loads as any other and
        replaces the store's group commit with one that writes nothing.
        """
        settings = self.load("nothing")
        self.assertEqual(settings.STATE_DB, "bench.sqlite")
        self.assertIs(Store.write_together, standin._nothing)
        # The line the bench waits for in the server's log.
        said = [e for e in self.events if e.get("log_format") == standin.INSTALLED]
        self.assertEqual([e["kind"] for e in said], ["nothing"])
        self.assertEqual(Store.write_together(object(), [1, 2, 3]), [None, None, None])

    def test_fdatasync_writes_a_line_per_group(self):
        """
        The "fdatasync" stand-in appends about 100 bytes per write to a file
        beside the database, in room it made beforehand, and answers every
        write.
        """
        self.load("fdatasync")
        self.assertIs(Store.write_together, standin._fdatasync)
        store = Store.__new__(Store)
        store._path = os.path.abspath(self.mktemp())
        self.addCleanup(lambda: os.close(standin._logs.pop(store).fd))
        synced = []
        self.patch(os, "fdatasync", lambda fd: synced.append(fd) or os.fsync(fd))
        self.assertEqual(Store.write_together(store, [None] * 3), [None] * 3)
        self.assertEqual(Store.write_together(store, [None] * 2), [None] * 2)
        self.assertEqual(synced, [standin._logs[store].fd] * 2)
        with open(store._path + ".standin", "rb") as f:
            written = f.read()
        self.assertEqual(len(written), standin.ROOM)
        self.assertEqual(written[:500], b"x" * 299 + b"\n" + b"x" * 199 + b"\n")
        self.assertEqual(written[500:], b"\0" * (standin.ROOM - 500))

    def test_unknown_kind(self):
        """
        A kind there is no stand-in for is refused by name.
        """
        self.assertRaises(ValueError, standin.settings, "sqlite")
