"""
The dashboard's routes under C{/ui} (SPEC 9): the page's files, the JSON
routes it calls, and the live WebSocket.

    GET  /ui/                          the page (index.html; app.js, style.css, uplot/...)
    GET  /ui/api/session               {"user", "csrf", "expires", "address"} or 401
    POST /ui/api/login                 {"user", "password"} -> session cookie, {"user", "csrf", "expires", "address"}
    POST /ui/api/logout                ends the session                      (CSRF)
    GET  /ui/api/plugs/<id>/history    [{"value", "at", "source"}], oldest first
    GET  /ui/api/history?plug=<id>     the same, for any id (the page's: a
                                       path segment "." or ".." is resolved
                                       away by browsers)
    POST /ui/api/display               a POST /display body                  (CSRF)
    POST /ui/api/bans/lift             {"address"}                           (CSRF)
    POST /ui/api/backup                takes a backup now                    (CSRF)
    GET  /ui/live                      the WebSocket (session cookie, own Origin)

Every route but the page's files needs a live session; every POST needs
JSON, an Origin (when sent) that is the page's own and, once logged in, the
session's CSRF token in C{X-CSRF-Token}.  These resources run on the reactor
thread: they call the hub and the guard directly; password checks and
backups run in threads (the injected C{run_in_thread}).
"""

import json
from importlib import resources
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ...core import strictjson
from ...core.display import InvalidDisplay, validate_display
from ...core.limits import MAX_LOGINS_AT_ONCE, MAX_LOGINS_PER_ADDRESS
from ...server.guard import normal_address
from ...server.passwords import verify_password
from .auth import COOKIE, Session, Sessions, csrf_matches
from .live import own_origin

_MAX_NAME = 128
_MAX_PASSWORD = 1024

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_STATIC = (
    ("", "index.html"),
    ("app.js", "app.js"),
    ("style.css", "style.css"),
    ("uplot/uPlot.iife.min.js", "uplot/uPlot.iife.min.js"),
    ("uplot/uPlot.min.css", "uplot/uPlot.min.css"),
    ("uplot/LICENSE", "uplot/LICENSE"),
)

_log = Logger(namespace="smartplug_backend.http.dashboard")
# Why the backup button is refused by default: nothing to back up.
NO_STORE = "STATE_DB is None: there is no state database to back up"
# ... and where the state is in Redis (STATE_DB is not used then).
IN_REDIS = "REDIS_URL is set: the state lives in Redis; back it up with Redis's own snapshots (RDB or AOF)"


def _headers(request, content_type: str) -> None:
    request.setHeader(b"Content-Type", content_type.encode("ascii"))
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    # The page has buttons: never inside someone else's frame.
    request.setHeader(b"X-Frame-Options", b"DENY")


def _json(request, status: int, payload: Any) -> bytes:
    request.setResponseCode(status)
    _headers(request, "application/json")
    return _body(request, json.dumps(payload).encode("utf-8"))


def _body(request, body: bytes) -> bytes:
    """
    C{body}, or for a HEAD request only its length: a HEAD answer has no
    body (twisted.web would log a warning for each one that has).
    """
    if request.method != b"HEAD":
        return body
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
    return b""


def _close_after(request) -> None:
    """
    Close the connection once C{request} is answered (no keep-alive).
    """
    request.setHeader(b"Connection", b"close")
    channel = getattr(request, "channel", None)
    if channel is not None:
        channel.persistent = False


def _error(request, status: int, message: str) -> bytes:
    return _json(request, status, {"error": message})


def header(request, name: bytes) -> Optional[str]:
    """
    A request header as text, or C{None}.
    """
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def peer(request) -> str:
    """
    The address of the connection the request came on (never a header).
    """
    address = request.getClientAddress()
    return normal_address(getattr(address, "host", None) or "?")


class _File(Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: str) -> None:
        super().__init__()
        self._body = body
        self._type = content_type

    def render_GET(self, request) -> bytes:
        _headers(request, self._type)
        if self._type.startswith("text/html"):
            host = header(request, b"host") or ""
            ws = own_origin(request.isSecure(), host).replace("http", "ws", 1) if _safe_host(host) else ""
            # Only this server's files, and its own socket; uPlot sets
            # element styles, which CSP's style-src does not cover.
            request.setHeader(
                b"Content-Security-Policy",
                f"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                f"connect-src 'self' {ws}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'".encode(),
            )
        return _body(request, self._body)


def _safe_host(host: str) -> bool:
    return bool(host) and len(host) < 256 and all(c.isalnum() or c in ".-:[]" for c in host)


class _Folder(Resource):
    """
    A resource with children only; anything else is a JSON 404.
    """

    def getChild(self, path, request):
        return _NotFound()

    def render(self, request):
        return _error(request, 404, "no such path: " + request.path.decode("utf-8", "replace"))


class _NotFound(Resource):
    isLeaf = True

    def render(self, request):
        return _error(request, 404, "no such path: " + request.path.decode("utf-8", "replace"))


class Dashboard(_Folder):
    """
    C{/ui}: the page's files, C{api/} and C{live}.

    @ivar live_factory: the live socket's factory, when given (its slow
        clients are counted in the metrics).
    """

    def __init__(self, api: "Api", live: Resource, live_factory=None) -> None:
        super().__init__()
        self.live_factory = live_factory
        static = resources.files(__package__) / "static"
        folders: dict[str, Resource] = {"": self}
        for route, name in _STATIC:
            *parents, leaf = route.split("/")
            parent = self
            for i, folder in enumerate(parents):
                key = "/".join(parents[: i + 1])
                if key not in folders:
                    folders[key] = _Folder()
                    parent.putChild(folder.encode(), folders[key])
                parent = folders[key]
            body = (static / name).read_bytes()
            parent.putChild(leaf.encode(), _File(body, _TYPES.get("." + name.rpartition(".")[2], _TYPES[".txt"])))
        self.putChild(b"api", api)
        self.putChild(b"live", live)

    def render(self, request):
        # /ui without its slash: the page's relative links need it.
        request.setResponseCode(301)
        request.setHeader(b"Location", b"/ui/")
        return _error(request, 301, "the dashboard is at /ui/")


class Api(Resource):
    """
    C{/ui/api/...}: the JSON routes.

    @param users: C{DASHBOARD_USERS}.
    @param run_in_thread: C{f(*args)} in a thread pool, returning a Deferred.
    @param backup: C{backup()} -> the new backup's path (runs in a thread),
        or C{None} when there is no state database.
    @param on_backup: called once a backup is written (the feed's server
        section changed).
    @param run_backup: like C{run_in_thread}, for backups: another pool,
        so that a slow backup never delays a login (C{None}: the same).
    @param no_backup: why there is no C{backup}, for the 409 it answers.
    """

    isLeaf = True

    def __init__(self, hub, guard, sessions: Sessions, users: dict, run_in_thread: Callable[..., Deferred],
                 history_keep: int, backup: Optional[Callable[[], str]] = None,
                 on_backup: Callable[[], None] = lambda: None,
                 run_backup: Optional[Callable[..., Deferred]] = None, no_backup: str = NO_STORE) -> None:
        super().__init__()
        self._hub = hub
        self._guard = guard
        self._sessions = sessions
        self._users = users
        self._run = run_in_thread
        self._run_backup = run_backup or run_in_thread
        self._history_keep = history_keep
        self._backup = backup
        self._no_backup = no_backup
        self._on_backup = on_backup
        self._logins = 0
        # address -> its password checks in flight
        self._logins_of: dict[str, int] = {}

    def render(self, request):
        try:
            return self._route(request)
        except Exception:
            # A bug must not show twisted.web's HTML traceback page.
            _log.failure("dashboard {path}", path=request.path)
            return _error(request, 500, "internal server error")

    def _route(self, request):
        try:
            parts = [p.decode("utf-8") for p in request.postpath]
        except UnicodeDecodeError:
            return _error(request, 400, "the path is not UTF-8")
        if parts == ["login"]:
            return self._post(request, self._login, needs_session=False)
        if parts == ["session"]:
            return self._get(request, lambda r, s: _json(r, 200, _session_json(s, r)))
        if parts == ["logout"]:
            return self._post(request, self._logout)
        if parts == ["display"]:
            return self._post(request, self._display)
        if parts == ["bans", "lift"]:
            return self._post(request, self._lift)
        if parts == ["backup"]:
            return self._post(request, self._take_backup)
        if parts == ["history"]:
            return self._get(request, lambda r, s: self._history_of_query(r))
        if len(parts) >= 3 and parts[0] == "plugs" and parts[-1] == "history":
            plug_id = "/".join(parts[1:-1])
            return self._get(request, lambda r, s: self._history(r, plug_id))
        return _error(request, 404, "no such path: " + request.path.decode("utf-8", "replace"))

    # -- checks --------------------------------------------------------------

    def _session(self, request) -> Optional[Session]:
        token = request.getCookie(COOKIE)
        return self._sessions.find(token.decode("ascii", "replace") if token else None)

    def _get(self, request, handler):
        if request.method not in (b"GET", b"HEAD"):
            return _error(request, 405, f"method {request.method.decode('ascii', 'replace')} not allowed here")
        session = self._session(request)
        if session is None:
            return _error(request, 401, "not logged in")
        return handler(request, session)

    def _post(self, request, handler, needs_session: bool = True):
        if request.method != b"POST":
            return _error(request, 405, f"method {request.method.decode('ascii', 'replace')} not allowed here")
        origin = header(request, b"origin")
        if origin is not None and origin != own_origin(request.isSecure(), header(request, b"host")):
            return _error(request, 403, "Origin is not the dashboard's own")
        # A cross-site form cannot send JSON without asking (CORS), and we
        # never answer such a question.
        if not (header(request, b"content-type") or "").startswith("application/json"):
            return _error(request, 415, "send JSON (Content-Type: application/json)")
        try:
            body = strictjson.loads(request.content.read())
        except strictjson.InvalidJSON as e:
            return _error(request, 400, f"body is not valid JSON: {e}")
        if not needs_session:
            return handler(request, body)
        session = self._session(request)
        if session is None:
            return _error(request, 401, "not logged in")
        if not csrf_matches(session, header(request, b"x-csrf-token")):
            return _error(request, 403, "missing or wrong CSRF token (X-CSRF-Token): reload the page")
        return handler(request, body, session)

    def _later(self, request, d: Deferred):
        """
        Answer C{request} with what C{d} fires with: C{(status, payload)}.
        """
        gone = []
        # A browser that left (closed tab) gets nothing written to it.
        request.notifyFinish().addErrback(gone.append)

        def answer(result):
            status, payload = result
            if not gone and not request.finished:
                request.write(_json(request, status, payload))
                request.finish()

        def failed(failure):
            _log.failure("dashboard {path}", failure, path=request.path)
            return (500, {"error": "internal server error"})

        d.addErrback(failed).addCallback(answer).addErrback(lambda f: _log.failure("dashboard answer", f))
        return NOT_DONE_YET

    # -- routes --------------------------------------------------------------

    def _login(self, request, body):
        if not isinstance(body, dict):
            return _error(request, 400, 'body must be {"user": ..., "password": ...}')
        user, password = body.get("user"), body.get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not user or not password:
            return _error(request, 400, "user and password must be non-empty strings")
        if len(user) > _MAX_NAME or len(password) > _MAX_PASSWORD:
            return _error(request, 400, f"user name at most {_MAX_NAME} and password at most {_MAX_PASSWORD} characters")
        address = peer(request)
        if self._guard.banned(address):
            # Refused before the password is even looked at; the connection
            # goes too (the guard closes a banned address's others).
            self._guard.failure(address, "dashboard login: refused, not checked", kind="dashboard_login")
            _close_after(request)
            return _error(request, 403, "this address is banned for too many failed logins; try again later")
        if self._logins >= MAX_LOGINS_AT_ONCE or self._logins_of.get(address, 0) >= MAX_LOGINS_PER_ADDRESS:
            return _error(request, 503, "too many logins at once; try again in a moment")
        self._logins += 1
        self._logins_of[address] = self._logins_of.get(address, 0) + 1

        def done() -> None:
            self._logins -= 1
            left = self._logins_of.pop(address) - 1
            if left:
                self._logins_of[address] = left

        def checked(ok: bool):
            done()
            if not ok:
                # Never the name or password: either may be the other typed
                # in the wrong box.
                banned = self._guard.failure(address, "dashboard login: wrong user name or password",
                                             kind="dashboard_login")
                error = "wrong user name or password"
                if banned:
                    # Else its next try finds the connection refused, which
                    # looks like a server that is down.
                    error += (f"; that was too many failures: this address is banned for "
                              f"{self._guard.ban_seconds:g} s")
                return (401, {"error": error})
            if left:
                # The browser left while its password was checked: a session
                # no one holds would live its days for nothing.
                return (200, {})
            if self._guard.banned(address):
                # Banned while its password was checked (by another node,
                # or its other logins): no session for it.
                _close_after(request)
                return (403, {"error": "this address is banned for too many failed logins; try again later"})
            token, session = self._sessions.create(user)
            request.addCookie(
                COOKIE, token.encode("ascii"), path=b"/ui", httpOnly=True, secure=request.isSecure(),
                sameSite="strict", max_age=str(int(self._sessions.seconds)).encode("ascii"),
            )
            _log.info("dashboard login of {user} from {peer}", user=user, peer=address)
            return (200, _session_json(session, request))

        def broken(failure):
            done()
            return failure

        left: list = []
        request.notifyFinish().addErrback(left.append)
        d = self._run(verify_password, self._users.get(user), password)
        return self._later(request, d.addCallbacks(checked, broken))

    def _logout(self, request, body, session):
        self._sessions.end(session)
        request.addCookie(COOKIE, b"", path=b"/ui", httpOnly=True, secure=request.isSecure(), sameSite="strict", max_age=b"0")
        _log.info("dashboard logout of {user} from {peer}", user=session.user, peer=peer(request))
        return _json(request, 200, {})

    def _who(self, request, session) -> str:
        return f"{peer(request)} (dashboard: {session.user})"

    def _display(self, request, body, session):
        try:
            change = validate_display(body)
        except InvalidDisplay as e:
            return _error(request, 400, str(e))
        # The same hub calls as POST /display: journaled, devices told.
        if isinstance(change, str):
            # A command goes through the journal too (SPEC 11: to every node).
            def sent(packet):
                if packet is None:
                    return (503, {"error": "state store cannot write: display command not sent"})
                return (200, {"command": change, "packet": packet})

            return self._later(request, maybeDeferred(self._hub.display_command, change, self._who(request, session))
                               .addCallback(sent))

        def shown(display):
            if display is None:
                return (503, {"error": "state store cannot write: display state not recorded"})
            return (200, display.as_json())

        return self._later(request, maybeDeferred(self._hub.set_display, change, self._who(request, session)).addCallback(shown))

    def _lift(self, request, body, session):
        address = body.get("address") if isinstance(body, dict) else None
        if not isinstance(address, str) or not address:
            return _error(request, 400, "address must be a non-empty string")
        if not self._guard.lift(address, self._who(request, session)):
            return _error(request, 404, f"no ban on {address}")
        return _json(request, 200, {"lifted": normal_address(address)})

    def _take_backup(self, request, body, session):
        if self._backup is None:
            return _error(request, 409, self._no_backup)
        who = self._who(request, session)

        def written(path):
            _log.info("backup written to {path}, asked by {who}", path=path, who=who)
            self._on_backup()
            return (200, {"path": path})

        def refused(failure):
            from ...state.backup import BackupError

            failure.trap(BackupError)
            _log.error("backup asked by {who} failed: {why}", who=who, why=failure.getErrorMessage())
            return (503, {"error": failure.getErrorMessage()})

        return self._later(request, self._run_backup(self._backup).addCallbacks(written, refused))

    def _history_of_query(self, request):
        plug_ids = request.args.get(b"plug")
        if not plug_ids:
            return _error(request, 400, "the query needs plug=<plug id>")
        # The query is UTF-8 (checked before any route: server/utf8.py).
        return self._history(request, plug_ids[0].decode("utf-8"))

    def _history(self, request, plug_id: str):
        def found(entries):
            if entries is None:
                return (404, {"error": f"unknown plug id: {plug_id}"})
            return (200, [{"value": e.value, "at": e.at, "source": e.source} for e in reversed(entries)])

        return self._later(request, maybeDeferred(self._hub.history, plug_id, self._history_keep).addCallback(found))


def _session_json(session: Session, request) -> dict:
    # The address the page comes from, as bans name it: the page knows a
    # ban of its own address (its requests refused; its live socket stays).
    return {"user": session.user, "csrf": session.csrf, "expires": session.expires, "address": peer(request)}
