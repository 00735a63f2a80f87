"""
End-to-end harness: the real C{twistd -n smartplug} in a child process, on
loopback ports the OS picks, read back from its "listening on" log lines.

Waiting is done on log lines with deadlines, never with sleeps.
"""

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

LISTENING = re.compile(r"\] (.+) listening on 127\.0\.0\.1:(\d+)")
# The server adds its backlog (listeners.BACKLOG) to descriptions like this.
LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"


def free_port() -> int:
    """
    A loopback port nothing listens on right now, for a service a test
    starts itself.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reserved_port(testcase) -> int:
    """
    A loopback port held for C{testcase}: a socket stays bound to it (with
    SO_REUSEADDR, never listening) until cleanup, so that no other socket
    (another test's server, an outgoing connection's own port) takes it
    between the moments the test's servers listen on it.  Twisted's
    listeners set SO_REUSEADDR, so they may listen on it meanwhile.
    """
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    testcase.addCleanup(holder.close)
    return holder.getsockname()[1]


def twistd_command() -> list:
    """
    The twistd of the Python running the tests (the venv's console script).
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class RunningServer:
    """
    One C{twistd -n smartplug} process.

    @ivar ports: listener label -> port, e.g. C{ports["HTTP"]}.
    @ivar lines: every line the server printed so far.
    """

    def __init__(self, directory: str, settings: str = "", listeners=("HTTP", "app WebSocket"), args=(), open_files=None,
                 env=None):
        self.directory = directory
        # Environment variables to add for the server.
        self.env = dict(env or {})
        # A soft open-files limit to start the server with (None: ours).
        self.open_files = open_files
        self.listeners = listeners
        self.settings_path = os.path.join(directory, "settings.py")
        with open(self.settings_path, "w") as f:
            f.write("STATE_DB = None\n" + settings)
        self.args = list(args)
        self.lines: list = []
        self.ports: dict = {}
        self._changed = threading.Condition()
        self.process = None

    def start(self, timeout: float = 20) -> "RunningServer":
        command = twistd_command() + [
            "-n",
            "--pidfile=",
            "smartplug",
            "--settings",
            self.settings_path,
            "--www",
            LOOPBACK_ANY_PORT,
            "--ws",
            LOOPBACK_ANY_PORT,
            "--device",
            LOOPBACK_ANY_PORT,
        ] + self.args
        self.process = subprocess.Popen(
            command,
            cwd=self.directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **self.env),
            preexec_fn=self._limit_open_files if self.open_files else None,
        )
        self._read_all = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        for label in self.listeners:
            match = self.wait_for(LISTENING.pattern.replace("(.+)", re.escape(label)), timeout)
            self.ports[label] = int(match.group(1))
        return self

    def _limit_open_files(self) -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    _read_all = False
    _reader = None

    def _read(self) -> None:
        for raw in self.process.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            # The pipe is drained: every line the server wrote is in lines.
            self._read_all = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10, start: int = 0):
        """
        Wait until a line from index C{start} on matches C{pattern}.

        @return: the match.
        @raise AssertionError: on timeout or if the server exited first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    found = regex.search(line)
                    if found:
                        return found
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._read_all and seen == len(self.lines)):
                    raise AssertionError(
                        f"no log line matching {pattern!r}; server said:\n" + "\n".join(self.lines[-40:])
                    )
                self._changed.wait(min(remaining, 0.5))

    def wait_for_count(self, pattern: str, count: int, timeout: float = 10) -> None:
        """
        Wait until C{count} lines match C{pattern}.

        @raise AssertionError: on timeout or if the server exited first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        found = seen = 0
        with self._changed:
            while True:
                found += sum(1 for line in self.lines[seen:] if regex.search(line))
                seen = len(self.lines)
                if found >= count:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"{found} of {count} lines match {pattern!r}")
                self._changed.wait(min(remaining, 0.5))

    def open_descriptors(self) -> int:
        """
        How many file descriptors the server has open now.
        """
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def descriptor_targets(self) -> list:
        """
        What each of the server's open file descriptors is (for messages).
        """
        fds = f"/proc/{self.process.pid}/fd"
        targets = []
        for fd in sorted(os.listdir(fds), key=int):
            try:
                targets.append(f"{fd} -> {os.readlink(os.path.join(fds, fd))}")
            except OSError:
                pass
        return targets

    def peak_memory_kib(self) -> int:
        """
        The server's peak resident memory so far (VmHWM), in KiB.
        """
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")

    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def stop(self, timeout: float = 10) -> int:
        """
        Stop the server as `make stop` does (SIGTERM) and return its exit code.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Its last lines ("Server Shut Down.") may still be in the pipe.
        if self._reader is not None:
            self._reader.join(timeout)
        return self.process.returncode

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports['HTTP']}{path}"

    def ws_url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.ports['app WebSocket']}{path}"


def start_server(testcase, settings: str = "", **kwargs) -> RunningServer:
    """
    Start a server in a fresh temporary directory of C{testcase}; it is
    stopped when the test ends.
    """
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    server = RunningServer(directory, settings, **kwargs)
    testcase.addCleanup(server.stop)
    return server.start()


def closed_at_once(port: int) -> bool:
    """
    True when a connection to C{port} on loopback is closed by the server
    before the client sends a byte (a banned address: no handshake at all).
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return s.recv(1) == b""
    except ConnectionResetError:
        return True  # the reset can come while connect() is still returning
