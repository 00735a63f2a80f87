"""
C{make conformance}: the Autobahn|Testsuite cases (groups 1-7 and 10, run by
C{kosoku}) against each WebSocket route of the real C{twistd -n smartplug},
and against an echo server built on the same base classes, and a table of
OK / NON-STRICT / FAILED per group.

    bench/conformance.py                 # every route, groups 1-7 and 10
    bench/conformance.py --routes echo / # only these routes
    bench/conformance.py --cases '6.*'   # only these cases

Most cases send a message and expect it echoed.  Our routes do not echo (a
PlugBuddy status request, a PiCloud publication or subscription, a device's
secret are answered in their own way, or not at all), so such a case fails
on a route however well the protocol is spoken.  A failure counts as
"non-echo" when the same case passes on the echo server (same protocol
class, same options) and the route sent no message at all; the table shows
those apart, and the script exits non-zero for any other failure.

Figures, not a unit test: it takes a few minutes (kosoku waits a second for
each echo that never comes).
"""

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.server import RunningServer  # noqa: E402

GROUPS = ["1", "2", "3", "4", "5", "6", "7", "10"]
SECRET = "conformance-secret"
KEY = "conformance-key"
SETTINGS = (
    f"AUTH_SECRET = {SECRET!r}\nAPI_KEY = {KEY!r}\n"
    # No info frames during a case (they would be unexpected messages), and
    # no bans for the device port's refused "secrets".
    "INFO_INTERVAL = 3600\nBAN_ALLOW = ['127.0.0.1']\n"
)
# label -> (listener, path, what a case that fails only for want of an
# answer is called)
ROUTES = {
    "echo": (None, "/", None),
    "/ (PlugBuddy)": ("app WebSocket", "/", "non-echo"),
    "/subscribe": ("app WebSocket", f"/subscribe?apiKey={KEY}&clientName=conformance", "non-echo"),
    "/publish": ("app WebSocket", f"/publish?apiKey={KEY}&clientName=conformance", "non-echo"),
    "/socket/info": ("app WebSocket", f"/socket/info?apiKey={KEY}", "non-echo"),
    # A device's first message must be the secret: anything else is closed
    # with 1008, and pings before it get no pong (SPEC 2.1).
    "device port": ("device WebSocket", "/", "non-echo (secret first)"),
}
PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "non-echo", "non-echo (secret first)", "FAILED"]

ECHO_SERVER = """
import sys
from twisted.internet import reactor
from smartplug_backend.ws.base import LenientServerProtocol, LimitedServerFactory
from smartplug_backend.ws.origins import ANY_ORIGIN

class Echo(LenientServerProtocol):
    def onMessage(self, payload, isBinary):
        self.sendMessage(payload, isBinary)

factory = LimitedServerFactory(None, clock=reactor)
factory.protocol = Echo
factory.setProtocolOptions(**ANY_ORIGIN)
port = reactor.listenTCP(0, factory, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


def run_cases(url: str, cases, concurrency: int) -> list:
    from kosoku import FailureError, run_fuzzingclient

    async def main():
        try:
            return await run_fuzzingclient(url, cases=cases, concurrency=concurrency)
        except FailureError as e:
            return e.results

    return asyncio.run(main())


def verdict(result) -> str:
    """
    The worse of a case's two verdicts, as the table counts it.
    """
    if result.behavior.value not in PASSING:
        return "FAILED"
    if result.behavior_close.value not in ("OK", "INFORMATIONAL"):
        return "FAILED"
    return result.behavior.value


def sent_messages(result) -> bool:
    return any(event[0] == "message" for event in (result.received or ()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", nargs="*", default=list(ROUTES), help="route labels to run")
    parser.add_argument("--cases", nargs="*", default=[g + ".*" for g in GROUPS], help="case ids or globs")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    unknown = [r for r in args.routes if r not in ROUTES]
    if unknown:
        parser.error(f"unknown routes {unknown}; known: {list(ROUTES)}")

    directory = tempfile.mkdtemp(prefix="smartplug-conformance-")
    server = RunningServer(directory, SETTINGS, listeners=("HTTP", "app WebSocket", "device WebSocket")).start()
    echo = subprocess.Popen(
        [sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    try:
        echo_port = int(echo.stdout.readline())
        results = {}
        for label in ["echo"] + [r for r in args.routes if r != "echo"]:
            listener, path, _ = ROUTES[label]
            port = echo_port if listener is None else server.ports[listener]
            print(f"running {label} ...", file=sys.stderr, flush=True)
            results[label] = {r.case_id: r for r in run_cases(f"ws://127.0.0.1:{port}{path}", args.cases, args.concurrency)}
    finally:
        echo.terminate()
        echo.wait()
        server.stop()

    reference = results["echo"]
    bad = []
    print("| route | " + " | ".join(f"group {g}" for g in GROUPS) + " |")
    print("|---|" + "---|" * len(GROUPS))
    for label in results:
        if label not in args.routes:
            continue
        counts = collections.defaultdict(collections.Counter)
        for case_id, result in results[label].items():
            kind = verdict(result)
            if kind == "FAILED" and label != "echo":
                if verdict(reference[case_id]) != "FAILED" and not sent_messages(result):
                    kind = ROUTES[label][2]
            if kind == "FAILED":
                bad.append((label, case_id, result.behavior.value, result.behavior_close.value, result.result_close))
            counts[case_id.split(".")[0]][kind] += 1
        cells = []
        for group in GROUPS:
            c = counts.get(group)
            if not c:
                cells.append("-")
                continue
            cells.append(", ".join(f"{c[k]} {k}" for k in sorted(c, key=ORDER.index)))
        print(f"| {label} | " + " | ".join(cells) + " |")
    for label, case_id, behavior, close, why in bad:
        print(f"FAILED {label} {case_id}: {behavior} / {close}: {why}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
