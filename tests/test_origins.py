"""
Tests for smartplug_backend.ws.origins: every WebSocket route of ours accepts
any Origin (SPEC 6.4), on the factories as the server builds them.
"""

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.hub import Hub
from smartplug_backend.server.guard import Guard
from smartplug_backend.ws.apps import AppFactory
from smartplug_backend.ws.devices import DeviceFactory

from .helpers import accept

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

# What arduinoWebSockets (WebSocketsClient.cpp, sendHeader) writes for
# begin("192.168.1.2", 6661, "/"): its default subprotocol "arduino" and its
# default extra header "Origin: file://", byte for byte.
ARDUINO_HANDSHAKE = (
    b"GET / HTTP/1.1\r\n"
    b"Host: 192.168.1.2:6661\r\n"
    b"Connection: Upgrade\r\n"
    b"Upgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\n"
    b"Sec-WebSocket-Protocol: arduino\r\n"
    b"Origin: file://\r\n"
    b"User-Agent: arduino-WebSocket-Client\r\n"
    b"\r\n"
)


def handshake(path: bytes, origin: bytes) -> bytes:
    """
    A browser-like opening handshake for C{path} with C{Origin: origin}.
    """
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: 192.168.1.2:9001\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
        b"Origin: " + origin + b"\r\n\r\n"
    )


class AnyOriginTests(SynchronousTestCase):
    """
    The device port, the PlugBuddy paths and the PiCloud routes upgrade
    whatever Origin the client sends.  Built without the tests' L{quiet}
    helper, whose own setProtocolOptions call would hide the bug it guards
    against (Autobahn resets allowNullOrigin on each call).
    """

    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(now=self.clock.seconds)
        guard = Guard(self.clock)
        self.apps = AppFactory(self.hub, clock=self.clock, guard=guard)
        self.devices = DeviceFactory(self.hub, guard, "s3cret", self.clock)

    def answer(self, factory, request: bytes) -> bytes:
        server, transport = accept(factory)
        server.dataReceived(request)
        answer = transport.value()
        # Close it so that no ping timer outlives the test.
        server.connectionLost(Failure(ConnectionDone()))
        return answer

    def test_origins_on_every_route(self):
        """
        C{file://} (arduinoWebSockets), C{null} (a page opened from disk),
        another site and a plain http Origin all get 101 on every route.
        """
        origins = [b"file://", b"null", b"https://example.org", b"http://192.168.1.2:9000", b"file:///C:/page.html"]
        for factory, path in [
            (self.devices, b"/"),
            (self.apps, b"/"),
            (self.apps, b"/plugbuddy"),
            (self.apps, b"/subscribe?clientName=c"),
            (self.apps, b"/publish?clientName=c"),
            (self.apps, b"/socket/info"),
            (self.apps, b"/info"),
        ]:
            for origin in origins:
                answer = self.answer(factory, handshake(path, origin))
                self.assertTrue(answer.startswith(b"HTTP/1.1 101 "), (path, origin, answer[:120]))

    def test_later_options_keep_the_policy(self):
        """
        A later C{setProtocolOptions} call (a test helper's, a new feature's)
        cannot undo the origin policy, although Autobahn resets
        C{allowNullOrigin} on every call.
        """
        for factory in (self.apps, self.devices):
            factory.setProtocolOptions(autoPingInterval=0)
            answer = self.answer(factory, handshake(b"/", b"file://"))
            self.assertTrue(answer.startswith(b"HTTP/1.1 101 "), answer[:120])

    def test_arduino_websockets_handshake(self):
        """
        The exact bytes of arduinoWebSockets' handshake upgrade on the device
        port and the app port, with an answer that library accepts: 101,
        C{Connection: Upgrade}, C{Upgrade: websocket} (its checks ignore
        case), the right accept key.
        """
        for factory in (self.devices, self.apps):
            answer = self.answer(factory, ARDUINO_HANDSHAKE)
            head = answer.split(b"\r\n\r\n")[0].decode()
            lines = head.split("\r\n")
            self.assertEqual(lines[0][9:12], "101")
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            self.assertEqual(headers["connection"].lower(), "upgrade")
            self.assertEqual(headers["upgrade"].lower(), "websocket")
            self.assertEqual(headers["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
