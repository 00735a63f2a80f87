"""
Tests for smartplug_backend.core.strictjson: JSON from peers read as RFC 8259 has
it, and what that protects downstream (reports, display, publications).
"""

import json

from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core import strictjson
from smartplug_backend.core.hub import Hub
from smartplug_backend.core.limits import MAX_JSON_DEPTH
from smartplug_backend.ws.apps import AppFactory

from .helpers import http_client, ws_connect


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


class LoadsTests(SynchronousTestCase):
    """
    L{strictjson.loads} accepts JSON and refuses what is not, saying why.
    """

    def refused(self, payload) -> str:
        return str(self.assertRaises(strictjson.InvalidJSON, strictjson.loads, payload))

    def test_json(self):
        """
        Ordinary JSON, as bytes or text, with escaped pairs (an emoji) and a
        UTF-8 byte order mark, decodes as json.loads would.
        """
        text = '{"a": [1, 2.5, -0, true, null, "\\ud83d\\ude00"], "b": {}}'
        self.assertEqual(strictjson.loads(text), json.loads(text))
        self.assertEqual(strictjson.loads(b"\xef\xbb\xbf" + text.encode()), json.loads(text))

    def test_not_json(self):
        """
        Broken JSON, empty input and trailing garbage are refused, saying
        what broke where.
        """
        for payload in [b"", b"{", b"{'a': 1}", b"[1,]", b"1 2", b"\x00"]:
            self.assertRegex(self.refused(payload), r"^[A-Z][a-z ]+.* \(line 1, column \d+\)$", payload)
        self.assertEqual(self.refused(b'{"id": "a",\n "value": }'), "Expecting value (line 2, column 11)")

    def test_not_utf8(self):
        """
        Bytes that are not UTF-8, UTF-8 encoded surrogates included, and
        UTF-16 are refused.
        """
        for payload in [b'"\xff"', b'"\xed\xa0\x80"', '"x"'.encode("utf-16")]:
            self.assertEqual(self.refused(payload), "not UTF-8", payload)

    def test_constants(self):
        """
        NaN and Infinity, which Python reads but JSON has not, are refused.
        """
        for payload in [b"NaN", b"[Infinity]", b'{"a": -Infinity}']:
            self.assertIn("is not a JSON number", self.refused(payload))

    def test_numbers_out_of_range(self):
        """
        A float that overflows to infinity and an integer of more digits
        than Python converts are refused; a large one within the limits is
        kept exactly.
        """
        self.assertEqual(self.refused(b"1e999"), "a number is out of range")
        self.assertEqual(self.refused(b"-1e400"), "a number is out of range")
        self.assertEqual(self.refused(b"1" * 5000), "a number has too many digits")
        self.assertEqual(strictjson.loads(b"1" * 4000), int("1" * 4000))

    def test_lone_surrogates(self):
        """
        A lone surrogate escape, in a value, a key or a list, is refused.
        """
        for payload in [b'"\\ud800"', b'{"\\udfff": 1}', b'[1, ["a\\ud83d"]]', b'"\\ude00\\ud83d"']:
            self.assertIn("lone surrogate", self.refused(payload), payload)

    def test_depth(self):
        """
        Nesting up to L{MAX_JSON_DEPTH} levels is accepted, one more is
        refused, and so is nesting deep enough to exhaust recursion.
        """
        strictjson.loads(nested(MAX_JSON_DEPTH))
        strictjson.loads(b'{"a": ' * (MAX_JSON_DEPTH - 1) + b"[]" + b"}" * (MAX_JSON_DEPTH - 1))
        for payload in [nested(MAX_JSON_DEPTH + 1), nested(100000)]:
            self.assertEqual(self.refused(payload), f"nested deeper than {MAX_JSON_DEPTH} levels")


class DownstreamTests(SynchronousTestCase):
    """
    What the strict reading prevents where JSON is written again.
    """

    def setUp(self):
        self.hub = Hub()
        self.apps = AppFactory(self.hub)
        self.hub.pubsub.deliver_with(self.apps.send_to_all)
        self.client = http_client(self.hub)
        self.subscriber, _, self.pump = ws_connect(self.apps, "/subscribe?clientName=s")
        for event in ["e", "\udfff"]:
            self.subscriber.sendMessage(json.dumps({"action": "subscribe", "event": event}).encode())
            self.pump.flush()

    def post(self, path: str, body: bytes):
        response = self.successResultOf(self.client.post("http://x" + path, data=body))
        return response.code, self.successResultOf(response.content())

    def test_http_publication_of_nan_refused(self):
        """
        POST /publish with NaN or 1e999 as data is a 400, and subscribers
        get nothing (they would otherwise get frames no JSON client reads).
        """
        for body in [b'{"event": "e", "data": NaN}', b'{"event": "e", "data": [1e999]}']:
            self.assertEqual(self.post("/publish?clientName=p", body), (400, b"Bad request\n"))
        self.pump.flush()
        self.assertEqual(self.subscriber.messages, [])

    def test_websocket_publication_of_lone_surrogate_ignored(self):
        """
        A WebSocket publication whose event is a lone surrogate is ignored
        without a logged error (encoding its frame would fail), and the
        publisher's next valid publication is delivered.
        """
        publisher, _, pump = ws_connect(self.apps, "/publish?clientName=p")
        publisher.sendMessage(b'{"event": "\\udfff", "data": 1}')
        publisher.sendMessage(b'{"event": "e", "data": 2}')
        pump.flush()
        self.pump.flush()
        self.assertEqual([frame["data"] for frame in self.subscriber.json()], [2])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_report_with_lone_surrogate_refused(self):
        """
        A plug id holding a lone surrogate is a 400 naming the problem, and
        no plug is recorded.
        """
        code, body = self.post("/data", b'{"id": "\\ud800", "value": 1}')
        self.assertEqual(code, 400)
        self.assertIn("lone surrogate", json.loads(body)["error"])
        self.assertEqual(self.hub.plugs(), [])
