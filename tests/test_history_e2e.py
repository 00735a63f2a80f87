"""
End-to-end pub/sub history (SPEC 3.6) against the real C{twistd -n smartplug},
with C{websockets} clients: last value, recovery after a disconnect, stale
epochs, restarts and C{kill -9} with C{STATE_DB} set, the replay/live race,
PiCloud's bytes for clients that ask for nothing, and the README's client.
"""

import json
import os
import queue
import re
import threading
import time
import urllib.request

from twisted.trial.unittest import TestCase
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from .server import RunningServer, start_server
from .test_e2e import http

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "k3y"


def publish(server: RunningServer, event: str, data) -> int:
    """
    POST /publish; return the status.
    """
    request = urllib.request.Request(
        server.url("/publish?clientName=e2e"), data=json.dumps({"event": event, "data": data}).encode(),
        headers={"X-API-Key": KEY}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.status


def history(server: RunningServer, event: str, query: str = "") -> dict:
    status, body = http(server.url(f"/events/{event}/history?apiKey={KEY}&{query}"))
    assert status == 200, (status, body)
    return json.loads(body)


def subscriber(server: RunningServer, name: str = "e2e"):
    return connect(server.ws_url(f"/subscribe?clientName={name}&apiKey={KEY}"), open_timeout=5)


def subscribe(ws, event: str, **asked) -> None:
    ws.send(json.dumps({"action": "subscribe", "event": event, **asked}))


def receive(ws, count: int) -> list:
    return [json.loads(ws.recv(timeout=10)) for _ in range(count)]


class HistoryEndToEndTests(TestCase):
    """
    One server, STATE_DB = None.
    """

    def setUp(self):
        self.server = start_server(self, f"API_KEY = {KEY!r}\n")

    def test_last_value(self):
        """
        A display that subscribes with last gets the newest publication at
        once, with its offset and epoch, then the live ones.
        """
        for value in ["20.5", "21.0"]:
            self.assertEqual(publish(self.server, "temperature", value), 201)
        with subscriber(self.server) as ws:
            subscribe(ws, "temperature", last=True)
            [first] = receive(ws, 1)
            self.assertEqual((first["data"], first["offset"]), ("21.0", 2))
            publish(self.server, "temperature", "21.5")
            [live] = receive(ws, 1)
        self.assertEqual((live["data"], live["offset"], live["epoch"]), ("21.5", 3, first["epoch"]))

    def test_recovery_after_a_disconnect(self):
        """
        Publications made while a subscriber was away are replayed when it
        comes back with since, then recovered true, then live ones; the
        history route lists the same frames.
        """
        with subscriber(self.server) as ws:
            subscribe(ws, "door", last=True)
            publish(self.server, "door", "open")
            [seen] = receive(ws, 1)
        for value in ["closed", "open", "closed"]:
            publish(self.server, "door", value)
        with subscriber(self.server) as ws:
            subscribe(ws, "door", since={"offset": seen["offset"], "epoch": seen["epoch"]})
            replay = receive(ws, 4)
            publish(self.server, "door", "open")
            [live] = receive(ws, 1)
        self.assertEqual([m.get("offset") for m in replay], [2, 3, 4, 4])
        self.assertEqual(replay[-1], {"action": "recovered", "event": "door", "recovered": True, "offset": 4,
                                      "epoch": seen["epoch"]})
        self.assertEqual(live["offset"], 5)
        kept = history(self.server, "door", "since=1&limit=3")
        self.assertEqual(kept["publications"], replay[:3])
        self.assertEqual(kept["epoch"], seen["epoch"])

    def test_wrong_or_stale_epoch(self):
        """
        A since with another epoch, or an offset the event never reached,
        gets recovered false and no replay; live publications still come.
        """
        publish(self.server, "e", 1)
        epoch = history(self.server, "e")["epoch"]
        for latest, since in [(1, {"offset": 0, "epoch": "stale"}), (2, {"offset": 9, "epoch": epoch})]:
            with subscriber(self.server) as ws:
                subscribe(ws, "e", since=since)
                [answer] = receive(ws, 1)
                self.assertEqual(answer, {"action": "recovered", "event": "e", "recovered": False, "offset": latest,
                                          "epoch": epoch})
                publish(self.server, "e", "live")
                self.assertEqual(receive(ws, 1)[0]["data"], "live")

    def test_plug_reports_last_value(self):
        """
        Plug reports are publications of event smartplug, so a display that
        subscribes with last gets the newest report at once.
        """
        for value in [1, 0]:
            self.assertEqual(http(self.server.url("/data"), json.dumps({"id": "0xb00bf0cc", "value": value}).encode())[0], 200)
        with subscriber(self.server) as ws:
            subscribe(ws, "smartplug", last=True)
            [last] = receive(ws, 1)
        self.assertEqual((last["data"], last["offset"]), ('{"id": "0xb00bf0cc", "value": 0}', 2))

    def test_plain_clients_get_picloud_bytes(self):
        """
        A client that asks for nothing gets PiCloud's frame byte for byte,
        with no offset: exactly the positioned frame without its
        ,"offset":N,"epoch":"X".
        """
        publish(self.server, "e", "first")
        with subscriber(self.server, "plain") as plain, subscriber(self.server, "asked") as asked:
            subscribe(plain, "e")
            subscribe(asked, "e", last=True)
            # The last value's arrival shows the server has read the
            # subscriptions (the plain one was sent first).
            self.assertEqual(receive(asked, 1)[0]["data"], "first")
            publish(self.server, "e", {"<b>": "a & b"})
            plain_frame, asked_frame = plain.recv(timeout=5), asked.recv(timeout=5)
        self.assertRegex(
            plain_frame,
            r'^\{"action":"publish","event":"e","data":\{"\\u003cb\\u003e":"a \\u0026 b"\},'
            r'"created_at":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"\}\n$',
        )
        self.assertEqual(re.sub(r',"offset":2,"epoch":"[A-Za-z0-9_-]{8}"\}\n$', "}\n", asked_frame), plain_frame)


class RaceEndToEndTests(TestCase):
    """
    The replay/live race on a real server with the store set, so that
    publications wait on the writer thread while the subscription is made.
    """

    def test_replay_and_live_join(self):
        """
        While a publisher streams 400 publications over its socket, a
        subscriber recovers from an early offset: it gets every offset after
        it once, in order, the replay ending at the offset the recovered
        message names, and both replay and live parts are non-empty (the
        race really happened).
        """
        server = start_server(self, f'API_KEY = {KEY!r}\nSTATE_DB = "state.sqlite"\nPUBSUB_HISTORY = 1000\n')
        count = 400
        subscribed = threading.Event()

        def send_all(pub) -> None:
            for n in range(count):
                pub.send(json.dumps({"event": "race", "data": n}))
                if n == count // 4:
                    # The rest only once the subscription is on its way, so
                    # that a busy machine cannot let the publisher finish
                    # first (then there would be no race to see).
                    subscribed.wait(30)

        with connect(server.ws_url(f"/publish?clientName=pub&apiKey={KEY}"), open_timeout=5) as pub:
            sender = threading.Thread(target=send_all, args=(pub,))
            sender.start()
            self.addCleanup(sender.join, 30)
            self.addCleanup(subscribed.set)
            # Subscribe once some are committed and while most are not.
            server.wait_for(r"app connected from .*pub\)")
            # Bounded in time, not in tries: two slow fsyncs must not end it.
            deadline = time.monotonic() + 20
            while True:
                kept = history(server, "race", "limit=1000")["publications"]
                if len(kept) >= 10 or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            self.assertGreaterEqual(len(kept), 10)
            with subscriber(server) as ws:
                subscribe(ws, "race", since={"offset": 5, "epoch": history(server, "race")["epoch"]})
                subscribed.set()
                messages = []
                for _ in range(count + 10):
                    messages.append(json.loads(ws.recv(timeout=20)))
                    if messages[-1]["action"] == "publish" and messages[-1]["offset"] == count:
                        break
        marks = [i for i, m in enumerate(messages) if m["action"] == "recovered"]
        self.assertEqual(len(marks), 1)
        recovered = messages[marks[0]]
        self.assertTrue(recovered["recovered"])
        replay, live = messages[:marks[0]], messages[marks[0] + 1:]
        self.assertEqual([m["offset"] for m in replay + live], list(range(6, count + 1)))
        self.assertEqual(replay[-1]["offset"], recovered["offset"])
        self.assertTrue(replay and live, (len(replay), len(live)))
        self.assertEqual([m["data"] for m in live], list(range(recovered["offset"], count)))


class RestartEndToEndTests(TestCase):
    """
    With STATE_DB set, history, offsets and epochs outlive the server.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def start(self) -> RunningServer:
        server = RunningServer(self.directory, f'API_KEY = {KEY!r}\nSTATE_DB = "state.sqlite"\n')
        self.addCleanup(server.stop)
        return server.start()

    def test_recovery_across_a_restart(self):
        """
        A subscriber that saw offset 1 before a clean restart recovers what
        was published after, on the new server, with the same epoch; new
        publications continue the offsets.
        """
        first = self.start()
        with subscriber(first) as ws:
            subscribe(ws, "e", last=True)
            publish(first, "e", "a")
            [seen] = receive(ws, 1)
        publish(first, "e", "b")
        first.stop()
        second = self.start()
        second.wait_for(r"state from state\.sqlite: 0 plugs, display \[cc:0:\?:\?\], 1 pub/sub events")
        publish(second, "e", "c")
        with subscriber(second) as ws:
            subscribe(ws, "e", since={"offset": seen["offset"], "epoch": seen["epoch"]})
            got = receive(ws, 3)
        self.assertEqual([(m.get("data"), m["offset"], m["epoch"]) for m in got],
                         [("b", 2, seen["epoch"]), ("c", 3, seen["epoch"]), (None, 3, seen["epoch"])])
        self.assertTrue(got[-1]["recovered"])

    def test_kill_9_after_201(self):
        """
        Publications answered 201 straight before a kill -9 are all there
        after a restart: the history route and a recovering subscriber see
        them with the epoch of before; so is the publication of a report
        answered 200.
        """
        first = self.start()
        for n in range(3):
            self.assertEqual(publish(first, "e", n), 201)
        epoch = history(first, "e")["epoch"]
        self.assertEqual(publish(first, "e", 3), 201)
        self.assertEqual(http(first.url("/data"), b'{"id": "p", "value": 1}')[0], 200)
        first.process.kill()
        first.process.wait()
        second = self.start()
        kept = history(second, "e")
        self.assertEqual((kept["epoch"], [p["data"] for p in kept["publications"]]), (epoch, [0, 1, 2, 3]))
        # The report's publication was committed with the report.
        self.assertEqual([p["data"] for p in history(second, "smartplug")["publications"]], ['{"id": "p", "value": 1}'])
        with subscriber(second) as ws:
            subscribe(ws, "e", since={"offset": 2, "epoch": epoch})
            got = receive(ws, 3)
        self.assertEqual([m.get("offset") for m in got], [3, 4, 4])
        self.assertTrue(got[-1]["recovered"])

    def test_readme_client_resumes(self):
        """
        The README's client, run as written: it shows the last value at
        once, follows live publications, and after the server restarts
        (publications made while it was away) it resumes where it was,
        missing nothing and seeing nothing twice, without saying it missed
        anything.
        """
        said: list = []
        namespace = {"__name__": "readme_example", "print": lambda *args: said.append(args)}
        exec(compile(readme_example(), "README.md", "exec"), namespace)
        follow = namespace["follow"]
        handled: queue.Queue = queue.Queue()
        position: dict = {}

        def run(server: RunningServer) -> threading.Thread:
            def target():
                try:
                    follow(server.ws_url(f"/subscribe?clientName=display&apiKey={KEY}"), "temperature", position,
                           handled.put)
                except (OSError, WebSocketException):
                    pass  # the server went away: the README's loop would retry

            thread = threading.Thread(target=target)
            thread.start()
            self.addCleanup(thread.join, 10)
            return thread

        first = self.start()
        publish(first, "temperature", "20.0")
        publish(first, "temperature", "20.5")
        thread = run(first)
        self.assertEqual(handled.get(timeout=10), "20.5")
        publish(first, "temperature", "21.0")
        self.assertEqual(handled.get(timeout=10), "21.0")
        first.stop()
        thread.join(10)
        self.assertFalse(thread.is_alive())

        second = self.start()
        publish(second, "temperature", "21.5")
        publish(second, "temperature", "22.0")
        thread = run(second)
        self.assertEqual([handled.get(timeout=10) for _ in range(2)], ["21.5", "22.0"])
        publish(second, "temperature", "22.5")
        self.assertEqual(handled.get(timeout=10), "22.5")
        second.stop()
        self.assertNotIn("Traceback", first.log() + second.log())
        thread.join(10)
        self.assertTrue(handled.empty())
        self.assertEqual(position["offset"], 6)
        self.assertEqual(said, [])


def readme_example() -> str:
    """
    The Python block after the README's C{<!-- resume-example -->} marker.
    """
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    found = re.search(r"<!-- resume-example -->\n```python\n(.*?)```", text, re.S)
    assert found, "README.md has no resume example"
    return found.group(1)


class LargeReplayEndToEndTests(TestCase):
    """
    Replays larger than the unsent limit and frames larger than the message
    limit, on a real server (the reviewer's repro: 100 publications of
    60 KB, defaults otherwise).
    """

    def test_large_since_replay_and_last(self):
        """
        A subscriber recovering from offset 0 over 100 publications of 60 KB
        (6 MB) gets all 100, then the recovered message; a publication of
        20 KB of "<" (a 120 KB frame once Go-escaped) comes whole with last;
        the log has no traceback.
        """
        server = start_server(self, f"API_KEY = {KEY!r}\n")
        with connect(server.ws_url(f"/publish?clientName=pub&apiKey={KEY}"), open_timeout=5) as pub:
            for n in range(100):
                pub.send(json.dumps({"event": "big", "data": "%03d" % n + "x" * 60000}))
            pub.send(json.dumps({"event": "lt", "data": "<" * 20000}))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if len(history(server, "big", "limit=1000")["publications"]) == 100 and history(server, "lt")["publications"]:
                    break
                time.sleep(0.02)
        epoch = history(server, "big", "limit=1")["epoch"]
        with connect(server.ws_url(f"/subscribe?clientName=s&apiKey={KEY}"), open_timeout=5, max_size=None) as ws:
            subscribe(ws, "big", since={"offset": 0, "epoch": epoch})
            messages = receive(ws, 101)
            subscribe(ws, "lt", last=True)
            [last] = receive(ws, 1)
        self.assertEqual([m.get("offset") for m in messages[:100]], list(range(1, 101)))
        self.assertEqual(messages[99]["data"], "099" + "x" * 60000)
        self.assertEqual((messages[100]["action"], messages[100]["recovered"]), ("recovered", True))
        self.assertEqual(last["data"], "<" * 20000)
        self.assertNotIn("Traceback", server.log())
        self.assertNotIn("too slow", server.log())
