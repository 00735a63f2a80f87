"""
Tests for C{twistd smartplug}: the plugin, its options and the wiring.
"""

import io
import subprocess
import sys

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from smartplug_backend import tap
from smartplug_backend.http.dashboard.routes import Dashboard

from .helpers import SynchronousReactor
from .server import twistd_command


class PluginTests(SynchronousTestCase):
    """
    twistd finds the plugin as installed.
    """

    def test_twistd_help_lists_smartplug(self):
        """
        C{twistd --help} lists the smartplug plugin.
        """
        out = subprocess.run(twistd_command() + ["--help"], capture_output=True, timeout=60).stdout
        self.assertRegex(out.decode(), r"\n\s+smartplug\s+SmartPlug HTTP API")

    def test_plain_install_ships_plugin(self):
        """
        A normal (non-editable) install puts the plugin where twistd finds it.
        """
        import os

        source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        target = os.path.abspath(self.mktemp())
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--disable-pip-version-check", "--target", target, source],
            check=True, capture_output=True, timeout=300,
        )
        self.assertTrue(os.path.isfile(os.path.join(target, "twisted", "plugins", "smartplug_plugin.py")))
        # The dashboard's page and uPlot are package data: a Pi with no
        # internet serves them from the install.
        static = os.path.join(target, "smartplug_backend", "http", "dashboard", "static")
        for name in ("index.html", "app.js", "style.css", "uplot/uPlot.iife.min.js", "uplot/uPlot.min.css", "uplot/LICENSE"):
            self.assertTrue(os.path.isfile(os.path.join(static, name)), name)
        self.assertFalse(os.path.exists(os.path.join(target, "twisted", "plugins", "__init__.py")))
        # Run from the install's own directory so that the source tree's
        # twisted/plugins is not what twistd finds.
        out = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
            capture_output=True, timeout=60, cwd=target,
            env=dict(os.environ, PYTHONPATH=target, PYTHONSAFEPATH="1"),
        ).stdout
        self.assertIn(b"smartplug", out)

    def test_smartplug_help(self):
        """
        C{twistd smartplug --help} documents every option.
        """
        out = subprocess.run(twistd_command() + ["smartplug", "--help"], capture_output=True, timeout=60).stdout.decode()
        for option in ["--settings", "--www", "--ws", "--device"]:
            self.assertIn(option, out)


class MakeServiceTests(SynchronousTestCase):
    """
    makeService wires listeners from settings and endpoint options.
    """

    def make(self, args, settings_text="STATE_DB = None\n"):
        path = self.mktemp() + ".py"
        with open(path, "w") as f:
            f.write(settings_text)
        options = tap.Options()
        options.parseOptions(["--settings", path] + args)
        reactor = SynchronousReactor()
        service = tap.makeService(options, reactor=reactor)
        # Listeners bind in privilegedStartService; startService would only
        # start the WSGI thread pool, which these tests do not need.
        service.privilegedStartService()
        return reactor

    def site_root(self, reactor):
        """
        The root resource of the HTTP listener's site, under its wrappers.
        """
        for server in reactor.tcpServers:
            factory = server[1]
            while hasattr(factory, "wrapped"):
                factory = factory.wrapped
            if isinstance(factory, Site):
                return factory.resource
        raise AssertionError("no HTTP site listening")

    def child(self, reactor, name: bytes):
        """
        The resource the HTTP site serves at C{/<name>/}.
        """
        from twisted.web.test.requesthelper import DummyRequest

        request = DummyRequest([name, b""])
        request.prepath = [request.postpath.pop(0)]
        return self.site_root(reactor).getChildWithDefault(name, request)

    def test_dashboard_off_by_default(self):
        """
        Without DASHBOARD_USERS there is no /ui, and one log line says how
        to turn it on.
        """
        with capturedLogs() as events:
            reactor = self.make([])
        lines = [formatEvent(e) for e in events if "dashboard off" in formatEvent(e)]
        self.assertEqual(len(lines), 1)
        self.assertIn("add DASHBOARD_USERS", lines[0])
        self.assertIn("passwd NAME", lines[0])
        self.assertNotIsInstance(self.child(reactor, b"ui"), Dashboard)

    def test_dashboard_on_with_users(self):
        """
        With DASHBOARD_USERS the HTTP site holds /ui beside the app.
        """
        from smartplug_backend.server.passwords import hash_password

        reactor = self.make([], f"STATE_DB = None\nDASHBOARD_USERS = {{'anna': {hash_password('x', n=2**10)!r}}}\n")
        ui = self.child(reactor, b"ui")
        self.assertIsInstance(ui, Dashboard)
        # Its live socket's slow pages count for the HTTP listener.
        ui.live_factory.slow_dropped = 3
        registry = self.site_root(reactor)._named[b"metrics"]._registry
        self.assertEqual(registry.get_sample_value("smartplug_slow_clients_dropped_total", {"listener": "http"}), 3)

    def test_ports_from_settings(self):
        """
        Without endpoint options, HTTP and app WebSocket listen on the
        settings' ports and address; no device port without AUTH_SECRET.
        """
        reactor = self.make([], "WWW_SERVER_PORT = 8000\nWS_SERVER_PORT = 8001\nLISTEN_ADDRESS = '127.0.0.1'\n")
        self.assertEqual(sorted((p[0], p[3]) for p in reactor.tcpServers), [(8000, "127.0.0.1"), (8001, "127.0.0.1")])

    def test_listener_order(self):
        """
        The listeners open in one order, HTTP, apps, devices, whatever the
        dashboard, metrics or MQTT need built first.
        """
        reactor = self.make(
            [], "WWW_SERVER_PORT = 8000\nWS_SERVER_PORT = 8001\nDEVICE_SERVER_PORT = 8002\nAUTH_SECRET = 's'\n"
            "STATE_DB = None\n",
        )
        self.assertEqual([p[0] for p in reactor.tcpServers], [8000, 8001, 8002])

    def test_endpoint_options_override(self):
        """
        --www and --ws endpoint descriptions replace the settings' ports.
        """
        reactor = self.make(["--www", "tcp:7000:interface=127.0.0.2", "--ws", "tcp:7001"])
        self.assertEqual(sorted((p[0], p[3]) for p in reactor.tcpServers), [(7000, "127.0.0.2"), (7001, "")])

    def test_bad_settings_one_line(self):
        """
        A bad settings file stops start-up with one line on stderr naming
        the problem, and no traceback.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, self.make, [], "WS_SERVER_PORT = 'x'\n")
        self.assertEqual(error.code, 1)
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        self.assertIn("WS_SERVER_PORT must be a port number", stderr.getvalue())

    def test_bad_endpoint_one_line(self):
        """
        An unparseable endpoint description stops start-up with one line.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        error = self.assertRaises(SystemExit, self.make, ["--www", "carrier-pigeon:9"])
        self.assertEqual(error.code, 1)
        self.assertIn("HTTP: bad endpoint 'carrier-pigeon:9'", stderr.getvalue())
