"""
The HTTP listener: twisted.web serving the Bottle app through WSGIResource,
with a channel lenient enough for the plug's firmware.

The ESP8266 firmware ends its request lines with a bare LF (SPEC 1.1).
twisted.web's channel is a LineReceiver split on CRLF, so it would wait
forever for the end of those headers.  L{LenientHTTPChannel} splits on LF and
drops a trailing CR, which reads CRLF and LF-only request heads alike; bodies
are read by length or chunked decoder as before, untouched.

The firmware also closes its side as soon as its bytes are out.  twisted.web
then closes the request body, while the WSGI thread may not have read it yet;
L{PatientRequest} keeps the body readable so the report is still acted on.

The site's root hands every path to the app, except those of the named
children it is given (C{/metrics}, C{/ui}) and the POST routes answered on
the reactor thread (C{/data}, C{/publish}): L{Root}.

twisted.web's idle timeout restarts with every byte received, so a peer that
trickles a request a byte at a time would hold its connection for ever
(slowloris).  The channel adds a fixed deadline: a request's head and body
must arrive within C{request_timeout} seconds of its first byte (or of the
connection, for the first request), or the peer gets 408 and is closed.

A client may half-close: send its request, C{shutdown(SHUT_WR)}, then read
the answer (netcat, some HTTP/1.0 tools).  twisted.web treats the end of the
peer's bytes as the end of the connection and drops the answer; the channel
is an L{IHalfCloseableProtocol} instead, and answers the requests it has
whole before it closes.  To the server the firmware's full close looks the
same (an end of input), so its report is acted on as before; only its
answer goes nowhere.
"""

import io
import json
from typing import Optional

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.server import version as server_version
from twisted.web.wsgi import WSGIResource
from zope.interface import implementer

from ..core.limits import HTTP_IDLE_TIMEOUT, HTTP_REQUEST_TIMEOUT, MAX_BODY
from ..internals import HTTPChannelSeams
from ..server import utf8
from ..ws.base import peer_host
from .ingest import FastRoute


@implementer(IHalfCloseableProtocol)
class LenientHTTPChannel(HTTPChannelSeams):
    """
    An HTTPChannel that accepts request heads with CRLF or bare LF line ends,
    refuses bodies over L{MAX_BODY} with 413 before reading them, gives
    each request C{request_timeout} seconds to arrive whole (408), and
    answers a peer that has half-closed.
    """

    _log = Logger(namespace="smartplug_backend.http.api")
    delimiter = b"\n"
    refused = False
    request_timeout = HTTP_REQUEST_TIMEOUT
    _request_deadline = None

    def connectionMade(self):
        super().connectionMade()
        self._start_request_deadline()

    def dataReceived(self, data: bytes):
        # Once the channel is closing (after a 400, or the last response)
        # nothing more is read.  twisted.web would go on parsing what a TLS
        # layer (or a test's transport) still hands over: a second 400, or a
        # request answered after the connection was given up.
        if getattr(self.transport, "disconnecting", False):
            return None
        # The first byte of a request starts its deadline; bytes that arrive
        # while a request is being answered are only buffered by twisted.web
        # and replayed here when it is done.
        if self._request_deadline is None and not self.handling_request:
            self._start_request_deadline()
        return super().dataReceived(data)

    def lineReceived(self, line: bytes):
        if line.endswith(b"\r"):
            line = line[:-1]
        return super().lineReceived(line)

    def allHeadersReceived(self):
        # A declared length over the limit is refused before any of the body
        # is read (and before "100 Continue" would invite it).
        if self.declared_length is not None and self.declared_length > MAX_BODY:
            return self.refuse_too_large()
        return super().allHeadersReceived()

    def allContentReceived(self):
        self._stop_request_deadline()
        if not self.refused:
            super().allContentReceived()

    def connectionLost(self, reason):
        self._stop_request_deadline()
        super().connectionLost(reason)

    _peer_done = False

    def readConnectionLost(self) -> None:
        """
        The peer will send nothing more: answer the request being handled
        (and any whole ones behind it), then close; close now if none is.
        """
        self._peer_done = True
        self._stop_request_deadline()
        if not self.handling_request:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        # We never half-close our side; if the transport says it is gone,
        # nothing can be answered.
        self.loseConnection()

    def requestDone(self, request):
        super().requestDone(request)
        # Pipelined requests the peer sent before its end are replayed by
        # requestDone; once none is left, nothing more can come.
        if self._peer_done and not self.handling_request:
            self.loseConnection()

    def _start_request_deadline(self) -> None:
        if self.request_timeout and not self.refused:
            self._request_deadline = self.callLater(self.request_timeout, self._request_too_slow)

    def _stop_request_deadline(self) -> None:
        deadline, self._request_deadline = self._request_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _request_too_slow(self) -> None:
        self._request_deadline = None
        self._log.info(
            "HTTP client {peer} sent no complete request within {seconds} seconds; closing",
            peer=peer_host(self.transport),
            seconds=self.request_timeout,
        )
        self._refuse(b"408 Request Timeout", f"no complete request within {self.request_timeout} seconds")
        # Twisted's own timeout: close, and abort if the peer does not let go.
        self.timeoutConnection()

    def lineLengthExceeded(self, line):
        # One line over 16 KiB: LineReceiver would just close; answer it
        # like twisted.web's other oversized heads.
        self.bad_request()

    def bad_request(self):
        # twisted.web's answer to a malformed request line or header is a
        # bare 400 with no body; SPEC 1 wants every error as JSON.
        if self._refuse(b"400 Bad Request", "malformed HTTP request"):
            self.loseConnection()

    def refuse_too_large(self) -> None:
        """
        Answer 413 with a JSON error, close, and ignore whatever else comes.
        """
        if self._refuse(b"413 Request Entity Too Large", f"body too large: at most {MAX_BODY} bytes"):
            self.transport.loseConnection()

    def _refuse(self, status: bytes, message: str) -> bool:
        """
        Answer C{status} with a JSON error, once, and ignore whatever else
        comes; the caller closes.

        @return: False when the connection was refused already.
        """
        if self.refused:
            return False
        self.refused = True
        self._stop_request_deadline()
        body = json.dumps({"error": message}).encode()
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, len(body), body)
        )
        self.dataReceived = lambda data: None
        return True


def origin_form(target: bytes) -> bytes:
    """
    The path and query of an absolute-form request target
    (C{http://host:port/plugs?x} -> C{/plugs?x}); any other target as it is.

    RFC 9112 3.2.2: a server must accept the absolute form (an HTTP/1.1
    proxy forwards requests so); twisted.web would take the scheme and
    host for path segments and every route would answer 404.
    """
    if target[:1] == b"/" or b"://" not in target[:9]:
        return target
    scheme, _, rest = target.partition(b"://")
    if scheme.lower() not in (b"http", b"https"):
        return target
    ends = [at for at in (rest.find(b"/"), rest.find(b"?")) if at >= 0]
    tail = rest[min(ends):] if ends else b""
    return tail if tail[:1] == b"/" else b"/" + tail


class PatientRequest(Request):
    """
    A Request whose body outlives the connection, that counts what a chunked
    body adds up to, and that sends no C{Server} header.

    The body is an in-memory file of at most the size limit; it is released
    with the request object itself.
    """

    _received = 0

    def gotLength(self, length: Optional[int]) -> None:
        # twisted.web makes a temporary file, on the reactor thread (an SD
        # card's /tmp on a Pi), for a chunked body or a declared length of
        # 100,000 bytes or more; a body here is refused past MAX_BODY.
        self.content = io.BytesIO()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        super().requestReceived(command, origin_form(path), version)

    def process(self) -> None:
        if self.path != b"*":
            return super().process()
        # twisted.web answers a "*" target itself, before the site sees it
        # (an empty 200 for OPTIONS, an empty 405 for the rest), past the
        # UTF-8 check and the request timer.  Every error is JSON (SPEC 1):
        # the site answers it (QuietSite.getResourceFor), as twisted.web's
        # process() would.
        self.site = self.channel.site
        self.setHeader(b"date", datetimeToString())
        # No route's path: the request timer labels it as no route's.
        self.prepath, self.postpath = [], [b"*"]
        try:
            self.render(self.site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def setHeader(self, name, value) -> None:
        # twisted.web names itself and its version on every answer; strangers
        # learn nothing of versions here.
        if isinstance(name, bytes) and name.lower() == b"server" and value == server_version:
            return
        super().setHeader(name, value)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self.channel.refuse_too_large()
        elif not self.channel.refused:
            super().handleContentChunk(data)

    def connectionLost(self, reason) -> None:
        content, self.content = self.content, None
        try:
            super().connectionLost(reason)
        finally:
            self.content = content
        # The client left before the answer was finished (the firmware does
        # so at once): the site's log() will not be called for this one.
        timer = getattr(getattr(self, "site", None), "timer", None)
        if timer is not None:
            timer.finished(self)


class Root(Resource):
    """
    The site's root: a POST to one of the C{fast} paths (exactly, without
    its query) goes to that handler, on the reactor thread
    (L{smartplug_backend.http.ingest}), which hands what it does not take
    to the app; C{/<name>} goes to the named child of that name (and below
    it, unless the child is a leaf); every other path goes to the app,
    which sees it whole, as if it were the root itself.
    """

    def __init__(self, app: Resource, children: dict, fast: Optional[dict] = None) -> None:
        super().__init__()
        self._app = app
        self._named = dict(children)
        self._fast = {path: FastRoute(handler, app) for path, handler in (fast or {}).items()}

    def getChildWithDefault(self, name: bytes, request):
        if request.method == b"POST":
            route = self._fast.get(request.path)
            if route is not None:
                # As for the app: the handler may hand the request on to it.
                request.postpath.insert(0, request.prepath.pop())
                return route
        child = self._named.get(name)
        if child is not None and (not child.isLeaf or not request.postpath):
            return child
        # Undo the step twisted.web took, so the WSGI environ's SCRIPT_NAME
        # and PATH_INFO are what they were with the app at the root.
        request.postpath.insert(0, request.prepath.pop())
        return self._app


class BadRequest(Resource):
    """
    The answer to a request no route may read: bytes that are not UTF-8 in
    its path, query or a header (SPEC 6.3; L{utf8.problem}), or a target
    that is no path: 400 with a JSON error saying what is wrong, whatever
    the route; for a C{*} target with a method other than OPTIONS, 405.
    """

    isLeaf = True
    # As a class attribute a Logger takes the class's name as its namespace.
    _log = Logger()

    def __init__(self, problem: str, code: int = 400) -> None:
        super().__init__()
        self._problem = problem
        self._code = code

    def render(self, request) -> bytes:
        self._log.info("HTTP client {peer}: {problem}; answered {code}", peer=peer_host(request.transport),
                       problem=self._problem, code=self._code)
        request.setResponseCode(self._code)
        if self._code == 405:
            request.setHeader(b"Allow", b"OPTIONS")
        request.setHeader(b"Content-Type", b"application/json")
        body = json.dumps({"error": self._problem}).encode()
        if request.method == b"HEAD":
            # A body for HEAD makes twisted.web log the request, its
            # target whole (an apiKey in the query too).
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return b""
        return body


class ServerOptions(Resource):
    """
    C{OPTIONS *} (RFC 9110 9.3.7): an empty 200, as twisted.web answers it,
    once the site has checked the request like any other.
    """

    isLeaf = True

    def render(self, request) -> bytes:
        request.setHeader(b"Content-Length", b"0")
        return b""


class QuietSite(Site):
    """
    A Site with the lenient channel and no per-request access log: reports
    are logged by the hub as one readable line each, and rejected input by
    the app, so a combined-log line per request would only add noise and cost.

    @ivar timer: told when each request starts being served and when it is
        answered (L{smartplug_backend.http.metrics.RequestTimer}), or C{None}.
    """

    protocol = LenientHTTPChannel
    requestFactory = PatientRequest
    noisy = False  # the listener logs where it listens, readably
    request_timeout = HTTP_REQUEST_TIMEOUT
    timer = None

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.request_timeout = self.request_timeout
        return channel

    def getResourceFor(self, request):
        if self.timer is not None:
            self.timer.started(request)
        headers = ((name, value) for name, values in request.requestHeaders.getAllRawHeaders() for value in values)
        refused = utf8.problem(request.uri, headers)
        if refused is not None:
            return BadRequest(refused)
        if request.uri == b"*":
            if request.method == b"OPTIONS":
                return ServerOptions()
            return BadRequest("the target * is only for OPTIONS", 405)
        if request.uri[:1] != b"/":
            # twisted.web drops a target's first byte as if it were the
            # slash: "POST Xdata" would be taken as a report.
            return BadRequest("the request target must be a path starting with /")
        return super().getResourceFor(request)

    def log(self, request) -> None:
        # Called by twisted.web once a request is answered in full; a request
        # whose client left first is timed by PatientRequest.connectionLost.
        if self.timer is not None:
            self.timer.finished(request)


def make_site(
    app,
    reactor,
    pool,
    timeout: float = HTTP_IDLE_TIMEOUT,
    request_timeout: float = HTTP_REQUEST_TIMEOUT,
    children: Optional[dict] = None,
    timer=None,
    fast: Optional[dict] = None,
) -> Site:
    """
    A Site serving the WSGI C{app} from C{pool}: idle connections closed
    after C{timeout} seconds, and a request that has not arrived whole
    C{request_timeout} seconds after its first byte answered 408 and closed
    (0: no such deadline).

    @param children: path segment -> resource served there instead of the
        app (C{{b"metrics": ...}}); see L{Root}.
    @param timer: times each request (see L{QuietSite}), or C{None}.
    @param fast: exact path -> handler of its POST requests, answered on
        the reactor thread (L{smartplug_backend.http.ingest}); see L{Root}.
    """
    site = QuietSite(
        Root(WSGIResource(reactor, pool, app), children or {}, fast or {}),
        timeout=timeout,
        reactor=reactor,
        # The app reads raw bodies; parsing forms would only cost memory.
        parsePOSTFormSubmission=False,
    )
    site.request_timeout = request_timeout
    site.timer = timer
    return site
