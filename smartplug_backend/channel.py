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
"""

import json

from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site
from twisted.web.wsgi import WSGIResource

from .limits import MAX_BODY


class LenientHTTPChannel(HTTPChannel):
    """
    An HTTPChannel that accepts request heads with CRLF or bare LF line ends,
    and refuses bodies over L{MAX_BODY} with 413 before reading them.
    """

    delimiter = b"\n"
    refused = False

    def lineReceived(self, line: bytes):
        if line.endswith(b"\r"):
            line = line[:-1]
        return super().lineReceived(line)

    def allHeadersReceived(self):
        # A declared length over the limit is refused before any of the body
        # is read (and before "100 Continue" would invite it).
        if self.length is not None and self.length > MAX_BODY:
            return self.refuse_too_large()
        return super().allHeadersReceived()

    def allContentReceived(self):
        if not self.refused:
            super().allContentReceived()

    def refuse_too_large(self) -> None:
        """
        Answer 413 with a JSON error, close, and ignore whatever else comes.
        """
        if self.refused:
            return
        self.refused = True
        body = json.dumps({"error": f"body too large: at most {MAX_BODY} bytes"}).encode()
        self.transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.dataReceived = lambda data: None
        self.transport.loseConnection()


class PatientRequest(Request):
    """
    A Request whose body outlives the connection, and that counts what a
    chunked body adds up to.

    The body is an in-memory or temporary file of at most the size limit; it
    is released with the request object itself.
    """

    _received = 0

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


class QuietSite(Site):
    """
    A Site with the lenient channel and no per-request access log: reports
    are logged by the hub as one readable line each, and rejected input by
    the app, so a combined-log line per request would only add noise and cost.
    """

    protocol = LenientHTTPChannel
    requestFactory = PatientRequest
    noisy = False  # ListenerService logs where it listens, readably

    def log(self, request) -> None:
        pass


class ThreadPoolService(Service):
    """
    Starts a thread pool with the service and stops it when the service stops.

    With a C{reactor}, the workers are joined from the reactor's own pool, so
    the reactor keeps running meanwhile: needed where a worker may be waiting
    in C{blockingCallFromThread} (the WSGI pool).  Without one, they are
    joined at once.
    """

    def __init__(self, pool: ThreadPool, reactor=None) -> None:
        self.pool = pool
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        if self._reactor is None:
            self.pool.stop()
            return None
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self.pool.stop)


def make_site(app, reactor, pool, timeout: float = 60) -> Site:
    """
    A Site serving the WSGI C{app} from C{pool}, idle connections closed
    after C{timeout} seconds.
    """
    return QuietSite(
        WSGIResource(reactor, pool, app),
        timeout=timeout,
        reactor=reactor,
        # The app reads raw bodies; parsing forms would only cost memory.
        parsePOSTFormSubmission=False,
    )
