"""
End-to-end: devices on the real C{twistd -n smartplug}, talked to with the
C{websockets} library over loopback, and the bans that follow wrong secrets.
"""

import json
import urllib.error

from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosedError, InvalidHandshake
from websockets.sync.client import connect as ws_connect

from .server import closed_at_once, start_server
from .test_e2e import http

SECRET = "s3cret"
KEY = "house-key"
LISTENERS = ("HTTP", "app WebSocket", "device WebSocket")


class DevicesEndToEndTests(TestCase):
    """
    The device port of SPEC 2 on a real server.
    """

    def setUp(self):
        self.server = start_server(
            self,
            f"AUTH_SECRET = {SECRET!r}\nAPI_KEY = {KEY!r}\n",
            listeners=LISTENERS,
        )

    def device(self):
        """
        A device connected and authenticated; its first two frames checked.
        """
        url = f"ws://127.0.0.1:{self.server.ports['device WebSocket']}/lamp"
        device = ws_connect(url, open_timeout=5)
        self.addCleanup(device.close)
        device.send(SECRET)
        self.assertEqual(device.recv(timeout=5), "ok")
        self.assertEqual(device.recv(timeout=5), "[cc:0:?:?]")
        return device

    def post_display(self, body: dict, key: str = KEY):
        return http(self.server.url(f"/display?apiKey={key}"), json.dumps(body).encode())

    def test_display_change(self):
        """
        An authenticated device gets C{ok} and the off packet, then the colour
        set by POST /display (with the API key; without it, 401 and nothing
        sent).
        """
        device = self.device()
        status, _ = self.post_display({"mode": 2, "color": [0, 0, 0], "pulse": 1}, key="wrong")
        self.assertEqual(status, 401)
        status, body = self.post_display({"mode": 2, "color": [255, 65, 174], "pulse": 0})
        self.assertEqual((status, json.loads(body)["packet"]), (200, "[cc:2:255,65,174:0]"))
        self.assertEqual(device.recv(timeout=5), "[cc:2:255,65,174:0]")
        self.assertEqual(json.loads(http(self.server.url("/display"))[1])["color"], [255, 65, 174])

    def test_two_devices(self):
        """
        Two devices connected at once both receive a display change and a
        one-off command.
        """
        devices = [self.device(), self.device()]
        self.post_display({"mode": 1, "weather": 7, "intensity": 2})
        self.post_display({"command": "update"})
        for device in devices:
            self.assertEqual(device.recv(timeout=5), "[cc:1:7:2]")
            self.assertEqual(device.recv(timeout=5), "[cc:u:?:?]")

    def test_ping_pong(self):
        """
        Text C{ping} gets text C{pong}, and a ping frame gets its pong frame.
        """
        device = self.device()
        device.send("ping")
        self.assertEqual(device.recv(timeout=5), "pong")
        self.assertTrue(device.ping(b"beat").wait(timeout=5))

    def test_report_reaches_app(self):
        """
        A plug report sent on the device port reaches an app client, as a
        POST /data would.
        """
        with ws_connect(self.server.ws_url(), open_timeout=5) as app:
            self.server.wait_for(r"app connected from 127\.0\.0\.1")
            self.device().send('{"id": "lamp-plug", "value": 1}')
            self.assertEqual(app.recv(timeout=5), '{"id": "lamp-plug", "value": 1}')
        self.server.wait_for(r"plug lamp-plug -> 1 from 127\.0\.0\.1")


class BanEndToEndTests(TestCase):
    """
    Bans of SPEC 6.2 on a real server: three wrong secrets, then every port
    refuses that address until the ban is lifted.
    """

    def setUp(self):
        self.server = start_server(
            self,
            # Long enough that the checks made during the ban end within it
            # on a slow machine, and the three failures count together.
            f"AUTH_SECRET = {SECRET!r}\nBAN_AFTER = 3\nBAN_SECONDS = 8\n",
            listeners=LISTENERS,
        )
        self.device_url = f"ws://127.0.0.1:{self.server.ports['device WebSocket']}/"

    def wrong_secret(self):
        with ws_connect(self.device_url, open_timeout=5) as device:
            device.send("not-the-secret")
            with self.assertRaises(ConnectionClosedError) as closed:
                device.recv(timeout=5)
        self.assertEqual(closed.exception.rcvd.code, 1008)

    def test_ban_and_lift(self):
        """
        After three wrong secrets the fourth device connection is closed
        before its handshake, and the HTTP and app ports refuse that address
        too; once the ban is lifted (logged) everything works again.
        """
        for _ in range(3):
            self.wrong_secret()
        self.server.wait_for(r"banned 127\.0\.0\.1 for 8 seconds after 3 authentication failures")
        for label in LISTENERS:
            self.assertTrue(closed_at_once(self.server.ports[label]), label)
        with self.assertRaises((OSError, EOFError, ConnectionClosedError, InvalidHandshake)):
            with ws_connect(self.device_url, open_timeout=5) as device:
                device.send(SECRET)
                device.recv(timeout=5)
        with self.assertRaises((OSError, urllib.error.URLError)):
            http(self.server.url("/"))
        self.assertEqual(self.server.log().count("device connected from"), 3)

        self.server.wait_for(r"ban on 127\.0\.0\.1 lifted after 8 seconds \(\d+ connections? refused\)", timeout=30)
        self.assertEqual(http(self.server.url("/")), (200, b"hallo."))
        with ws_connect(self.device_url, open_timeout=5) as device:
            device.send(SECRET)
            self.assertEqual(device.recv(timeout=5), "ok")
        self.assertNotIn("Traceback", self.server.log())
        self.assertNotIn(SECRET, self.server.log())
        self.assertNotIn("not-the-secret", self.server.log())


class NoSecretEndToEndTests(TestCase):
    """
    Without AUTH_SECRET there is no device port.
    """

    def test_not_opened(self):
        """
        The server starts, says how to enable the device port, and does not
        open it.
        """
        server = start_server(self)
        server.wait_for(r"device WebSocket port not opened: set AUTH_SECRET in .*settings\.py to enable it")
        self.assertNotIn("device WebSocket listening", server.log())
