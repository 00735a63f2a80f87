"""
Real clients and real faults from the field (issue 11), against the real
C{twistd -n smartplug}: lamps' and pages' Origins, PiCloud's own Python
client, quiet connections and TCP keepalive, the info frame as Go writes it,
and clients that half-close.
"""

import json
import shutil
import socket
import subprocess

from twisted.trial.unittest import TestCase
from websocket import create_connection

from .server import start_server
from .test_e2e import FIRMWARE_REQUEST, send_and_close
from .test_origins import ARDUINO_HANDSHAKE

KEY = "k3y"
SECRET = "s3cret"

# Chromium's handshake for a page opened from disk (file:///...): Origin
# null, and the permessage-deflate offer every browser makes.
BROWSER_HANDSHAKE = (
    b"GET /subscribe?apiKey=k3y&clientName=browser HTTP/1.1\r\n"
    b"Host: 127.0.0.1:9001\r\n"
    b"Connection: Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: null\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"\r\n"
)


def masked_text(payload: bytes) -> bytes:
    """
    A client's text frame (masked with a zero key), payload under 126 bytes.
    """
    return b"\x81" + bytes([0x80 | len(payload)]) + b"\0\0\0\0" + payload


def read_head(sock: socket.socket) -> bytes:
    """
    Read up to the end of an HTTP head (bounded).
    """
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 16384:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_frame(sock: socket.socket) -> bytes:
    """
    One unmasked server frame's payload (under 64 KiB).
    """
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise AssertionError(f"connection closed after {data!r}")
            data += chunk
        return data

    length = exactly(2)[1] & 0x7F
    if length == 126:
        length = int.from_bytes(exactly(2), "big")
    return exactly(length)


class FieldEndToEndTests(TestCase):
    """
    What real clients meet on every port of the real server.
    """

    def setUp(self):
        self.server = start_server(
            self,
            f"API_KEY = {KEY!r}\nAUTH_SECRET = {SECRET!r}\nINFO_INTERVAL = 0.2\n",
            listeners=("HTTP", "app WebSocket", "device WebSocket"),
        )

    def raw(self, label: str, request: bytes) -> tuple:
        sock = socket.create_connection(("127.0.0.1", self.server.ports[label]), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(request)
        return sock, read_head(sock)

    def test_origins_of_lamps_and_pages(self):
        """
        C{Origin: file://} and C{Origin: null} upgrade on the device port,
        the PlugBuddy path and every PiCloud route (SPEC 6.4).
        """
        routes = [
            ("device WebSocket", "/"),
            ("app WebSocket", "/"),
            ("app WebSocket", f"/subscribe?apiKey={KEY}&clientName=page"),
            ("app WebSocket", f"/publish?apiKey={KEY}&clientName=page"),
            ("app WebSocket", f"/socket/info?apiKey={KEY}"),
            ("app WebSocket", f"/info?apiKey={KEY}"),
        ]
        for label, path in routes:
            for origin in ("file://", "null"):
                request = (
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
                ).encode()
                sock, head = self.raw(label, request)
                self.assertTrue(head.startswith(b"HTTP/1.1 101 "), (label, path, origin, head[:100]))
                sock.close()

    def test_arduino_websockets_lamp(self):
        """
        A lamp on arduinoWebSockets (its exact handshake bytes, Origin
        file://) connects to the device port, authenticates and gets the
        display packet.
        """
        sock, head = self.raw("device WebSocket", ARDUINO_HANDSHAKE)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", head)
        sock.sendall(masked_text(SECRET.encode()))
        self.assertEqual(read_frame(sock), b"ok")
        self.assertEqual(read_frame(sock), b"[cc:0:?:?]")

    def test_browser_page_from_disk(self):
        """
        A browser page opened from disk (Origin null, a permessage-deflate
        offer) subscribes and gets a publication.
        """
        sock, head = self.raw("app WebSocket", BROWSER_HANDSHAKE)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        sock.sendall(masked_text(b'{"action": "subscribe", "event": "door"}'))
        self.server.wait_for(r"app connected from .*browser\)")
        publisher = create_connection(self.server.ws_url(f"/publish?apiKey={KEY}&clientName=p"), timeout=5)
        self.addCleanup(publisher.close)
        publisher.send('{"event": "door", "data": "open"}')
        self.assertEqual(json.loads(read_frame(sock))["data"], "open")

    def wait_for_subscription(self, event: str, count: int = 1) -> None:
        info = create_connection(self.server.ws_url(f"/socket/info?apiKey={KEY}"), timeout=5)
        try:
            for _ in range(50):
                subscriptions = json.loads(info.recv())["subscriptions"]
                if any(s["name"] == event and len(s["connections"] or ()) >= count for s in subscriptions):
                    return
        finally:
            info.close()
        self.fail(f"no subscription to {event} after 50 info frames")

    def picloud_socket_client(self, name: str):
        """
        picloud-client-python's C{SocketClient} named C{name}, connected to
        the app WebSocket port, closed when the test ends.
        """
        import websocket
        from picloud_client import SocketClient

        # Its connections have no timeout of their own: bound every wait.
        self.addCleanup(websocket.setdefaulttimeout, websocket.getdefaulttimeout())
        websocket.setdefaulttimeout(10)
        host = f"127.0.0.1:{self.server.ports['app WebSocket']}"
        client = SocketClient(url=f"ws://{host}", api_key=KEY, client_name=name)
        self.addCleanup(client._pub_connection.close)
        self.addCleanup(client._sub_connection.close)
        return client

    def test_picloud_client_python(self):
        """
        picloud-client-python 4.0.1, the real package (on websocket-client),
        as its own test uses it: subscribe, publish over the socket, read;
        publish over HTTP, read.
        """
        from picloud_client import HttpClient

        client = self.picloud_socket_client("Test-Client")
        received = []
        client.subscribe(event="whatever", callback=lambda data: received.append(data))
        # Its publish socket is open before it subscribes, so the server may
        # read the publication first (two sockets have no order); its own
        # test races there.  Wait until the info socket shows the
        # subscription.
        self.wait_for_subscription("whatever")
        client.publish(event="whatever", data="test")
        client.process_subscriptions()
        HttpClient(url=self.server.url(""), api_key=KEY, client_name="Test-Client").publish(event="whatever", data="test2")
        client.process_subscriptions()
        self.assertEqual(received, ["test", "test2"])

    def test_picloud_client_python_names_beyond_ascii(self):
        """
        picloud-client-python with a name beyond ASCII: its socket client
        (which puts the name in the URL as UTF-8) shows as that name; its
        HTTP client, whose requests sends a str header as Latin-1, is
        refused with 400 (SPEC 6.3) and raises, so nothing is lost
        unnoticed; given the name as UTF-8 bytes it publishes.
        """
        from picloud_client import HttpClient, PublishError

        client = self.picloud_socket_client("Küche")
        received = []
        client.subscribe(event="kitchen", callback=lambda data: received.append(data))
        self.wait_for_subscription("kitchen")
        self.server.wait_for(r"app connected from 127\.0\.0\.1 \(subscribe, Küche\)")
        with self.assertRaises(PublishError):
            HttpClient(url=self.server.url(""), api_key=KEY, client_name="Küche").publish(event="kitchen", data="lost")
        self.server.wait_for(r"HTTP client 127\.0\.0\.1: header X-Api-Client-Name is not UTF-8; answered 400")
        HttpClient(url=self.server.url(""), api_key=KEY, client_name="Küche".encode()).publish(
            event="kitchen", data="kept")
        client.process_subscriptions()
        self.assertEqual(received, ["kept"])

    def test_keepalive_on_every_port(self):
        """
        The server's side of every accepted connection (HTTP, app and device
        ports) has TCP keepalive running with our timings (SPEC 3.5), as the
        kernel reports it (ss's keepalive timer, at most IDLE seconds).
        """
        ss = shutil.which("ss")
        self.assertIsNotNone(ss, "ss (iproute2) is needed to read the server's socket timers")
        for label in ("HTTP", "app WebSocket", "device WebSocket"):
            port = self.server.ports[label]
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.addCleanup(sock.close)
            # The connection is accepted once the server says anything or
            # nothing: wait until the kernel lists the server's side with a
            # timer (bounded tries; each is one ss run).
            for _ in range(50):
                out = subprocess.run(
                    [ss, "-tnoH", "state", "established", f"( sport = :{port} )"],
                    capture_output=True, text=True, timeout=5,
                ).stdout
                if "keepalive" in out:
                    break
                sock.settimeout(0.1)
                try:
                    sock.recv(1)
                except socket.timeout:
                    pass
            self.assertIn("timer:(keepalive,", out, (label, out))
            seconds = int(out.split("timer:(keepalive,")[1].split("sec")[0].split("min")[0])
            self.assertLessEqual(seconds, 60)

    def test_info_frame_as_go_writes_it(self):
        """
        The info socket does not list itself; with nothing else open
        all_connections is null and subscriptions []; an event whose
        subscriber left stays with "connections": null (SPEC 3.4).
        """
        info = create_connection(self.server.ws_url(f"/socket/info?apiKey={KEY}"), timeout=5)
        self.addCleanup(info.close)
        frame = json.loads(info.recv())
        self.assertEqual((frame["subscriptions"], frame["all_connections"]), ([], None))
        sub = create_connection(self.server.ws_url(f"/subscribe?apiKey={KEY}&clientName=s"), timeout=5)
        sub.send('{"action": "subscribe", "event": "door"}')
        sub.close()
        self.server.wait_for(r"app disconnected from .*")
        for _ in range(50):
            frame = json.loads(info.recv())
            if frame["all_connections"] is None and frame["subscriptions"]:
                break
        self.assertEqual(frame["subscriptions"], [{"name": "door", "connections": None}])
        self.assertIsNone(frame["all_connections"])

    def test_half_closed_client_gets_its_answer(self):
        """
        A client that sends its request, shuts down its sending side and
        then reads gets its answer; the report is acted on.  The firmware's
        full close right after sending is still acted on too.
        """
        request = FIRMWARE_REQUEST.replace(b"0xb00bf0cc", b"0xhalfclos")
        sock = socket.create_connection(("127.0.0.1", self.server.ports["HTTP"]), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\n{}"), answer)
        self.server.wait_for(r"plug 0xhalfclos -> 1")
        send_and_close(self.server.ports["HTTP"], FIRMWARE_REQUEST)
        self.server.wait_for(r"plug 0xb00bf0cc -> 1")

    def test_never_reading_subscribers_are_dropped(self):
        """
        Subscribers that never read (and take in little: a 4 KiB receive
        buffer) are each sent 3 MB: the kernel holds at most about 128 KiB
        for each (its send buffer is fixed, as ss shows), so every one is cut
        off once about 1 MiB waits for it in all, and the log says so; a
        subscriber that reads gets every publication (SPEC 6.5).
        """
        count = 8
        port = self.server.ports["app WebSocket"]
        subscribe = b'{"action": "subscribe", "event": "big"}'
        for i in range(count):
            slow = socket.socket()
            self.addCleanup(slow.close)
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.settimeout(5)
            slow.connect(("127.0.0.1", port))
            slow.sendall(
                f"GET /subscribe?apiKey={KEY}&clientName=slow{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            self.assertTrue(read_head(slow).startswith(b"HTTP/1.1 101"))
            slow.sendall(masked_text(subscribe))
        fast = create_connection(self.server.ws_url(f"/subscribe?apiKey={KEY}&clientName=fast"), timeout=10)
        self.addCleanup(fast.close)
        fast.send(subscribe.decode())
        self.wait_for_subscription("big", count + 1)
        ss = shutil.which("ss")
        self.assertIsNotNone(ss, "ss (iproute2) is needed to read the server's socket buffers")
        out = subprocess.run(
            [ss, "-tmnH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, timeout=5
        ).stdout
        send_buffers = [int(part.split(",")[0]) for part in out.split(",tb")[1:]]
        self.assertEqual(len(send_buffers), count + 1, out)
        self.assertLessEqual(max(send_buffers), 256 * 1024, out)
        publisher = create_connection(self.server.ws_url(f"/publish?apiKey={KEY}&clientName=p"), timeout=10)
        self.addCleanup(publisher.close)
        data = "x" * 60000
        publications = 3 * 1000 * 1000 // len(data)
        for _ in range(publications):
            publisher.send(json.dumps({"event": "big", "data": data}))
            # Lock-step with the reading subscriber: only the others lag.
            self.assertEqual(len(json.loads(fast.recv())["data"]), len(data))
        self.server.wait_for_count(r"app client 127\.0\.0\.1 is too slow", count, timeout=20)
