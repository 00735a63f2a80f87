"""
End-to-end: the real C{twistd -n smartplug}, talked to by independent clients
(raw sockets, urllib, the websockets library) over loopback.
"""

import json
import re
import socket
import urllib.error
import urllib.request

from twisted.trial.unittest import TestCase
from websockets.sync.client import connect as ws_connect

from .server import start_server

FIRMWARE_REQUEST = (
    b"POST /data HTTP/1.1\nHost: craplab.local\nConnection: close\n"
    b"Content-Type: application/json\nContent-Length: 32\n\n"
    b'{"id": "0xb00bf0cc", "value": 1}'
)


def send_and_close(port: int, data: bytes) -> None:
    """
    Send C{data} in one write and close at once without reading, as the
    plug's firmware does.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)


def http(url: str, body: bytes = None, method: str = None):
    """
    One HTTP request; returns C{(status, body bytes)} for any status.
    """
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class CoreEndToEndTests(TestCase):
    """
    The faithful core, over real sockets.
    """

    def setUp(self):
        self.server = start_server(self)

    def test_firmware_report_reaches_app_byte_for_byte(self):
        """
        The firmware's exact bare-LF request, sent by a peer that closes right
        away, is acted on: a connected app receives the original broadcast
        bytes, and the plug is listed afterwards.
        """
        with ws_connect(self.server.ws_url(), open_timeout=5) as app:
            self.server.wait_for(r"app connected from 127\.0\.0\.1")
            send_and_close(self.server.ports["HTTP"], FIRMWARE_REQUEST)
            self.assertEqual(app.recv(timeout=5), '{"id": "0xb00bf0cc", "value": 1}')
        self.server.wait_for(r"plug 0xb00bf0cc -> 1 from 127\.0\.0\.1")
        status, body = http(self.server.url("/plugs/0xb00bf0cc"))
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["value"], 1)

    def test_control_characters_escaped_in_log(self):
        """
        A plug id with a terminal escape sequence and a carriage return is
        stored as sent and logged with those characters as C{\\xNN}.
        """
        plug = "evil\u001b[2J\rok"
        status, _ = http(self.server.url("/data"), json.dumps({"id": plug, "value": 1}).encode())
        self.assertEqual(status, 200)
        self.server.wait_for(re.escape("plug evil\\x1b[2J\\x0dok -> 1 from 127.0.0.1"))
        self.assertNotIn("\x1b", self.server.log())
        self.assertEqual(json.loads(http(self.server.url("/plugs"))[1])[0]["id"], plug)

    def test_status_request(self):
        """
        A PlugBuddy status request gets the plug's state on that connection;
        an unknown id gets no answer and the connection stays usable.
        """
        status, _ = http(self.server.url("/data"), b'{"id": "lamp", "value": 0}')
        self.assertEqual(status, 200)
        with ws_connect(self.server.ws_url(), open_timeout=5) as app:
            app.send('{"status": "nobody"}')
            app.send('{"status": "lamp"}')
            self.assertEqual(app.recv(timeout=5), '{"id": "lamp", "value": 0}')

    def test_malformed_input_does_not_stop_service(self):
        """
        Malformed HTTP bodies get JSON 400s, malformed app messages are
        ignored, and afterwards the server still serves both ports.
        """
        for body in [b"", b"{", b"[1]", b'{"id": "x", "value": 7}', b"\xff\xfe"]:
            status, answer = http(self.server.url("/data"), body)
            self.assertEqual(status, 400, body)
            self.assertIn("error", json.loads(answer))
        send_and_close(self.server.ports["HTTP"], b"\x00\x01 garbage \r\n\r\n")
        with ws_connect(self.server.ws_url(), open_timeout=5) as app:
            app.send("not json")
            app.send(b"\x00binary")
            app.send('{"status": 5}')
            http(self.server.url("/data"), b'{"id": "after", "value": 1}')
            self.assertEqual(app.recv(timeout=5), '{"id": "after", "value": 1}')
        self.assertEqual(http(self.server.url("/")), (200, b"hallo."))
        self.assertNotIn("Traceback", self.server.log())

    def test_android_client_handshake(self):
        """
        Autobahn|Android 0.5.0's handshake (stray LF after the key, Host
        naming the phone-side port) over a raw socket gets 101 and then the
        answer to a status request.
        """
        http(self.server.url("/data"), b'{"id": "p", "value": 1}')
        with socket.create_connection(("127.0.0.1", self.server.ports["app WebSocket"]), timeout=5) as s:
            s.sendall(
                b"GET / HTTP/1.1\r\nHost: 192.168.1.10:80\r\nUpgrade: WebSocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += s.recv(4096)
            head, _, rest = answer.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
            self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", head)
            payload = b'{"status": "p"}'
            mask = b"\x01\x02\x03\x04"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            s.sendall(b"\x81" + bytes([0x80 | len(payload)]) + mask + masked)
            expected = b'{"id": "p", "value": 1}'
            while len(rest) < 2 + len(expected):
                rest += s.recv(4096)
            self.assertEqual(rest, b"\x81" + bytes([len(expected)]) + expected)

    def test_sigterm_shuts_down_cleanly(self):
        """
        SIGTERM (what `make stop` sends) shuts the server down in order, with
        an app still connected and no traceback in its log; twistd then ends
        by the same signal, as Twisted does.
        """
        import signal

        with ws_connect(self.server.ws_url(), open_timeout=5):
            self.assertEqual(self.server.stop(), -signal.SIGTERM)
        self.assertIn("Server Shut Down.", self.server.log())
        self.assertNotIn("Traceback", self.server.log())


class StartupFailureTests(TestCase):
    """
    Start-up problems end twistd with one clear line, not a traceback.
    """

    def run_twistd(self, settings: str, *args):
        import os
        import subprocess

        from .server import twistd_command

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "settings.py")
        with open(path, "w") as f:
            f.write(settings)
        return subprocess.run(
            twistd_command() + ["-n", "--pidfile=", "smartplug", "--settings", path] + list(args),
            cwd=directory, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )

    def test_unknown_setting(self):
        """
        A typo in settings.py exits 1 with one line suggesting the setting.
        """
        result = self.run_twistd("AUTH_SECERT = 'x'\n")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.decode().strip().splitlines()[-1][-50:],
            "unknown setting AUTH_SECERT; did you mean AUTH_SECRET?"[-50:],
        )
        self.assertNotIn(b"Traceback", result.stdout + result.stderr)

    def test_port_in_use(self):
        """
        A port that is already taken exits 1 with one line naming it.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            result = self.run_twistd(
                "STATE_DB = None\n", "--www", f"tcp:{port}:interface=127.0.0.1", "--ws", "tcp:0:interface=127.0.0.1"
            )
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertIn(f"smartplug: HTTP: cannot listen on tcp:{port}:interface=127.0.0.1", output)
        self.assertNotIn("Traceback", output)

    def test_two_listeners_on_one_port(self):
        """
        Two port settings with one value exit 1 with a line naming both
        listeners, not only "Address already in use".
        """
        from .server import reserved_port

        port = reserved_port(self)
        result = self.run_twistd(
            f"STATE_DB = None\nLISTEN_ADDRESS = '127.0.0.1'\nWWW_SERVER_PORT = {port}\nWS_SERVER_PORT = {port}\n"
        )
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertIn(f"smartplug: app WebSocket: port {port} is the HTTP listener's too; give each its own port", output)
        self.assertNotIn("Traceback", output)


class DaemonTests(TestCase):
    """
    C{twistd smartplug} without -n daemonises with a pid file, as
    C{make start} runs it, and C{kill $(cat twistd.pid)} stops it.
    """

    def test_start_and_stop_daemon(self):
        """
        The daemon writes its pid file, serves HTTP on the port its log
        names, and exits when sent SIGTERM, removing the pid file.
        """
        import os
        import re
        import select
        import signal
        import subprocess

        from .server import twistd_command

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "settings.py"), "w") as f:
            f.write("STATE_DB = None\n")
        pidfile, logfile = os.path.join(directory, "twistd.pid"), os.path.join(directory, "twistd.log")
        started = subprocess.run(
            twistd_command() + ["--pidfile", pidfile, "--logfile", logfile, "smartplug",
                                "--www", "tcp:0:interface=127.0.0.1", "--ws", "tcp:0:interface=127.0.0.1"],
            cwd=directory, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        self.assertEqual(started.returncode, 0, started.stderr)
        with open(pidfile) as f:
            pid = int(f.read())
        watch = os.pidfd_open(pid)
        self.addCleanup(os.close, watch)

        def kill():
            if not select.select([watch], [], [], 0)[0]:
                os.kill(pid, signal.SIGKILL)

        self.addCleanup(kill)
        # twistd's parent returns only once the daemon has started its services.
        with open(logfile) as f:
            port = int(re.search(r"HTTP listening on 127\.0\.0\.1:(\d+)", f.read()).group(1))
        self.assertEqual(http(f"http://127.0.0.1:{port}/"), (200, b"hallo."))
        os.kill(pid, signal.SIGTERM)
        self.assertEqual(select.select([watch], [], [], 20)[0], [watch], "daemon did not exit")
        self.assertFalse(os.path.exists(pidfile))
