"""
The yardstick for the ingest benchmark: a bare twisted.web C{Resource} on the
reactor thread that reads a report's JSON and answers C{{}}, and nothing
else (no state, no log line, no guard, no connection count, no deadlines).

    python bench/bare.py         # prints "bare listening on 127.0.0.1:PORT"
    python bench/bare.py --log   # ... and logs one line per report

With C{--log} it also writes the one line per report that the server must
write, through twisted.logger's text observer on standard output (for
experiments; C{make bench} runs it without).

Its channel only splits request lines on LF as well as CRLF, the least any
server must do to read the plug firmware's request (SPEC 1.1); otherwise it
is plain twisted.web.  bench/run.py runs it beside the real server in the
same benchmark, so a shared machine's load weighs on both alike.
"""

import json
import sys

from twisted.internet import reactor
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
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
    POST anything: parse the body as JSON, answer C{{}}; with C{log}, log
    the report as the server's hub does.
    """

    isLeaf = True
    _log = Logger(namespace="smartplug_backend.core.hub")

    def __init__(self, log: bool = False) -> None:
        super().__init__()
        self.log = log

    def render_POST(self, request) -> bytes:
        report = json.loads(request.content.read())
        if self.log:
            self._log.info(
                "plug {plug_id} -> {value} from {peer}",
                plug_id=report.get("id"), value=report.get("value"), peer=request.getClientAddress().host,
            )
        request.setHeader(b"Content-Type", b"application/json")
        return b"{}"


class BareSite(Site):
    protocol = LFChannel
    noisy = False

    def log(self, request) -> None:
        pass


def main() -> None:
    log = "--log" in sys.argv[1:]
    if log:
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    port = reactor.listenTCP(0, BareSite(Report(log)), backlog=1024, interface="127.0.0.1")
    print(f"bare listening on 127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
