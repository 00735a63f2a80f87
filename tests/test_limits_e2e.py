"""
End-to-end limits (SPEC 6.3) on the real C{twistd -n smartplug}: bodies over
64 KiB, WebSocket messages over 64 KiB, and MAX_CONNECTIONS.
"""

import json
import socket

from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect as ws_connect

from .server import closed_at_once, start_server
from .test_e2e import http

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def read_head(s: socket.socket) -> bytes:
    """
    Read until the end of an HTTP head (or the connection's end).
    """
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


class SizeLimitEndToEndTests(TestCase):
    """
    Oversized bodies and messages are refused on a real server.
    """

    def setUp(self):
        self.server = start_server(self)

    def test_body_over_limit_refused_before_sent(self):
        """
        A request declaring a 10 MB body gets 413 and JSON as soon as its
        head is sent: the server does not wait for, or read, the body.
        """
        with socket.create_connection(("127.0.0.1", self.server.ports["HTTP"]), timeout=5) as s:
            s.sendall(b"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000)
            answer = read_head(s)
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 413 "), head)
            while b"}" not in body:
                body += s.recv(4096)
        self.assertEqual(json.loads(body), {"error": "body too large: at most 65536 bytes"})
        self.assertEqual(http(self.server.url("/")), (200, b"hallo."))

    def test_message_over_limit_closed_1009(self):
        """
        A WebSocket message of 64 KiB + 1 closes that connection with 1009;
        another client is still served.
        """
        with ws_connect(self.server.ws_url(), open_timeout=5, max_size=None) as other:
            with ws_connect(self.server.ws_url(), open_timeout=5) as big:
                big.send("x" * (64 * 1024 + 1))
                with self.assertRaises(ConnectionClosedError) as caught:
                    big.recv(timeout=5)
                self.assertEqual(caught.exception.rcvd.code, 1009)
            http(self.server.url("/data"), b'{"id": "p", "value": 1}')
            self.assertEqual(other.recv(timeout=5), '{"id": "p", "value": 1}')


class ConnectionCapEndToEndTests(TestCase):
    """
    MAX_CONNECTIONS counts every listener of a real server together.
    """

    def setUp(self):
        self.server = start_server(self, "MAX_CONNECTIONS = 3\n")

    def test_cap(self):
        """
        With three connections open over both ports, a fourth is closed at
        once on either port and the log says why; once one closes, a new
        connection is served.
        """
        ports = self.server.ports
        held = [socket.create_connection(("127.0.0.1", ports[label]), timeout=5)
                for label in ("HTTP", "app WebSocket", "app WebSocket")]
        try:
            # The WebSocket ones are open for sure once upgraded.
            for s in held[1:]:
                s.sendall(HANDSHAKE)
                self.assertTrue(read_head(s).startswith(b"HTTP/1.1 101 "))
            self.assertTrue(closed_at_once(ports["app WebSocket"]))
            self.assertTrue(closed_at_once(ports["HTTP"]))
            self.server.wait_for(r"refused a connection from 127\.0\.0\.1: 3 connections open, MAX_CONNECTIONS is 3")
            # The server releases a place as it sees a connection go, before
            # it logs the app's departure.
            mark = len(self.server.lines)
            held.pop().close()
            self.server.wait_for(r"app disconnected from 127\.0\.0\.1", start=mark)
            self.assertEqual(http(self.server.url("/")), (200, b"hallo."))
        finally:
            for s in held:
                s.close()
