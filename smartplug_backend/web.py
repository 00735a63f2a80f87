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

from . import picloud
from .limits import MAX_BODY
from .reports import InvalidReport, parse_report

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


class BodyTooLarge(ValueError):
    """
    The request body is over the limit (SPEC 6.3: 413).
    """


def read_body(request: bottle.BaseRequest, limit: int = MAX_BODY) -> bytes:
    """
    The request body, read without ever holding more than C{limit + 1} bytes.

    @raise BodyTooLarge: when the body is larger than C{limit}.
    """
    try:
        declared = int(request.environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    body = b"" if declared > limit else request.environ["wsgi.input"].read(limit + 1)
    if declared > limit or len(body) > limit:
        raise BodyTooLarge(f"body too large: at most {limit} bytes")
    return body


def _text(status: int, body: bytes) -> bottle.HTTPResponse:
    # PiCloud answers with Go's http.Error: plain text, the body as given.
    return bottle.HTTPResponse(
        body=body,
        status=status,
        headers={"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"},
    )


def make_app(hub, bridge: Bridge, api_key=None, on_auth_failure=lambda peer: None) -> bottle.Bottle:
    """
    Build the Bottle app serving SPEC 1 over C{hub}, reached through C{bridge}.

    The handlers never touch C{hub} directly: every use is C{bridge.call(...)}.

    @param api_key: the API key PiCloud publishers must give, or C{None}.
    @param on_auth_failure: called on the reactor thread with the peer's
        address for each wrong API key.
    """
    app = bottle.Bottle(catchall=True, autojson=False)

    def peer() -> str:
        return bottle.request.remote_addr or "?"

    def warn(reason: str) -> None:
        bridge.later(
            _log.warn,
            "rejected {method} {path} from {peer}: {reason}",
            method=bottle.request.method,
            path=bottle.request.path,
            peer=peer(),
            reason=reason,
        )

    def rejected(status: int, reason: str) -> bottle.HTTPResponse:
        warn(reason)
        return _error(status, reason)

    @app.get("/")
    def index():
        return "hallo."

    @app.post("/data")
    def data():
        try:
            plug_id, value = parse_report(read_body(bottle.request))
        except BodyTooLarge as e:
            return rejected(413, str(e))
        except InvalidReport as e:
            return rejected(400, str(e))
        bridge.call(hub.report, plug_id, value, "http", peer())
        return _json(200, {})

    @app.post("/publish")
    def publish():
        request = bottle.request
        headers = {name: request.get_header(name) for name in ("x-api-key", "x-api-client-name")}
        try:
            picloud.authenticate(api_key, headers, request.query, needs_name=True)
        except picloud.Denied as denied:
            warn(str(denied))
            if denied.bad_key:
                bridge.later(on_auth_failure, peer())
            return _text(401, denied.body)
        try:
            event, data = picloud.parse_publication(picloud.decode(read_body(request)))
        except BodyTooLarge as e:
            return rejected(413, str(e))
        except picloud.InvalidPublication as e:
            warn(str(e))
            return _text(400, picloud.BAD_REQUEST)
        bridge.call(hub.pubsub.publish, event, data)
        return _text(201, b"")

    @app.get("/plugs")
    def plugs():
        return _json(200, [p.as_json() for p in bridge.call(hub.plugs)])

    @app.get("/plugs/<plug_id>")
    def plug(plug_id):
        found = bridge.call(hub.plug, plug_id)
        if found is None:
            return _error(404, f"unknown plug id: {plug_id}")
        return _json(200, found.as_json())

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


def _error_body(message: str) -> str:
    bottle.response.content_type = "application/json"
    return json.dumps({"error": message})
