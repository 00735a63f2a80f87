"""
End-to-end: stopping the real C{twistd -n smartplug} while reports are in
flight finishes them, closes the store last, and exits.
"""

import os
import signal
import socket
import sqlite3

from twisted.trial.unittest import TestCase

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
