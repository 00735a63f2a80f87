"""
The dashboard in a real browser (SPEC 9): headless Chromium with Selenium
against the real C{twistd -n smartplug}, its plugs fed by plain HTTP and its
lamp by a WebSocket device client on the device port.

Set C{SMARTPLUG_SCREENSHOTS=docs} to also write the README's screenshots
(C{dashboard.png}, C{dashboard-phone.png}) there.
"""

import json
import os
import re
import shutil
import socket
import urllib.request

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from smartplug_backend.server.passwords import hash_password

from .browser import full_page_screenshot, start_browser
from .mosquitto import start_mosquitto
from .redis_server import start_redis
from .server import RunningServer, reserved_port, start_server

USER, PASSWORD = "anna", "correct horse battery staple"
SECRET = "lamp-secret"
# Cheap parameters: the tests check the login, not scrypt's cost.
SETTINGS = f"""
DASHBOARD_USERS = {{{USER!r}: {hash_password(PASSWORD, n=2**10)!r}}}
AUTH_SECRET = {SECRET!r}
BAN_AFTER = 3
BAN_SECONDS = 600
"""
WAIT = 15
# Injected before the page's own scripts: keeps the page's WebSockets in
# window.liveSockets, so that a test can drop one as a network would, and
# while window.holdLive is true sends a new one to a path that refuses it
# (the page's own origin: its Content-Security-Policy allows no other).
WATCH_SOCKETS = """
(() => {
  const Real = window.WebSocket;
  window.liveSockets = [];
  window.holdLive = false;
  function Watched(url, protocols) {
    const socket = new Real(window.holdLive ? url + "-held" : url, protocols);
    window.liveSockets.push(socket);
    return socket;
  }
  Watched.prototype = Real.prototype;
  Object.assign(Watched, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  window.WebSocket = Watched;
})();
"""


# Every path the page fetches, in window.fetched.
WATCH_FETCHES = """
(() => {
  const real = window.fetch;
  window.fetched = [];
  window.fetch = (url, ...rest) => { window.fetched.push(String(url)); return real(url, ...rest); };
})();
"""


# Timers of a second or more (the live socket's retries) wait in
# window.heldTimers until the test runs them: runHeldTimers() calls each and
# resolves once all are done.  clearTimeout() removes a held one.
HOLD_TIMERS = """
(() => {
  const realSet = window.setTimeout, realClear = window.clearTimeout;
  window.heldTimers = new Map();
  let next = 1e9;
  window.setTimeout = (fn, wait, ...args) => {
    if (!(wait >= 1000)) return realSet(fn, wait, ...args);
    const id = next++;
    window.heldTimers.set(id, () => fn(...args));
    return id;
  };
  window.clearTimeout = (id) => { if (!window.heldTimers.delete(id)) realClear(id); };
  window.runHeldTimers = () => {
    const due = [...window.heldTimers.values()];
    window.heldTimers.clear();
    return Promise.all(due.map((fn) => fn()));
  };
})();
"""


# The page's session checks (api/session) wait, while window.holdSession is
# true, until the test answers them with releaseSession(status).
HOLD_SESSION_CHECKS = """
(() => {
  const realFetch = window.fetch;
  window.holdSession = false;
  window.heldChecks = [];
  window.fetch = (url, options) => {
    if (!window.holdSession || !String(url).endsWith("api/session")) return realFetch(url, options);
    return new Promise((resolve) => window.heldChecks.push(resolve));
  };
  window.releaseSession = (status) => {
    for (const resolve of window.heldChecks.splice(0)) {
      resolve(new Response(JSON.stringify({ error: "no session" }),
                           { status, headers: { "Content-Type": "application/json" } }));
    }
  };
})();
"""


def post(server, path: str, body: dict) -> None:
    request = urllib.request.Request(server.url(path), data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def device(server, source: str = "127.0.0.1"):
    """
    A WebSocket client on the device port, from the address C{source}.
    """
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.ports["device WebSocket"]))
    return connect(f"ws://127.0.0.1:{server.ports['device WebSocket']}/", sock=sock, open_timeout=10)

# Injected before the page's own scripts: the browser's clock runs two days
# ahead of the server's, so that every time the server sends is of another
# day than the browser's today.
CLOCK_AHEAD = """
(() => {
  const Real = Date;
  const ahead = 2 * 86400 * 1000;
  class Ahead extends Real {
    constructor(...args) { if (args.length) super(...args); else super(Real.now() + ahead); }
    static now() { return Real.now() + ahead; }
  }
  window.Date = Ahead;
})();
"""

class _InBrowser(TestCase):
    """
    One server with C{settings} and one browser per test.
    """

    def start(self, settings: str) -> None:
        self.server = start_server(self, settings, listeners=("HTTP", "app WebSocket", "device WebSocket"))
        self.browser = start_browser(self)
        self.wait = WebDriverWait(self.browser, WAIT, ignored_exceptions=[StaleElementReferenceException])

    def visible(self, css: str):
        return self.wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def text_in(self, css: str, text: str) -> None:
        self.wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    def log_in(self, password: str = PASSWORD) -> None:
        self.visible("#login-user").clear()
        self.browser.find_element(By.ID, "login-user").send_keys(USER)
        self.browser.find_element(By.ID, "login-password").send_keys(password)
        self.browser.find_element(By.ID, "login-submit").click()

    def watch_sockets(self) -> None:
        """
        From the next page load on, keep the page's WebSockets where the
        test can reach them (L{WATCH_SOCKETS}).
        """
        self.browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_SOCKETS})

    def clock_ahead(self) -> None:
        """
        From the next page load on, the browser's clock runs two days ahead
        (L{CLOCK_AHEAD}).
        """
        self.browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CLOCK_AHEAD})

    def drop_live_socket(self) -> None:
        """
        Drop the page's live socket as a network would, and hold the page's
        new ones off until L{release_live_socket}.
        """
        self.browser.execute_script(
            "window.holdLive = true; const s = window.liveSockets[window.liveSockets.length - 1];"
            "s.onmessage = null; s.close();"
        )
        self.wait.until(lambda b: b.find_element(By.ID, "live").get_attribute("data-state") == "closed")

    def release_live_socket(self) -> None:
        self.browser.execute_script("window.holdLive = false;")
        self.wait.until(lambda b: b.find_element(By.ID, "live").get_attribute("data-state") == "open")

    def fail_three_times(self, source: str) -> None:
        """
        Three wrong secrets on the device port from C{source}, each closed
        with 1008: the address is banned (BAN_AFTER is 3).
        """
        for _ in range(3):
            stranger = device(self.server, source)
            stranger.send("not the secret")
            with self.assertRaises(ConnectionClosed) as closed:
                stranger.recv(10)
            self.assertEqual(closed.exception.rcvd.code, 1008)

    def log_in_again_with_a_retry_waiting(self, *scripts, before_logout=None) -> None:
        """
        Open the dashboard with the page's long timers held (L{HOLD_TIMERS})
        and C{scripts}, drop its live socket so that a retry waits, call
        C{before_logout}, then log out and in again, until the new live
        socket is open.
        """
        self.watch_sockets()
        for script in (HOLD_TIMERS, *scripts):
            self.browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": script})
        self.open_dashboard()
        self.wait.until(lambda b: b.find_element(By.ID, "live").get_attribute("data-state") == "open")
        self.drop_live_socket()
        self.wait.until(lambda b: b.execute_script("return window.heldTimers.size") > 0)
        if before_logout is not None:
            before_logout()
        self.browser.find_element(By.ID, "logout").click()
        self.text_in("#login-error", "Logged out.")
        self.browser.execute_script("window.holdLive = false;")
        self.log_in()
        self.wait.until(lambda b: b.find_element(By.ID, "live").get_attribute("data-state") == "open")

    def fetch_json(self, path: str):
        """
        GET C{path} (relative to the page) from the page, with its session.
        """
        return self.browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {credentials: 'same-origin'}).then((r) => r.json()).then(done, (e) => done(String(e)));",
            path,
        )

    def open_dashboard(self) -> None:
        self.browser.get(self.server.url("/ui/"))
        self.log_in()
        self.visible("#app")
        self.wait.until(lambda b: b.find_element(By.ID, "live").get_attribute("data-state") == "open")


class DashboardInBrowserTests(_InBrowser):
    def setUp(self):
        self.start(SETTINGS + f"STATE_DB = {os.path.abspath(self.mktemp()) + '.sqlite'!r}\n")

    def test_login_live_plug_and_chart(self):
        """
        A wrong password is refused and counted toward a ban; the right one
        opens the dashboard; a plug reported with POST /data appears and
        changes live, and its history chart has one point per report; the
        backup button writes a backup.
        """
        post(self.server, "/data", {"id": "kitchen", "value": 1})
        post(self.server, "/data", {"id": "kitchen", "value": 0})
        self.browser.get(self.server.url("/ui/"))
        self.log_in("wrong password")
        self.text_in("#login-error", "wrong user name or password")
        self.server.wait_for(r"authentication failure from 127\.0\.0\.1: dashboard login: wrong user name or password \(1 of 3\)")
        # Before login nothing of the home shows, not even an empty dashboard.
        self.assertFalse(self.browser.find_element(By.ID, "app").is_displayed())

        self.log_in()
        self.visible("#app")
        # The keyboard goes on from the page's first heading.
        self.wait.until(lambda b: b.switch_to.active_element.get_attribute("id") == "plugs-title")
        card = '.plug[data-plug="kitchen"]'
        self.text_in(card + " .state", "unplugged")
        self.wait.until(lambda b: b.find_element(By.CSS_SELECTOR, card + " .chart").get_attribute("data-points") == "2")

        # A report gives the plug's chart new data: the same chart, not a
        # new one (making one per report left the page seconds behind a
        # burst of reports).
        self.browser.execute_script(f"document.querySelector('{card} .chart canvas').dataset.first = 'yes'")
        post(self.server, "/data", {"id": "kitchen", "value": 1})
        self.text_in(card + " .state", "plugged in")
        self.wait.until(lambda b: b.find_element(By.CSS_SELECTOR, card + " .chart").get_attribute("data-points") == "3")
        self.assertEqual(len(self.browser.find_elements(By.CSS_SELECTOR, card + " .chart canvas")), 1)
        self.assertEqual(self.browser.find_element(By.CSS_SELECTOR, card + " .chart canvas").get_attribute("data-first"), "yes")
        self.assertEqual(len(self.browser.find_elements(By.CSS_SELECTOR, card + " .reports tbody tr")), 3)

        # A plug never seen before shows up too, without a reload.
        post(self.server, "/data", {"id": "garage/1", "value": 1})
        self.text_in('.plug[data-plug="garage/1"] .state', "plugged in")
        self.wait.until(
            lambda b: b.find_element(By.CSS_SELECTOR, '.plug[data-plug="garage/1"] .chart').get_attribute("data-points") == "1"
        )
        # Every range draws the same three reports: all are recent.
        Select(self.browser.find_element(By.ID, "range")).select_by_visible_text("last hour")
        self.assertEqual(self.browser.find_element(By.CSS_SELECTOR, card + " .chart").get_attribute("data-points"), "3")

        # "Back up now" writes a backup in the server's thread pool, and
        # the server panel shows it as the last one.
        self.text_in("#facts", "Last backup")
        self.assertIn("none yet", self.browser.find_element(By.ID, "facts").text)
        self.browser.find_element(By.ID, "backup").click()
        self.text_in("#backup-result", "written to backups/")
        self.text_in("#facts", "backups/")
        self.assertTrue(self.browser.find_element(By.ID, "backup").is_enabled())
        self.assertEqual(len(os.listdir(os.path.join(self.server.directory, "backups"))), 1)

        # A plug whose id a browser would resolve away in a path gets its
        # history all the same.
        post(self.server, "/data", {"id": "..", "value": 1})
        self.wait.until(
            lambda b: b.find_element(By.CSS_SELECTOR, '.plug[data-plug=".."] .chart').get_attribute("data-points") == "1"
        )

        # Logging out leaves nothing of the home on the page.
        self.browser.find_element(By.ID, "logout").click()
        self.text_in("#login-error", "Logged out.")
        self.assertFalse(self.browser.find_element(By.ID, "app").is_displayed())
        self.assertEqual(self.browser.find_elements(By.CSS_SELECTOR, ".plug"), [])

    def test_history_after_live_socket_drops(self):
        """
        Reports made while the live socket was down are in a known plug's
        table and chart once it is back: the snapshot reloads every plug's
        history, not only its header.
        """
        post(self.server, "/data", {"id": "kitchen", "value": 1})
        post(self.server, "/data", {"id": "kitchen", "value": 0})
        self.watch_sockets()
        self.open_dashboard()
        card = '.plug[data-plug="kitchen"]'

        def shown(b):
            return (len(b.find_elements(By.CSS_SELECTOR, card + " .reports tbody tr")),
                    b.find_element(By.CSS_SELECTOR, card + " .chart").get_attribute("data-points"))

        self.wait.until(lambda b: shown(b) == (2, "2"))
        self.drop_live_socket()
        for value in (1, 0, 1):
            post(self.server, "/data", {"id": "kitchen", "value": value})
        self.release_live_socket()
        self.text_in(card + " .state", "plugged in")
        self.wait.until(lambda b: shown(b) == (5, "5"))
        values = [td.text for td in self.browser.find_elements(By.CSS_SELECTOR, card + " .reports tbody tr td:first-child")]
        self.assertEqual(values, ["1 plugged in", "0 unplugged", "1 plugged in", "0 unplugged", "1 plugged in"])

    def test_no_history_reload_when_nothing_was_missed(self):
        """
        A live socket that comes back with no report missed does not fetch
        the plug's history again (it may hold HISTORY_KEEP reports); the
        next live report still shows.
        """
        post(self.server, "/data", {"id": "hall", "value": 1})
        self.watch_sockets()
        self.browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_FETCHES})
        self.open_dashboard()
        card = '.plug[data-plug="hall"]'
        rows = card + " .reports tbody tr"
        self.wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, rows)) == 1)

        def history_fetches():
            return [u for u in self.browser.execute_script("return window.fetched") if "history" in u]

        self.assertEqual(len(history_fetches()), 1)
        self.drop_live_socket()
        self.release_live_socket()
        # The snapshot comes before this report on the socket: once the
        # report shows, the snapshot has been handled.
        post(self.server, "/data", {"id": "hall", "value": 0})
        self.wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, rows)) == 2)
        self.assertEqual(len(history_fetches()), 1)

    def test_dropped_plugs_leave_the_page(self):
        """
        The feed's "plugs" message (on Redis, the plugs of a node whose copy
        lost to another node's; played here on the page's socket) takes the
        dropped plugs' cards off the page and puts the others in its order;
        with none left, the page says no plug has reported.  A snapshot
        (the page's socket comes back) puts the cards in its order too.
        """
        for plug_id in ("kitchen", "garage", "hall"):
            post(self.server, "/data", {"id": plug_id, "value": 1})
        self.watch_sockets()
        self.open_dashboard()
        self.visible('.plug[data-plug="hall"]')

        def cards():
            return [e.get_attribute("data-plug") for e in self.browser.find_elements(By.CSS_SELECTOR, ".plug")]

        def kept(order, dropped):
            self.browser.execute_script(
                "window.liveSockets[window.liveSockets.length - 1].onmessage({data: arguments[0]});",
                json.dumps({"type": "plugs", "order": order, "dropped": dropped}),
            )

        self.assertEqual(cards(), ["kitchen", "garage", "hall"])
        kept(["hall", "garage"], ["kitchen", "unknown"])
        self.assertEqual(cards(), ["hall", "garage"])
        self.assertFalse(self.browser.find_element(By.ID, "no-plugs").is_displayed())
        kept(["garage", "hall"], [])
        self.assertEqual(cards(), ["garage", "hall"])
        # The server still has all three, in its own order.
        self.drop_live_socket()
        self.release_live_socket()
        self.wait.until(lambda b: cards() == ["kitchen", "garage", "hall"])
        kept([], ["kitchen", "garage", "hall"])
        self.text_in("#no-plugs", "No plug has reported yet.")
        self.assertEqual(cards(), [])

    def test_colour_to_device_and_lift_ban(self):
        """
        A colour set in the page reaches a connected device as its packet; a
        banned address shows live with a button that lifts the ban, after
        which that address may connect again.
        """
        lamp = device(self.server)
        self.addCleanup(lamp.close)
        lamp.send(SECRET)
        self.assertEqual(lamp.recv(10), "ok")
        self.assertEqual(lamp.recv(10), "[cc:0:?:?]")
        for value in (1, 0, 1):
            post(self.server, "/data", {"id": "0xb00bf0cc", "value": value})
        self.open_dashboard()
        self.text_in("#devices tbody", "127.0.0.1")

        self.browser.execute_script(
            "const c = document.getElementById('color'); c.value = '#0a141e';"
            "c.dispatchEvent(new Event('input', {bubbles: true}));"
        )
        pulse = self.browser.find_element(By.ID, "pulse")
        pulse.clear()
        pulse.send_keys("3")
        self.browser.find_element(By.ID, "set-color").click()
        self.assertEqual(lamp.recv(10), "[cc:2:10,20,30:3]")
        self.text_in("#display-packet", "[cc:2:10,20,30:3]")

        self.fail_three_times("127.0.0.2")
        lift = self.visible('#bans button[data-address="127.0.0.2"]')
        self.text_in("#failures tbody", "device port: wrong secret")
        self.screenshots()

        lift.click()
        self.wait.until(EC.invisibility_of_element_located((By.CSS_SELECTOR, '#bans button[data-address="127.0.0.2"]')))
        self.server.wait_for(r"ban on 127\.0\.0\.2 lifted by 127\.0\.0\.1 \(dashboard: anna\)")
        again = device(self.server, "127.0.0.2")
        self.addCleanup(again.close)
        again.send(SECRET)
        self.assertEqual(again.recv(10), "ok")

    def test_own_address_banned(self):
        """
        A ban of the page's own address (a client behind the same router
        failed) leaves the logged-in page live: its live socket proved the
        session.  The ban shows as this device's, its Lift button disabled
        (the address's requests are refused), and an action the ban refuses
        says why rather than "no answer", logging out included.
        """
        self.open_dashboard()
        self.fail_three_times("127.0.0.1")
        self.server.wait_for(r"logged-in dashboard page\(s\) (of banned 127\.0\.0\.1 )?stay open")
        lift = self.visible('#bans button[data-address="127.0.0.1"]')
        self.assertFalse(lift.is_enabled())
        self.text_in("#bans tbody", "this device")
        # Still live: a lamp from another address reports a plug.
        lamp = device(self.server, "127.0.0.2")
        self.addCleanup(lamp.close)
        lamp.send(SECRET)
        self.assertEqual(lamp.recv(10), "ok")
        lamp.send(json.dumps({"id": "hall", "value": 1}))
        self.text_in('.plug[data-plug="hall"] .state', "plugged in")
        self.assertEqual(self.browser.find_element(By.ID, "live").get_attribute("data-state"), "open")
        self.browser.find_element(By.ID, "set-color").click()
        self.text_in("#display-result", "refused: this device's address 127.0.0.1 is banned until")
        # Logging out is refused too: the page says so and stays logged in
        # (the server keeps the session, the browser its cookie).
        self.browser.find_element(By.ID, "logout").click()
        alert = self.wait.until(EC.alert_is_present())
        self.assertIn("Not logged out: refused: this device's address 127.0.0.1 is banned until", alert.text)
        alert.accept()
        self.assertTrue(self.browser.find_element(By.ID, "app").is_displayed())

    def test_many_plugs_found_by_name(self):
        """
        From seven plugs on, the page counts them and offers a box that
        shows only the plugs whose name has the text typed in it.
        """
        for n in range(6):
            post(self.server, "/data", {"id": f"socket-{n}", "value": 1})
        self.open_dashboard()
        self.text_in("#plug-count", "6 plugs")
        self.assertFalse(self.browser.find_element(By.ID, "plug-filter").is_displayed())
        post(self.server, "/data", {"id": "Küche", "value": 0})
        self.text_in("#plug-count", "7 plugs")
        box = self.visible("#plug-filter")
        box.send_keys("KÜ")
        self.text_in("#plug-count", "1 of 7 plugs shown")
        shown = [e.get_attribute("data-plug") for e in self.browser.find_elements(By.CSS_SELECTOR, ".plug") if e.is_displayed()]
        self.assertEqual(shown, ["Küche"])
        # A new plug that does not match stays hidden; clearing shows all.
        post(self.server, "/data", {"id": "garage", "value": 1})
        self.text_in("#plug-count", "1 of 8 plugs shown")
        box.clear()
        box.send_keys(" ")
        self.text_in("#plug-count", "8 plugs")
        self.assertEqual(len([e for e in self.browser.find_elements(By.CSS_SELECTOR, ".plug") if e.is_displayed()]), 8)
        # Every chart, made while its card was hidden or not, fits its box,
        # and does again once the list is narrower.
        fits = ("return [...document.querySelectorAll('.plug .chart')].every("
                "(box) => box.querySelector('.uplot') && box.querySelector('.uplot').offsetWidth <= box.clientWidth)")
        self.wait.until(lambda b: b.execute_script(fits))
        self.browser.set_window_size(600, 900)
        self.wait.until(lambda b: b.execute_script(fits))

    def test_publications_readable(self):
        """
        The smartplug event's data (the app's JSON text, its non-ASCII
        characters escaped) shows those characters; long data is cut, in
        full in its title; a reset asks first.
        """
        lamp = device(self.server)
        self.addCleanup(lamp.close)
        lamp.send(SECRET)
        self.assertEqual(lamp.recv(10), "ok")
        self.assertEqual(lamp.recv(10), "[cc:0:?:?]")
        self.open_dashboard()
        post(self.server, "/data", {"id": "Küche", "value": 1})
        self.text_in("#publications", 'smartplug {"id": "Küche", ')
        post(self.server, "/publish?clientName=kitchen-pi", {"event": "log", "data": "x" * 1000})
        self.text_in("#publications", "log " + "x" * 300 + "…")
        item = self.browser.find_element(By.CSS_SELECTOR, "#publications li")
        self.assertEqual(item.get_attribute("title"), "x" * 1000)
        # A phone shows no tooltip: "more" shows it all, "less" cuts again.
        item.find_element(By.CSS_SELECTOR, "button.more").click()
        self.text_in("#publications li", "log " + "x" * 1000 + " ")
        self.assertEqual(item.find_element(By.CSS_SELECTOR, "button.more").text, "less")
        item.find_element(By.CSS_SELECTOR, "button.more").click()
        self.text_in("#publications li", "log " + "x" * 300 + "…")
        # An emoji across the cut is left out whole, not cut in two.
        post(self.server, "/publish?clientName=kitchen-pi", {"event": "emoji", "data": "y" * 299 + "\U0001f50c" * 5})
        self.text_in("#publications", "emoji " + "y" * 299 + "…")
        # A reset asks first: declined, nothing is sent; accepted, it is.
        self.browser.find_element(By.ID, "display-reset").click()
        self.wait.until(EC.alert_is_present()).dismiss()
        self.browser.find_element(By.ID, "display-reset").click()
        self.wait.until(EC.alert_is_present()).accept()
        self.assertEqual(lamp.recv(10), "[cc:r:?:?]")
        self.text_in("#display-result", "sent [cc:r:?:?]")

    def test_logout_forgets_everything(self):
        """
        Logging out leaves nothing of the home in the page: no plug, device,
        client, ban or failure, no display state, and the lamp controls
        back at their defaults.
        """
        lamp = device(self.server)
        self.addCleanup(lamp.close)
        lamp.send(SECRET)
        self.assertEqual(lamp.recv(10), "ok")
        lamp_address = "127.0.0.1:%d" % lamp.socket.getsockname()[1]
        subscriber = connect(self.server.ws_url("/subscribe?clientName=kitchen-pi"), open_timeout=10)
        self.addCleanup(subscriber.close)
        subscriber.send(json.dumps({"action": "subscribe", "event": "weather"}))
        self.fail_three_times("127.0.0.2")
        post(self.server, "/data", {"id": "0xb00bf0cc", "value": 1})
        self.open_dashboard()
        self.text_in("#devices tbody", lamp_address)
        self.text_in("#client-list tbody", "kitchen-pi")
        self.visible('#bans button[data-address="127.0.0.2"]')
        self.text_in("#failures tbody", "device port: wrong secret")
        post(self.server, "/publish?clientName=kitchen-pi", {"event": "weather", "data": "sunny, 21 C"})
        self.text_in("#publications", "weather sunny, 21 C")
        pulse = self.browser.find_element(By.ID, "pulse")
        pulse.clear()
        pulse.send_keys("3")
        self.browser.find_element(By.ID, "set-color").click()
        self.text_in("#display-result", "sent [cc:2:255,65,174:3]")

        self.browser.find_element(By.ID, "logout").click()
        self.text_in("#login-error", "Logged out.")
        shown = self.browser.execute_script("return document.getElementById('app').textContent")
        for secret in (lamp_address, "127.0.0.1", "kitchen-pi", "weather sunny", "127.0.0.2", "wrong secret", "0xb00bf0cc",
                       "[cc:", "255, 65, 174", "STATE_DB"):
            self.assertNotIn(secret, shown)
        values = self.browser.execute_script(
            "return ['weather', 'intensity', 'color', 'pulse'].map((id) => document.getElementById(id).value)"
        )
        self.assertEqual(values, ["3", "9", "#ff41ae", "0"])

    def test_one_live_socket_after_logging_in_again(self):
        """
        A retry of the live socket still waiting when the user logs out is
        dropped: after logging in again the page has one live socket, not a
        second one opened by the old retry (which showed every change
        twice).
        """
        self.log_in_again_with_a_retry_waiting()
        self.browser.execute_async_script(
            "const done = arguments[arguments.length - 1]; window.runHeldTimers().then(() => done(), () => done());"
        )
        states = self.browser.execute_script("return window.liveSockets.map((s) => s.readyState)")
        self.assertEqual([state for state in states if state in (0, 1)], [1], states)

    def test_stale_answer_keeps_the_new_login(self):
        """
        A session check the live socket's retry sent before a logout, which
        answers 401 only after the user has logged in again, leaves the new
        login alone (it used to throw it out, asking to log in again).
        """
        def retry_asking():
            self.browser.execute_script("window.holdSession = true; window.retried = window.runHeldTimers();")
            self.wait.until(lambda b: b.execute_script("return window.heldChecks.length") == 1)

        self.log_in_again_with_a_retry_waiting(HOLD_SESSION_CHECKS, before_logout=retry_asking)
        self.browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.releaseSession(401); window.retried.then(() => done(), () => done());"
        )
        self.assertTrue(self.browser.find_element(By.ID, "app").is_displayed())
        self.assertFalse(self.browser.find_element(By.ID, "login").is_displayed())

    def test_times_of_another_day_have_their_date(self):
        """
        A client connected on another day than the browser's today shows
        the date it connected, as the devices, bans and failures do.
        """
        subscriber = connect(self.server.ws_url("/subscribe?clientName=kitchen-pi"), open_timeout=10)
        self.addCleanup(subscriber.close)
        subscriber.send(json.dumps({"action": "subscribe", "event": "weather"}))
        self.clock_ahead()
        self.open_dashboard()
        self.text_in("#client-list tbody", "kitchen-pi")
        since = self.browser.find_element(By.CSS_SELECTOR, "#client-list tbody td:nth-child(3)").text
        # The year of the browser's real today (Date is the clock ahead).
        year = self.browser.execute_script("return new (Object.getPrototypeOf(Date))().getFullYear()")
        self.assertIn(str(year), since)

    def test_display_result_goes_when_a_send_is_stopped(self):
        """
        "sent ..." describes the last send: it goes when a control changes,
        and when the browser's own validation stops the next send.
        """
        self.open_dashboard()
        self.text_in("#display-state", "off")
        set_colour = self.browser.find_element(By.ID, "set-color")
        set_colour.click()
        self.text_in("#display-result", "sent [cc:2:255,65,174:0]")
        # Out of range, set without an input event: only the submit
        # attempt, which the browser refuses, can clear the result.
        self.browser.execute_script("document.getElementById('pulse').value = '12'")
        set_colour.click()
        self.assertFalse(self.browser.execute_script("return document.getElementById('pulse').validity.valid"))
        self.assertEqual(self.browser.find_element(By.ID, "display-result").get_attribute("textContent"), "")

        pulse = self.browser.find_element(By.ID, "pulse")
        pulse.clear()
        pulse.send_keys("4")
        set_colour.click()
        self.text_in("#display-result", "sent [cc:2:255,65,174:4]")
        Select(self.browser.find_element(By.ID, "weather")).select_by_value("5")
        self.assertEqual(self.browser.find_element(By.ID, "display-result").get_attribute("textContent"), "")

    def test_device_last_heard_moves_on(self):
        """
        A device's "last heard (N s ago)" counts on with the page's clock,
        as the plugs' "since" does, while the device stays silent (its list
        is not sent again).
        """
        lamp = device(self.server)
        self.addCleanup(lamp.close)
        lamp.send(SECRET)
        self.assertEqual(lamp.recv(10), "ok")
        self.open_dashboard()
        cell = "#devices tbody td:nth-child(3)"
        self.text_in(cell, "s ago)")

        def seconds_ago():
            found = re.search(r"\((\d+) s ago\)$", self.browser.find_element(By.CSS_SELECTOR, cell).text)
            return int(found.group(1))

        first = seconds_ago()
        self.wait.until(lambda b: seconds_ago() > first)

    def test_addresses_on_one_line_on_a_phone(self):
        """
        On a phone (360 px), and in the desktop's narrower two-column grid,
        an address with its port, as long as IPv4 makes it, stays on one
        line in the devices, clients, bans and failures lists, and nothing
        is wider than its card or the screen.
        """
        lamp = device(self.server, "127.100.200.250")
        self.addCleanup(lamp.close)
        lamp.send(SECRET)
        self.assertEqual(lamp.recv(10), "ok")
        sock = socket.socket()
        sock.bind(("127.100.200.251", 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.server.ports["app WebSocket"]))
        subscriber = connect(self.server.ws_url("/subscribe?clientName=kitchen-pi-" + "x" * 60), sock=sock,
                             open_timeout=10)
        self.addCleanup(subscriber.close)
        subscriber.send(json.dumps({"action": "subscribe", "event": "weather"}))
        self.fail_three_times("127.100.200.252")
        self.open_dashboard()
        self.text_in("#devices tbody", "127.100.200.250:")
        self.text_in("#client-list tbody", "127.100.200.251:")
        self.visible('#bans button[data-address="127.100.200.252"]')
        self.text_in("#failures tbody", "127.100.200.252")
        self.addCleanup(self.browser.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})
        for width in (360, 920):
            self.browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": 800, "deviceScaleFactor": 1, "mobile": width < 500,
            })
            self.browser.execute_script("window.dispatchEvent(new Event('resize'))")
            # Each address is one line box, inside its card.
            addresses = self.browser.execute_script("""
                return ['#devices td:nth-child(1)', '#client-list td:nth-child(2)', '#bans td:nth-child(1)',
                        '#failures td:nth-child(2)'].flatMap((css) => [...document.querySelectorAll(css)]).map((td) => {
                  const range = document.createRange();
                  range.selectNodeContents(td);
                  const lines = range.getClientRects();
                  const card = td.closest('.card').getBoundingClientRect();
                  return [td.textContent, lines.length, lines[0].left >= card.left && lines[0].right <= card.right];
                });
            """)
            self.assertEqual(len(addresses), 6, addresses)
            for text, lines, inside in addresses:
                self.assertEqual((width, text, lines, inside), (width, text, 1, True))
            # Nothing sticks out of its card, nor the page out of the screen.
            sticking_out = self.browser.execute_script("""
                return [...document.querySelectorAll('#app .card')].flatMap((card) => {
                  const right = card.getBoundingClientRect().right;
                  return [...card.querySelectorAll('*')].filter((e) => e.getBoundingClientRect().right > right + 0.5)
                    .map((e) => e.tagName + ' ' + e.textContent.slice(0, 40));
                }).concat(document.documentElement.scrollWidth > document.documentElement.clientWidth ? ['the page'] : []);
            """)
            self.assertEqual((width, sticking_out), (width, []))

    def screenshots(self) -> None:
        """
        The dashboard at desktop and phone width, with a PiCloud subscriber
        listed and its publication shown live, into the test's temp
        directory and, with C{SMARTPLUG_SCREENSHOTS} set, there too.
        """
        subscriber = connect(self.server.ws_url("/subscribe?clientName=kitchen-pi"), open_timeout=10)
        self.addCleanup(subscriber.close)
        subscriber.send(json.dumps({"action": "subscribe", "event": "weather"}))
        self.text_in("#client-list tbody", "kitchen-pi")
        self.text_in("#client-list tbody", "weather")
        post(self.server, "/publish?clientName=kitchen-pi", {"event": "weather", "data": "sunny, 21 C"})
        self.assertIn("sunny, 21 C", subscriber.recv(10))
        self.text_in("#publications", "weather sunny, 21 C")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        shots = {"dashboard.png": 1280, "dashboard-phone.png": 360}
        for name, width in shots.items():
            full_page_screenshot(self.browser, os.path.join(directory, name), width)
            self.assertGreater(os.path.getsize(os.path.join(directory, name)), 10000)
        wanted = os.environ.get("SMARTPLUG_SCREENSHOTS")
        if wanted:
            # Relative to the checkout: trial runs in _trial_temp.
            wanted = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), wanted)
            for name in shots:
                shutil.copy(os.path.join(directory, name), os.path.join(wanted, name))



class DashboardOnRedisTests(_InBrowser):
    """
    The dashboard of a node whose state lives in Redis.
    """

    def setUp(self):
        self.redis = redis = start_redis(self)
        # STATE_DB is set too, and not used: the page must not offer it.
        self.start(SETTINGS + f'REDIS_URL = "{redis.url}"\nSTATE_DB = "unused.sqlite"\nNODE_NAME = "hall"\n'
                   "INFO_INTERVAL = 1\n")

    def test_connections_of_every_node(self):
        """
        A lamp and an app connected to another node are listed too, each
        with its node (SPEC 11); the other node's lamp has no "last heard"
        here, where it is not heard.
        """
        porch = start_server(self, SETTINGS + f'REDIS_URL = "{self.redis.url}"\nNODE_NAME = "porch-raspberry-pi"\n'
                             "INFO_INTERVAL = 1\n", listeners=("HTTP", "app WebSocket", "device WebSocket"))
        lamp = device(porch)
        self.addCleanup(lamp.close)
        lamp.send(SECRET)
        self.assertEqual(lamp.recv(timeout=10), "ok")
        app = connect(f"ws://127.0.0.1:{porch.ports['app WebSocket']}/subscribe?clientName=door", open_timeout=10)
        self.addCleanup(app.close)
        self.open_dashboard()
        self.text_in("#devices tbody", "node porch-raspberry-pi")
        self.text_in("#devices tbody", "not known on this node")
        self.text_in("#client-list tbody", "node porch-raspberry-pi")
        self.text_in("#client-list tbody", "door")
        # On a phone the node goes under the address, which stays on one
        # line, and nothing sticks out of its card.
        self.addCleanup(self.browser.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})
        self.browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 360, "height": 800, "deviceScaleFactor": 1, "mobile": True})
        self.browser.execute_script("window.dispatchEvent(new Event('resize'))")
        sticking_out = self.browser.execute_script("""
            return ['#devices', '#client-list'].flatMap((css) => {
              const card = document.querySelector(css).closest('.card').getBoundingClientRect().right;
              return [...document.querySelectorAll(css + ' td *, ' + css + ' td')]
                .filter((e) => e.getBoundingClientRect().right > card + 0.5).map((e) => e.textContent.slice(0, 40));
            }).concat(document.documentElement.scrollWidth > document.documentElement.clientWidth ? ['the page'] : []);
        """)
        self.assertEqual(sticking_out, [])
        addresses = self.browser.execute_script("""
            return [...document.querySelectorAll('#devices .address, #client-list .address')].map((a) => {
              const range = document.createRange();
              range.selectNodeContents(a);
              return [a.textContent, range.getClientRects().length];
            });
        """)
        self.assertEqual(len(addresses), 2, addresses)
        self.assertTrue(all(lines == 1 for _, lines in addresses), addresses)

    def test_store_is_redis(self):
        """
        The server facts say the store is Redis and how to back it up, with
        no "Last backup" line, and the backup button is disabled: a backup
        would be of a file that is not the state.
        """
        self.open_dashboard()
        self.text_in("#facts", "Redis (REDIS_URL)")
        # The link to Redis, without the URL's secrets.
        self.text_in("#facts", f"connected to {self.redis.url}")
        facts = self.browser.find_element(By.ID, "facts").text
        self.assertNotIn("unused.sqlite", facts)
        self.assertNotIn("Last backup", facts)
        self.assertFalse(self.browser.find_element(By.ID, "backup").is_enabled())
        self.assertFalse(os.path.exists(os.path.join(self.server.directory, "unused.sqlite")))


class DashboardWithBrokerTests(_InBrowser):
    """
    The dashboard of a server with C{MQTT_URL} set.
    """

    def test_broker_link_live(self):
        """
        A broker that cannot be reached shows among the server's facts, with
        the log's reason; once it answers the line says so, live.
        """
        port = reserved_port(self)
        self.start(SETTINGS + f"STATE_DB = None\nMQTT_URL = 'mqtt://smartplug:pw@127.0.0.1:{port}'\n")
        self.open_dashboard()
        self.text_in("#facts", f"NOT CONNECTED to mqtt://127.0.0.1:{port} for")
        self.text_in("#facts", "cannot connect: Connection refused")
        start_mosquitto(self, port=port)
        # paho tries again after 1, 2, 4... s.
        WebDriverWait(self.browser, 40).until(
            EC.text_to_be_present_in_element((By.ID, "facts"), f"connected to mqtt://127.0.0.1:{port} for"))
        facts = self.browser.find_element(By.ID, "facts").text
        self.assertIn("MQTT (Home Assistant)", facts)
        self.assertNotIn("NOT CONNECTED", facts)
        self.assertNotIn(":pw@", facts)


class DashboardInMemoryTests(_InBrowser):
    """
    The dashboard of a server that keeps its state in memory only.
    """

    def setUp(self):
        self.start(SETTINGS + "STATE_DB = None\n")

    def test_store_is_memory(self):
        """
        The server facts say the state is in memory, with no "Last backup"
        line, and the backup button stays disabled: there is nothing to
        back up.
        """
        self.open_dashboard()
        self.text_in("#facts", "memory only (STATE_DB = None)")
        self.assertNotIn("Last backup", self.browser.find_element(By.ID, "facts").text)
        # Settings read as the settings file writes them.
        rows = {row.find_element(By.TAG_NAME, "th").get_attribute("textContent"):
                row.find_element(By.TAG_NAME, "td").get_attribute("textContent")
                for row in self.browser.find_elements(By.CSS_SELECTOR, "#settings tbody tr")}
        self.assertEqual((rows["STATE_DB"], rows["TWITTER_ENABLED"], rows["BAN_ALLOW"]), ("None", "False", "[]"))
        self.assertFalse(self.browser.find_element(By.ID, "backup").is_enabled())


class DashboardAcrossRestartsTests(_InBrowser):
    """
    The dashboard of a server that restarts, on the same state database and
    the same HTTP port (the page's own address).
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.settings = SETTINGS + f"STATE_DB = {os.path.join(self.directory, 'state.sqlite')!r}\n"
        self.http_port = reserved_port(self)
        self.server = None
        self.browser = start_browser(self)
        self.wait = WebDriverWait(self.browser, WAIT, ignored_exceptions=[StaleElementReferenceException])

    def restart(self) -> None:
        """
        Stop the server (if one runs) and start a new one on the same
        database and HTTP port.
        """
        if self.server is not None:
            self.server.stop()
        self.server = RunningServer(self.directory, self.settings, listeners=("HTTP", "app WebSocket", "device WebSocket"),
                                    args=["--www", f"tcp:{self.http_port}:interface=127.0.0.1"])
        self.addCleanup(self.server.stop)
        self.server.start()

    def test_since_from_history_after_restart(self):
        """
        A plug that reports the same value again after a restart is shown
        "since" its value began, as its history says, not since that
        repeated report.
        """
        self.restart()
        post(self.server, "/data", {"id": "kitchen", "value": 1})
        self.restart()
        post(self.server, "/data", {"id": "kitchen", "value": 1})
        self.open_dashboard()
        card = '.plug[data-plug="kitchen"]'
        self.wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, card + " .reports tbody tr")) == 2)
        history = self.fetch_json("api/history?plug=kitchen")
        self.assertEqual([r["value"] for r in history], [1, 1])
        since = self.browser.find_element(By.CSS_SELECTOR, card + " .since")
        self.assertEqual(float(since.get_attribute("data-since")), history[0]["at"])
        self.assertTrue(since.text.startswith("since "), since.text)

    def test_login_again_after_restart(self):
        """
        A restart logs everyone out (sessions live in memory): an open page
        finds its session gone when its socket comes back, and asks for the
        login saying why.
        """
        self.restart()
        self.open_dashboard()
        self.restart()
        self.text_in("#login-error", "The server restarted or your session ended; log in again.")
        self.assertFalse(self.browser.find_element(By.ID, "app").is_displayed())
        self.log_in()
        self.visible("#app")
        self.wait.until(lambda b: b.find_element(By.ID, "live").get_attribute("data-state") == "open")
