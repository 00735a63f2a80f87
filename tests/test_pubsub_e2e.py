"""
End-to-end PiCloud pub/sub against the real C{twistd -n smartplug}, with
C{websockets} clients behaving like PiCloud's own clients.
"""

import json
import socket

from twisted.trial.unittest import TestCase
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .server import closed_at_once, start_server
from .test_e2e import FIRMWARE_REQUEST, http, send_and_close


class PubSubEndToEndTests(TestCase):
    """
    Subscribe, publish, info and plug events over real sockets.
    """

    def setUp(self):
        self.server = start_server(self, "API_KEY = 'k3y'\nINFO_INTERVAL = 0.2\n")

    def ws(self, path, **kwargs):
        return connect(self.server.ws_url(path), open_timeout=5, **kwargs)

    def test_subscribe_then_publish_at_once(self):
        """
        As picloud-client-python does: subscribe on one socket, then open
        another and publish at once; the publication arrives, framed as PiCloud.
        """
        headers = {"X-API-Key": "k3y", "X-API-Client-Name": "py"}
        with self.ws("/subscribe", additional_headers=headers) as sub:
            sub.send(json.dumps({"action": "subscribe", "event": "temperature"}))
            with self.ws("/publish", additional_headers=headers) as pub:
                pub.send(json.dumps({"action": "publish", "event": "temperature", "data": "21.5"}))
                frame = sub.recv(timeout=5)
        self.assertRegex(
            frame,
            r'^\{"action":"publish","event":"temperature","data":"21\.5",'
            r'"created_at":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"\}\n$',
        )

    def test_browser_query_parameters_and_http_publish(self):
        """
        As picloud-client-browser does: key and name as query parameters; a
        publication over HTTP with headers answers 201 and arrives.
        """
        with self.ws("/subscribe?apiKey=k3y&clientName=browser") as sub:
            sub.send('{"action": "subscribe", "event": "door"}')
            # The publication comes on a new connection, so the server reads
            # it after the subscription.
            import urllib.request

            request = urllib.request.Request(
                self.server.url("/publish"), data=b'{"event": "door", "data": {"open": true}}',
                headers={"X-API-Key": "k3y", "X-API-Client-Name": "curl"}, method="POST",
            )
            with urllib.request.urlopen(request, timeout=5) as answer:
                self.assertEqual((answer.status, answer.read()), (201, b""))
            self.assertEqual(json.loads(sub.recv(timeout=5))["data"], {"open": True})
        self.assertEqual(
            http(self.server.url("/publish?clientName=x&apiKey=wrong"), b'{"event": "e"}'),
            (401, b"Invalid API Key\n"),
        )

    def test_refusals_before_upgrade(self):
        """
        A wrong key or a missing name is refused with 401 and PiCloud's body,
        and never upgraded.
        """
        for path, body in [("/subscribe?clientName=a&apiKey=no", b"Invalid API Key\n"),
                           ("/subscribe?apiKey=k3y", b"Invalid client name\n")]:
            with self.assertRaises(InvalidStatus) as caught:
                self.ws(path)
            self.assertEqual(caught.exception.response.status_code, 401)
            self.assertEqual(caught.exception.response.body, body)

    def test_info_client_and_plug_events(self):
        """
        As picloud-info-web does: the info socket lists connections; and a
        firmware report arrives at subscribers as event smartplug.
        """
        with self.ws("/subscribe?apiKey=k3y&clientName=watcher") as sub, self.ws("/", additional_headers={}) as app:
            sub.send('{"action": "subscribe", "event": "smartplug"}')
            with self.ws("/socket/info?apiKey=k3y") as info:
                frame = json.loads(info.recv(timeout=5))
            names = sorted(c["client_name"] for c in frame["all_connections"])
            # The info socket does not list itself (SPEC 3.4).
            self.assertEqual(names, ["plugbuddy", "watcher"])
            self.assertEqual(frame["subscriptions"][0]["name"], "smartplug")
            send_and_close(self.server.ports["HTTP"], FIRMWARE_REQUEST)
            self.assertEqual(app.recv(timeout=5), '{"id": "0xb00bf0cc", "value": 1}')
            self.assertEqual(json.loads(sub.recv(timeout=5))["data"], '{"id": "0xb00bf0cc", "value": 1}')

    def test_slow_subscriber_is_cut_off(self):
        """
        A subscriber that stops reading is closed once over 1 MiB waits for
        it; a reading subscriber gets every publication, and the server logs
        the cut-off.
        """
        port = self.server.ports["app WebSocket"]
        slow = socket.socket()
        self.addCleanup(slow.close)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        slow.sendall(
            b"GET /subscribe?apiKey=k3y&clientName=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.assertTrue(slow.recv(12).startswith(b"HTTP/1.1 101"))
        payload = b'{"action": "subscribe", "event": "big"}'
        slow.sendall(b"\x81" + bytes([0x80 | len(payload)]) + b"\0\0\0\0" + payload)
        data = "x" * 60000
        count = 200  # 12 MB: more than loopback's socket buffers can hide
        with self.ws("/subscribe?apiKey=k3y&clientName=fast", max_queue=None, max_size=None) as fast:
            fast.send('{"action": "subscribe", "event": "big"}')
            with self.ws("/publish?apiKey=k3y&clientName=pub") as pub:
                self.server.wait_for(r"app connected from .*pub\)")
                # Lock-step with the fast reader, so only the slow one falls behind.
                received = []
                for _ in range(count):
                    pub.send(json.dumps({"event": "big", "data": data}))
                    received.append(fast.recv(timeout=10))
        self.assertEqual(len(received), count)
        self.server.wait_for(r"app client 127\.0\.0\.1 is too slow: over 1 MiB unsent; dropping it \(1008\)")


class WrongKeyBanEndToEndTests(TestCase):
    """
    Wrong PiCloud API keys count toward a ban on every port (SPEC 6.2).
    """

    def test_wrong_keys_ban_the_address(self):
        """
        Three wrong keys (WebSocket and HTTP publish alike) ban the address:
        its next connection to the HTTP port is closed at once.
        """
        server = start_server(self, "API_KEY = 'k3y'\nBAN_AFTER = 3\nBAN_SECONDS = 30\n")
        for _ in range(2):
            with self.assertRaises(InvalidStatus):
                connect(server.ws_url("/subscribe?clientName=a&apiKey=guess"), open_timeout=5)
        self.assertEqual(http(server.url("/publish?clientName=a&apiKey=guess"), b'{"event": "e"}'), (401, b"Invalid API Key\n"))
        server.wait_for(r"banned 127\.0\.0\.1 for 30 seconds after 3 authentication failures")
        self.assertTrue(closed_at_once(server.ports["HTTP"]))
        self.assertNotIn("guess", server.log())
