"""
POST /data requests per second with the SQLite state store (C{STATE_DB}
set) and without it (C{STATE_DB = None}), on the real C{twistd -n smartplug}
over loopback.

    python bench/store.py [--duration S] [--concurrency N] [--rounds R] [--floors]

Each report is committed (WAL, synchronous=FULL: one fsync per commit)
before its 200 goes out; reports that arrive together share one commit
(group commit, smartplug_backend/state/persistence.py).  The difference is
what durability costs.  Figures, not a test.  The client load runs in a
separate process (bench/clients.py's keep-alive client on epoll), so it
never shares a GIL with this one (which reads the server's log) or with the
server; the modes are measured in turns, so a change in the machine's load
weighs on all alike.  With C{--floors} (as in C{make bench}) two more servers
take their turns, their store writer replaced by a stand-in (bench/standin.py).
"""

import argparse
import contextlib
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import clients, standin  # noqa: E402
from tests.server import RunningServer  # noqa: E402

MODES = {"STATE_DB = None": "STATE_DB = None\n", "STATE_DB set": 'STATE_DB = "bench.sqlite"\n'}
TARGET = 0.8  # issue 12: STATE_DB set at least 0.8x of STATE_DB = None


def measure(settings: str, concurrency: int = 16, duration: float = 4.0, warmup: float = 1.0,
            publish: bool = False) -> dict:
    """
    Start a server with C{settings} in a scratch directory, load it from a
    child process (reports, or with C{publish} publications), stop it.  On
    a machine with two CPUs or more the server (all its threads) runs on
    one half of them and the load on the other, as in the ingest benchmark.

    @return: what L{clients.keepalive_load} returns.
    """
    directory = tempfile.mkdtemp(prefix="smartplug-bench-")
    server = RunningServer(directory, settings)
    server_cpus, load_cpus = clients.split_cpus()
    try:
        with clients.pinned(os.getpid(), load_cpus):
            server.start()
            with clients.pinned(server.process.pid, server_cpus):
                context = multiprocessing.get_context("spawn")
                # The load process inherits this process's CPUs.
                with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                    job = pool.submit(
                        clients.keepalive_load, server.ports["HTTP"], concurrency, duration, warmup,
                        server_pid=server.process.pid, publish=publish,
                    )
                    return job.result(timeout=duration + warmup + 60)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def fsync_times(count: int = 40) -> list:
    """
    Seconds each of C{count} fsyncs of a 4 KiB append took, in a scratch
    file on the file system the servers' databases are on: what one
    commit waits for at least.
    """
    directory = tempfile.mkdtemp(prefix="smartplug-bench-")
    path = os.path.join(directory, "fsync")
    times = []
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for _ in range(count):
                os.write(fd, b"x" * 4096)
                start = time.perf_counter()
                os.fsync(fd)
                times.append(time.perf_counter() - start)
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return sorted(times)


def compare(concurrency: int = 16, duration: float = 1.5, rounds: int = 12, floors: bool = False) -> list:
    """
    POST /data with and without the store: the servers run side by side
    (on the same CPUs, one loaded at a time) and the load goes from one to
    the next in short turns, C{rounds} each, starting each round with the
    next server, so that none always follows the same one.  Each ratio is
    the median of the turns' ratios, each turn paired with the same round's
    C{STATE_DB = None} turn.  On a shared machine whose speed drifts over
    seconds, short alternating turns see the same machine; restarting a
    server for each long turn, as this did before, saw turns of one build
    range 0.5-1.0x.

    @param floors: also run, in the same turns, servers whose store writer
        is a stand-in (L{standin}): one fdatasync per group and no SQLite,
        then no work at all; their ratios to C{STATE_DB = None} are floors
        for the store's: what one fsync per group, and then the mechanism
        alone, leave of it.
    @return: C{(metric, value, target, met)} rows, ready to print.
    """
    modes = dict(MODES)
    # mode -> the stand-in writer its server must say it runs
    standins = {}
    if floors:
        for kind in standin.KINDS:
            name = f"stand-in writer: {kind}"
            modes[name] = MODES["STATE_DB set"] + standin.settings(kind)
            standins[name] = kind
    totals = {name: {"answered": 0, "cpu": 0.0, "reactor": 0.0, "not_200": 0, "failures": 0, "rates": []}
              for name in modes}
    server_cpus, load_cpus = clients.split_cpus()
    scratch = tempfile.mkdtemp(prefix="smartplug-bench-")
    servers = {}
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(clients.pinned(os.getpid(), load_cpus))
            for name, settings in modes.items():
                directory = os.path.join(scratch, str(len(servers)))
                os.mkdir(directory)
                server = servers[name] = RunningServer(directory, settings)
                stack.callback(server.stop)
                server.start()
                if name in standins:
                    # Figures of a server that runs SQLite after all would be wrong.
                    server.wait_for(re.escape(standin.INSTALLED.format(kind=standins[name])))
                stack.enter_context(clients.pinned(server.process.pid, server_cpus))
            context = multiprocessing.get_context("spawn")
            # One load process for every turn; it inherits this process's CPUs.
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=1, mp_context=context))
            names = list(servers)
            for turn in range(rounds):
                for name in names[turn % len(names):] + names[:turn % len(names)]:
                    server = servers[name]
                    r = pool.submit(
                        clients.keepalive_load, server.ports["HTTP"], concurrency, duration, 0.5,
                        server_pid=server.process.pid,
                    ).result(timeout=duration + 60)
                    t = totals[name]
                    t["answered"] += r["answered"]
                    t["rates"].append(r["answered"] / duration)
                    t["cpu"] += r["server_cpu"] or 0.0
                    t["reactor"] += r["reactor_cpu"] or 0.0
                    t["not_200"] += sum(n for status, n in r["statuses"].items() if status != 200)
                    t["failures"] += sum(r["failures"].values())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    memory = totals["STATE_DB = None"]
    rows = []
    for name, t in totals.items():
        rate = t["answered"] / (rounds * duration)
        cpu, reactor = t["cpu"] / max(t["answered"], 1), t["reactor"] / max(t["answered"], 1)
        rows.append((f"requests/s, {name}", f"{rate:.0f} ({cpu * 1e6:.0f} µs server CPU each: reactor thread "
                     f"{reactor * 1e6:.0f}, other threads {max(cpu - reactor, 0) * 1e6:.0f}; "
                     f"turns {min(t['rates']):.0f}-{max(t['rates']):.0f})", "", None))
    for name, t in totals.items():
        if name == "STATE_DB = None":
            continue
        ratios = sorted(s / m for s, m in zip(t["rates"], memory["rates"], strict=True) if m)
        middle = len(ratios) // 2
        ratio = ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2
        measured = name == "STATE_DB set"
        rows.append((f"{name} / None", f"{ratio:.2f}x (median of {len(ratios)} turns' ratios; "
                     f"quartiles {ratios[len(ratios) // 4]:.2f}-{ratios[3 * len(ratios) // 4]:.2f})",
                     f">= {TARGET}x" if measured else "", ratio >= TARGET if measured else None))
    if all(totals[name]["cpu"] and totals[name]["answered"] for name in MODES):
        # On one CPU that it keeps busy, a server answers 1 / (CPU per
        # request) requests a second: the ratio above cannot beat this.
        per = {name: totals[name]["cpu"] / totals[name]["answered"] for name in MODES}
        bound = ("an upper bound on the requests/s ratio while the server's one CPU is busy"
                 if server_cpus is not None and len(server_cpus) == 1 else "the servers have more than one CPU")
        rows.append(("server CPU per request, None / set",
                     f"{per['STATE_DB = None'] / per['STATE_DB set']:.2f}x ({bound})", "", None))
    for name, t in totals.items():
        if t["not_200"] or t["failures"]:
            rows.append((f"problems, {name}", f"{t['not_200']} answers not 200, {t['failures']} failed", "0", False))
    fsyncs = fsync_times()
    p50, p90 = fsyncs[len(fsyncs) // 2], fsyncs[len(fsyncs) * 9 // 10]
    rows.append(("fsync on this disk, p50 / p90", f"{p50 * 1e3:.1f} / {p90 * 1e3:.1f} ms "
                 f"(one commit; {concurrency} clients can share it)", "", None))
    where = (f"the {len(modes)} servers on CPUs {sorted(server_cpus)}, load on {sorted(load_cpus)}" if server_cpus
             else "servers and load on the only CPU")
    rows.append(("load", f"{concurrency} keep-alive clients, {rounds} turns of {duration:g} s per mode "
                 f"(after 0.5 s warm-up), in rotation; {where}", "", None))
    return rows


def compare_publish(concurrency: int = 16, duration: float = 3.0) -> list:
    """
    POST /publish (history on, the default) with and without the store: what
    journaling a publication costs.

    @return: C{(metric, value, yardstick)} rows, the yardstick being the
        same figure with C{STATE_DB = None} in the same run.
    """
    results = {name: measure(settings, concurrency, duration, publish=True) for name, settings in MODES.items()}
    memory, stored = results["STATE_DB = None"], results["STATE_DB set"]

    def per_second(r):
        return f"{r['per_second']:.0f}"

    def wall_ms(r):
        # Mean time per publication with the clients kept busy.
        return f"{1000 / r['per_second']:.2f} ms" if r["per_second"] else "-"

    def cpu(r):
        return f"{r['server_cpu'] / r['answered'] * 1e6:.0f} µs" if r["answered"] and r["server_cpu"] else "-"

    rows = [
        ("POST /publish per second, STATE_DB set", per_second(stored), f"None: {per_second(memory)}"),
        ("server CPU per publication (HTTP included), STATE_DB set", cpu(stored), f"None: {cpu(memory)}"),
        ("time per publication (1 / rate), STATE_DB set", wall_ms(stored), f"None: {wall_ms(memory)}"),
    ]
    for name, r in results.items():
        not_201 = sum(n for status, n in r["statuses"].items() if status != 201)
        if not_201 or r["failures"]:
            rows.append((f"problems, {name}", f"{not_201} answers not 201, {sum(r['failures'].values())} failed", "0"))
    rows.append(("load", f"{concurrency} keep-alive clients, {duration:g} s after 1 s warm-up, 16 events", ""))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1.5, help="seconds measured per turn (default 1.5)")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive clients (default 16)")
    parser.add_argument("--rounds", type=int, default=12, help="turns per mode (default 12)")
    parser.add_argument("--floors", action="store_true",
                        help="also measure stand-in store writers (bench/standin.py): fdatasync only, nothing")
    args = parser.parse_args(argv)
    rows = compare(args.concurrency, args.duration, args.rounds, args.floors)
    width = max(len(row[0]) for row in rows)
    for metric, value, target, met in rows:
        verdict = "" if met is None else ("met" if met else "MISSED")
        print(f"{metric:<{width}}  {value}  {target} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
