"""
End-to-end: state that survives restarts, on the real C{twistd -n smartplug}
with C{STATE_DB} in a temporary directory: C{kill -9} and restart, backups
while reports stream in, restore, and start-up refusals.
"""

import json
import os
import re
import sqlite3
import subprocess
import sys
import tarfile
import threading
from http.client import HTTPConnection

from twisted.trial.unittest import TestCase
from websockets.sync.client import connect as ws_connect

from smartplug_backend.state import backup
from smartplug_backend.state.store import Store

from .disk import fill, release, small_disk
from .server import RunningServer, twistd_command
from .test_e2e import http
from .test_store import build_v3

SECRET = "s3cret"
SETTINGS = f'STATE_DB = "state.sqlite"\nAUTH_SECRET = {SECRET!r}\n'
LISTENERS = ("HTTP", "app WebSocket", "device WebSocket")
COLOUR = {"mode": 2, "color": [255, 65, 174], "pulse": 0}
# Settings lines (the file is Python) that make every commit of the state
# store 20 ms slower, as on a slow disk: on the store's writer thread,
# before the transaction.
SLOW_DISK = """
import time as _time
from smartplug_backend.state.store import Store as _Store
_commit = _Store.write_together
def _slowly(store, writes):
    _time.sleep(0.02)
    return _commit(store, writes)
_Store.write_together = _slowly
"""


def post(server: RunningServer, plug_id: str, value: int) -> int:
    """
    Report through POST /data; return the status.
    """
    return http(server.url("/data"), json.dumps({"id": plug_id, "value": value}).encode())[0]


def get_json(server: RunningServer, path: str):
    status, body = http(server.url(path))
    assert status == 200, (path, status, body)
    return json.loads(body)


def cli(directory: str, *argv) -> subprocess.CompletedProcess:
    """
    Run C{python -m smartplug_backend ARGV} in C{directory}.
    """
    return subprocess.run(
        [sys.executable, "-m", "smartplug_backend", *argv],
        cwd=directory, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


class Scratch(TestCase):
    """
    Servers in one temporary directory, restartable on the same database.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.db = os.path.join(self.directory, "state.sqlite")

    def start(self, settings: str = SETTINGS, listeners=LISTENERS) -> RunningServer:
        server = RunningServer(self.directory, settings, listeners=listeners)
        self.addCleanup(server.stop)
        return server.start()


class RestartTests(Scratch):
    """
    A restart, even after kill -9, is invisible to the apps and devices.
    """

    def test_kill_9_loses_nothing(self):
        """
        Reports and a display state answered 200 just before a kill -9 are
        all there after a restart on the same file: the PlugBuddy status
        request gets the last value, GET /plugs lists every plug with its
        time, the history is intact, and a device that authenticates gets
        the stored display packet.
        """
        first = self.start()
        for plug_id, value in [("a", 1), ("b", 0), ("a", 0)]:
            self.assertEqual(post(first, plug_id, value), 200)
        self.assertEqual(http(first.url("/display"), json.dumps(COLOUR).encode())[0], 200)
        plugs = get_json(first, "/plugs")
        first.process.kill()
        first.process.wait()

        second = self.start()
        second.wait_for(r"state from state\.sqlite: 2 plugs, display \[cc:2:255,65,174:0\]")
        with ws_connect(second.ws_url(), open_timeout=5) as app:
            app.send('{"status": "a"}')
            self.assertEqual(app.recv(timeout=5), '{"id": "a", "value": 0}')
        self.assertEqual(get_json(second, "/plugs"), plugs)
        history = get_json(second, "/plugs/a/history")
        self.assertEqual([entry["value"] for entry in history], [0, 1])
        self.assertEqual(history[0]["at"], plugs[0]["updated_at"])
        with ws_connect(f"ws://127.0.0.1:{second.ports['device WebSocket']}/", open_timeout=5) as device:
            device.send(SECRET)
            self.assertEqual(device.recv(timeout=5), "ok")
            self.assertEqual(device.recv(timeout=5), "[cc:2:255,65,174:0]")

    def test_kill_9_under_load_loses_no_answered_report(self):
        """
        Sixteen keep-alive clients report as fast as they are answered, so
        that their reports share commits (group commit), and the server is
        killed with SIGKILL mid-stream.  After a restart each plug's history
        holds every report that was answered 200, in order and once each,
        plus at most the one that was in flight; GET /plugs shows the newest.
        Each commit is made 20 ms slower (L{SLOW_DISK}), so that the kill
        lands while reports wait for theirs: one answered before its commit
        would be lost.
        """
        clients, each, kill_after = 16, 200, 400
        first = self.start(SETTINGS + SLOW_DISK)
        port = first.ports["HTTP"]
        answered = [0] * clients
        # answers other than 200, which no report here should get
        refused = []
        changed = threading.Condition()

        def report(n: int) -> None:
            connection = HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                for i in range(each):
                    body = json.dumps({"id": f"load-{n}", "value": i % 2})
                    connection.request("POST", "/data", body, {"Content-Type": "application/json"})
                    answer = connection.getresponse()
                    answer.read()
                    if answer.status != 200:
                        refused.append((n, i, answer.status))
                        return
                    with changed:
                        answered[n] += 1
                        changed.notify_all()
            except OSError:
                # The server died under this request.
                return
            finally:
                connection.close()

        threads = [threading.Thread(target=report, args=(n,), daemon=True) for n in range(clients)]
        for thread in threads:
            thread.start()
        with changed:
            self.assertTrue(changed.wait_for(lambda: sum(answered) >= kill_after, timeout=60), answered)
        first.process.kill()
        first.process.wait()
        for thread in threads:
            thread.join(timeout=30)
        self.assertFalse(any(thread.is_alive() for thread in threads))
        # Killed mid-stream, not after every client had finished.
        self.assertLess(sum(answered), clients * each)
        self.assertEqual(refused, [])

        second = self.start()
        plugs = {plug["id"]: plug for plug in get_json(second, "/plugs")}
        for n in range(clients):
            history = get_json(second, f"/plugs/load-{n}/history?limit=1000")
            values = [entry["value"] for entry in reversed(history)]
            self.assertIn(len(values) - answered[n], (0, 1), (n, answered[n], values))
            self.assertEqual(values, [i % 2 for i in range(len(values))], n)
            if values:
                self.assertEqual(plugs[f"load-{n}"]["value"], values[-1])
                self.assertEqual(plugs[f"load-{n}"]["updated_at"], history[0]["at"])

    def test_clean_stop_closes_the_database(self):
        """
        SIGTERM closes the database: no traceback, and SQLite folds the WAL
        back into the file and removes it.
        """
        server = self.start()
        post(server, "a", 1)
        self.assertTrue(os.path.exists(self.db + "-wal"))
        server.stop()
        self.assertNotIn("Traceback", server.log())
        self.assertFalse(os.path.exists(self.db + "-wal"))

    def test_store_refusal_answers_503(self):
        """
        When the database refuses a write, the reporter gets a JSON 503, the
        plug stays unknown and the log says why; other reports still work.
        """
        Store.open(self.db, 10).close()
        db = sqlite3.connect(self.db)
        db.execute(
            "CREATE TRIGGER full BEFORE INSERT ON history WHEN NEW.plug_id = 'doomed'"
            " BEGIN SELECT RAISE(ABORT, 'disk is full'); END"
        )
        db.commit()
        db.close()
        server = self.start()
        status, body = http(server.url("/data"), b'{"id": "doomed", "value": 1}')
        self.assertEqual(status, 503)
        self.assertIn("state store cannot write", json.loads(body)["error"])
        server.wait_for(r"report plug doomed -> 1 from 127\.0\.0\.1 refused: state store cannot write: disk is full")
        self.assertEqual(http(server.url("/plugs/doomed"))[0], 404)
        self.assertEqual(post(server, "fine", 1), 200)
        self.assertNotIn("Traceback", server.log())


class StartupRefusalTests(Scratch):
    """
    A database the server cannot use stops start-up with one line.
    """

    def run_twistd(self) -> str:
        with open(os.path.join(self.directory, "settings.py"), "w") as f:
            f.write(SETTINGS)
        result = subprocess.run(
            twistd_command() + ["-n", "--pidfile=", "smartplug", "--settings", "settings.py",
                                "--www", "tcp:0:interface=127.0.0.1", "--ws", "tcp:0:interface=127.0.0.1",
                                "--device", "tcp:0:interface=127.0.0.1"],
            cwd=self.directory, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("listening on", output)
        return output

    def test_corrupt_file(self):
        """
        A file that is not a state database stops start-up with one line
        naming it, and is left byte for byte as it was.
        """
        with open(self.db, "wb") as f:
            f.write(b"my notes\n" * 1000)
        output = self.run_twistd()
        self.assertIn("smartplug: STATE_DB: state.sqlite is damaged or not an SQLite database", output)
        with open(self.db, "rb") as f:
            self.assertEqual(f.read(), b"my notes\n" * 1000)

    def test_second_server(self):
        """
        A second server on a database a running server holds does not start.
        """
        self.start()
        self.assertIn("smartplug: STATE_DB: state.sqlite is in use by a running server", self.run_twistd())


class BackupEndToEndTests(Scratch):
    """
    Backups of a running server, and restoring one.
    """

    def assertConsistent(self, archive_path: str, sent: list) -> int:
        """
        The backup opens cleanly, passes SQLite's integrity check, and holds
        exactly the first k reports sent, in order, with each plug's state
        equal to its newest report among them.

        @return: k.
        """
        unpacked = os.path.join(self.mktemp() + ".sqlite")
        with tarfile.open(archive_path) as archive:
            with open(unpacked, "wb") as f:
                f.write(archive.extractfile(backup.ARCHIVE_DB).read())
        db = sqlite3.connect(f"file:{unpacked}?mode=ro", uri=True)
        try:
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
            history = db.execute("SELECT plug_id, value, at FROM history ORDER BY seq").fetchall()
            plugs = db.execute("SELECT id, value, updated_at FROM plugs ORDER BY seq").fetchall()
        finally:
            db.close()
        k = len(history)
        self.assertEqual([(p, v) for p, v, _ in history], sent[:k])
        newest = {}
        for plug_id, value, at in history:
            newest[plug_id] = (plug_id, value, at)
        self.assertEqual(sorted(plugs), sorted(newest.values()))
        return k

    def test_backup_while_reports_stream_in(self):
        """
        Backups taken with the command while 500 reports stream in each hold
        a consistent state (a prefix of the reports); one taken afterwards
        holds all 500, and the settings file.
        """
        server = self.start()
        sent = [(f"plug{i % 7}", (i // 7) % 2) for i in range(500)]
        halfway, backup_started, problems = threading.Event(), threading.Event(), []

        def stream():
            try:
                connection = HTTPConnection("127.0.0.1", server.ports["HTTP"], timeout=10)
                for i, (plug_id, value) in enumerate(sent):
                    if i == 250:
                        halfway.set()
                        # The rest streams in while the backup runs.
                        backup_started.wait(30)
                    connection.request("POST", "/data", json.dumps({"id": plug_id, "value": value}))
                    answer = connection.getresponse()
                    answer.read()
                    if answer.status != 200:
                        problems.append(answer.status)
                connection.close()
            except Exception as e:
                problems.append(e)
            finally:
                halfway.set()

        streamer = threading.Thread(target=stream)
        streamer.start()
        self.addCleanup(streamer.join)
        self.assertTrue(halfway.wait(30))
        archives = []
        backup_started.set()
        while streamer.is_alive() or not archives:
            taken = cli(self.directory, "backup", "--settings", "settings.py", "--to", "backups")
            self.assertEqual((taken.returncode, taken.stderr), (0, ""))
            archives.append(os.path.join(self.directory, taken.stdout.split("backup written to ")[1].strip()))
        streamer.join()
        self.assertEqual(problems, [])
        for archive in archives:
            self.assertGreaterEqual(self.assertConsistent(archive, sent), 250)
        final = cli(self.directory, "backup", "--settings", "settings.py").stdout.split("backup written to ")[1].strip()
        self.assertEqual(self.assertConsistent(os.path.join(self.directory, final), sent), 500)
        with tarfile.open(os.path.join(self.directory, final)) as archive:
            self.assertEqual(archive.extractfile(backup.ARCHIVE_SETTINGS).read().decode(), "STATE_DB = None\n" + SETTINGS)

    def test_restore(self):
        """
        restore is refused while the server runs (nothing changes); once it
        is stopped, restore puts the backup back, and the next server serves
        the backed-up state.
        """
        server = self.start()
        post(server, "a", 1)
        taken = cli(self.directory, "backup", "--settings", "settings.py")
        archive = taken.stdout.split("backup written to ")[1].strip()
        post(server, "a", 0)
        post(server, "b", 1)

        refused = cli(self.directory, "restore", archive, "--settings", "settings.py")
        self.assertEqual(refused.returncode, 1)
        self.assertEqual(refused.stderr.count("\n"), 1)
        self.assertIn("not restored: state.sqlite is in use by a running server", refused.stderr)
        self.assertEqual([(p["id"], p["value"]) for p in get_json(server, "/plugs")], [("a", 0), ("b", 1)])

        server.stop()
        restored = cli(self.directory, "restore", archive, "--settings", "settings.py")
        self.assertEqual((restored.returncode, restored.stderr), (0, ""))
        again = self.start()
        self.assertEqual([(p["id"], p["value"]) for p in get_json(again, "/plugs")], [("a", 1)])
        self.assertEqual([e["value"] for e in get_json(again, "/plugs/a/history")], [1])

    def test_automatic_backups(self):
        """
        With BACKUP_INTERVAL the running server writes backups by itself into
        backups/ and keeps only the newest BACKUP_KEEP of them.
        """
        server = self.start(SETTINGS + "BACKUP_INTERVAL = 0.2\nBACKUP_KEEP = 1\n")
        post(server, "a", 1)
        server.wait_for(r"automatic backup written to backups/smartplug-auto-")
        deleted = server.wait_for(r"old automatic backup (\S+) deleted")
        self.assertFalse(os.path.exists(os.path.join(self.directory, deleted.group(1))))
        kept = [name for name in os.listdir(os.path.join(self.directory, "backups")) if name.endswith(".tar.gz")]
        # One kept; a second only between a new backup and its pruning.
        self.assertIn(len(kept), (1, 2))
        self.assertNotIn("Traceback", server.log())


    def test_backup_before_upgrade(self):
        """
        A state file of an older schema is backed up before the real server
        upgrades it, and the log says where; the backup restores it as it
        was (older versions refuse the upgraded file).
        """
        build_v3(self.db, [("a", 1, 1.0, "http")], '{"mode": 2, "color": [255, 65, 174], "pulse": 0}')
        server = self.start()
        found = server.wait_for(r"is upgraded to schema \d+, which older versions refuse; a backup of it as it was "
                                r"is in (backups/smartplug-before-upgrade-\S+\.tar\.gz): to go back")
        self.assertEqual([(p["id"], p["value"]) for p in get_json(server, "/plugs")], [("a", 1)])
        server.stop()
        restored = cli(self.directory, "restore", found.group(1), "--settings", "settings.py")
        self.assertEqual(restored.returncode, 0, restored.stderr)
        db = sqlite3.connect(self.db)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA user_version").fetchone()[0], 3)


class FullDiskTests(Scratch):
    """
    The state file on a 2 MiB tmpfs that fills up (issue 11), with the real
    server.
    """

    def setUp(self):
        self.directory = small_disk(self)
        self.db = os.path.join(self.directory, "state.sqlite")

    def test_heals_without_restart(self):
        """
        Once the disk is full, reports get 503; once a little room is freed
        (64 KiB), every later report is answered 200 and kept, without a
        restart.  From start-up the server says it keeps SQLite's log short
        on this small, nearly full disk, once, without asking for room it
        cannot have.
        """
        server = self.start()
        short = (r"STATE_DB: state\.sqlite: only [12] MiB free on its disk of 2 MiB: SQLite's write-ahead log is "
                 r"kept short \(a few hundred KB\); make room on the disk")
        server.wait_for(short)
        filler = fill(self.directory, leave=300 * 1024)
        for i in range(3000):
            if post(server, f"plug{i % 20}", i % 2) == 503:
                break
        else:
            self.fail("3000 reports fitted on a 2 MiB disk")
        self.assertEqual(post(server, "late", 1), 503)
        release(filler, 64 * 1024)
        statuses = [post(server, "after", i % 2) for i in range(100)]
        self.assertEqual(statuses, [200] * 100)
        self.assertEqual(len(get_json(server, "/plugs/after/history?limit=1000")), 100)
        self.assertNotIn("Traceback", server.log())
        self.assertEqual(len(re.findall("write-ahead log is kept short", server.log())), 1)

    def test_full_disk_at_start_up(self):
        """
        A good state file on a disk with no room left stops start-up with
        one line that blames the disk, says how much is free and to make
        room, and never calls the file damaged or foreign; once there is
        room the server starts with its data.
        """
        with open(os.path.join(self.directory, "settings.py"), "w") as f:
            f.write(SETTINGS)
        db = Store.open(self.db, 10)
        db.save_report("0xb00bf0cc", 1, 1.0, "http")
        db.close()
        filler = fill(self.directory)
        output = self.run_twistd()
        self.assertIn("smartplug: STATE_DB: ", output)
        self.assertIn("bytes free on its file system", output)
        self.assertIn("make room", output)
        self.assertNotIn("damaged", output)
        self.assertNotIn("not an SQLite", output)
        os.remove(filler)
        server = self.start()
        self.assertEqual([p["id"] for p in get_json(server, "/plugs")], ["0xb00bf0cc"])

    run_twistd = StartupRefusalTests.run_twistd
