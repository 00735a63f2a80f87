"""
Tests for L{smartplug_backend.integrations.urls}: the one function that
hides passwords in URLs for the logs, error messages and the dashboard.
"""

from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.integrations.urls import redact


class RedactTests(SynchronousTestCase):
    def test_userinfo(self):
        """
        The password of the user information becomes C{***}; the user name
        stays, and a lone C{user@} (it may be a password) is hidden whole.
        """
        self.assertEqual(redact("mqtt://smartplug:pa55@192.168.1.2:1883"), "mqtt://smartplug:***@192.168.1.2:1883")
        self.assertEqual(redact("redis://:pa55@db:6379/0"), "redis://:***@db:6379/0")
        self.assertEqual(redact("redis://pa55@db"), "redis://***@db")
        self.assertEqual(redact("redis://db.lan:6379/0"), "redis://db.lan:6379/0")

    def test_query(self):
        """
        Secret query parameters, and values holding an C{@}, become C{***};
        the others stay, and the host is kept whatever the query holds.
        """
        self.assertEqual(redact("redis://h:6379/0?username=u&password=s3&db=1"),
                         "redis://h:6379/0?username=u&password=***&db=1")
        self.assertEqual(redact("rediss://h/0?ssl_ca_certs=/ca.pem&ssl_password=s3"),
                         "rediss://h/0?ssl_ca_certs=/ca.pem&ssl_password=***")
        self.assertEqual(redact("redis://h/0?PASS%57ORD=s3"), "redis://h/0?PASS%57ORD=***")
        self.assertEqual(redact("redis://:pw@h/0?client_name=me@home"), "redis://:***@h/0?client_name=***")

    def test_unclean_urls_hidden_roughly(self):
        """
        A password written with an unencoded C{/}, C{?} or C{#} makes a URL
        that does not read cleanly: everything up to the last C{@} is
        hidden, and so is a query.
        """
        self.assertEqual(redact("redis://u:pa?ss@host/0"), "redis://u:***@host/0")
        self.assertEqual(redact("mqtt://u:pa/ss@host:1883"), "mqtt://u:***@host:1883")
        self.assertEqual(redact("redis://:12#x@host"), "redis://:***@host")
        self.assertEqual(redact("redis://:12?x@host"), "redis://:***@host")
        self.assertEqual(redact("redis://h:99999/0?password=s3"), "redis://h:99999/0?***")
        self.assertEqual(redact("redis://[::1"), "redis://[::1")
        # An "@" after the host: the password may have been cut short by an
        # unencoded "?" that made its start read as a port.
        self.assertEqual(redact("redis://u:12345?x=y@host:6379/0"), "redis://u:***@host:6379/0")
        self.assertEqual(redact("redis://12345?x=y@host"), "redis://***@host")
