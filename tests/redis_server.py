"""
A real C{redis-server} for the tests (Debian's, C{make test} installs it):
started on a free loopback port with its files in the test's temporary
directory, stopped when the test ends.  Never the system's own service.
"""

import os
import signal
import subprocess
import threading

from .server import free_port

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    """
    One C{redis-server} process on 127.0.0.1.

    @param persist: C{appendonly yes} with C{appendfsync always}, as the
        README advises; otherwise nothing is written to disk.
    """

    def __init__(self, directory: str, persist: bool = False) -> None:
        self.directory = directory
        self.persist = persist
        self.port = None
        self.process = None
        self.lines: list = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> "RedisServer":
        """
        Start it (on the same port as before, after L{stop} or L{kill}) and
        wait until it says it accepts connections.
        """
        if not os.path.exists(REDIS_SERVER):
            raise AssertionError(f"{REDIS_SERVER} is missing: install Debian's redis-server (make system-deps)")
        for _attempt in range(5):
            port = self.port or free_port()
            persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", self.directory,
                 "--save", "", "--daemonize", "no", "--protected-mode", "no", "--logfile", "",
                 *persistence],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            ready = threading.Event()
            threading.Thread(target=self._read, args=(self.process, ready), daemon=True).start()
            if ready.wait(timeout) and self.process.poll() is None:
                self.port = port
                return self
            self.process.kill()
            self.process.wait()
            if self.port is not None:
                break  # the same port again: someone else took it
        raise AssertionError("redis-server did not start; it said:\n" + "\n".join(self.lines[-20:]))

    def _read(self, process, ready: threading.Event) -> None:
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if "Ready to accept connections" in line:
                ready.set()
        ready.set()  # it exited: start() looks at why

    def pause(self) -> None:
        """
        Freeze it (SIGSTOP): its connections stay open and nothing answers,
        as with a Redis that hangs.
        """
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """
        Let a paused Redis run again (SIGCONT).
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """
        Stop it (SIGTERM) and wait.
        """
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """
        Kill it (SIGKILL): whatever was not on disk is gone.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_redis(testcase, persist: bool = False) -> RedisServer:
    """
    A fresh redis-server in a temporary directory of C{testcase}, stopped
    when the test ends.
    """
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    server = RedisServer(directory, persist)
    testcase.addCleanup(server.stop)
    return server.start()
