"""
Tests for the dashboard's routes under C{/ui}
(L{smartplug_backend.http.dashboard.routes}), through the real twisted.web
site beside the Bottle app, with StubTreq.
"""

import json

from treq.testing import StubTreq
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.hub import Hub
from smartplug_backend.http.api import make_app
from smartplug_backend.http.channel import make_site
from smartplug_backend.http.dashboard import auth, routes
from smartplug_backend.http.dashboard.feed import Feed
from smartplug_backend.http.dashboard.live import LiveFactory, LiveResource
from smartplug_backend.server import passwords
from smartplug_backend.server.guard import Guard

from .helpers import SYNC_BRIDGE, SynchronousReactor, SynchronousThreadPool

N = 2**10
PASSWORD = "correct horse"
ORIGIN = "http://home.example:9000"
URL = ORIGIN + "/ui/"


def run_now(f, *args):
    return maybeDeferred(f, *args)


def login_request(address, password="x"):
    """
    A login request from C{address}, for calling the Api resource itself.
    """
    import io

    from twisted.internet.address import IPv4Address
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b"login"])
    request.method = b"POST"
    request.client = IPv4Address("TCP", address, 4000)
    request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.content = io.BytesIO(json.dumps({"user": "anna", "password": password}).encode())
    return request


class Dashboard:
    """
    A hub, a guard and the site with the dashboard at /ui.
    """

    def __init__(self, testcase, backup=None, run=run_now, ban_after=3, run_backup=None, no_backup=routes.NO_STORE):
        self.clock = Clock()
        self.hub = Hub(now=self.clock.seconds)
        self.guard = Guard(self.clock, ban_after=ban_after, ban_seconds=60)
        self.sessions = auth.Sessions(self.clock, days=30)
        self.backups = []
        self.api = api = routes.Api(
            self.hub, self.guard, self.sessions, {"anna": passwords.hash_password(PASSWORD, n=N)}, run,
            history_keep=1000, backup=backup, on_backup=lambda: self.backups.append(True), run_backup=run_backup,
            no_backup=no_backup,
        )
        feed = Feed(self.hub, self.guard, self.clock, lambda: {})
        ui = routes.Dashboard(api, LiveResource(LiveFactory(feed, self.sessions, self.clock)))
        app = make_app(self.hub, SYNC_BRIDGE, guard=self.guard)
        site = make_site(app, SynchronousReactor(), SynchronousThreadPool(), children={b"ui": ui})
        self.http = StubTreq(site.resource)
        self.testcase = testcase
        self.cookie = None
        self.csrf = None

    def request(self, method, path, body=None, headers=None, cookie=True, url=URL, follow=True):
        all_headers = {"Origin": [ORIGIN], "Content-Type": ["application/json"]}
        if cookie and self.cookie:
            all_headers["Cookie"] = [f"smartplug_session={self.cookie}"]
        if self.csrf:
            all_headers["X-CSRF-Token"] = [self.csrf]
        all_headers.update(headers or {})
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        response = self.testcase.successResultOf(
            self.http.request(method, url + path, data=data, headers=all_headers, allow_redirects=follow)
        )
        content = self.testcase.successResultOf(response.content())
        return response, content

    def json(self, method, path, body=None, **kwargs):
        response, content = self.request(method, path, body, **kwargs)
        self.testcase.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        return response.code, json.loads(content)

    def login(self, password=PASSWORD, user="anna", **kwargs):
        response, content = self.request("POST", "api/login", {"user": user, "password": password}, **kwargs)
        cookies = response.headers.getRawHeaders("set-cookie") or []
        if response.code == 200:
            self.cookie = cookies[0].split(";")[0].split("=", 1)[1]
            self.csrf = json.loads(content)["csrf"]
        return response, json.loads(content), cookies


class LoginTests(SynchronousTestCase):
    """
    Logging in and out.
    """

    def setUp(self):
        self.ui = Dashboard(self)

    def test_login_sets_session_cookie(self):
        """
        The right password answers the user and a CSRF token, and sets a
        random session cookie: HttpOnly, SameSite=Strict, Path=/ui, with an
        expiry, not Secure over plain http.
        """
        response, body, cookies = self.ui.login()
        self.assertEqual(response.code, 200)
        self.assertEqual(body["user"], "anna")
        self.assertEqual(body["csrf"], self.ui.sessions.find(self.ui.cookie).csrf)
        # The page's own address as bans name it, here and in the session
        # check: it knows a ban of its own address.
        self.assertEqual(body["address"], "127.0.0.1")
        self.assertEqual(self.ui.json("GET", "api/session")[1]["address"], "127.0.0.1")
        self.assertEqual(len(cookies), 1)
        flags = [part.strip().lower() for part in cookies[0].split(";")[1:]]
        self.assertIn("httponly", flags)
        self.assertIn("samesite=strict", flags)
        self.assertIn("path=/ui", flags)
        self.assertIn(f"max-age={30 * 86400}", flags)
        self.assertNotIn("secure", flags)
        self.assertEqual(self.ui.json("GET", "api/session"), (200, body))

    def test_secure_cookie_under_tls(self):
        """
        Over https the session cookie is Secure.
        """
        https = "https://home.example:9000"
        _, _, cookies = self.ui.login(url=https + "/ui/", headers={"Origin": [https]})
        self.assertIn("secure", [part.strip().lower() for part in cookies[0].split(";")])

    def test_wrong_password_counts_toward_ban(self):
        """
        A wrong password or an unknown user is refused with 401 and no
        cookie, counted as an authentication failure of the address without
        the name or the password, and BAN_AFTER of them ban it.
        """
        response, body, cookies = self.ui.login("wrong")
        self.assertEqual((response.code, body, cookies), (401, {"error": "wrong user name or password"}, []))
        self.assertEqual(self.ui.guard.failures("127.0.0.1"), 1)
        self.ui.login(PASSWORD, user="bob")
        self.assertEqual(self.ui.guard.failures("127.0.0.1"), 2)
        failure = self.ui.guard.recent_failures()[-1]
        self.assertNotIn("bob", failure.reason)
        self.assertNotIn(PASSWORD, failure.reason)
        response, body, _ = self.ui.login("wrong again")
        self.assertTrue(self.ui.guard.banned("127.0.0.1"))
        # The failure that bans says so: the next try finds the connection
        # refused, which would look like a server that is down.
        seconds = self.ui.guard.ban_seconds
        self.assertEqual((response.code, body), (401, {
            "error": f"wrong user name or password; that was too many failures: this address is banned for {seconds:g} s"
        }))

    def test_login_runs_in_thread(self):
        """
        The password check is handed to the thread runner and the answer
        waits for it.
        """
        from twisted.internet.defer import Deferred

        pending = []

        def later(f, *args):
            d = Deferred()
            pending.append((d, f, args))
            return d

        ui = Dashboard(self, run=later)
        d = ui.http.post(URL + "api/login", data=json.dumps({"user": "anna", "password": PASSWORD}).encode(),
                         headers={"Content-Type": ["application/json"]})
        self.assertNoResult(d)
        self.assertEqual(len(pending), 1)
        self.assertIs(pending[0][1], passwords.verify_password)
        waiting, f, args = pending.pop()
        waiting.callback(f(*args))
        ui.http.flush()
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_too_many_logins_at_once(self):
        """
        Past MAX_LOGINS_AT_ONCE password checks in flight, a login is
        refused with 503 instead of queued.
        """
        from twisted.internet.defer import Deferred

        ui = Dashboard(self, run=lambda f, *a: Deferred())
        api = ui.api
        for i in range(routes.MAX_LOGINS_AT_ONCE):
            self.assertIs(api.render(login_request(f"10.0.0.{i}")), routes.NOT_DONE_YET)
        request = login_request("10.0.0.99")
        api.render(request)
        self.assertEqual(request.responseCode, 503)

    def test_logins_at_once_per_address(self):
        """
        One address holds at most MAX_LOGINS_PER_ADDRESS password checks in
        flight: past them it gets 503, while another address still gets its
        check (one client cannot hold every slot; review finding 1).
        """
        from twisted.internet.defer import Deferred

        checks = []
        ui = Dashboard(self, run=lambda f, *a: checks.append(Deferred()) or checks[-1])
        for _ in range(routes.MAX_LOGINS_PER_ADDRESS):
            self.assertIs(ui.api.render(login_request("203.0.113.9")), routes.NOT_DONE_YET)
        refused = login_request("203.0.113.9")
        ui.api.render(refused)
        self.assertEqual(refused.responseCode, 503)
        self.assertIs(ui.api.render(login_request("198.51.100.1")), routes.NOT_DONE_YET)
        self.assertEqual(len(checks), routes.MAX_LOGINS_PER_ADDRESS + 1)
        self.assertLess(routes.MAX_LOGINS_PER_ADDRESS, routes.MAX_LOGINS_AT_ONCE)
        # A finished check frees its address's slot.
        checks[0].callback(False)
        self.assertIs(ui.api.render(login_request("203.0.113.9")), routes.NOT_DONE_YET)

    def test_banned_address_not_checked(self):
        """
        A login from a banned address, even with the right password (a
        keep-alive connection opened before the ban), is refused with a 403
        JSON error before the password is checked, gets no cookie (the
        connection's close is proved end to end), and is logged and listed as a failure of kind
        dashboard_login (review finding 1).
        """
        checked = []
        ui = Dashboard(self, run=lambda f, *a: checked.append(f) or run_now(f, *a))
        ui.guard.ban("127.0.0.1", 60)
        with capturedLogs() as events:
            response, body, cookies = ui.login(PASSWORD)
        self.assertEqual(response.code, 403)
        self.assertIn("banned", body["error"])
        self.assertEqual((cookies, checked), ([], []))
        self.assertEqual(ui.guard.failure_counts["dashboard_login"], 1)
        self.assertEqual(ui.guard.recent_failures()[-1].reason, "dashboard login: refused, not checked (during its ban)")
        self.assertTrue([e for e in events if "during its ban" in formatEvent(e)])
        self.assertEqual(ui.guard.bans()[0].until, 60)

    def test_banned_during_check_gets_no_session(self):
        """
        An address banned while its password was being checked gets 403
        and no session, even for the right password.
        """
        from twisted.internet.defer import Deferred

        check = Deferred()
        ui = Dashboard(self, run=lambda f, *a: check)
        request = login_request("203.0.113.9", PASSWORD)
        ui.api.render(request)
        ui.guard.ban("203.0.113.9", 60)
        check.callback(True)
        self.assertEqual(request.responseCode, 403)
        self.assertEqual(len(ui.sessions), 0)

    def test_wrong_password_counted_as_dashboard_login(self):
        """
        A wrong password is counted under the metrics kind dashboard_login,
        not "other" (review finding 3).
        """
        self.ui.login("wrong")
        self.assertEqual(dict(self.ui.guard.failure_counts), {"dashboard_login": 1})

    def test_bad_login_bodies(self):
        """
        A login without both fields as strings is a 400, not counted.
        """
        for body in ({"user": "anna"}, {"user": 1, "password": "x"}, [1], {"user": "", "password": "x"}):
            self.assertEqual(self.ui.json("POST", "api/login", body)[0], 400)
        self.assertEqual(self.ui.json("POST", "api/login", b"{nope")[0], 400)
        self.assertEqual(self.ui.guard.failures("127.0.0.1"), 0)

    def test_logout_ends_session(self):
        """
        Logging out ends the session on the server and clears the cookie.
        """
        self.ui.login()
        token = self.ui.cookie
        response, _ = self.ui.request("POST", "api/logout", {})
        self.assertEqual(response.code, 200)
        self.assertIn("Max-Age=0", response.headers.getRawHeaders("set-cookie")[0])
        self.assertIsNone(self.ui.sessions.find(token))
        self.assertEqual(self.ui.json("GET", "api/session"), (401, {"error": "not logged in"}))


class ProtectionTests(SynchronousTestCase):
    """
    Every route needs a session; every change a CSRF token, JSON and the
    page's own Origin.
    """

    def setUp(self):
        self.ui = Dashboard(self)

    def test_no_session(self):
        """
        Without a session cookie every API route answers 401.
        """
        for method, path in [("GET", "api/session"), ("GET", "api/plugs/p/history"), ("POST", "api/display"),
                             ("POST", "api/bans/lift"), ("POST", "api/backup"), ("POST", "api/logout")]:
            self.assertEqual(self.ui.json(method, path, {"mode": 0})[0], 401, path)

    def test_csrf_required(self):
        """
        A change without the session's CSRF token, or with another, is
        refused with 403 and changes nothing.
        """
        self.ui.login()
        csrf, self.ui.csrf = self.ui.csrf, None
        code, body = self.ui.json("POST", "api/display", {"mode": 2, "color": [1, 2, 3], "pulse": 0})
        self.assertEqual(code, 403)
        self.assertIn("CSRF", body["error"])
        self.ui.csrf = csrf[::-1]
        self.assertEqual(self.ui.json("POST", "api/display", {"mode": 0})[0], 403)
        self.assertEqual(self.ui.hub.display().mode, 0)
        self.assertEqual(self.ui.json("POST", "api/logout", {})[0], 403)
        self.assertIsNotNone(self.ui.sessions.find(self.ui.cookie))

    def test_foreign_origin(self):
        """
        A POST from another site's page is refused, login included.
        """
        for path in ("api/login", "api/display"):
            code, body = self.ui.json("POST", path, {"mode": 0}, headers={"Origin": ["https://evil.example"]})
            self.assertEqual((code, body), (403, {"error": "Origin is not the dashboard's own"}))

    def test_json_only(self):
        """
        A form post (what a cross-site form can send) is refused with 415.
        """
        self.ui.login()
        code, _ = self.ui.json("POST", "api/display", b"mode=0", headers={"Content-Type": ["application/x-www-form-urlencoded"]})
        self.assertEqual(code, 415)

    def test_wrong_method_and_unknown_path(self):
        """
        Wrong methods get 405 and unknown paths 404, as JSON.
        """
        self.ui.login()
        self.assertEqual(self.ui.json("GET", "api/display")[0], 405)
        self.assertEqual(self.ui.json("POST", "api/session", {})[0], 405)
        self.assertEqual(self.ui.json("GET", "api/nothing")[0], 404)
        self.assertEqual(self.ui.json("GET", "nothing.js")[0], 404)


class ActionTests(SynchronousTestCase):
    """
    What the page can do, once logged in.
    """

    def setUp(self):
        self.ui = Dashboard(self)
        self.ui.login()

    def test_display_like_post_display(self):
        """
        A colour set from the page goes through the hub like POST /display:
        the state changes and display listeners (the devices) get the
        packet; a one-off command is sent without changing the state.
        """
        packets = []
        self.ui.hub.watch_display(lambda e: packets.append((e.packet, e.peer)))
        code, body = self.ui.json("POST", "api/display", {"mode": 2, "color": [255, 65, 174], "pulse": 3})
        self.assertEqual((code, body["packet"]), (200, "[cc:2:255,65,174:3]"))
        self.assertEqual(self.ui.hub.display().color, (255, 65, 174))
        code, body = self.ui.json("POST", "api/display", {"command": "reset"})
        self.assertEqual((code, body), (200, {"command": "reset", "packet": "[cc:r:?:?]"}))
        self.assertEqual([p for p, _ in packets], ["[cc:2:255,65,174:3]", "[cc:r:?:?]"])
        self.assertEqual(packets[0][1], "127.0.0.1 (dashboard: anna)")
        self.assertEqual(self.ui.hub.display().mode, 2)

    def test_bad_display(self):
        """
        Out-of-range values are a 400 naming the field.
        """
        code, body = self.ui.json("POST", "api/display", {"mode": 1, "weather": 12, "intensity": 0})
        self.assertEqual(code, 400)
        self.assertIn("weather", body["error"])

    def test_lift_ban(self):
        """
        Lifting a ban admits the address again at once; an address that is
        not banned is a 404.
        """
        for _ in range(3):
            self.ui.guard.failure("10.0.0.9", "test")
        self.assertTrue(self.ui.guard.banned("10.0.0.9"))
        self.assertEqual(self.ui.json("POST", "api/bans/lift", {"address": "10.0.0.9"}), (200, {"lifted": "10.0.0.9"}))
        self.assertFalse(self.ui.guard.banned("10.0.0.9"))
        self.assertTrue(self.ui.guard.admits("10.0.0.9"))
        self.assertEqual(self.ui.json("POST", "api/bans/lift", {"address": "10.0.0.9"})[0], 404)
        self.assertEqual(self.ui.json("POST", "api/bans/lift", {})[0], 400)

    def test_history(self):
        """
        A plug's history comes oldest first with times and sources; ids
        with "/" work; an unknown plug is a 404.
        """
        self.ui.hub.report("a/b", 1, "http", "x")
        self.ui.clock.advance(5)
        self.ui.hub.report("a/b", 0, "device", "x")
        code, body = self.ui.json("GET", "api/plugs/a%2Fb/history")
        self.assertEqual((code, body), (200, [{"value": 1, "at": 0, "source": "http"}, {"value": 0, "at": 5, "source": "device"}]))
        self.assertEqual(self.ui.json("GET", "api/plugs/a/b/history")[1], body)
        self.assertEqual(self.ui.json("GET", "api/plugs/nope/history")[0], 404)

    def test_history_by_query(self):
        """
        The page asks for a history with the id in the query, so that ids
        such as ".." (which browsers resolve away in a path) work; without
        C{plug} it is a 400, without a session a 401.
        """
        for plug_id, query in (("..", "%2E%2E"), ("a b+c", "a%20b%2Bc"), ("über", "%C3%BCber")):
            self.ui.hub.report(plug_id, 1, "http", "x")
            code, body = self.ui.json("GET", f"api/history?plug={query}")
            self.assertEqual((code, [e["value"] for e in body]), (200, [1]), plug_id)
        self.assertEqual(self.ui.json("GET", "api/history?plug=nope")[0], 404)
        self.assertEqual(self.ui.json("GET", "api/history")[0], 400)
        self.ui.json("POST", "api/logout", {})
        self.assertEqual(self.ui.json("GET", "api/history?plug=..")[0], 401)

    def test_backup_without_store(self):
        """
        With STATE_DB = None the backup button gets a 409 saying why.
        """
        code, body = self.ui.json("POST", "api/backup", {})
        self.assertEqual(code, 409)
        self.assertIn("STATE_DB", body["error"])

    def test_backup_with_redis(self):
        """
        With REDIS_URL set the state is in Redis: the backup button gets a
        409 saying to back Redis up with its own snapshots, and the wiring
        gives no backup to take whatever STATE_DB says.
        """
        from smartplug_backend import config
        from smartplug_backend.http.dashboard import wiring

        ui = Dashboard(self, no_backup=routes.IN_REDIS)
        ui.login()
        code, body = ui.json("POST", "api/backup", {})
        self.assertEqual((code, body), (409, {"error": routes.IN_REDIS}))
        self.assertIn("Redis's own snapshots", routes.IN_REDIS)
        on_redis = config.settings_from({"STATE_DB": "state.sqlite", "REDIS_URL": "redis://127.0.0.1:6379/0"})
        self.assertEqual(wiring.backup_button(on_redis), (None, routes.IN_REDIS))
        self.assertEqual(wiring.backup_button(config.settings_from({"STATE_DB": None})), (None, routes.NO_STORE))
        take, why_not = wiring.backup_button(config.settings_from({"STATE_DB": "state.sqlite"}))
        self.assertEqual((take.args[0], why_not), ("state.sqlite", ""))

    def test_backup(self):
        """
        The backup runs through the thread runner, answers its path, and
        tells the feed.
        """
        from smartplug_backend.state.backup import BackupError

        ui = Dashboard(self, backup=lambda: "backups/manual-1.tar.gz")
        ui.login()
        self.assertEqual(ui.json("POST", "api/backup", {}), (200, {"path": "backups/manual-1.tar.gz"}))
        self.assertEqual(ui.backups, [True])

        def broken():
            raise BackupError("cannot write to backups: disk full")

        ui = Dashboard(self, backup=broken)
        ui.login()
        self.assertEqual(ui.json("POST", "api/backup", {}), (503, {"error": "cannot write to backups: disk full"}))


class PoolTests(SynchronousTestCase):
    """
    Logins and backups in thread pools of their own (review finding 4).
    """

    def test_backup_runs_in_its_own_pool(self):
        """
        A backup goes to the backup runner; while it is still running, a
        login's password check (the login runner) is answered.
        """
        from twisted.internet.defer import Deferred

        slow = []
        ui = Dashboard(self, backup=lambda: "backups/b.tar.gz", run_backup=lambda f, *a: slow.append(f) or Deferred())
        ui.login()
        d = ui.http.post(URL + "api/backup", data=b"{}", headers={
            "Content-Type": ["application/json"], "Cookie": [f"smartplug_session={ui.cookie}"],
            "X-CSRF-Token": [ui.csrf]})
        self.assertNoResult(d)
        self.assertEqual(len(slow), 1)
        ui.cookie = ui.csrf = None
        response, body, _ = ui.login()
        self.assertEqual(response.code, 200)

    def test_dashboard_has_two_pools(self):
        """
        The tap's dashboard starts one pool for password checks and another
        for backups and reading the backup folder.
        """
        from twisted.application.service import MultiService

        from smartplug_backend import config
        from smartplug_backend.http.dashboard import wiring
        from smartplug_backend.server.services import ThreadPoolService

        settings = config.settings_from({"DASHBOARD_USERS": {"anna": passwords.hash_password("x", n=N)}})
        top = MultiService()
        clock = Clock()
        ui = wiring.dashboard(settings, Hub(now=clock.seconds), Guard(clock), clock, top)
        self.assertIsNotNone(ui)
        pools = [s for s in top if isinstance(s, ThreadPoolService)]
        self.assertEqual(len(pools), 2)


class PageTests(SynchronousTestCase):
    """
    The page's files.
    """

    def setUp(self):
        self.ui = Dashboard(self)

    def test_page_and_files(self):
        """
        /ui/ is the page, with a policy that allows only this server's
        scripts and socket and no framing; its script, style and uPlot are
        served with their types; /ui redirects to /ui/.
        """
        response, content = self.ui.request("GET", "", cookie=False)
        self.assertEqual(response.code, 200)
        self.assertIn(b'<script type="module" src="app.js">', content)
        policy = response.headers.getRawHeaders("content-security-policy")[0]
        self.assertIn("script-src 'self'", policy)
        self.assertIn("connect-src 'self' ws://home.example:9000", policy)
        self.assertIn("frame-ancestors 'none'", policy)
        self.assertEqual(response.headers.getRawHeaders("x-frame-options"), ["DENY"])
        for path, kind in [("app.js", "text/javascript"), ("style.css", "text/css"),
                           ("uplot/uPlot.iife.min.js", "text/javascript"), ("uplot/uPlot.min.css", "text/css")]:
            response, content = self.ui.request("GET", path, cookie=False)
            self.assertEqual(response.code, 200, path)
            self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith(kind), path)
            self.assertGreater(len(content), 500)
        response, _ = self.ui.request("GET", "", url="http://home.example:9000/ui", cookie=False, follow=False)
        self.assertEqual((response.code, response.headers.getRawHeaders("location")), (301, ["/ui/"]))

    def test_head_without_body(self):
        """
        HEAD /ui/ (and a HEAD of a JSON route) answers its headers and the
        body's length without the body, so twisted.web logs no warning
        (review finding 7).
        """
        page = self.ui.request("GET", "", cookie=False)[1]
        with capturedLogs() as events:
            response, content = self.ui.request("HEAD", "", cookie=False)
            session, _ = self.ui.request("HEAD", "api/session")
        self.assertEqual((response.code, content), (200, b""))
        self.assertEqual(response.headers.getRawHeaders("content-length"), [str(len(page))])
        self.assertEqual(session.code, 401)
        self.assertEqual([formatEvent(e) for e in events if "message body" in formatEvent(e)], [])

    def test_bottle_routes_unchanged(self):
        """
        Beside /ui the Bottle app still answers every other path.
        """
        response, content = self.ui.request("GET", "", url="http://home.example:9000/")
        self.assertEqual(content, b"hallo.")
        self.assertEqual(self.ui.json("GET", "", url="http://home.example:9000/plugs"), (200, []))
        self.assertEqual(self.ui.json("GET", "", url="http://home.example:9000/uix")[0], 404)


class GoneTests(SynchronousTestCase):
    """
    A browser that leaves while its answer is being prepared.
    """

    def test_login_answer_after_browser_left(self):
        """
        When the password check ends after the connection was lost, nothing
        is written and nothing fails.
        """
        import io

        from twisted.internet.defer import Deferred
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        from twisted.web.test.requesthelper import DummyRequest

        ui = Dashboard(self)
        checks = []
        api = routes.Api(ui.hub, ui.guard, ui.sessions, {}, lambda f, *a: checks.append(Deferred()) or checks[-1], 10)

        def left_while_checked():
            request = DummyRequest([b"login"])
            request.method = b"POST"
            request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
            request.content = io.BytesIO(b'{"user": "anna", "password": "x"}')
            self.assertIs(api.render(request), routes.NOT_DONE_YET)
            # What twisted.web does when the connection is lost mid-request.
            request.processingFailed(Failure(ConnectionLost()))
            request.written.clear()
            return request

        request = left_while_checked()
        checks.pop().callback(False)
        self.assertEqual(request.written, [])
        self.assertEqual(request.finished, 0)
        # The right password, found after the browser left: no session
        # that no one holds.
        request = left_while_checked()
        created = []
        self.patch(ui.sessions, "create", lambda *a: created.append(a))
        checks.pop().callback(True)
        self.assertEqual((request.written, created), ([], []))


class AccessibilityTests(SynchronousTestCase):
    """
    The page's controls can be used without a mouse and read by a screen
    reader.
    """

    def test_every_control_labelled(self):
        """
        Every input and select of the page has a label naming it, and every
        button has text; none is taken out of the tab order or put ahead in
        it (tabindex -1, focus by the script only, is for a heading).
        """
        from html.parser import HTMLParser
        from importlib import resources

        page = (resources.files("smartplug_backend.http.dashboard") / "static" / "index.html").read_text()

        class Controls(HTMLParser):
            def __init__(self):
                super().__init__()
                self.controls, self.labels, self.buttons, self.button, self.tabindex = [], set(), [], None, []

            def handle_starttag(self, tag, attrs):
                attrs = dict(attrs)
                if "tabindex" in attrs:
                    self.tabindex.append(attrs)
                if tag in ("input", "select"):
                    self.controls.append(attrs.get("id"))
                elif tag == "label":
                    self.labels.add(attrs.get("for"))
                elif tag == "button":
                    self.button = attrs.get("aria-label", "")

            def handle_data(self, data):
                if self.button is not None:
                    self.button += data

            def handle_endtag(self, tag):
                if tag == "button":
                    self.buttons.append(self.button.strip())
                    self.button = None

        found = Controls()
        found.feed(page)
        self.assertGreaterEqual(len(found.controls), 7)
        self.assertEqual([c for c in found.controls if c not in found.labels], [])
        self.assertNotIn("", found.buttons)
        self.assertEqual([a for a in found.tabindex if a["tabindex"] != "-1" or a.get("id") != "plugs-title"], [])
