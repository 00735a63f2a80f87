"""
The two device-facing ingest routes, C{POST /data} (SPEC 1.1) and
C{POST /publish} (SPEC 3.3), answered on the reactor thread.

Through Bottle under C{WSGIResource} a report costs a hop to a pool thread
and two blocking calls back to the reactor (the hub call, then the answer):
half or more of its server CPU (README, Benchmarks).  These
handlers take the requests that succeed: the same parsing and validation
(L{parse_report}, L{picloud.parse_publication} over L{strictjson}), the same
credentials (L{api.given}, L{picloud.authenticate}), the same hub calls and
the same answers, byte for byte.  Every other request (bad input, a wrong
or missing key or client name) they hand on untouched to the Bottle app,
which answers it, logs it and counts a wrong key toward a ban exactly as
before: one set of rules, and the rare refusals pay for the thread hop.
"""

import json
from typing import Callable, Optional

import bottle
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..core.limits import MAX_BODY
from ..core.reports import InvalidReport, parse_report
from ..server.guard import normal_address
from ..ws import picloud
from .api import given, unrecorded

_log = Logger(namespace="smartplug_backend.http.api")

# A handler's answer meaning "let the Bottle app answer this request".
NOT_MINE = object()

_JSON = b"application/json"
# PiCloud's answers are Go's http.Error: plain text (as api._text).
_TEXT_HEADERS = ((b"Content-Type", b"text/plain; charset=utf-8"), (b"X-Content-Type-Options", b"nosniff"))
# The WSGI environ keys of the two credential headers (as api.given reads them).
_CREDENTIAL_KEYS = frozenset({"HTTP_X_API_KEY", "HTTP_X_API_CLIENT_NAME"})


class FastRoute(Resource):
    """
    A handler of this module as the leaf resource the site's root gives a
    request (L{smartplug_backend.http.channel.Root}), with the app behind
    it: C{handler(request)} returns the body (bytes), C{NOT_DONE_YET}, or
    L{NOT_MINE}, and then the app answers instead.
    """

    isLeaf = True

    def __init__(self, handler, app: Resource) -> None:
        super().__init__()
        self._handler = handler
        self._app = app

    def render(self, request):
        answer = self._handler(request)
        if answer is NOT_MINE:
            # The handler read the body; the app reads it again.
            request.content.seek(0)
            return self._app.render(request)
        return answer


def peer(request) -> str:
    """
    The address of the connection (WSGI's C{REMOTE_ADDR}, never a header),
    an IPv4 peer of a dual-stack listener as IPv4.
    """
    return normal_address(getattr(request.getClientAddress(), "host", None) or "?")


class ReportIngest:
    """
    C{POST /data}: a valid plug report goes to the hub from here; anything
    else is the Bottle app's to answer.
    """

    def __init__(self, hub) -> None:
        self._hub = hub

    def __call__(self, request):
        body = _body(request)
        if body is None:
            return NOT_MINE
        try:
            plug_id, value = parse_report(body)
        except InvalidReport:
            return NOT_MINE
        # The hub answers once the report is committed (at once without a
        # store): a 200 means it survives a kill -9; None means the store
        # refused it (the hub has logged why).
        return _when_done(self._hub.report(plug_id, value, "http", peer(request)), request, self._answer)

    @staticmethod
    def _answer(request, report) -> bytes:
        if report is None:
            return _not_recorded(request, "report")
        request.setHeader(b"Content-Type", _JSON)
        return b"{}"


def _not_recorded(request, what: str) -> bytes:
    """
    The 503 for a C{what} the state store refused (the hub has logged why).
    """
    request.setResponseCode(503)
    request.setHeader(b"Content-Type", _JSON)
    return json.dumps({"error": unrecorded(what)}).encode()


class PublishIngest:
    """
    C{POST /publish}: a publication with the right key, a client name and a
    valid body is published from here; anything else is the Bottle app's.

    @param publish: C{publish(event, data, peer)}, the hub's: a Deferred
        firing once the publication is kept (committed, with a store), with
        C{None} when the store refused it (503).
    @param api_key: C{API_KEY}, or C{None}.
    @param banned: C{banned(host)}, the guard's: a banned address's key is
        not checked here (the app refuses it with 403), or C{None}.
    """

    def __init__(self, publish, api_key: Optional[str], banned: Optional[Callable[[str], bool]] = None) -> None:
        self._publish = publish
        self._api_key = api_key
        self._banned = banned

    def __call__(self, request):
        if self._banned is not None and self._banned(peer(request)):
            # A keep-alive connection that outlived its address's ban: the
            # app refuses it without looking at the key.
            return NOT_MINE
        credentials = _credentials_view(request)
        try:
            picloud.authenticate(
                self._api_key,
                given(credentials, "X-API-Key", "apiKey"),
                given(credentials, "X-API-Client-Name", "clientName"),
                needs_name=True,
            )
            body = _body(request)
            if body is None:
                return NOT_MINE
            event, data = picloud.parse_publication(picloud.decode(body))
        except (picloud.Denied, picloud.InvalidPublication):
            return NOT_MINE
        return _when_done(self._publish(event, data, peer(request)), request, self._answer)

    @staticmethod
    def _answer(request, published) -> bytes:
        if published is None:
            return _not_recorded(request, "publication")
        request.setResponseCode(201)
        for name, value in _TEXT_HEADERS:
            request.setHeader(name, value)
        return b""


def _body(request) -> Optional[bytes]:
    """
    The request body, or C{None} when it is over L{MAX_BODY} (the channel
    refuses those first; the app answers any that get here).
    """
    body = request.content.read(MAX_BODY + 1)
    return body if len(body) <= MAX_BODY else None


def _credentials_view(request) -> bottle.BaseRequest:
    """
    What the Bottle app would see of C{request}'s credentials: its query
    string and the two credential headers, put into a WSGI environ the way
    C{WSGIResource} does (headers by their upper-cased, underscored names;
    repeated ones joined by commas; latin-1 strings).
    """
    uri = request.uri
    environ = {"QUERY_STRING": uri.partition(b"?")[2].decode("latin-1")}
    for name, values in request.requestHeaders.getAllRawHeaders():
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if key in _CREDENTIAL_KEYS:
            environ[key] = ",".join(v.decode("latin-1") for v in values).replace("\n", " ")
    return bottle.BaseRequest(environ)


def _when_done(result, request, answer):
    """
    The answer to C{request}: C{answer(request, value)} with C{result}'s
    value, now if C{result} is a value or a Deferred that has fired (no
    store), or once it fires (C{NOT_DONE_YET}: the store commits on its own
    thread).  A peer that has gone by then (the firmware closes before it
    reads) gets nothing; the change stands.
    """
    if not isinstance(result, Deferred):
        # As the app's bridge does, a plain value is taken as it is.
        return answer(request, result)
    outcome: list = []
    result.addBoth(outcome.append)
    if outcome:
        return answer(request, _value(outcome[0], request))
    gone: list = []
    request.notifyFinish().addErrback(gone.append)
    result.addCallback(lambda _: _answer_later(request, answer, _value(outcome[0], request), gone))
    result.addErrback(lambda f: _log.failure("answering {path}", f, path=request.path))
    return NOT_DONE_YET


def _value(outcome, request):
    # The hub's Deferreds never fail; should one, the change was not made.
    if isinstance(outcome, Failure):
        _log.failure("{path}: the hub failed", outcome, path=request.path)
        return None
    return outcome


def _answer_later(request, answer, value, gone: list) -> None:
    if gone:
        return
    body = answer(request, value)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()


def ingest_routes(hub, api_key: Optional[str], guard=None) -> dict:
    """
    The fast routes of L{smartplug_backend.http.channel.Root}: path -> handler.

    @param guard: the L{smartplug_backend.server.guard.Guard}, whose bans
        hold on C{POST /publish}, or C{None}.
    """
    banned = guard.banned if guard is not None else None
    return {b"/data": ReportIngest(hub), b"/publish": PublishIngest(hub.publish, api_key, banned)}
