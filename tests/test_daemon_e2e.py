"""
End-to-end: C{twistd smartplug} as a daemon (what C{make start} runs), on
loopback ports: it comes back at once, saying how start-up went.
"""

import os
import signal
import socket
import subprocess
import time
import urllib.request

from twisted.trial.unittest import TestCase

from .server import reserved_port, twistd_command

MAKEFILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Makefile")


class DaemonTests(TestCase):
    def daemon(self, http_port: int) -> subprocess.CompletedProcess:
        """
        Run C{twistd smartplug} as a daemon with its pid file and log in
        this test's directory; wait (at most 60 s) for the command to
        come back.
        """
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.pidfile = os.path.join(self.directory, "twistd.pid")
        self.logfile = os.path.join(self.directory, "twistd.log")
        settings = os.path.join(self.directory, "settings.py")
        with open(settings, "w") as f:
            f.write(f"STATE_DB = None\nWWW_SERVER_PORT = {http_port}\nWS_SERVER_PORT = {reserved_port(self)}\n"
                    "LISTEN_ADDRESS = '127.0.0.1'\n")
        return subprocess.run(
            twistd_command() + ["--pidfile", self.pidfile, "--logfile", self.logfile,
                                "smartplug", "--settings", settings],
            cwd=self.directory, capture_output=True, text=True, timeout=60,
        )

    def log(self) -> str:
        with open(self.logfile) as f:
            return f.read()

    def test_refused_start_comes_back(self):
        """
        When start-up is refused after the daemon has forked (its port is
        taken), the command exits 1 at once, printing the refusal; the
        pid file is gone and the log has the one line, no traceback.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = self.daemon(port)
        self.assertEqual(done.returncode, 1, done)
        self.assertIn("An error has occurred", done.stderr)
        self.assertIn(f"b'smartplug: HTTP: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use'",
                      done.stderr)
        self.assertFalse(os.path.exists(self.pidfile))
        self.assertIn(f"smartplug: HTTP: cannot listen on tcp:{port}:interface=127.0.0.1", self.log())
        self.assertNotIn("Traceback", self.log())

    def test_starts_and_stops(self):
        """
        A daemon that starts: the command exits 0, the pid file names the
        running server, which answers; SIGTERM stops it and removes the
        pid file.
        """
        port = reserved_port(self)
        done = self.daemon(port)
        self.assertEqual(done.returncode, 0, done)
        with open(self.pidfile) as f:
            pid = int(f.read())
        self.addCleanup(lambda: os.path.exists(self.pidfile) and os.kill(pid, signal.SIGKILL))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
            self.assertEqual(answer.read(), b"hallo.")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while os.path.exists(self.pidfile) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertFalse(os.path.exists(self.pidfile), "the daemon did not stop within 30 s")
        self.assertIn("Main loop terminated.", self.log())

    def make_stop(self) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-s", "-f", MAKEFILE, "stop"], cwd=self.directory, capture_output=True,
                              text=True, timeout=90)

    def test_make_stop_waits(self):
        """
        C{make stop} returns once the daemon is gone, so that C{make stop;
        make start} works; then, and with a pid file left by a crash, it
        says the server is not running and exits 0.
        """
        port = reserved_port(self)
        self.assertEqual(self.daemon(port).returncode, 0)
        with open(self.pidfile) as f:
            pid = int(f.read())
        self.addCleanup(lambda: os.path.exists(f"/proc/{pid}") and os.kill(pid, signal.SIGKILL))
        stopped = self.make_stop()
        self.assertEqual((stopped.returncode, stopped.stdout.strip()), (0, "stopped"), stopped)
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        self.assertFalse(os.path.exists(self.pidfile))
        again = self.make_stop()
        self.assertEqual((again.returncode, again.stdout.strip()), (0, "not running (no twistd.pid)"))
        # A crash leaves the pid file; its number may be anyone's by now.
        with open(self.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
        stale = self.make_stop()
        self.assertEqual((stale.returncode, stale.stdout.strip()), (0, "not running (stale twistd.pid removed)"))
        self.assertFalse(os.path.exists(self.pidfile))
