"""
C{GET /display} and C{POST /display} (SPEC 2.3) through the real Site and
WSGIResource, with the API key of SPEC 3.1 and its failures counted toward
bans (SPEC 6.2).
"""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.display import OFF, Display
from smartplug_backend.core.hub import Hub
from smartplug_backend.server.guard import Guard

from .helpers import STUB_PEER, http_client

URL = "http://smartplug.test/display"
# Where treq.testing.StubTreq's requests come from.
COLOUR = {"mode": 2, "color": [255, 65, 174], "pulse": 0}


class DisplayTestCase(SynchronousTestCase):
    """
    A hub whose display events are recorded, and a client for its app.
    """

    api_key = None

    def setUp(self):
        self.hub = Hub(now=lambda: 0)
        self.guard = Guard(Clock(), ban_after=3, ban_seconds=60)
        self.packets = []
        self.hub.watch_display(lambda event: self.packets.append(event.packet))
        self.client = http_client(self.hub, guard=self.guard, api_key=self.api_key)

    def request(self, method, url=URL, body=None, headers=None):
        """
        One request; returns C{(status, decoded JSON body)}.
        """
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        response = self.successResultOf(self.client.request(method, url, data=data, headers=headers))
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["application/json"])
        return response.code, json.loads(self.successResultOf(self.client.content(response)))


class DisplayRouteTests(DisplayTestCase):
    """
    The routes without an API key.
    """

    def test_get_default(self):
        """
        GET /display shows the off state and its packet.
        """
        self.assertEqual(self.request("GET"), (200, {"mode": 0, "packet": "[cc:0:?:?]"}))

    def test_get_before_state_loaded(self):
        """
        On a node whose shared state is not loaded yet (Redis unreachable
        at start), GET /display says it does not know rather than "off".
        """
        self.hub.display_known = False
        self.assertEqual(
            self.request("GET"), (503, {"error": "state store cannot be read: display state not known yet"})
        )
        self.hub.display_known = True
        self.assertEqual(self.request("GET")[0], 200)

    def test_plugs_before_state_loaded(self):
        """
        Before the shared state is loaded, the plug routes say they do not
        know either, rather than "no plugs" or "unknown plug id"; once
        loaded, an unknown id is a 404 again.
        """
        self.hub.display_known = False
        error = {"error": "state store cannot be read: plugs not known yet"}
        base = URL.rsplit("/", 1)[0]
        for path in ("/plugs", "/plugs/p", "/plugs/p/history"):
            self.assertEqual(self.request("GET", base + path), (503, error), path)
        self.hub.display_known = True
        self.assertEqual(self.request("GET", base + "/plugs"), (200, []))
        self.assertEqual(self.request("GET", base + "/plugs/p")[0], 404)
        self.assertEqual(self.request("GET", base + "/plugs/p/history")[0], 404)

    def test_set_colour(self):
        """
        POST /display with a colour sets the state, answers it with its
        packet, sends the packet to the devices, and GET shows it after.
        """
        expected = dict(COLOUR, packet="[cc:2:255,65,174:0]")
        self.assertEqual(self.request("POST", body=COLOUR), (200, expected))
        self.assertEqual(self.packets, ["[cc:2:255,65,174:0]"])
        self.assertEqual(self.request("GET"), (200, expected))

    def test_set_weather_and_off(self):
        """
        Weather and off are set the same way.
        """
        self.request("POST", body={"mode": 1, "weather": 6, "intensity": 3})
        self.assertEqual(self.hub.display(), Display(1, weather=6, intensity=3))
        self.request("POST", body={"mode": 0})
        self.assertEqual(self.hub.display(), OFF)
        self.assertEqual(self.packets, ["[cc:1:6:3]", "[cc:0:?:?]"])

    def test_commands(self):
        """
        reset and update send their one-off packets and leave the state as
        it was.
        """
        self.request("POST", body=COLOUR)
        self.assertEqual(
            self.request("POST", body={"command": "reset"}),
            (200, {"command": "reset", "packet": "[cc:r:?:?]"}),
        )
        self.assertEqual(
            self.request("POST", body={"command": "update"}),
            (200, {"command": "update", "packet": "[cc:u:?:?]"}),
        )
        self.assertEqual(self.packets[1:], ["[cc:r:?:?]", "[cc:u:?:?]"])
        self.assertEqual(self.request("GET")[1]["packet"], "[cc:2:255,65,174:0]")

    def test_out_of_range(self):
        """
        Out-of-range values get 400 with an error naming the field; the state
        is unchanged and nothing is sent.
        """
        for body, field in [
            ({"mode": 2, "color": [256, 0, 0], "pulse": 0}, "color"),
            ({"mode": 2, "color": [1, 2, 3], "pulse": 10}, "pulse"),
            ({"mode": 1, "weather": 10, "intensity": 0}, "weather"),
            ({"mode": 1, "weather": 1, "intensity": -1}, "intensity"),
            ({"mode": 7}, "mode"),
            ({"command": "explode"}, "command"),
            (b"not json", "JSON"),
        ]:
            status, answer = self.request("POST", body=body)
            self.assertEqual(status, 400, body)
            self.assertIn(field, answer["error"], body)
        self.assertEqual(self.hub.display(), OFF)
        self.assertEqual(self.packets, [])

    def test_too_large(self):
        """
        A body over 64 KiB gets 413.
        """
        status, answer = self.request("POST", body=b"{" + b" " * 70000 + b"}")
        self.assertEqual(status, 413)
        self.assertIn("too large", answer["error"])

    def test_no_key_needed(self):
        """
        Without API_KEY, POST /display takes no key, and a stray one is no
        failure.
        """
        status, _ = self.request("POST", body=COLOUR, headers={"X-API-Key": "whatever"})
        self.assertEqual(status, 200)
        self.assertEqual(self.guard.failures(STUB_PEER), 0)


class DisplayKeyTests(DisplayTestCase):
    """
    POST /display with API_KEY set.
    """

    api_key = "k3y-of-the-house"

    def test_header_or_query(self):
        """
        The key is accepted in the X-API-Key header or the apiKey parameter.
        """
        self.assertEqual(self.request("POST", body=COLOUR, headers={"X-API-Key": self.api_key})[0], 200)
        self.assertEqual(self.request("POST", URL + "?apiKey=" + self.api_key, body={"mode": 0})[0], 200)
        self.assertEqual(self.packets, ["[cc:2:255,65,174:0]", "[cc:0:?:?]"])

    def test_non_ascii_key(self):
        """
        A key with non-ASCII characters matches in the header and, URL
        encoded as UTF-8, in the query parameter.
        """
        self.api_key = "clé-de-la-maison"
        self.client = http_client(self.hub, guard=self.guard, api_key=self.api_key)
        header = {b"X-API-Key": self.api_key.encode("utf-8")}
        self.assertEqual(self.request("POST", body={"mode": 0}, headers=header)[0], 200)
        self.assertEqual(self.request("POST", URL + "?apiKey=cl%C3%A9-de-la-maison", body={"mode": 0})[0], 200)

    def test_missing_key(self):
        """
        Without a key: 401 with a JSON error, nothing changes, and no failure
        is counted (nothing was guessed).
        """
        status, answer = self.request("POST", body=COLOUR)
        self.assertEqual(status, 401)
        self.assertIn("API key", answer["error"])
        self.assertEqual(self.packets, [])
        self.assertEqual(self.guard.failures(STUB_PEER), 0)

    def test_wrong_key_counts(self):
        """
        A wrong key, in the header or the parameter, gets 401 and counts one
        failure against the peer; three ban it.
        """
        status, _ = self.request("POST", body=COLOUR, headers={"X-API-Key": "wrong"})
        self.assertEqual(status, 401)
        self.assertEqual(self.guard.failures(STUB_PEER), 1)
        status, _ = self.request("POST", URL + "?apiKey=nope", body=COLOUR)
        self.assertEqual(status, 401)
        self.assertEqual(self.guard.failures(STUB_PEER), 2)
        self.request("POST", body=COLOUR, headers={"X-API-Key": self.api_key[:-1]})
        self.assertTrue(self.guard.banned(STUB_PEER))
        self.assertEqual(self.packets, [])

    def test_forwarded_for_ignored(self):
        """
        An X-Forwarded-For header cannot steer a failure onto another
        address (which would let anyone ban the home owner).
        """
        self.request("POST", body=COLOUR, headers={"X-API-Key": "wrong", "X-Forwarded-For": "192.168.1.10"})
        self.assertEqual(self.guard.failures("192.168.1.10"), 0)
        self.assertEqual(self.guard.failures(STUB_PEER), 1)

    def test_get_needs_no_key(self):
        """
        Reading the display needs no key.
        """
        self.assertEqual(self.request("GET")[0], 200)
