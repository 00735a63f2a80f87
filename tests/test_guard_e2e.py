"""
End to end: a ban holds on connections that were open before it (review
finding 1), against the real C{twistd -n smartplug} with independent
clients (http.client) on loopback.
"""

import http.client
import json
import socket

from twisted.trial.unittest import TestCase

from smartplug_backend.http.dashboard.auth import hash_password

from .server import closed_at_once, start_server

PASSWORD = "pw123456"
SETTINGS = f"""
DASHBOARD_USERS = {{"anna": {hash_password(PASSWORD, n=2**10)!r}}}
API_KEY = "good-key"
BAN_AFTER = 3
BAN_SECONDS = 60
"""


def closed_by_server(connection: http.client.HTTPConnection, timeout: float = 5) -> bool:
    """
    True when the server closes C{connection} (idle after its last answer)
    within C{timeout} seconds.
    """
    connection.sock.settimeout(timeout)
    try:
        return connection.sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


class KeepAliveBanTests(TestCase):
    """
    A banned address guesses nothing more on a keep-alive connection.
    """

    def setUp(self):
        self.server = start_server(self, SETTINGS)
        self.port = self.server.ports["HTTP"]

    def connection(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.addCleanup(connection.close)
        return connection

    def login(self, connection, password):
        connection.request("POST", "/ui/api/login", body=json.dumps({"user": "anna", "password": password}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Connection")

    def test_dashboard_login_on_keep_alive(self):
        """
        After BAN_AFTER wrong passwords on one keep-alive connection, the
        right password on that connection does not log in (403 and the
        connection closes, or it is closed already), the server closes the
        connection, another connection opened before the ban is closed too,
        and new ones are refused at once.
        """
        connection = self.connection()
        idle = self.connection()
        idle.connect()
        for i in range(3):
            status, body, _ = self.login(connection, f"wrong{i}")
            self.assertEqual(status, 401, body)
        try:
            status, body, close = self.login(connection, PASSWORD)
        except (http.client.RemoteDisconnected, ConnectionError):
            pass  # closed already: the ban came first
        else:
            self.assertEqual((status, close), (403, "close"), body)
            self.assertIn(b"banned", body)
        self.assertTrue(closed_by_server(idle))
        self.assertTrue(closed_at_once(self.port))
        self.server.wait_for(r"closing \d open HTTP connection\(s\) of banned 127.0.0.1")
        self.assertNotIn("dashboard login of anna", self.server.log())

    def test_api_key_on_keep_alive(self):
        """
        After BAN_AFTER wrong API keys on one keep-alive connection (each a
        PiCloud 401 "Invalid API Key"), the server closes that connection:
        the next guess never reaches the key check.
        """
        connection = self.connection()
        for _ in range(3):
            connection.request("POST", "/publish?clientName=a", body=b'{"event": "e"}',
                               headers={"X-API-Key": "bad-key"})
            response = connection.getresponse()
            self.assertEqual((response.status, response.read()), (401, b"Invalid API Key\n"))
        self.assertTrue(closed_by_server(connection))
        self.server.wait_for(r"closing \d open HTTP connection\(s\) of banned 127.0.0.1")
