"""
End-to-end TLS (SPEC 6.1): the real C{twistd -n smartplug} with a
self-signed certificate made by the test, talked to over https and wss by
independent clients (urllib, the websockets library, Python's ssl).
"""

import json
import os
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

from twisted.trial.unittest import TestCase
from websockets.sync.client import connect as ws_connect

from smartplug_backend.server.passwords import hash_password

from .certs import client_context, old_client_context, other_key, self_signed
from .server import LOOPBACK_ANY_PORT, closed_at_once, start_server, twistd_command

SECRET = "s3cret"
KEY = "house-key"
LISTENERS = ("HTTP", "app WebSocket", "device WebSocket")


def https(url: str, context: ssl.SSLContext, body: bytes = None):
    """
    One HTTPS request; returns C{(status, body bytes)} for any status.
    """
    request = urllib.request.Request(url, data=body)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def alpn(port: int, cert: str, offered=("h2", "http/1.1")):
    """
    A TLS handshake offering C{offered} over ALPN, as browsers, curl and
    okhttp do; returns the protocol the server chose.
    """
    context = client_context(cert)
    context.set_alpn_protocols(list(offered))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.selected_alpn_protocol()


def plain(port: int, request: bytes) -> bytes:
    """
    C{request} sent in the clear to C{port}; returns all that comes back
    until the server closes.
    """
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(request)
        try:
            while chunk := raw.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def tls_settings(directory: str) -> tuple:
    cert, key = self_signed(directory)
    return cert, f"TLS_CERT_FILE = {cert!r}\nTLS_KEY_FILE = {key!r}\n"


class TLSEndToEndTests(TestCase):
    """
    Every listener of a real server speaks TLS 1.2 or newer.
    """

    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.cert, settings = tls_settings(directory)
        self.context = client_context(self.cert)
        self.server = start_server(
            self, settings + f"AUTH_SECRET = {SECRET!r}\nAPI_KEY = {KEY!r}\nBAN_AFTER = 1\n", listeners=LISTENERS
        )
        for label, scheme in [("HTTP", "https"), ("app WebSocket", "wss"), ("device WebSocket", "wss")]:
            self.server.wait_for(rf"{label} on port {self.server.ports[label]} speaks {scheme} \(TLS 1\.2 or newer\)")

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.server.ports['HTTP']}{path}"

    def wss(self, label: str, path: str = "/"):
        connection = ws_connect(f"wss://127.0.0.1:{self.server.ports[label]}{path}", ssl=self.context, open_timeout=5)
        self.addCleanup(connection.close)
        return connection

    def test_https_report_reaches_wss_app(self):
        """
        An https POST /data is answered 200 and its broadcast reaches a wss
        app client; a wss device authenticates with the secret and gets the
        display packet set over https.
        """
        app = self.wss("app WebSocket")
        device = self.wss("device WebSocket", "/lamp")
        device.send(SECRET)
        self.assertEqual(device.recv(timeout=5), "ok")
        self.assertEqual(device.recv(timeout=5), "[cc:0:?:?]")
        self.server.wait_for(r"app connected from 127\.0\.0\.1")
        self.assertEqual(https(self.url("/data"), self.context, b'{"id": "0xb00bf0cc", "value": 1}'), (200, b"{}"))
        self.assertEqual(app.recv(timeout=5), '{"id": "0xb00bf0cc", "value": 1}')
        status, body = https(self.url(f"/display?apiKey={KEY}"), self.context, b'{"mode": 1, "weather": 3, "intensity": 9}')
        self.assertEqual((status, json.loads(body)["packet"]), (200, "[cc:1:3:9]"))
        self.assertEqual(device.recv(timeout=5), "[cc:1:3:9]")

    def test_certificate_near_its_end_warned(self):
        """
        A certificate that ends within 14 days (this test's lasts one) is
        warned about at start, after the line naming it.
        """
        self.server.wait_for(r"TLS certificate .*cert\.pem expires in 1 day: clients that check it will refuse "
                             r"to connect; renew it and restart")

    def test_alpn_clients(self):
        """
        Clients that offer ALPN (browsers, curl, okhttp) complete the
        handshake on every listener and get HTTP/1.1; a wss client offering
        it opens its WebSocket.
        """
        for label in LISTENERS:
            self.assertEqual(alpn(self.server.ports[label], self.cert), "http/1.1", label)
        context = client_context(self.cert)
        context.set_alpn_protocols(["h2", "http/1.1"])
        url = f"wss://127.0.0.1:{self.server.ports['app WebSocket']}/"
        with ws_connect(url, ssl=context, open_timeout=5) as app:
            self.server.wait_for(r"app connected from 127\.0\.0\.1")
            self.assertEqual(https(self.url("/data"), self.context, b'{"id": "p", "value": 1}')[0], 200)
            self.assertEqual(app.recv(timeout=5), '{"id": "p", "value": 1}')

    def test_old_tls_refused_by_server(self):
        """
        A client offering TLS 1.0/1.1 at most gets the server's "protocol
        version" alert on every port; the same client allowed TLS 1.2
        connects, so the refusal is the server's, for the version alone.
        """
        for label in LISTENERS:
            port = self.server.ports[label]
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with self.assertRaises(ssl.SSLError) as caught:
                    old_client_context(self.cert).wrap_socket(raw, server_hostname="127.0.0.1")
            self.assertEqual(caught.exception.reason, "TLSV1_ALERT_PROTOCOL_VERSION", label)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                context = old_client_context(self.cert, maximum=ssl.TLSVersion.TLSv1_2)
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as secure:
                    self.assertEqual(secure.version(), "TLSv1.2")

    def test_random_bytes_on_tls_ports(self):
        """
        Random bytes on the TLS ports get no HTTP answer and no traceback,
        and the server goes on serving https.
        """
        for label in LISTENERS:
            answer = plain(self.server.ports[label], bytes(range(256)) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertNotIn(b"HTTP/1.1", answer)
        self.assertEqual(https(self.url("/"), self.context), (200, b"hallo."))
        self.assertNotIn("Traceback", self.server.log())

    def test_plain_http_on_tls_ports(self):
        """
        A plain HTTP request on a TLS port (a browser given http://) gets a
        plain 400 whose JSON error says to use https://, the log says so
        once, and https goes on working on that port.
        """
        for label in LISTENERS:
            port = self.server.ports[label]
            answer = plain(port, f"GET /ui/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n".encode())
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (label, answer))
            self.assertIn(b"\r\nContent-Type: application/json\r\n", head)
            self.assertIn(b"\r\nConnection: close", head)
            self.assertEqual(json.loads(body), {
                "error": f"this port speaks TLS: use https://127.0.0.1:{port}/ (wss:// for WebSockets)"})
            self.server.wait_for(rf"plain HTTP from 127\.0\.0\.1 on the TLS port {port}; answered 400 \(use https://\)")
        # A second one from the same address within the minute is not logged.
        port = self.server.ports["HTTP"]
        self.assertTrue(plain(port, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertEqual(https(self.url("/"), self.context), (200, b"hallo."))
        self.assertEqual(self.server.log().count(f"on the TLS port {port};"), 1)
        self.assertEqual(alpn(port, self.cert), "http/1.1")
        self.assertNotIn("Traceback", self.server.log())

    def test_ban_sees_real_address_under_tls(self):
        """
        A wrong API key over https bans 127.0.0.1 (BAN_AFTER = 1): the guard
        sees the peer's address through TLS, and every TLS port closes new
        connections at once.
        """
        status, _ = https(self.url("/display?apiKey=wrong"), self.context, b'{"mode": 0}')
        self.assertEqual(status, 401)
        self.server.wait_for(r"banned 127\.0\.0\.1 for 60 seconds")
        for label in LISTENERS:
            self.assertTrue(closed_at_once(self.server.ports[label]), label)


class EndpointDescriptionTests(TestCase):
    """
    The experts' way (README): no TLS settings, plain HTTP for the plug's
    firmware, and an ssl: description for the app port.
    """

    def test_ssl_description(self):
        """
        With --ws given as an ssl: description, the app port speaks wss with
        that certificate while HTTP stays plain, and a plain report reaches
        the wss app client.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cert, key = self_signed(directory)
        server = start_server(
            self, args=["--ws", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"]
        )
        port = server.ports["app WebSocket"]
        server.wait_for(rf"app WebSocket on port {port} speaks wss")
        with ws_connect(f"wss://127.0.0.1:{port}/", ssl=client_context(cert), open_timeout=5) as app:
            server.wait_for(r"app connected from 127\.0\.0\.1")
            with socket.create_connection(("127.0.0.1", server.ports["HTTP"]), timeout=5) as s:
                s.sendall(b'POST /data HTTP/1.1\nHost: x\nConnection: close\nContent-Length: 23\n\n{"id": "p", "value": 1}')
                self.assertTrue(s.recv(4096).startswith(b"HTTP/1.1 200 OK"))
            self.assertEqual(app.recv(timeout=5), '{"id": "p", "value": 1}')
        self.assertNotIn("speaks https", server.log())
        self.assertNotIn("Traceback", server.log())

    def test_ssl_descriptions_with_alpn(self):
        """
        ssl: descriptions for every listener: clients that offer ALPN
        complete the handshake and get HTTP/1.1 (Twisted aborts it when the
        factory inside names no protocol), https and wss work with them.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cert, key = self_signed(directory)
        ssl_endpoint = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        server = start_server(
            self, f"AUTH_SECRET = {SECRET!r}\n", listeners=LISTENERS,
            args=["--www", ssl_endpoint, "--ws", ssl_endpoint, "--device", ssl_endpoint],
        )
        for label in LISTENERS:
            self.assertEqual(alpn(server.ports[label], cert), "http/1.1", label)
            self.assertEqual(alpn(server.ports[label], cert, offered=("http/1.1",)), "http/1.1", label)
        context = client_context(cert)
        context.set_alpn_protocols(["h2", "http/1.1"])
        status, body = https(f"https://127.0.0.1:{server.ports['HTTP']}/", context)
        self.assertEqual((status, body), (200, b"hallo."))
        with ws_connect(f"wss://127.0.0.1:{server.ports['app WebSocket']}/", ssl=context, open_timeout=5):
            server.wait_for(r"app connected from 127\.0\.0\.1")
        self.assertNotIn("Traceback", server.log())


class DashboardUnderAnEndpointTests(TestCase):
    """
    The dashboard's live socket over TLS: on an HTTP port given as an ssl:
    description (the TLS wrapper outside the guard and the connection
    count), and with TLS_CERT_FILE (inside them).
    """

    def test_live_page_kept_through_a_ban_and_counted_closed(self):
        """
        A logged-in page's live socket stays open through a ban of its
        address, and once closed is no longer counted open: Autobahn put it
        in the TLS wrapper's place, past the guard and the count, so it was
        cut by the ban and counted open for good.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cert, key = self_signed(directory)
        self.live_page_through_a_ban(cert, args=["--www", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"])

    def test_live_page_kept_through_a_ban_with_tls_settings(self):
        """
        The same with TLS_CERT_FILE, where Twisted's TLS wrapper stands
        inside the guard and the count: the ban used to find the page behind
        it not proven, and closed it.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cert, settings = tls_settings(directory)
        self.live_page_through_a_ban(cert, settings)

    def live_page_through_a_ban(self, cert, settings="", args=()):
        users = {"anna": hash_password("right", n=2**10)}
        server = start_server(
            self, f"DASHBOARD_USERS = {users!r}\nBAN_AFTER = 3\nBAN_SECONDS = 3\n" + settings, args=list(args),
        )
        base = f"https://127.0.0.1:{server.ports['HTTP']}"
        context = client_context(cert)

        def login(password):
            request = urllib.request.Request(
                base + "/ui/api/login", data=json.dumps({"user": "anna", "password": password}).encode(),
                headers={"Content-Type": "application/json", "Origin": base},
            )
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as answer:
                    return answer.status, answer.headers.get("Set-Cookie", "")
            except urllib.error.HTTPError as e:
                return e.code, ""

        def open_http():
            # The /metrics request's own connection counts itself.
            status, body = https(base + "/metrics", context)
            self.assertEqual(status, 200)
            [line] = [line for line in body.decode().splitlines()
                      if line.startswith('smartplug_open_connections{listener="http"}')]
            return float(line.split()[-1])

        status, cookie = login("right")
        self.assertEqual(status, 200)
        alone = open_http()
        page = ws_connect(base.replace("https", "wss") + "/ui/live", ssl=context, open_timeout=5,
                          additional_headers={"Cookie": cookie.split(";")[0], "Origin": base})
        self.addCleanup(page.close)
        self.assertEqual(json.loads(page.recv(timeout=5))["type"], "snapshot")
        self.assertEqual(open_http(), alone + 1)
        for _ in range(3):
            self.assertEqual(login("wrong")[0], 401)
        server.wait_for(r"logged-in dashboard page\(s\) (of banned 127\.0\.0\.1 )?stay open")
        # Still live: the ban's end reaches it.
        server.wait_for(r"ban on 127\.0\.0\.1 lifted")
        for _ in range(20):
            update = json.loads(page.recv(timeout=5))
            if update.get("bans") == []:
                break
        self.assertEqual(update.get("bans"), [])
        page.close()
        # The close reaches the count as the close handshake ends: asked
        # again a bounded number of times, each a request to the server.
        for _ in range(50):
            if open_http() == alone:
                break
        self.assertEqual(open_http(), alone)
        self.assertNotIn("Traceback", server.log())


class BadCertificateTests(TestCase):
    """
    Unusable TLS files stop start-up with one clear line.
    """

    def run_server(self, settings: str) -> subprocess.CompletedProcess:
        directory = os.path.dirname(settings)
        return subprocess.run(
            twistd_command() + ["-n", "--pidfile=", "smartplug", "--settings", settings,
                                "--www", LOOPBACK_ANY_PORT, "--ws", LOOPBACK_ANY_PORT],
            cwd=directory, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )

    def test_bad_key_file(self):
        """
        A key that does not match the certificate: twistd exits with 1 and
        one line naming both files, no traceback, and listens on nothing.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cert, _ = self_signed(directory)
        key = other_key(directory)
        settings = os.path.join(directory, "settings.py")
        with open(settings, "w") as f:
            f.write(f"STATE_DB = None\nTLS_CERT_FILE = {cert!r}\nTLS_KEY_FILE = {key!r}\n")
        done = self.run_server(settings)
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stderr.decode(), f"smartplug: TLS_KEY_FILE: {key} does not match the certificate in {cert}\n")
        self.assertNotIn(b"listening on", done.stdout)
        self.assertNotIn(b"Traceback", done.stdout + done.stderr)
