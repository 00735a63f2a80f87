"""
End-to-end metrics: the real C{twistd -n smartplug}, driven by independent
clients and scraped at C{GET /metrics} by a plain HTTP client (urllib),
whose text Prometheus's own parser reads.
"""

import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .server import start_server
from .test_e2e import http


def scrape(url: str) -> dict:
    """
    GET C{url} and parse it: C{(sample name, sorted label items) -> value}.
    """
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.status == 200, answer.status
        text = answer.read().decode("utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class MetricsEndToEndTests(TestCase):
    """
    /metrics on a running server, its counters moving with real traffic.
    """

    def setUp(self):
        self.server = start_server(
            self,
            "API_KEY = 'k3y'\nAUTH_SECRET = 's3cret'\nSTATE_DB = 'state.sqlite'\nBAN_AFTER = 5\nINFO_INTERVAL = 0.2\n",
            listeners=("HTTP", "app WebSocket", "device WebSocket"),
        )

    def ws(self, path: str):
        return connect(self.server.ws_url(path), open_timeout=5)

    def device(self):
        return connect(f"ws://127.0.0.1:{self.server.ports['device WebSocket']}/", open_timeout=5)

    def wait_subscribed(self, event: str) -> None:
        """
        Wait until the info socket lists a subscription to C{event}, so
        that publications sent on other connections are read after it.
        """
        with self.ws("/socket/info?apiKey=k3y") as info:
            for _ in range(50):
                frame = json.loads(info.recv(timeout=5))
                if any(s["name"] == event for s in frame["subscriptions"]):
                    return
        raise AssertionError(f"no subscription to {event} listed")

    def test_counters_follow_traffic(self):
        """
        Three good reports and a bad one over HTTP, one from a lamp, a wrong
        API key and a wrong device secret move the report, pub/sub, failure,
        commit and request families by exactly those amounts, and the open
        app and device connections show per listener.
        """
        before = scrape(self.server.url("/metrics"))
        with self.ws("/") as app, self.ws("/subscribe?apiKey=k3y&clientName=watcher") as sub:
            sub.send('{"action": "subscribe", "event": "smartplug"}')
            self.wait_subscribed("smartplug")
            for value_ in (1, 0, 1):
                body = json.dumps({"id": "0xb00bf0cc", "value": value_}).encode()
                self.assertEqual(http(self.server.url("/data"), body), (200, b"{}"))
            self.assertEqual(http(self.server.url("/data"), b'{"id": "0xb00bf0cc"}')[0], 400)
            wrong_key = urllib.request.Request(
                self.server.url("/display"), data=b'{"mode": 0}', headers={"X-API-Key": "wrong"}, method="POST"
            )
            with self.assertRaises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(wrong_key, timeout=5)
            self.assertEqual(refused.exception.code, 401)
            with self.device() as stranger:
                stranger.send("not the secret")
                with self.assertRaises(ConnectionClosed):
                    stranger.recv(timeout=5)
            with self.device() as lamp:
                lamp.send("s3cret")
                self.assertEqual(lamp.recv(timeout=5), "ok")
                lamp.recv(timeout=5)  # the display packet
                lamp.send('{"id": "lamp-plug", "value": 1}')
                # The apps and the subscriber hear of all four reports.
                for _ in range(4):
                    app.recv(timeout=5)
                    sub.recv(timeout=5)
                # Closed connections are uncounted before they are logged.
                self.server.wait_for(r"device disconnected from 127\.0\.0\.1: refused \(wrong secret\)")
                self.server.wait_for(r"app disconnected from 127\.0\.0\.1")  # the info socket
                after = scrape(self.server.url("/metrics"))

        def moved(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(moved("smartplug_reports_accepted_total", source="http"), 3)
        self.assertEqual(moved("smartplug_reports_accepted_total", source="device"), 1)
        self.assertEqual(moved("smartplug_reports_refused_total", source="http", reason="invalid"), 1)
        self.assertEqual(moved("smartplug_reports_refused_total", source="http", reason="store"), 0)
        self.assertEqual(moved("smartplug_publications_total"), 4)
        self.assertEqual(moved("smartplug_deliveries_total"), 4)
        self.assertEqual(moved("smartplug_auth_failures_total", kind="api_key"), 1)
        self.assertEqual(moved("smartplug_auth_failures_total", kind="device_secret"), 1)
        self.assertEqual(value(after, "smartplug_bans_active"), 0)
        self.assertEqual(moved("smartplug_store_commit_seconds_count"), 4)
        self.assertEqual(moved("smartplug_http_request_seconds_count", method="POST", route="/data"), 4)
        self.assertEqual(moved("smartplug_http_request_seconds_count", method="POST", route="/display"), 1)
        self.assertEqual(moved("smartplug_http_request_seconds_count", method="GET", route="/metrics"), 1)
        self.assertEqual(value(after, "smartplug_open_connections", listener="app"), 2)
        self.assertEqual(value(after, "smartplug_open_connections", listener="device"), 1)
        # This scrape, and maybe an earlier request's connection not yet closed.
        self.assertGreaterEqual(value(after, "smartplug_open_connections", listener="http"), 1)
        self.assertGreater(value(after, "process_resident_memory_bytes"), 0)
