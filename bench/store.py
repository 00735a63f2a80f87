"""
POST /data requests per second with the SQLite state store (C{STATE_DB}
set) and without it (C{STATE_DB = None}), on the real C{twistd -n smartplug}
over loopback.

    python bench/store.py [--duration S] [--concurrency N]

Each report is committed (WAL, synchronous=FULL: one fsync) before its 200
goes out, so the difference is what durability costs.  Figures, not a test.
The client load runs in a separate process, so it never shares a GIL with
this one (which reads the server's log) or with the server.
"""

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from http.client import HTTPConnection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.server import RunningServer  # noqa: E402

MODES = {"STATE_DB = None": "STATE_DB = None\n", "STATE_DB set": 'STATE_DB = "bench.sqlite"\n'}


def post_load(port: int, concurrency: int, duration: float, warmup: float, publish: bool = False) -> dict:
    """
    C{concurrency} keep-alive clients POST reports (or, with C{publish},
    PiCloud publications to POST /publish) as fast as they are answered,
    for C{warmup} then C{duration} seconds; only answers within the
    measured window count.
    """
    path, ok = ("/publish?clientName=bench", 201) if publish else ("/data", 200)
    begin = time.perf_counter()
    measure_from, stop_at = begin + warmup, begin + warmup + duration
    counts = {"answered": 0, "not_200": 0, "errors": 0, "total": 0}
    lock = threading.Lock()

    def client(n: int) -> None:
        connection = HTTPConnection("127.0.0.1", port, timeout=10)
        i = 0
        while time.perf_counter() < stop_at:
            if publish:
                body = json.dumps({"event": f"bench-{n}", "data": f"reading {i}"})
            else:
                body = json.dumps({"id": f"bench-{n}", "value": i % 2})
            i += 1
            try:
                connection.request("POST", path, body, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                answer.read()
                status = answer.status
            except OSError:
                status = None
                connection.close()
                connection = HTTPConnection("127.0.0.1", port, timeout=10)
            now = time.perf_counter()
            if status is not None:
                with lock:
                    counts["total"] += 1
            if measure_from <= now <= stop_at:
                with lock:
                    if status is None:
                        counts["errors"] += 1
                    else:
                        counts["answered"] += 1
                        counts["not_200"] += status != ok
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return dict(counts, per_second=counts["answered"] / duration)


def measure(settings: str, concurrency: int = 16, duration: float = 5.0, warmup: float = 1.0,
            publish: bool = False) -> dict:
    """
    Start a server with C{settings} in a scratch directory, load it from a
    child process, stop it.

    @return: what L{post_load} returns, and C{server_cpu}: the server's CPU
        seconds over the whole load (warm-up included).
    """
    from bench.clients import cpu_seconds

    directory = tempfile.mkdtemp(prefix="smartplug-bench-")
    server = RunningServer(directory, settings)
    try:
        server.start()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            before = cpu_seconds(server.process.pid)
            job = pool.submit(post_load, server.ports["HTTP"], concurrency, duration, warmup, publish)
            result = job.result(timeout=duration + warmup + 60)
            return dict(result, server_cpu=cpu_seconds(server.process.pid) - before)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def compare(concurrency: int = 16, duration: float = 5.0) -> list:
    """
    POST /data with and without the store.

    @return: C{(metric, value)} rows, ready to print.
    """
    results = {name: measure(settings, concurrency, duration) for name, settings in MODES.items()}
    memory, stored = results["STATE_DB = None"], results["STATE_DB set"]
    rows = [(f"POST /data requests/s, {name}", f"{r['per_second']:.0f}") for name, r in results.items()]
    if memory["per_second"]:
        rows.append(("STATE_DB set / None", f"{stored['per_second'] / memory['per_second']:.0%}"))
    for name, r in results.items():
        if r["not_200"] or r["errors"]:
            rows.append((f"problems, {name}", f"{r['not_200']} answers not 200, {r['errors']} errors"))
    rows.append(("load", f"{concurrency} keep-alive clients, {duration:g} s after 1 s warm-up"))
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
        return f"{r['server_cpu'] / r['total'] * 1e6:.0f} µs" if r["total"] else "-"

    rows = [
        ("POST /publish per second, STATE_DB set", per_second(stored), f"None: {per_second(memory)}"),
        ("server CPU per publication (HTTP included), STATE_DB set", cpu(stored), f"None: {cpu(memory)}"),
        ("time per publication (1 / rate), STATE_DB set", wall_ms(stored), f"None: {wall_ms(memory)}"),
    ]
    for name, r in results.items():
        if r["not_200"] or r["errors"]:
            rows.append((f"problems, {name}", f"{r['not_200']} answers not 201, {r['errors']} errors", "0"))
    rows.append(("load", f"{concurrency} keep-alive clients, {duration:g} s after 1 s warm-up, 16 events", ""))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per mode (default 5)")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive clients (default 16)")
    args = parser.parse_args(argv)
    rows = compare(args.concurrency, args.duration)
    width = max(len(metric) for metric, _ in rows)
    for metric, value in rows:
        print(f"{metric:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
