"""
C{make bench}: start the real C{twistd -n smartplug} on loopback, load it from
a separate client process, and print a table of figures against the targets
of issue 2.  Figures, not a test: a missed target is printed, not failed.

    bench/run.py              # every benchmark, in registry order
    bench/run.py post fanout  # only these
    bench/run.py --list

Adding a benchmark (pub/sub fan-out, STATE_DB on vs off, ...): write a
function taking a L{Bench} and returning a list of L{Row}s, decorate it with
C{@benchmark("name", "what it measures")}.  Start servers with
C{bench.server(settings)}; run client load with C{bench.in_child(...)}, so the
load never shares a GIL with this process (which reads the server's log).
"""

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import clients  # noqa: E402
from tests.server import RunningServer  # noqa: E402


@dataclasses.dataclass
class Row:
    """
    One printed figure; C{met} is C{None} when the figure has no target.
    """

    metric: str
    value: str
    target: str = ""
    met: Optional[bool] = None


@dataclasses.dataclass
class Benchmark:
    name: str
    description: str
    run: Callable[["Bench"], list]


# The registry: name -> Benchmark, run in this order by default.
BENCHMARKS: dict = {}


def benchmark(name: str, description: str):
    """
    Register C{f(bench) -> [Row, ...]} as the benchmark C{name}.
    """

    def register(f):
        BENCHMARKS[name] = Benchmark(name, description, f)
        return f

    return register


class Bench:
    """
    What a benchmark gets: servers in scratch directories, and a child
    process for client load.
    """

    def __init__(self, scratch: str) -> None:
        self.scratch = scratch
        self.server_fd_limits: list = []

    @contextlib.contextmanager
    def server(self, settings: str = ""):
        """
        A fresh C{twistd -n smartplug} (STATE_DB = None unless C{settings}
        says otherwise) on loopback ports the OS picks; stopped afterwards.
        """
        directory = tempfile.mkdtemp(dir=self.scratch)
        server = RunningServer(directory, settings)
        try:
            server.start()
            self.server_fd_limits.append(open_files_limit(server.process.pid))
            yield server
        finally:
            server.stop()

    @contextlib.contextmanager
    def bare_server(self, log: bool = False):
        """
        The yardstick of the ingest benchmark (bench/bare.py): a bare
        twisted.web Resource on loopback (C{log}: writing the server's one
        log line per report too); yields C{(port, pid)}.
        """
        process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "bench", "bare.py")] + (["--log"] if log else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            for raw in process.stdout:
                line = raw.decode()
                if "listening on" in line:
                    break
            else:
                raise RuntimeError("bench/bare.py did not start")
            # Keep reading, so that its log lines never fill the pipe.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            yield int(line.rsplit(":", 1)[1]), process.pid
        finally:
            process.terminate()
            process.wait(10)

    def in_child(self, func, *args, child_timeout: float = 120, cpus=None, **kwargs):
        """
        Run C{func(*args, **kwargs)} (a function of bench.clients) in a
        separate process and return its result; the process is terminated
        if it has not answered within C{child_timeout} seconds.
        """
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_child_main, args=(send, func, args, kwargs, cpus), daemon=True)
        child.start()
        send.close()
        try:
            if not receive.poll(child_timeout):
                raise TimeoutError(f"{func.__name__} gave no answer within {child_timeout:g} s")
            ok, value = receive.recv()
        except EOFError:
            raise RuntimeError(f"{func.__name__}: client process died (exit code {child.exitcode})") from None
        finally:
            receive.close()
            child.join(5)
            if child.is_alive():
                child.terminate()
                child.join()
        if not ok:
            raise RuntimeError(f"in the client process: {value}")
        return value


def _child_main(send, func, args, kwargs, cpus) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        result = (True, func(*args, **kwargs))
    except BaseException as e:  # reported to the parent, which raises it
        result = (False, f"{type(e).__name__}: {e}")
    send.send(result)
    send.close()


def open_files_limit(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    return "?"


class CpuWatch:
    """
    CPU used on the whole machine while a benchmark ran, split into ours
    (this process and its children: the server, the client process),
    everyone else's, and what the hypervisor took (steal).  The machine may
    be shared; others' load skews the figures.
    """

    def __init__(self) -> None:
        self._start = (time.monotonic(), self._ours(), *self._machine())

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    @staticmethod
    def _machine():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        # user nice system idle iowait irq softirq steal ...
        busy = sum(ticks[:8]) - ticks[3] - ticks[4] - ticks[7]
        return busy / hz, ticks[7] / hz

    def others(self) -> str:
        """
        Average cores used by other processes, and stolen, so far.
        """
        wall0, ours0, busy0, steal0 = self._start
        wall = max(time.monotonic() - wall0, 1e-9)
        busy, steal = self._machine()
        others = max(0.0, (busy - busy0) - (self._ours() - ours0))
        return f"{others / wall:.2f} cores; stolen by the hypervisor {(steal - steal0) / wall:.2f}"


def percentile(values, p: float) -> float:
    """
    Nearest-rank percentile of C{values} (p in 0..100).
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# --------------------------------------------------------------------------
# Benchmarks of issue 2


@benchmark("post", "POST /data, firmware request, a new connection per request, concurrency 32")
def post_data(bench: Bench) -> list:
    concurrency, duration = 32, 8.0
    with bench.server() as server:
        r = bench.in_child(
            clients.post_load, server.ports["HTTP"], concurrency, duration, warmup=1.0, timeout=5.0
        )
    lat = r["latencies"]
    rate = r["completed"] / r["duration"]
    stalled = sum(1 for x in lat if x > clients.STALL) + sum(r["failures"].values())
    not_ok = sum(n for status, n in r["statuses"].items() if status != 200)
    rows = [
        Row("requests/s", f"{rate:.0f}", ">= 1500", rate >= 1500),
        Row("latency p50", ms(percentile(lat, 50))),
        Row("latency p99", ms(percentile(lat, 99)), "< 50 ms", percentile(lat, 99) < 0.050),
        Row("latency max", ms(max(lat) if lat else float("nan"))),
        Row("stalled > 1 s or failed", str(stalled), "0", stalled == 0),
        Row("answers other than 200", str(not_ok), "0", not_ok == 0),
        Row("requests measured", f"{len(lat)} in {duration:g} s (after 1 s warm-up)"),
    ]
    if r["failures"]:
        rows.append(Row("failures", ", ".join(f"{k}: {v}" for k, v in r["failures"].items())))
    if r["client_cpu"] is not None:
        rows.append(Row("client process CPU", f"{100 * r['client_cpu'] / r['client_wall']:.0f}% of one core"))
    return rows


@benchmark("fanout", "one report broadcast to 100, 1000 and 10,000 app WebSocket clients")
def fanout(bench: Bench) -> list:
    sizes = (100, 1000, 10000)
    reports = {0: 300, 100: 300, 1000: 300, 10000: 60}
    # 10,000 apps and the POSTs: above the default MAX_CONNECTIONS.
    with bench.server("MAX_CONNECTIONS = 10100\n") as server:
        r = bench.in_child(
            clients.fanout,
            server.ports["HTTP"],
            server.ports["app WebSocket"],
            server.process.pid,
            sizes,
            reports,
            child_timeout=240,
        )
    base = r[0]
    post_cpu = base["server_cpu"] / base["reports"]
    rows = [
        Row("server CPU per POST, no app client", f"{post_cpu * 1e6:.0f} µs"),
        Row("POST -> answer, no app client, p50", ms(percentile(base["post_latencies"], 50))),
    ]
    for size in sizes:
        s = r[size]
        lat = s["latencies"]
        deliveries = s["reports"] * size
        per = s["server_cpu"] / deliveries
        marginal = (s["server_cpu"] - post_cpu * s["reports"]) / deliveries
        target = size == 1000
        rows += [
            Row(f"{size} clients: POST -> last client p50", ms(percentile(lat, 50))),
            Row(
                f"{size} clients: POST -> last client p99",
                ms(percentile(lat, 99)),
                "< 20 ms" if target else "",
                percentile(lat, 99) < 0.020 if target else None,
            ),
            Row(f"{size} clients: POST -> last client max", ms(max(lat) if lat else float("nan"))),
            Row(
                f"{size} clients: server CPU per delivery",
                f"{per * 1e6:.1f} µs (all server CPU / deliveries)",
                "< 15 µs" if target else "",
                per < 15e-6 if target else None,
            ),
            Row(f"{size} clients: same, POST's own CPU taken out", f"{marginal * 1e6:.1f} µs"),
            Row(
                f"{size} clients: reports measured",
                f"{s['reports']} ({s['missed']} not delivered to all, "
                f"{s['unexpected']} wrong frames)",
                "0 missed",
                s["missed"] == 0 and s["unexpected"] == 0,
            ),
            Row(f"{size} clients: client process CPU", f"{100 * s['client_cpu'] / s['wall']:.0f}% of one core"),
            Row(
                f"{size} clients: RSS per idle connection",
                f"{(s['rss_open'] - s['rss_base']) / size / 1000:.1f} KB (opening them took {s['open_seconds']:.1f} s)",
            ),
        ]
    return rows


@benchmark("memory", "server RSS per idle app WebSocket connection")
def idle_memory(bench: Bench) -> list:
    sizes = (1000, 5000)
    with bench.server() as server:
        r = bench.in_child(clients.idle_memory, server.ports["app WebSocket"], server.process.pid, sizes)
    base = r["base"]
    rows = [Row("server RSS, no connection", f"{base / 2**20:.1f} MiB")]
    for size in sizes:
        per = (r[size]["rss"] - base) / size
        rows += [
            Row(f"RSS per connection at {size}", f"{per / 1000:.1f} KB", "<= 10 KB", per <= 10_000),
            Row(f"  opening {size} took", f"{r[size]['open_seconds']:.1f} s (cumulative count)"),
        ]
    return rows


# --------------------------------------------------------------------------
# Benchmarks of later issues


@benchmark("pubsub", "one PiCloud publication (HTTP POST /publish) to 1000 subscribers (issue 5)")
def pubsub_fanout(bench: Bench) -> list:
    size, count = 1000, 300
    with bench.server() as server:
        r = bench.in_child(
            clients.publish_fanout,
            server.ports["HTTP"],
            server.ports["app WebSocket"],
            server.process.pid,
            size,
            count,
            child_timeout=240,
        )
    lat = r["latencies"]
    return [
        Row(f"{size} subscribers: POST -> last subscriber p50", ms(percentile(lat, 50))),
        Row(f"{size} subscribers: POST -> last subscriber p99", ms(percentile(lat, 99))),
        Row(f"{size} subscribers: POST -> last subscriber max", ms(max(lat) if lat else float("nan"))),
        Row(f"{size} subscribers: server CPU per delivery", f"{r['server_cpu'] / (count * size) * 1e6:.1f} µs"),
        Row(
            f"{size} subscribers: publications measured",
            f"{count} ({r['missed']} not delivered to all, {r['unexpected']} wrong frames)",
            "0 missed",
            r["missed"] == 0 and r["unexpected"] == 0,
        ),
    ]


@benchmark("redis", "several nodes on one Redis (issue 15): 2 nodes x 1000 subscribers against 1 node x 2000, "
                    "and what Redis adds per publication")
def redis_nodes(bench: Bench) -> list:
    from tests.redis_server import RedisServer

    count, per_node = 200, 1000
    directory = tempfile.mkdtemp(dir=bench.scratch)
    redis_server = RedisServer(directory).start()
    run = clients.publish_fanout_nodes
    try:
        shared = f'REDIS_URL = "{redis_server.url}"\nNODE_NAME = "%s"\n'
        redis_pid = redis_server.process.pid
        results = {}
        with bench.server() as alone:
            ws, pids = [alone.ports["app WebSocket"]], [alone.process.pid]
            results["alone, none"] = bench.in_child(run, alone.ports["HTTP"], ws, pids, 0, count)
            results["alone"] = bench.in_child(run, alone.ports["HTTP"], ws, pids, 2 * per_node, count, child_timeout=240)
        with bench.server(shared % "A") as a:
            ws, pids = [a.ports["app WebSocket"]], [a.process.pid, redis_pid]
            results["redis, none"] = bench.in_child(run, a.ports["HTTP"], ws, pids, 0, count)
            results["redis, 1 node"] = bench.in_child(run, a.ports["HTTP"], ws, pids, 2 * per_node, count,
                                                      child_timeout=240)
            with bench.server(shared % "B") as b:
                results["redis, 2 nodes"] = bench.in_child(
                    run, a.ports["HTTP"], [a.ports["app WebSocket"], b.ports["app WebSocket"]],
                    [a.process.pid, b.process.pid, redis_pid], per_node, count, child_timeout=240)
    finally:
        redis_server.stop()
        shutil.rmtree(directory, ignore_errors=True)

    rows = []
    deliveries = count * 2 * per_node
    for name, label in (("alone", "1 node, no Redis, 2000 subscribers"),
                        ("redis, 1 node", "1 node on Redis, 2000 subscribers"),
                        ("redis, 2 nodes", "2 nodes on Redis, 1000 subscribers each")):
        r = results[name]
        lat = r["latencies"]
        cpu = r["server_cpu"]
        nodes = cpu if name == "alone" else cpu[:-1]
        redis_part = "" if name == "alone" else f" (+ redis-server {cpu[-1] / deliveries * 1e6:.2f} µs)"
        rows += [
            Row(f"{label}: POST -> last subscriber p50 / p99", f"{ms(percentile(lat, 50))} / {ms(percentile(lat, 99))}"),
            Row(f"{label}: CPU per delivery, nodes", f"{sum(nodes) / deliveries * 1e6:.1f} µs{redis_part}"),
            Row(f"{label}: publications measured", f"{count} ({r['missed']} not delivered to all, "
                f"{r['unexpected']} wrong frames)", "0 missed", r["missed"] == 0 and r["unexpected"] == 0),
        ]
    alone, redis = results["alone, none"], results["redis, none"]
    rows += [
        Row("per publication, no subscriber: POST -> 201 p50, no Redis / Redis",
            f"{ms(percentile(alone['answers'], 50))} / {ms(percentile(redis['answers'], 50))}"),
        Row("per publication, no subscriber: node CPU, no Redis / Redis (+ redis-server)",
            f"{alone['server_cpu'][0] / count * 1e6:.0f} µs / {redis['server_cpu'][0] / count * 1e6:.0f} µs"
            f" (+ {redis['server_cpu'][1] / count * 1e6:.0f} µs)"),
    ]
    return rows


@benchmark("ingest", "server CPU per POST /data against a bare twisted.web Resource, same load, same run (issue 12)")
def ingest(bench: Bench) -> list:
    # Interleaved rounds (bare, server, bare, server...), so a change in the
    # machine's load weighs on both alike; the ratio of each round's pair,
    # then the median of the rounds.
    rounds, concurrency, duration = 5, 32, 3.0
    # "bare+log" also writes the one line per report the server must write,
    # through the same twisted.logger text observer: it shows how much of
    # the difference is that line.
    names = ("bare", "bare+log", "server")
    cpu = {name: [] for name in names}
    counts = {name: 0 for name in names}
    stalled = not_ok = 0
    # Server on one half of the CPUs, the load (and this process, which
    # reads the server's log) on the other.
    server_cpus, load_cpus = clients.split_cpus()
    for _ in range(rounds):
        for name in names:
            with contextlib.ExitStack() as stack:
                stack.enter_context(clients.pinned(os.getpid(), load_cpus))
                if name == "server":
                    server = stack.enter_context(bench.server())
                    port, pid = server.ports["HTTP"], server.process.pid
                else:
                    port, pid = stack.enter_context(bench.bare_server(log=name == "bare+log"))
                stack.enter_context(clients.pinned(pid, server_cpus))
                r = bench.in_child(
                    clients.post_load, port, concurrency, duration, warmup=1.0, timeout=5.0, server_pid=pid,
                    cpus=load_cpus,
                )
            cpu[name].append(r["server_cpu"] / max(r["completed"], 1))
            counts[name] += r["completed"]
            if name == "server":
                stalled += sum(1 for x in r["latencies"] if x > clients.STALL) + sum(r["failures"].values())
                not_ok += sum(n for status, n in r["statuses"].items() if status != 200)
    ratio = percentile([a / b for a, b in zip(cpu["server"], cpu["bare"], strict=True)], 50)
    logged = percentile([a / b for a, b in zip(cpu["server"], cpu["bare+log"], strict=True)], 50)
    labels = {"bare": "bare twisted.web Resource", "bare+log": "bare Resource + the report's log line",
              "server": "this server"}
    rows = [Row(f"{labels[name]}: server CPU per request", f"{percentile(cpu[name], 50) * 1e6:.0f} µs "
                f"(rounds: {', '.join(f'{x * 1e6:.0f}' for x in cpu[name])})") for name in names]
    rows += [
        Row("this server / bare", f"{ratio:.2f}x (median of the rounds' ratios)", "<= 1.2x", ratio <= 1.2),
        Row("this server / bare with the log line", f"{logged:.2f}x (median of the rounds' ratios)"),
        Row("requests/s, bare / bare+log / this server", " / ".join(f"{counts[n] / (rounds * duration):.0f}" for n in names)),
        Row("this server: stalled > 1 s or failed", str(stalled), "0", stalled == 0),
        Row("this server: answers other than 200", str(not_ok), "0", not_ok == 0),
        Row("load", f"firmware requests, new connection each, {concurrency} at a time, "
            f"{rounds} rounds of {duration:g} s per server, interleaved"),
        Row("CPUs", f"server on {sorted(server_cpus)}, load on {sorted(load_cpus)}" if server_cpus
            else "server and load share the only CPU"),
    ]
    return rows


@benchmark("history", "pub/sub history (issue 14): 1000 subscribers, PUBSUB_HISTORY 100 vs 0; the store per publication")
def pubsub_history(bench: Bench) -> list:
    size, count = 1000, 200
    results = {}
    # Yardstick first: history off is PiCloud's cost.
    for label, settings in [("history off", "PUBSUB_HISTORY = 0\n"), ("history on", "PUBSUB_HISTORY = 100\n")]:
        with bench.server(settings) as server:
            results[label] = bench.in_child(
                clients.publish_fanout, server.ports["HTTP"], server.ports["app WebSocket"], server.process.pid,
                size, count, child_timeout=240,
            )
    off, on = results["history off"], results["history on"]
    rows = []
    for name, pick in [
        ("POST -> last subscriber p50", lambda r: ms(percentile(r["latencies"], 50))),
        ("POST -> last subscriber p99", lambda r: ms(percentile(r["latencies"], 99))),
        ("server CPU per delivery", lambda r: f"{r['server_cpu'] / (count * size) * 1e6:.2f} µs"),
        ("server CPU per publication", lambda r: f"{r['server_cpu'] / count * 1e3:.2f} ms"),
    ]:
        rows.append(Row(f"{size} subscribers, history on: {name}", pick(on), f"off: {pick(off)}"))
    for label, r in results.items():
        ok = r["missed"] == 0 and r["unexpected"] == 0
        rows.append(Row(f"{label}: publications measured", f"{count} ({r['missed']} missed, {r['unexpected']} wrong)",
                        "0 missed", ok))
    from bench import store

    for metric, value, yardstick in store.compare_publish():
        rows.append(Row(metric, value, yardstick))
    return rows


@benchmark("store", "POST /data, keep-alive clients, STATE_DB set versus None and stand-in writers (bench/store.py, issues 7 and 12)")
def state_db(bench: Bench) -> list:
    from bench import store

    return [Row(metric, value, target, met) for metric, value, target, met in store.compare(floors=True)]


# --------------------------------------------------------------------------


def print_table(results) -> None:
    width = max([len(row.metric) for _, rows in results for row in rows] + [10]) + 2
    vwidth = max([len(row.value) for _, rows in results for row in rows] + [10]) + 2
    for bench_, rows in results:
        print()
        print(f"== {bench_.name}: {bench_.description}")
        print(f"   {'metric':<{width}}{'value':<{vwidth}}{'target':<11}")
        for row in rows:
            verdict = "" if row.met is None else ("met" if row.met else "MISSED")
            print(f"   {row.metric:<{width}}{row.value:<{vwidth}}{row.target:<11}{verdict}")


def git_describe() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for b in BENCHMARKS.values():
            print(f"{b.name:10} {b.description}")
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    chosen = [BENCHMARKS[n] for n in args.names] or list(BENCHMARKS.values())

    # 5000 connections need 5000+ descriptors in the client and the server;
    # the server inherits this limit (and raises its own soft limit anyway).
    limit = clients.raise_fd_limit()
    print(
        f"smartplug bench {git_describe()}: Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}, open files limit {limit}; "
        "server and clients on 127.0.0.1"
    )
    scratch = tempfile.mkdtemp(prefix="smartplug-bench-")
    bench = Bench(scratch)
    results, crashed = [], 0
    started = time.monotonic()
    try:
        for b in chosen:
            t0 = time.monotonic()
            watch = CpuWatch()
            try:
                rows = b.run(bench)
            except Exception as e:  # report it and go on with the others
                traceback.print_exc()
                crashed += 1
                rows = [Row("error", f"{type(e).__name__}: {e}"[:300])]
            rows.append(Row("wall time", f"{time.monotonic() - t0:.0f} s"))
            rows.append(Row("CPU of other processes", watch.others()))
            results.append((b, rows))
            print(f"   ... {b.name} done", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(results)
    print()
    limits = sorted(set(bench.server_fd_limits))
    if limits:
        print(f"server open files limit (soft/hard): {', '.join(limits)}")
    checked = [row.met for _, rows in results for row in rows if row.met is not None]
    print(
        f"targets met: {sum(checked)} of {len(checked)}; "
        f"total {time.monotonic() - started:.0f} s"
    )
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
