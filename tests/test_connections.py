"""
Tests for MAX_CONNECTIONS (smartplug_backend.server.connections): one count over
every listener, refusals at accept, and a log that a flood cannot flood.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.server.connections import ConnectionCap
from smartplug_backend.server.guard import ClosedAtOnce

from .helpers import accept


class Recorder(Protocol):
    """
    A protocol that records what reaches it.
    """

    def __init__(self):
        self.received = b""
        self.lost = False

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = True


class CapTests(SynchronousTestCase):
    """
    L{ConnectionCap} over two listeners.
    """

    def setUp(self):
        self.clock = Clock()
        self.cap = ConnectionCap(3, self.clock, log_every=10)
        self.http = self.cap.wrap(Factory.forProtocol(Recorder))
        self.ws = self.cap.wrap(Factory.forProtocol(Recorder))

    def connect(self, factory, host="10.0.0.1"):
        return accept(factory, host)

    def close(self, protocol):
        protocol.connectionLost(Failure(ConnectionDone()))

    def test_admitted_below_cap(self):
        """
        Below the cap a connection reaches its listener's protocol, which
        gets the real transport (a TLS one stays what Autobahn checks for),
        and is counted until it closes.
        """
        protocol, transport = self.connect(self.http, "192.168.1.50")
        self.assertEqual(self.cap.open, 1)
        self.assertIs(protocol.wrapped.transport, transport)
        self.assertEqual(protocol.wrapped.transport.getPeer().host, "192.168.1.50")
        protocol.dataReceived(b"hello")
        self.assertEqual(protocol.wrapped.received, b"hello")
        self.close(protocol)
        self.assertEqual(self.cap.open, 0)

    def test_cap_over_all_listeners(self):
        """
        The cap counts every listener together: with three open over two
        listeners, the fourth is closed at once on either, without reaching
        a protocol of ours; closing one makes room again.
        """
        first, _ = self.connect(self.http)
        self.connect(self.ws)
        self.connect(self.ws)
        for factory in (self.http, self.ws):
            refused, transport = self.connect(factory)
            self.assertIsInstance(refused, ClosedAtOnce)
            self.assertTrue(transport.disconnecting)
        self.assertEqual((self.cap.open, self.cap.refused), (3, 2))
        self.close(first)
        admitted, transport = self.connect(self.ws)
        self.assertNotIsInstance(admitted, ClosedAtOnce)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.cap.open, 3)

    def test_refusals_logged_sparingly(self):
        """
        A flood of refusals gives one line at once, then at most one summary
        line per period with the count, and nothing once it stops.
        """
        for _ in range(3):
            self.connect(self.http)
        with capturedLogs() as events:
            for _ in range(1000):
                self.connect(self.http, "10.9.9.9")
            self.clock.advance(10)
            for _ in range(5):
                self.connect(self.ws)
            self.clock.advance(10)
            self.clock.advance(10)
            self.clock.advance(10)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("refused a connection from 10.9.9.9: 3 connections open, MAX_CONNECTIONS is 3", lines[0])
        self.assertIn("refused 999 more connections in the last 10 seconds", lines[1])
        self.assertIn("refused 5 more connections", lines[2])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.cap.refused, 1005)

    def test_per_address(self):
        """
        One address holds at most C{per_address} connections over all
        listeners (an IPv4-mapped spelling is the same address); others are
        admitted meanwhile; closing one makes room for it again.
        """
        cap = ConnectionCap(100, self.clock, per_address=2)
        http, ws = cap.wrap(Factory.forProtocol(Recorder)), cap.wrap(Factory.forProtocol(Recorder))
        first, _ = accept(http, "203.0.113.9")
        accept(ws, "::ffff:203.0.113.9")
        with capturedLogs() as events:
            refused, transport = accept(http, "203.0.113.9")
        self.assertIsInstance(refused, ClosedAtOnce)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["refused a connection from 203.0.113.9: it holds 2 connections, MAX_CONNECTIONS_PER_ADDRESS is 2 "
             "(further refusals are summed up every 10 seconds)"],
        )
        self.assertNotIsInstance(accept(ws, "192.168.1.50")[0], ClosedAtOnce)
        self.assertEqual((cap.open, cap.refused, cap.open_by_address["203.0.113.9"]), (3, 1, 2))
        self.assertEqual(dict(cap.refused_by_reason), {"per_address": 1})
        self.close(first)
        self.assertNotIsInstance(accept(ws, "203.0.113.9")[0], ClosedAtOnce)
        # Further refusals are summed up as what they are, naming who.
        with capturedLogs() as events:
            for _ in range(4):
                accept(http, "203.0.113.9")
            self.clock.advance(10)
            self.clock.advance(10)
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["refused 4 more connections in the last 10 seconds from addresses holding "
             "MAX_CONNECTIONS_PER_ADDRESS (2): 203.0.113.9"],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_per_address_ipv6_by_network(self):
        """
        Global IPv6 addresses count per /64 (one host is usually given a
        whole /64, and could use a new address for each connection);
        loopback ::1 stays exempt, and other networks are counted apart.
        """
        cap = ConnectionCap(100, self.clock, per_address=2)
        factory = cap.wrap(Factory.forProtocol(Recorder))
        for host in ["2a01:4f8:1:2::a", "2a01:4f8:1:2::b"]:
            self.assertNotIsInstance(accept(factory, host)[0], ClosedAtOnce)
        with capturedLogs() as events:
            self.assertIsInstance(accept(factory, "2a01:4f8:1:2:ffff::c")[0], ClosedAtOnce)
        self.assertIn("refused a connection from 2a01:4f8:1:2::/64: it holds 2 connections", formatEvent(events[0]))
        self.assertNotIsInstance(accept(factory, "2a01:4f8:1:3::a")[0], ClosedAtOnce)
        for _ in range(3):
            self.assertNotIsInstance(accept(factory, "::1")[0], ClosedAtOnce)
        self.clock.advance(10)

    def test_per_address_ipv6_exempt_and_local(self):
        """
        An exempt IPv6 address (BAN_ALLOW: a reverse proxy) does not use up
        the limit of its /64 neighbours; link-local and unique local
        addresses (the home's own network) count each on its own.
        """
        cap = ConnectionCap(100, self.clock, per_address=2, exempt=["2a01:4f8::5"])
        factory = cap.wrap(Factory.forProtocol(Recorder))
        opened = [accept(factory, "2a01:4f8::5")[0] for _ in range(3)]
        opened += [accept(factory, host)[0] for host in ["2a01:4f8::6", "2a01:4f8::6", "fe80::1%eth0", "fe80::1%eth0",
                                                         "fe80::2%eth1", "fd00::1", "fd00::1", "fd00::2"]]
        self.assertEqual([p for p in opened if isinstance(p, ClosedAtOnce)], [])
        for protocol in opened:
            self.close(protocol)
        self.assertEqual(dict(cap.open_by_address), {})

    def test_reasons_logged_apart(self):
        """
        A server that fills up within a period of per-address refusals gets
        its own first line: the two reasons are paced apart.
        """
        cap = ConnectionCap(3, self.clock, per_address=2)
        factory = cap.wrap(Factory.forProtocol(Recorder))
        with capturedLogs() as events:
            for host in ["203.0.113.9", "203.0.113.9", "203.0.113.9", "10.0.0.1", "10.0.0.2"]:
                accept(factory, host)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("refused a connection from 203.0.113.9: it holds 2 connections", lines[0])
        self.assertIn("refused a connection from 10.0.0.2: 3 connections open, MAX_CONNECTIONS is 3", lines[1])
        self.assertEqual(dict(cap.refused_by_reason), {"per_address": 1, "max_connections": 1})
        self.clock.advance(10)

    def test_per_address_exempt(self):
        """
        Loopback addresses, unix: sockets (no address) and those in the
        exempt list (BAN_ALLOW) are not held to the per-address limit; the
        count forgets closed addresses.
        """
        from twisted.internet.address import UNIXAddress

        cap = ConnectionCap(100, self.clock, per_address=1, exempt=["192.168.1.0/24"])
        factory = cap.wrap(Factory.forProtocol(Recorder))
        opened = [accept(factory, host)[0] for host in ["127.0.0.1", "127.0.0.1", "::1", "::1",
                                                        "192.168.1.7", "192.168.1.7"]]
        opened += [factory.buildProtocol(UNIXAddress(b"/run/smartplug.sock")) for _ in range(2)]
        self.assertFalse([p for p in opened if isinstance(p, ClosedAtOnce)])
        for protocol in opened:
            self.close(protocol)
        self.assertEqual((cap.open, dict(cap.open_by_address)), (0, {}))

    def test_full_names_the_holder(self):
        """
        When the server is full, the refusal names the address holding a
        tenth or more of the connections, not only the refused one.
        """
        cap = ConnectionCap(3, self.clock)
        factory = cap.wrap(Factory.forProtocol(Recorder))
        for _ in range(3):
            accept(factory, "203.0.113.9")
        with capturedLogs() as events:
            accept(factory, "192.168.1.50")
        self.assertIn(
            "refused a connection from 192.168.1.50: 3 connections open, MAX_CONNECTIONS is 3; 3 of them from "
            "203.0.113.9",
            formatEvent(events[0]),
        )
        self.clock.advance(10)

    def test_wrapped_factory_error_releases(self):
        """
        A listener factory that raises (or returns None) does not keep a
        place in the count.
        """

        class Broken(Factory):
            def buildProtocol(self, addr):
                raise RuntimeError("broken")

        class Declines(Factory):
            def buildProtocol(self, addr):
                return None

        address = IPv4Address("TCP", "10.0.0.1", 5000)
        self.assertRaises(RuntimeError, self.cap.wrap(Broken()).buildProtocol, address)
        self.assertIsNone(self.cap.wrap(Declines()).buildProtocol(address))
        self.assertEqual(self.cap.open, 0)

    def test_from_settings(self):
        """
        The cap is MAX_CONNECTIONS.
        """
        from smartplug_backend.config import settings_from

        self.assertEqual(ConnectionCap.from_settings(settings_from({"MAX_CONNECTIONS": 7}), self.clock).limit, 7)
        cap = ConnectionCap.from_settings(
            settings_from({"MAX_CONNECTIONS_PER_ADDRESS": None, "BAN_ALLOW": ["10.0.0.1"]}), self.clock
        )
        self.assertIsNone(cap.per_address)
        self.assertEqual(ConnectionCap.from_settings(settings_from({}), self.clock).per_address, 500)
