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

from ..core.display import InvalidDisplay, parse_display
from ..core.journal import StoreFailed
from ..core.limits import MAX_BODY
from ..core.reports import InvalidReport, parse_report
from ..core.times import utc_rfc3339
from ..server.guard import BANNED, key_matches, normal_address
from ..ws import picloud

DEFAULT_HISTORY = 100
MAX_HISTORY = 1_000_000
# GET /events/<E>/history (SPEC 3.6)
DEFAULT_PUBLICATIONS = 100
MAX_PUBLICATIONS = 1000

_log = Logger(namespace="smartplug_backend.http.api")


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


def _asked_path() -> str:
    """
    The path as the request gave it: Bottle's C{request.path} strips repeated
    leading slashes, so C{GET //plugs}'s 404 would name C{/plugs}, which exists.
    """
    return bottle.request.environ.get("PATH_INFO") or "/"


def _peer() -> str:
    """
    The address of the connection the request came on.

    Not Bottle's C{remote_addr}: that believes any X-Forwarded-For header,
    and a ban must never be steered onto somebody else's address.  An IPv4
    peer of a dual-stack listener as IPv4.
    """
    return normal_address(bottle.request.environ.get("REMOTE_ADDR") or "?")


def given(request: bottle.BaseRequest, header: str, param: str):
    """
    A credential of C{request} (SPEC 3.1): the header, else the query
    parameter, else C{None}.  The one reading of credentials over HTTP, for
    the Bottle routes and the reactor-thread ingest routes alike.
    """
    # WSGI hands over every header and query value as bytes read as
    # latin-1; they are UTF-8, since the site answers 400 to any request
    # with bytes that are not (SPEC 6.3, http.channel.BadRequest).  Should one
    # get here all the same, U+FFFD stands in for them: Bottle's own decoding
    # would raise (a 500).
    # A repeated parameter: the first, as PiCloud's Go server
    # (url.Values.Get) and the WebSocket ports take it; Bottle's get()
    # would give the last.
    raw = request.environ.get("HTTP_" + header.upper().replace("-", "_")) or request.query.get(param, None, 0)
    return _utf8(raw) or None


def _given(header: str, param: str):
    return given(bottle.request, header, param)


def _utf8(wsgi_value):
    """
    A WSGI (latin-1) string read as the UTF-8 bytes it carries, undecodable
    bytes replaced by U+FFFD.
    """
    if wsgi_value is None:
        return None
    return wsgi_value.encode("latin-1").decode("utf-8", "replace")


def make_app(hub, bridge: Bridge, guard=None, api_key=None) -> bottle.Bottle:
    """
    Build the Bottle app serving SPEC 1 over C{hub}, reached through C{bridge}.

    The handlers never touch C{hub} or C{guard} directly: every use is
    C{bridge.call(...)} or C{bridge.later(...)}, but for
    C{guard.banned_from_thread}, which is made to be read from any thread.

    @param guard: counts wrong API keys toward bans
        (L{smartplug_backend.server.guard.Guard}), or C{None}.
    @param api_key: C{API_KEY}: required on C{POST /display} and
        C{POST /publish} when set.
    """
    app = bottle.Bottle(catchall=True, autojson=False)
    # A plug id or event name may hold any character (SPEC 1.1, 3), and is
    # read back too: Bottle's <name:path>, ".+?", stops at a line break.  So
    # any character; and since Bottle ends a route's pattern with "$", which
    # also matches before a final line break, a path that ends with one is
    # matched only by a wildcard that takes it, at the end of the route.
    app.router.add_filter("path", lambda config: (r"(?![\s\S]*\n\Z)[\s\S]+?|[\s\S]*\n\Z", None, None))

    def warn(reason: str) -> None:
        bridge.later(
            _log.warn,
            "rejected {method} {path} from {peer}: {reason}",
            method=bottle.request.method,
            path=bottle.request.path,
            peer=_peer(),
            reason=reason,
        )

    def rejected(status: int, reason: str) -> bottle.HTTPResponse:
        warn(reason)
        return _error(status, reason)

    def parsed_body(parse):
        """
        The request body through C{parse}.

        @raise bottle.HTTPResponse: (Bottle sends it) 413 for a body that is
            too large, 400 for one that C{parse} refuses.
        """
        try:
            body = read_body(bottle.request)
        except BodyTooLarge as e:
            raise rejected(413, str(e)) from None
        try:
            return parse(body)
        except (InvalidReport, InvalidDisplay) as e:
            raise rejected(400, str(e)) from None

    def picloud_credentials(needs_name: bool) -> str:
        """
        Check a PiCloud route's API key (and client name) as SPEC 3.1 says.

        @return: the client name.
        @raise bottle.HTTPResponse: PiCloud's 401 (a wrong key counts toward
            a ban), or 403 from a banned address.
        """
        key = _given("X-API-Key", "apiKey")
        refuse_banned(key)
        name = _given("X-API-Client-Name", "clientName") if needs_name else None
        try:
            return picloud.authenticate(api_key, key, name, needs_name=needs_name)
        except picloud.Denied as denied:
            warn(str(denied))
            if denied.bad_key:
                count_wrong_key()
            raise _text(401, denied.body) from None

    def refuse_banned(given) -> None:
        """
        A banned address (its keep-alive connection outlived the ban's
        start) has no key checked at all: 403, and the attempt is logged.

        @raise bottle.HTTPResponse: 403 when the peer is banned.
        """
        if guard is None or not guard.banned_from_thread(_peer()):
            return
        if given is not None:
            bridge.later(
                guard.failure, _peer(), f"API key for {bottle.request.method} {bottle.request.path}: refused, not checked",
                kind="api_key",
            )
        raise rejected(403, BANNED)

    def require_key() -> None:
        """
        When C{API_KEY} is set, insist on it.  A wrong key (not a missing
        one: that guesses nothing) counts toward a ban.

        @raise bottle.HTTPResponse: 401 without the right key, 403 from a
            banned address.
        """
        given = _given("X-API-Key", "apiKey")
        refuse_banned(given)
        if key_matches(api_key, given):
            return
        if given is not None:
            count_wrong_key()
        raise rejected(401, "invalid API key: send it in the X-API-Key header or the apiKey query parameter")

    def count_wrong_key() -> None:
        if guard is not None:
            bridge.later(
                guard.failure, _peer(), f"wrong API key for {bottle.request.method} {bottle.request.path}", kind="api_key"
            )

    @app.get("/")
    def index():
        return "hallo."

    @app.post("/data")
    def data():
        try:
            plug_id, value = parsed_body(parse_report)
        except bottle.HTTPResponse:
            bridge.later(hub.count_refused, "http", "invalid")
            raise
        # hub.report answers once the report is committed, so a 200 means
        # it survives a kill -9; None means the store refused it (and the
        # hub has logged why).
        if bridge.call(hub.report, plug_id, value, "http", _peer()) is None:
            return _unrecorded("report")
        return _json(200, {})

    @app.post("/publish")
    def publish():
        picloud_credentials(needs_name=True)
        try:
            event, data = picloud.parse_publication(picloud.decode(read_body(bottle.request)))
        except BodyTooLarge as e:
            return rejected(413, str(e))
        except picloud.InvalidPublication as e:
            warn(str(e))
            return _text(400, picloud.BAD_REQUEST)
        # hub.publish answers once the publication is committed, so a 201
        # means it survives a kill -9 (SPEC 3.6); None: the store refused it.
        if bridge.call(hub.publish, event, data, _peer()) is None:
            return _unrecorded("publication")
        return _text(201, b"")

    @app.get("/events/<event:path>/history")
    def event_history(event):
        picloud_credentials(needs_name=False)
        try:
            since = parse_whole(bottle.request.query.get("since"), "since", 0, 0, None)
            limit = parse_whole(bottle.request.query.get("limit"), "limit", DEFAULT_PUBLICATIONS, 1, MAX_PUBLICATIONS)
            picloud.check_event(event)
        except (ValueError, picloud.InvalidPublication) as e:
            return rejected(400, str(e))
        if not bridge.call(getattr, hub, "display_known"):
            # A node on Redis that has not loaded the state yet: its epochs
            # would be its own, no other node's.
            return _error(503, "state store cannot be read: pub/sub history not known yet")
        body = bridge.call(hub.pubsub.history_page, event, since, limit)
        return bottle.HTTPResponse(body=body, status=200, headers={"Content-Type": "application/json"})

    # A node on Redis that has not loaded the state yet knows no plug: it
    # says so (503) rather than "none" or "unknown plug id".
    not_loaded = "state store cannot be read: plugs not known yet"

    def unknown_plug(plug_id: str):
        if not bridge.call(getattr, hub, "display_known"):
            return _error(503, not_loaded)
        return _error(404, f"unknown plug id: {plug_id}")

    @app.get("/plugs")
    def plugs():
        known = bridge.call(hub.known_plugs)
        if known is None:
            return _error(503, not_loaded)
        return _json(200, [p.as_json() for p in known])

    # Plug ids may hold "/" (the firmware's ids are free text), so both routes
    # take a path; the history one is tried first.
    @app.get("/plugs/<plug_id:path>/history")
    def history(plug_id):
        try:
            limit = parse_limit(bottle.request.query.get("limit"))
        except ValueError as e:
            return rejected(400, str(e))
        try:
            entries = bridge.call(hub.history, plug_id, limit)
        except StoreFailed:
            # The history lives only in Redis (REDIS_URL), which is away.
            return _error(503, "state store cannot be read: history not available now")
        if entries is None:
            return unknown_plug(plug_id)
        return _json(200, [{"value": e.value, "at": utc_rfc3339(e.at)} for e in entries])

    @app.get("/plugs/<plug_id:path>")
    def plug(plug_id):
        found = bridge.call(hub.plug, plug_id)
        if found is None:
            return unknown_plug(plug_id)
        return _json(200, found.as_json())

    @app.get("/display")
    def display():
        shown = bridge.call(hub.known_display)
        if shown is None:
            # A node on Redis that has not loaded the state yet: "off" would
            # be no one's state, only its own default.
            return _error(503, "state store cannot be read: display state not known yet")
        return _json(200, shown.as_json())

    @app.post("/display")
    def set_display():
        require_key()
        change = parsed_body(parse_display)
        if isinstance(change, str):
            packet = bridge.call(hub.display_command, change, _peer())
            if packet is None:
                return _unrecorded("display command")
            return _json(200, {"command": change, "packet": packet})
        shown = bridge.call(hub.set_display, change, _peer())
        if shown is None:
            return _unrecorded("display state")
        return _json(200, shown.as_json())

    @app.error(404)
    def not_found(error):
        return _error_body("no such path: " + _asked_path())

    @app.error(405)
    def wrong_method(error):
        return _error_body(
            f"method {bottle.request.method} not allowed on {_asked_path()}"
        )

    @app.error(500)
    def internal(error):
        # Bottle has already written the traceback to wsgi.errors, which
        # twisted.web logs; the client learns nothing of it.
        return _error_body("internal server error")

    return app


def unrecorded(what: str) -> str:
    """
    The error message of a change the state store refused (503).
    """
    # The hub has logged the store's reason; the client learns only that.
    return f"state store cannot write: {what} not recorded"


def _unrecorded(what: str) -> bottle.HTTPResponse:
    return _error(503, unrecorded(what))


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


def parse_whole(text, name: str, default: int, low: int, high) -> int:
    """
    A whole-number query parameter C{name}: absent means C{default};
    otherwise from C{low} to C{high} (C{None}: no upper bound, but at most
    18 digits).

    @raise ValueError: with a message for the client.
    """
    if text is None:
        return default
    within = f"from {low} to {high}" if high is not None else f"of at least {low}"
    # Length first: int() of a huge digit string is slow, then refused.
    if not (0 < len(text) <= 18 and text.isascii() and text.isdigit()):
        raise ValueError(f"{name} must be a whole number {within}")
    value = int(text)
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be a whole number {within}")
    return value


def _error_body(message: str) -> str:
    bottle.response.content_type = "application/json"
    return json.dumps({"error": message})
