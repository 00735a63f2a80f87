"""
The yardstick for the ingest benchmark: a bare twisted.web C{Resource} on the
reactor thread that reads a report's JSON and answers C{{}}, and nothing
else (no state, no log line, no guard, no connection count, no deadlines).

    python bench/bare.py      # prints "bare listening on 127.0.0.1:PORT"

Its channel only splits request lines on LF as well as CRLF, the least any
server must do to read the plug firmware's request (SPEC 1.1); otherwise it
is plain twisted.web.  bench/run.py runs it beside the real server in the
same benchmark, so a shared machine's load weighs on both alike.
"""

import json
import sys

from twisted.internet import reactor
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site


class LFChannel(HTTPChannel):
    """
    twisted.web's channel, reading bare-LF request heads too.
    """

    delimiter = b"\n"

    def lineReceived(self, line: bytes):
        if line.endswith(b"\r"):
            line = line[:-1]
        return super().lineReceived(line)


class Report(Resource):
    """
    POST anything: parse the body as JSON, answer C{{}}.
    """

    isLeaf = True

    def render_POST(self, request) -> bytes:
        json.loads(request.content.read())
        request.setHeader(b"Content-Type", b"application/json")
        return b"{}"


class BareSite(Site):
    protocol = LFChannel
    noisy = False

    def log(self, request) -> None:
        pass


def main() -> None:
    port = reactor.listenTCP(0, BareSite(Report()), backlog=1024, interface="127.0.0.1")
    print(f"bare listening on 127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
