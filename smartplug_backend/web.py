"""
The HTTP API (SPEC 1): a Bottle app built by L{make_app}.

Bottle handlers run in the WSGI thread pool.  They parse and validate input
there (pure computation), and reach the hub only through a L{Bridge}, which
runs each hub call on the reactor thread.  Every error answer is JSON
C{{"error": ...}} naming what was wrong; none carries a traceback.
"""

import json
from functools import partial
from typing import Any, Callable

import bottle
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger

from .hub import utc_rfc3339
from .reports import InvalidReport, parse_report

MAX_BODY = 64 * 1024
DEFAULT_HISTORY = 100
MAX_HISTORY = 1_000_000

_log = Logger(namespace="smartplug_backend.web")


class Bridge:
    """
    How a WSGI thread reaches the reactor thread.

    C{call(f, *args)} runs C{f} on the reactor thread and waits for its result
    (a Deferred is waited for too); C{later(f, *args)} queues C{f} there and
    returns at once.  Tests pass synchronous stand-ins for both.
    """

    def __init__(self, call: Callable[..., Any], later: Callable[..., None]) -> None:
        self.call = call
        self.later = later

    @classmethod
    def for_reactor(cls, reactor) -> "Bridge":
        """
        The real bridge; never use it from the reactor thread (deadlock).
        """
        return cls(partial(blockingCallFromThread, reactor), reactor.callFromThread)


def _json(status: int, payload: Any) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        body=json.dumps(payload),
        status=status,
        headers={"Content-Type": "application/json"},
    )


def _error(status: int, message: str) -> bottle.HTTPResponse:
    return _json(status, {"error": message})


def read_body(request: bottle.BaseRequest, limit: int = MAX_BODY) -> bytes:
    """
    The request body, read without ever holding more than C{limit + 1} bytes.

    @raise bottle.HTTPResponse: 413 when the body is larger than C{limit}.
    """
    try:
        declared = int(request.environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise _error(413, f"body too large: at most {limit} bytes")
    body = request.environ["wsgi.input"].read(limit + 1)
    if len(body) > limit:
        raise _error(413, f"body too large: at most {limit} bytes")
    return body


def make_app(hub, bridge: Bridge) -> bottle.Bottle:
    """
    Build the Bottle app serving SPEC 1 over C{hub}, reached through C{bridge}.

    The handlers never touch C{hub} directly: every use is C{bridge.call(...)}.
    """
    app = bottle.Bottle(catchall=True, autojson=False)

    def rejected(status: int, reason: str) -> bottle.HTTPResponse:
        peer = bottle.request.remote_addr or "?"
        bridge.later(
            _log.warn,
            "rejected {method} {path} from {peer}: {reason}",
            method=bottle.request.method,
            path=bottle.request.path,
            peer=peer,
            reason=reason,
        )
        return _error(status, reason)

    @app.get("/")
    def index():
        return "hallo."

    @app.post("/data")
    def data():
        try:
            body = read_body(bottle.request)
        except bottle.HTTPResponse as too_large:
            return rejected(too_large.status_code, json.loads(too_large.body)["error"])
        try:
            plug_id, value = parse_report(body)
        except InvalidReport as e:
            return rejected(400, str(e))
        peer = bottle.request.remote_addr or "?"
        # hub.report answers once the report is committed, so a 200 means
        # it survives a kill -9; None means the store refused it (and the
        # hub has logged why).
        if bridge.call(hub.report, plug_id, value, "http", peer) is None:
            return _error(503, "state store cannot write: report not recorded")
        return _json(200, {})

    @app.get("/plugs")
    def plugs():
        return _json(200, [p.as_json() for p in bridge.call(hub.plugs)])

    @app.get("/plugs/<plug_id>")
    def plug(plug_id):
        found = bridge.call(hub.plug, plug_id)
        if found is None:
            return _error(404, f"unknown plug id: {plug_id}")
        return _json(200, found.as_json())

    @app.get("/plugs/<plug_id>/history")
    def history(plug_id):
        try:
            limit = parse_limit(bottle.request.query.get("limit"))
        except ValueError as e:
            return rejected(400, str(e))
        entries = bridge.call(hub.history, plug_id, limit)
        if entries is None:
            return _error(404, f"unknown plug id: {plug_id}")
        return _json(200, [{"value": e.value, "at": utc_rfc3339(e.at)} for e in entries])

    @app.error(404)
    def not_found(error):
        return _error_body("no such path: " + bottle.request.path)

    @app.error(405)
    def wrong_method(error):
        return _error_body(
            f"method {bottle.request.method} not allowed on {bottle.request.path}"
        )

    @app.error(500)
    def internal(error):
        # Bottle has already written the traceback to wsgi.errors, which
        # twisted.web logs; the client learns nothing of it.
        return _error_body("internal server error")

    return app


def parse_limit(text) -> int:
    """
    The C{limit} query parameter of the history route: absent means
    L{DEFAULT_HISTORY}; otherwise a whole number from 1 to L{MAX_HISTORY}.

    @raise ValueError: with a message for the client.
    """
    if text is None:
        return DEFAULT_HISTORY
    # Length first: int() of a huge digit string is slow, then refused.
    if not (len(text) <= 7 and text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_HISTORY:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_HISTORY}")
    return int(text)


def _error_body(message: str) -> str:
    bottle.response.content_type = "application/json"
    return json.dumps({"error": message})
