"""
Load generators for bench/run.py: raw non-blocking sockets on one epoll loop.

Each public function here runs in a child process of its own (see run.py), so
the bench's own threads (one reads the server's log) never compete with it
for the GIL.  They drive sockets with C{select.epoll} directly rather than
asyncio: per event, asyncio's handles and callbacks cost a few times the CPU
of a bare C{recv}, and a slow client shows up as server latency.

Everything is bounded: a connection that takes longer than its deadline is
counted as failed and closed, and every loop ends on its own.
"""

import base64
import contextlib
import errno
import json
import os
import resource
import select
import socket
import time
from collections import Counter

HOST = "127.0.0.1"
STALL = 1.0  # seconds: a request slower than this counts as stalled

# The plug firmware's request (SPEC 1.1): bare LF line ends, Connection: close.
_FIRMWARE_HEAD = (
    b"POST /data HTTP/1.1\nHost: craplab.local\nConnection: close\n"
    b"Content-Type: application/json\nContent-Length: %d\n\n"
)

_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT
_CONNECTING = (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK)


def split_cpus():
    """
    Two disjoint sets of CPUs, one for a server and one for its load, or
    C{(None, None)} on a machine with fewer than two.  Apart, neither takes
    the other's CPU time or caches, so a server's CPU per request is its
    own work, measured alike for the yardstick and this server.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


@contextlib.contextmanager
def pinned(pid: int, cpus):
    """
    Every thread of process C{pid} on C{cpus} (threads it starts later
    inherit it), and back on all of this process's CPUs afterwards when it
    is this process.
    """
    everywhere = os.sched_getaffinity(0)
    if cpus:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):  # a thread that just ended
                os.sched_setaffinity(int(tid), cpus)
    try:
        yield
    finally:
        if cpus and pid == os.getpid():
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), everywhere)


def raise_fd_limit() -> int:
    """
    Raise this process's soft limit on open files to its hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def report_bytes(plug_id: str, value: int):
    """
    C{(request, broadcast)}: the firmware's request for this report, and the
    exact payload every app client must receive for it (SPEC 4.1).
    """
    payload = json.dumps({"id": plug_id, "value": value}).encode()
    return _FIRMWARE_HEAD % len(payload) + payload, payload


def cpu_seconds(pid: int, thread: int = None) -> float:
    """
    User + system CPU time of process C{pid} (all its threads), or of its
    thread C{thread} alone (the main thread's id is C{pid}), from /proc.
    """
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path, "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # After the ")" closing the command name, utime and stime are fields 12, 13.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """
    Resident set size of process C{pid}, from /proc/<pid>/status.
    """
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _connect(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    err = sock.connect_ex((HOST, port))
    if err not in (0,) + _CONNECTING:
        sock.close()
        raise OSError(err, os.strerror(err))
    return sock


def _response_complete(buf: bytes):
    """
    C{(status, complete)} for the HTTP response read so far.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None, False
    status = int(buf[9:12])
    length = 0
    for line in buf[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, len(buf) >= end + 4 + length


# --------------------------------------------------------------------------
# POST /data, a new connection per request


class _Request:
    __slots__ = ("sock", "start", "buf", "sent")

    def __init__(self, sock, start):
        self.sock = sock
        self.start = start
        self.buf = b""
        self.sent = False


def post_load(
    port: int, concurrency: int, duration: float, warmup: float, timeout: float = 5.0, server_pid: int = None
) -> dict:
    """
    Keep C{concurrency} firmware-style requests in flight, each on a new
    connection (connect, send, read the whole answer, close), for C{warmup}
    then C{duration} seconds.

    Latencies run from before C{connect} to the last byte of the answer;
    only requests that start after the warm-up are counted.  With
    C{server_pid}, the server's CPU time over the measured window is read
    too (C{server_cpu}; divide by C{completed}).
    """
    raise_fd_limit()
    request, _ = report_bytes("bench-post", 1)
    ep = select.epoll()
    live: dict = {}
    latencies: list = []
    statuses: Counter = Counter()
    failures: Counter = Counter()
    begin = time.perf_counter()
    measure_from = begin + warmup
    stop_at = measure_from + duration
    completed_in_window = 0
    cpu0 = None
    server_cpu = [None, None]

    def start_one(now):
        try:
            sock = _connect(port)
        except OSError as e:
            failures[f"connect: {e.strerror}"] += 1
            return
        live[sock.fileno()] = _Request(sock, now)
        ep.register(sock.fileno(), _OUT)

    def finish(fd, now, status=None, error=None):
        nonlocal completed_in_window
        r = live.pop(fd)
        ep.unregister(fd)
        r.sock.close()
        if r.start >= measure_from:
            if error is not None:
                failures[error] += 1
            else:
                statuses[status] += 1
                latencies.append(now - r.start)
                if now <= stop_at:
                    completed_in_window += 1
        if now < stop_at:
            start_one(now)

    now = begin
    for _ in range(concurrency):
        start_one(now)
    next_sweep = begin + 0.1
    while live:
        for fd, _events in ep.poll(0.1):
            r = live.get(fd)
            if r is None:
                continue
            now = time.perf_counter()
            if not r.sent:
                err = r.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(fd, now, error=f"connect: {os.strerror(err)}")
                    continue
                try:
                    r.sock.send(request)  # 150 bytes: one send on loopback
                except OSError as e:
                    finish(fd, now, error=f"send: {e.strerror}")
                    continue
                r.sent = True
                ep.modify(fd, _IN)
                continue
            try:
                data = r.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                finish(fd, now, error=f"recv: {e.strerror}")
                continue
            r.buf += data
            status, complete = _response_complete(r.buf)
            if complete:
                finish(fd, now, status=status)
            elif not data:
                finish(fd, now, error="closed before a complete answer")
        now = time.perf_counter()
        if cpu0 is None and now >= measure_from:
            cpu0 = (_own_cpu(), now)
            if server_pid:
                server_cpu[0] = cpu_seconds(server_pid)
        if server_pid and server_cpu[1] is None and now >= stop_at:
            server_cpu[1] = cpu_seconds(server_pid)
        if now >= next_sweep:
            next_sweep = now + 0.1
            for fd in [fd for fd, r in live.items() if now - r.start > timeout]:
                finish(fd, now, error=f"no answer within {timeout:g} s")
    ep.close()
    cpu1 = _own_cpu()
    return {
        "completed": completed_in_window,
        "duration": duration,
        "latencies": latencies,
        "statuses": dict(statuses),
        "failures": dict(failures),
        "client_cpu": (cpu1 - cpu0[0]) if cpu0 else None,
        "client_wall": (time.perf_counter() - cpu0[1]) if cpu0 else None,
        "server_cpu": (server_cpu[1] - server_cpu[0]) if None not in server_cpu else None,
    }


# --------------------------------------------------------------------------
# POST /data on keep-alive connections


def keepalive_load(
    port: int, concurrency: int, duration: float, warmup: float, timeout: float = 10.0, server_pid: int = None,
    publish: bool = False,
) -> dict:
    """
    C{concurrency} keep-alive connections, each POSTing a report (its own
    plug, alternating 0 and 1; with C{publish}, a PiCloud publication of its
    own event to C{POST /publish}) as soon as the last one is answered, for
    C{warmup} then C{duration} seconds; only answers within the measured
    window count.  With C{server_pid}, the server's CPU time over the window
    is read too (C{server_cpu}), and its main thread's, which runs the
    reactor (C{reactor_cpu}).
    """
    raise_fd_limit()
    ep = select.epoll()
    conns: dict = {}
    statuses: Counter = Counter()
    failures: Counter = Counter()
    begin = time.perf_counter()
    measure_from, stop_at = begin + warmup, begin + warmup + duration
    answered = 0
    # (the server's CPU time, its main thread's) at the start and the end
    server_cpu = [None, None]

    def server_times():
        return cpu_seconds(server_pid), cpu_seconds(server_pid, server_pid)

    def request(n: int, i: int) -> bytes:
        if publish:
            body = b'{"event": "bench-%d", "data": "reading %d"}' % (n, i)
            path = b"/publish?clientName=bench"
        else:
            body = b'{"id": "bench-%d", "value": %d}' % (n, i % 2)
            path = b"/data"
        return b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)

    for n in range(concurrency):
        sock = socket.create_connection((HOST, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ep.register(sock.fileno(), _IN)
        conns[sock.fileno()] = [sock, n, 0, b"", time.perf_counter()]
    for c in conns.values():
        c[0].sendall(request(c[1], 0))
    while conns:
        now = time.perf_counter()
        if server_pid and server_cpu[0] is None and now >= measure_from:
            server_cpu[0] = server_times()
        if server_pid and server_cpu[1] is None and now >= stop_at:
            server_cpu[1] = server_times()
        for fd, _events in ep.poll(0.1):
            c = conns[fd]
            data = c[0].recv(65536)
            c[3] += data
            status, complete = _response_complete(c[3])
            now = time.perf_counter()
            if not complete:
                if not data:
                    failures["closed by the server"] += 1
                    ep.unregister(fd)
                    c[0].close()
                    del conns[fd]
                continue
            c[3] = b""
            if measure_from <= now <= stop_at:
                answered += 1
                statuses[status] += 1
            if now >= stop_at:
                ep.unregister(fd)
                c[0].close()
                del conns[fd]
                continue
            c[2] += 1
            c[4] = now
            c[0].sendall(request(c[1], c[2]))
        now = time.perf_counter()
        for fd in [fd for fd, c in conns.items() if now - c[4] > timeout]:
            failures[f"no answer within {timeout:g} s"] += 1
            ep.unregister(fd)
            conns.pop(fd)[0].close()
    if server_pid and server_cpu[1] is None:
        server_cpu[1] = server_times()
    ep.close()
    measured = None not in server_cpu
    return {
        "answered": answered,
        "per_second": answered / duration,
        "statuses": dict(statuses),
        "failures": dict(failures),
        "server_cpu": (server_cpu[1][0] - server_cpu[0][0]) if measured else None,
        # The reactor's thread; the rest is the server's other threads
        # (the state store's writer among them).
        "reactor_cpu": (server_cpu[1][1] - server_cpu[0][1]) if measured else None,
    }


# --------------------------------------------------------------------------
# App WebSocket clients


class _App:
    __slots__ = ("sock", "buf", "open", "got", "handshake")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.open = False
        self.got = 0
        self.handshake = False


def _client_frame(opcode: int, payload: bytes) -> bytes:
    # Client frames must be masked; a zero mask keeps the payload as is.
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


class AppSwarm:
    """
    Many app WebSocket connections on one epoll loop: opened with a minimal
    RFC 6455 handshake, then counting the text frames that match what the
    current report should deliver.  Pings are answered; nothing else is sent.
    """

    def __init__(self, port: int, handshake_timeout: float = 10.0, path: str = "/", after_open: bytes = b"") -> None:
        self.port = port
        self.path = path.encode()
        self.after_open = after_open  # sent by each client once it is open
        self.ep = select.epoll()
        self.apps: dict = {}
        self.handshake_timeout = handshake_timeout
        self.expected = b""  # the frame every client should receive next
        self.expected_prefix = b""  # ... of which only this much is known
        self.pending = 0  # clients still waiting for the current report
        self.round = 0  # reports delivered so far (per client)
        self.last = 0.0  # when the last client got the current report
        self.unexpected = 0  # frames that were not the expected report
        self.post = None  # the one in-flight HTTP report, if any
        self.post_request = b""
        self.post_done = 0.0

    def open(self, count: int, in_flight: int = 40, port: int = None) -> None:
        """
        Open C{count} more connections, at most C{in_flight} handshakes at a
        time (the listen backlog is small); raise if any fails.

        @param port: the port to connect to, when not the swarm's own (the
            same swarm may span several servers).
        """
        port = self.port if port is None else port
        key = base64.b64encode(os.urandom(16))
        hello = (
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.path, HOST.encode(), port, key)
        )
        waiting = []
        todo = count
        deadline = time.monotonic() + self.handshake_timeout + count / 500
        while todo or waiting:
            while todo and len(waiting) < in_flight:
                sock = _connect(port)
                app = _App(sock)
                app.got = self.round  # reports before it connected do not count
                self.apps[sock.fileno()] = app
                self.ep.register(sock.fileno(), _OUT)
                waiting.append(app)
                todo -= 1
            for fd, _events in self.ep.poll(0.5):
                app = self.apps[fd]
                if app.open:
                    self._readable(fd, app)
                elif not app.handshake:
                    app.sock.send(hello)
                    app.handshake = True
                    self.ep.modify(fd, _IN)
                else:
                    data = app.sock.recv(4096)
                    app.buf += data
                    end = app.buf.find(b"\r\n\r\n")
                    if end >= 0:
                        if not app.buf.startswith(b"HTTP/1.1 101"):
                            raise RuntimeError(f"handshake refused: {app.buf[:200]!r}")
                        app.open, app.buf = True, app.buf[end + 4 :]
                        if self.after_open:
                            app.sock.send(self.after_open)
                    elif not data:
                        raise RuntimeError("connection closed during the handshake")
            waiting = [app for app in waiting if not app.open]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(waiting) + todo} handshakes not done in time")

    def _readable(self, fd: int, app: _App) -> None:
        try:
            data = app.sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            raise RuntimeError("the server closed an app connection")
        if not app.buf and self._matches(data):
            self._delivered(app)  # the usual case: exactly one whole frame
            return
        buf = app.buf + data
        i = 0
        while len(buf) - i >= 2:
            opcode, size = buf[i] & 0x0F, buf[i + 1] & 0x7F
            head = 2
            if size == 126:
                if len(buf) - i < 4:
                    break
                size, head = int.from_bytes(buf[i + 2 : i + 4], "big"), 4
            elif size == 127:
                if len(buf) - i < 10:
                    break
                size, head = int.from_bytes(buf[i + 2 : i + 10], "big"), 10
            if len(buf) - i < head + size:
                break
            frame = buf[i : i + head + size]
            payload = frame[head:]
            i += head + size
            if self._matches(frame):
                self._delivered(app)
            elif opcode == 0x9:
                app.sock.send(_client_frame(0xA, payload))
            elif opcode != 0xA:
                self.unexpected += 1
        app.buf = buf[i:]

    def _matches(self, frame: bytes) -> bool:
        return len(frame) == len(self.expected) and frame.startswith(self.expected_prefix)

    def _delivered(self, app: _App) -> None:
        app.got += 1
        if app.got == self.round:
            self.pending -= 1
            if self.pending == 0:
                self.last = time.perf_counter()
        else:
            self.unexpected += 1

    def report(self, http_port: int, plug_id: str, value: int, timeout: float = 5.0):
        """
        POST one firmware report on a new connection and wait until every
        open app connection has received its broadcast and the POST is
        answered.

        @return: C{(seconds until the last client got it, seconds until the
            POST was answered)}; C{(None, ...)} if not every client got it.
        """
        request, payload = report_bytes(plug_id, value)
        return self.deliver(http_port, request, bytes([0x81, len(payload)]) + payload, timeout=timeout)

    def deliver(self, http_port: int, request: bytes, expected: bytes, known: int = None, timeout: float = 5.0):
        """
        Like L{report}, for any HTTP C{request} whose effect is that every
        client receives the frame C{expected}, of which only the first
        C{known} bytes (all, by default) are predictable.
        """
        self.expected = expected
        self.expected_prefix = expected[:known] if known is not None else expected
        self.post_request = request
        self.round += 1
        self.pending = len(self.apps)
        start = time.perf_counter()
        self.post = _Request(_connect(http_port), start)
        post_fd = self.post.sock.fileno()
        self.ep.register(post_fd, _OUT)
        deadline = start + timeout
        while (self.pending or self.post is not None) and time.perf_counter() < deadline:
            for fd, _events in self.ep.poll(0.1):
                if fd == post_fd:
                    self._post_event(fd)
                else:
                    self._readable(fd, self.apps[fd])
        if self.post is not None:
            self._post_close(post_fd)
            raise RuntimeError(f"POST not answered within {timeout:g} s")
        if self.pending:
            # Some clients missed it: resynchronise their counters.
            for app in self.apps.values():
                app.got = self.round
            return None, self.post_done - start
        return self.last - start, self.post_done - start

    def _post_event(self, fd: int) -> None:
        post = self.post
        if not post.sent:
            post.sock.send(self.post_request)
            post.sent = True
            self.ep.modify(fd, _IN)
            return
        data = post.sock.recv(65536)
        post.buf += data
        status, complete = _response_complete(post.buf)
        if complete:
            if status not in (200, 201):
                raise RuntimeError(f"POST answered {status}")
            self.post_done = time.perf_counter()
            self._post_close(fd)
        elif not data:
            raise RuntimeError("POST closed before a complete answer")

    def _post_close(self, fd: int) -> None:
        self.ep.unregister(fd)
        self.post.sock.close()
        self.post = None

    def close(self) -> None:
        for app in self.apps.values():
            app.sock.close()
        self.apps.clear()
        self.ep.close()


def fanout(
    http_port: int, ws_port: int, server_pid: int, sizes, reports: dict, warmup: int = 20, settle: float = 1.0
) -> dict:
    """
    For each number of app clients in C{sizes} (ascending), POST reports one
    after another and time each from the POST to the last client receiving
    it; read the server's CPU time around the measured reports.

    First the same is done with no app client at all, so the server's CPU
    for the POST itself is known and can be told apart from the broadcast.
    The server's RSS is read before any client opens and once each size is
    open (C{settle} seconds after, before any report), so the growth per
    idle connection is known too.

    @param reports: reports measured per size (key 0: the default).
    @param warmup: unmeasured reports per size, at most a tenth of them.
    """
    raise_fd_limit()
    swarm = AppSwarm(ws_port)
    results = {}
    rss_base = rss_bytes(server_pid)
    try:
        for size in [0] + list(sizes):
            t0 = time.perf_counter()
            swarm.open(size - len(swarm.apps))
            opened = time.perf_counter() - t0
            if size:
                time.sleep(settle)
            rss = rss_bytes(server_pid)
            count = reports.get(size, reports.get(0))
            for i in range(min(warmup, max(count // 10, 1))):
                swarm.report(http_port, f"warm-{size}-{i}", i % 2)
            latencies, post_latencies, missed = [], [], 0
            unexpected0 = swarm.unexpected
            server0, own0 = cpu_seconds(server_pid), _own_cpu()
            t0 = time.perf_counter()
            for i in range(count):
                last, answered = swarm.report(http_port, f"0x{size:04x}{i:04x}", i % 2)
                post_latencies.append(answered)
                if last is None:
                    missed += 1
                else:
                    latencies.append(last)
            wall = time.perf_counter() - t0
            results[size] = {
                "reports": count,
                "latencies": latencies,
                "post_latencies": post_latencies,
                "missed": missed,
                "server_cpu": cpu_seconds(server_pid) - server0,
                "client_cpu": _own_cpu() - own0,
                "wall": wall,
                "unexpected": swarm.unexpected - unexpected0,
                "rss_open": rss,
                "rss_base": rss_base,
                "open_seconds": opened,
            }
    finally:
        swarm.close()
    return results


def idle_memory(ws_port: int, server_pid: int, sizes, settle: float = 1.0) -> dict:
    """
    Server RSS with no app connection (after one was opened and closed, so
    one-time costs are paid), then with each number of idle connections in
    C{sizes} (ascending).
    """
    raise_fd_limit()
    warm = AppSwarm(ws_port)
    warm.open(20)
    warm.close()
    time.sleep(settle)
    results = {"base": rss_bytes(server_pid)}
    swarm = AppSwarm(ws_port)
    try:
        for size in sizes:
            t0 = time.perf_counter()
            swarm.open(size - len(swarm.apps))
            opened = time.perf_counter() - t0
            # Let the server finish its connection log lines before reading.
            time.sleep(settle)
            results[size] = {"rss": rss_bytes(server_pid), "open_seconds": opened}
    finally:
        swarm.close()
    return results


def publish_fanout(http_port: int, ws_port: int, server_pid: int, size: int, count: int, warmup: int = 20) -> dict:
    """
    C{size} PiCloud subscribers of one event; publish to it over HTTP one
    publication after another and time each from the POST to the last
    subscriber receiving it.
    """
    raise_fd_limit()
    subscribe = _client_frame(0x1, b'{"action":"subscribe","event":"bench"}')
    swarm = AppSwarm(ws_port, path="/subscribe?clientName=bench", after_open=subscribe)
    try:
        swarm.open(size)
        latencies, missed = [], 0
        server0 = None
        for i in range(warmup + count):
            if i == warmup:
                server0, t0 = cpu_seconds(server_pid), time.perf_counter()
            body = b'{"event":"bench","data":"%06d"}' % i
            request = (
                b"POST /publish?clientName=bench HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (HOST.encode(), len(body), body)
            )
            # created_at is the one unknown part; its length is fixed.
            known = b'{"action":"publish","event":"bench","data":"%06d","created_at":"' % i
            payload = known + b"2026-01-01T00:00:00.000Z" + b'"}\n'
            last, _ = swarm.deliver(http_port, request, bytes([0x81, len(payload)]) + payload, known=2 + len(known))
            if i >= warmup:
                if last is None:
                    missed += 1
                else:
                    latencies.append(last)
        return {
            "latencies": latencies,
            "missed": missed,
            "unexpected": swarm.unexpected,
            "server_cpu": cpu_seconds(server_pid) - server0,
            "wall": time.perf_counter() - t0,
        }
    finally:
        swarm.close()


def publish_fanout_nodes(http_port: int, ws_ports: list, server_pids: list, per_node: int, count: int,
                         warmup: int = 20) -> dict:
    """
    C{per_node} PiCloud subscribers of one event on each server of
    C{ws_ports} (nodes sharing one Redis, or one server alone);
    publications POSTed to C{http_port} one after another, each timed from
    the POST to the last subscriber on any node receiving it (and to the
    POST's answer), with the servers' CPU (C{server_pids}: the nodes, and
    redis-server if any) read around the measured ones.
    """
    raise_fd_limit()
    subscribe = _client_frame(0x1, b'{"action":"subscribe","event":"bench"}')
    swarm = AppSwarm(ws_ports[0], path="/subscribe?clientName=bench", after_open=subscribe)
    try:
        for port in ws_ports:
            swarm.open(per_node, port=port)
        latencies, answers, missed = [], [], 0
        cpu0 = own0 = t0 = None
        for i in range(warmup + count):
            if i == warmup:
                cpu0 = [cpu_seconds(pid) for pid in server_pids]
                own0, t0 = _own_cpu(), time.perf_counter()
            body = b'{"event":"bench","data":"%06d"}' % i
            request = (
                b"POST /publish?clientName=bench HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (HOST.encode(), len(body), body)
            )
            known = b'{"action":"publish","event":"bench","data":"%06d","created_at":"' % i
            payload = known + b"2026-01-01T00:00:00.000Z" + b'"}\n'
            last, answered = swarm.deliver(http_port, request, bytes([0x81, len(payload)]) + payload,
                                           known=2 + len(known))
            if i >= warmup:
                answers.append(answered)
                if last is None:
                    missed += 1
                else:
                    latencies.append(last)
        return {
            "latencies": latencies,
            "answers": answers,
            "missed": missed,
            "unexpected": swarm.unexpected,
            "server_cpu": [cpu_seconds(pid) - c for pid, c in zip(server_pids, cpu0, strict=True)],
            "client_cpu": _own_cpu() - own0,
            "wall": time.perf_counter() - t0,
        }
    finally:
        swarm.close()
