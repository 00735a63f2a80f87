"""
End-to-end: stopping the real C{twistd -n smartplug} while reports are in
flight finishes them, closes the store last, and exits; WebSocket peers are
told that the server goes away.
"""

import os
import signal
import socket
import sqlite3

from twisted.trial.unittest import TestCase
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from .server import start_server

IN_FLIGHT = 300


def report(i: int) -> bytes:
    body = b'{"id": "p%d", "value": 1}' % i
    return b"POST /data HTTP/1.1\nHost: x\nContent-Length: %d\n\n%s" % (len(body), body)


class ShutdownUnderLoadTests(TestCase):
    """
    SIGTERM with hundreds of reports in flight.
    """

    def test_sigterm_with_reports_in_flight(self):
        """
        The server exits by itself; no report is answered 503, and every
        report answered 200 is in the state database.
        """
        server = start_server(self, "STATE_DB = 'state.sqlite'\n")
        port = server.ports["HTTP"]
        sockets = []
        self.addCleanup(lambda: [s.close() for s in sockets])
        for i in range(IN_FLIGHT):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(report(i))
            sockets.append(s)
        # Stop once the server is working through them: the rest are in flight.
        server.wait_for(r"plug p\d+ -> 1 from")
        self.assertEqual(server.stop(timeout=60), -signal.SIGTERM, "did not exit by itself")
        answers = []
        for s in sockets:
            try:
                answers.append(s.recv(12))
            except OSError:
                answers.append(b"")
        ok = sum(1 for a in answers if a.startswith(b"HTTP/1.1 200"))
        self.assertEqual([a for a in answers if a and not a.startswith(b"HTTP/1.1 200")], [])
        db = sqlite3.connect(os.path.join(server.directory, "state.sqlite"))
        self.addCleanup(db.close)
        (stored,) = db.execute("SELECT COUNT(*) FROM history").fetchone()
        self.assertGreaterEqual(stored, ok)
        self.assertGreater(ok, 0)
        self.assertNotIn("Traceback", server.log())


class GoingAwayTests(TestCase):
    """
    SIGTERM with apps, a PiCloud subscriber and a lamp connected.
    """

    def test_every_websocket_closed_with_1001(self):
        """
        Each WebSocket peer gets a close frame with 1001 ("server going
        away") and answers it, so no connection is logged as dropped by its
        peer, and the server exits by itself.
        """
        server = start_server(self, "AUTH_SECRET = 'lamp-secret'\nAPI_KEY = 'k'\n",
                              listeners=("HTTP", "app WebSocket", "device WebSocket"))
        app_port, device_port = server.ports["app WebSocket"], server.ports["device WebSocket"]
        peers = [ws_connect(f"ws://127.0.0.1:{app_port}/", open_timeout=5),
                 ws_connect(f"ws://127.0.0.1:{app_port}/subscribe?clientName=s&apiKey=k", open_timeout=5)]
        lamp = ws_connect(f"ws://127.0.0.1:{device_port}/", open_timeout=5)
        lamp.send("lamp-secret")
        self.assertEqual(lamp.recv(timeout=10), "ok")
        peers.append(lamp)
        for peer in peers:
            self.addCleanup(peer.close)
        server.wait_for(r"device connected")
        self.assertEqual(server.stop(timeout=30), -signal.SIGTERM, "did not exit by itself")
        closes = []
        for peer in peers:
            with self.assertRaises(ConnectionClosed) as closed:
                while True:
                    peer.recv(timeout=10)
            closes.append((closed.exception.rcvd.code, closed.exception.rcvd.reason) if closed.exception.rcvd else None)
        self.assertEqual(closes, [(1001, "server going away")] * 3)
        log = server.log()
        self.assertIn("stopping: closing 3 WebSocket connections (1001 going away)", log)
        self.assertNotIn("without previous WebSocket closing handshake", log)
        self.assertNotIn("Traceback", log)
