"""
Tests for TLS set-up (smartplug_backend.server.tls) and its wiring into the
listeners (smartplug_backend.tap, listeners): every problem with the files is
one clear line, and every listener gets TLS.
"""

import io
import os
import sys

from OpenSSL import SSL
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend import tap
from smartplug_backend.config import settings_from
from smartplug_backend.server.connections import CappedFactory
from smartplug_backend.server.guard import GuardedFactory
from smartplug_backend.server.listeners import brings_own_tls, endpoint_description, with_backlog
from smartplug_backend.server.tls import MINIMUM_VERSION, TLS, TLSError, load

from .certs import other_key, self_signed
from .helpers import SynchronousReactor


class LoadTests(SynchronousTestCase):
    """
    L{load} accepts a matching certificate and key, and refuses anything
    else with one line naming the setting and the file.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.cert, self.key = self_signed(self.directory)

    def refused(self, cert, key) -> str:
        message = str(self.assertRaises(TLSError, load, cert, key))
        self.assertNotIn("\n", message)
        return message

    def test_matching_pair(self):
        """
        A self-signed certificate and its key give server options with TLS
        1.2 as the minimum, and the certificate's subject and expiry.
        """
        tls = load(self.cert, self.key)
        self.assertEqual(tls.subject, "CN=localhost")
        self.assertEqual(MINIMUM_VERSION.name, "TLSv1_2")
        # The context itself excludes every version before 1.2, whatever
        # OpenSSL's security level would allow.
        # (set_options(0) adds nothing and returns the options in force.)
        options = tls.options.getContext().set_options(0)
        excluded = SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3 | SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1
        self.assertEqual(options & excluded, excluded)
        self.assertFalse(options & SSL.OP_NO_TLSv1_2)
        self.assertIsInstance(tls.wrap(object()), TLSMemoryBIOFactory)

    def test_chain(self):
        """
        A certificate file holding a chain (as Let's Encrypt's fullchain.pem)
        is read whole: the first certificate is the server's.
        """
        other = os.path.join(self.directory, "other")
        os.makedirs(other)
        second, _ = self_signed(other, "intermediate.example")
        with open(self.cert, "ab") as f, open(second, "rb") as g:
            f.write(g.read())
        self.assertEqual(load(self.cert, self.key).subject, "CN=localhost")

    def test_missing_files(self):
        """
        A missing certificate or key file is named with the reason.
        """
        missing = os.path.join(self.directory, "nope.pem")
        self.assertEqual(self.refused(missing, self.key), f"TLS_CERT_FILE: cannot read {missing}: No such file or directory")
        self.assertEqual(self.refused(self.cert, missing), f"TLS_KEY_FILE: cannot read {missing}: No such file or directory")

    def test_unreadable_file(self):
        """
        A directory where a file should be is refused as unreadable.
        """
        self.assertIn(f"TLS_KEY_FILE: cannot read {self.directory}: ", self.refused(self.cert, self.directory))

    def test_not_pem(self):
        """
        Files that hold no PEM certificate or key are refused; the key's
        contents never appear in the message.
        """
        junk = os.path.join(self.directory, "junk.pem")
        with open(junk, "w") as f:
            f.write("s3cret-junk\n")
        self.assertEqual(self.refused(junk, self.key), f"TLS_CERT_FILE: {junk} holds no PEM certificate")
        message = self.refused(self.cert, junk)
        self.assertEqual(message, f"TLS_KEY_FILE: {junk} holds no PEM private key")
        self.assertEqual(self.refused(self.key, self.key), f"TLS_CERT_FILE: {self.key} holds no PEM certificate")
        self.assertEqual(self.refused(self.cert, self.cert), f"TLS_KEY_FILE: {self.cert} holds no PEM private key")

    def test_key_does_not_match(self):
        """
        A key of another certificate is refused, naming both files.
        """
        key = other_key(self.directory)
        self.assertEqual(self.refused(self.cert, key), f"TLS_KEY_FILE: {key} does not match the certificate in {self.cert}")

    def test_encrypted_key(self):
        """
        A key with a passphrase is refused with what to do.
        """
        key = other_key(self.directory, password=b"pass")
        self.assertEqual(self.refused(self.cert, key), f"TLS_KEY_FILE: {key} is encrypted; give the key without a passphrase")

    def test_from_settings(self):
        """
        Neither setting: no TLS; both: TLS; only one: an error saying to set
        both.
        """
        self.assertIsNone(TLS.from_settings(settings_from({})))
        both = settings_from({"TLS_CERT_FILE": self.cert, "TLS_KEY_FILE": self.key})
        self.assertEqual(TLS.from_settings(both).cert_file, self.cert)
        for name, other in [("TLS_CERT_FILE", "TLS_KEY_FILE"), ("TLS_KEY_FILE", "TLS_CERT_FILE")]:
            error = self.assertRaises(TLSError, TLS.from_settings, settings_from({name: self.cert}))
            self.assertEqual(str(error), f"{name} is set but {other} is not: set both for TLS, or neither")


class WiringTests(SynchronousTestCase):
    """
    C{twistd smartplug} with TLS settings: every listener is wrapped, bans
    and the connection cap outside TLS.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.cert, self.key = self_signed(self.directory)

    def make(self, settings_text: str, args=()):
        path = os.path.join(self.directory, "settings.py")
        with open(path, "w") as f:
            f.write("STATE_DB = None\nAUTH_SECRET = 'x'\n" + settings_text)
        options = tap.Options()
        options.parseOptions(["--settings", path] + list(args))
        reactor = SynchronousReactor()
        tap.makeService(options, reactor=reactor).privilegedStartService()
        return {port: factory for port, factory, *_ in reactor.tcpServers}

    def tls_settings(self, key=None) -> str:
        return f"TLS_CERT_FILE = {self.cert!r}\nTLS_KEY_FILE = {key or self.key!r}\n"

    def test_every_listener_wrapped(self):
        """
        HTTP, app and device listeners are guard(cap(TLS(factory))), and the
        WebSocket factories know they are secure (wss).
        """
        factories = self.make(self.tls_settings() + "WWW_SERVER_PORT = 1\nWS_SERVER_PORT = 2\nDEVICE_SERVER_PORT = 3\n")
        self.assertEqual(sorted(factories), [1, 2, 3])
        for port, factory in factories.items():
            self.assertIsInstance(factory, GuardedFactory)
            self.assertIsInstance(factory.wrapped, CappedFactory)
            self.assertIsInstance(factory.wrapped.wrapped, TLSMemoryBIOFactory)
            inner = factory.wrapped.wrapped.wrappedFactory
            if port != 1:
                self.assertTrue(inner.isSecure)
        # One cap for all three.
        self.assertEqual(len({id(f.wrapped.cap) for f in factories.values()}), 1)

    def test_endpoint_options_get_tls(self):
        """
        Listeners given as tcp: endpoint descriptions get TLS from the
        settings too.
        """
        factories = self.make(self.tls_settings(), ["--www", "tcp:7000", "--ws", "tcp:7001", "--device", "tcp:7002"])
        for factory in factories.values():
            self.assertIsInstance(factory.wrapped.wrapped, TLSMemoryBIOFactory)

    def test_unix_socket_gets_tls(self):
        """
        A unix: endpoint description gets TLS too, and its listening lines
        name the socket's path.
        """
        from twisted.logger import capturedLogs, formatEvent

        path = os.path.join(self.directory, "http.sock")
        settings = os.path.join(self.directory, "settings.py")
        with open(settings, "w") as f:
            f.write("STATE_DB = None\n" + self.tls_settings())
        options = tap.Options()
        options.parseOptions(["--settings", settings, "--www", f"unix:{path}", "--ws", "tcp:7001"])
        reactor = SynchronousReactor()
        with capturedLogs() as events:
            tap.makeService(options, reactor=reactor).privilegedStartService()
        [(address, factory, *_)] = reactor.unixServers
        self.assertEqual(address, path)
        self.assertIsInstance(factory.wrapped.wrapped, TLSMemoryBIOFactory)
        lines = [formatEvent(e) for e in events]
        self.assertIn(f"HTTP listening on {path}", lines)
        self.assertIn(f"HTTP on {path} speaks https (TLS 1.2 or newer)", lines)

    def test_without_tls(self):
        """
        Without TLS settings no listener is wrapped in TLS and the WebSocket
        factories are not secure.
        """
        for factory in self.make("WWW_SERVER_PORT = 1\nWS_SERVER_PORT = 2\nDEVICE_SERVER_PORT = 3\n").values():
            self.assertNotIsInstance(factory.wrapped.wrapped, TLSMemoryBIOFactory)
            self.assertFalse(getattr(factory.wrapped.wrapped, "isSecure", False))

    def test_bad_key_one_line(self):
        """
        A key that does not match stops start-up with one line on stderr,
        and no traceback.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        key = other_key(self.directory)
        error = self.assertRaises(SystemExit, self.make, self.tls_settings(key))
        self.assertEqual(error.code, 1)
        self.assertEqual(stderr.getvalue(), f"smartplug: TLS_KEY_FILE: {key} does not match the certificate in {self.cert}\n")


class DescriptionTests(SynchronousTestCase):
    """
    Endpoint descriptions built from the settings, and the ones that bring
    their own TLS.
    """

    def test_backlog(self):
        """
        Every TCP or TLS listener, built-in or given as --www/--ws/--device,
        queues up to 1024 connections before accepting them, so that a burst
        of reconnecting apps is not dropped (Twisted's default is 50); a
        backlog the owner gives is kept.
        """
        self.assertEqual(with_backlog(endpoint_description(9000, "0.0.0.0")), "tcp:9000:interface=0.0.0.0:backlog=1024")
        self.assertEqual(endpoint_description(9000, "::1"), "tcp:9000:interface=\\:\\:1")
        self.assertEqual(with_backlog("tcp:0"), "tcp:0:backlog=1024")
        self.assertEqual(with_backlog("ssl:9443:privateKey=k.pem"), "ssl:9443:privateKey=k.pem:backlog=1024")
        self.assertEqual(with_backlog("tcp:0:backlog=7"), "tcp:0:backlog=7")
        self.assertEqual(with_backlog("unix:/tmp/s"), "unix:/tmp/s")

    def test_brings_own_tls(self):
        """
        Only ssl: descriptions bring their own TLS.
        """
        self.assertTrue(brings_own_tls("ssl:9443:privateKey=k.pem"))
        self.assertTrue(brings_own_tls("SSL:9443"))
        self.assertFalse(brings_own_tls("tcp:9000"))
        self.assertFalse(brings_own_tls("unix:/tmp/sock"))
