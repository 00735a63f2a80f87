"""
Bans (SPEC 6.2) and API key comparison, with a fake clock.
"""

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.config import settings_from
from smartplug_backend.server import guard as guard_module
from smartplug_backend.server.guard import Guard, GuardedFactory, key_matches, normal_address

STRANGER = "203.0.113.9"


def messages(events, word: str) -> list:
    """
    The formatted log messages among C{events} that contain C{word}.
    """
    return [m for m in map(formatEvent, events) if word in m]


class BanTests(SynchronousTestCase):
    """
    Failures per address, bans after BAN_AFTER of them, expiry, allow list.
    """

    def setUp(self):
        self.clock = Clock()
        self.guard = Guard(self.clock, ban_after=3, ban_seconds=60, allow=["192.168.1.0/24", "10.0.0.7"])

    def fail_auth(self, host=STRANGER, times=1):
        for _ in range(times):
            banned = self.guard.failure(host, "test")
        return banned

    def test_count_then_ban(self):
        """
        Two failures do not ban; the third bans that address and no other.
        """
        self.assertFalse(self.fail_auth(times=2))
        self.assertEqual(self.guard.failures(STRANGER), 2)
        self.assertFalse(self.guard.banned(STRANGER))
        self.assertTrue(self.guard.admits(STRANGER))
        self.assertTrue(self.fail_auth())
        self.assertTrue(self.guard.banned(STRANGER))
        self.assertFalse(self.guard.admits(STRANGER))
        self.assertTrue(self.guard.admits("203.0.113.10"))

    def test_expiry(self):
        """
        A ban lasts BAN_SECONDS, then the address is admitted again with a
        clean slate: one more failure does not ban it again.
        """
        self.fail_auth(times=3)
        self.clock.pump([1] * 59)
        self.assertTrue(self.guard.banned(STRANGER))
        self.clock.pump([1])
        self.assertFalse(self.guard.banned(STRANGER))
        self.assertTrue(self.guard.admits(STRANGER))
        self.assertFalse(self.fail_auth())

    def test_failures_forgotten(self):
        """
        Failures spread out more than BAN_SECONDS apart never add up to a ban.
        """
        for _ in range(5):
            self.assertFalse(self.fail_auth())
            self.clock.pump([30, 29])
            self.assertEqual(self.guard.failures(STRANGER), 1)
            self.clock.advance(1)
            self.assertEqual(self.guard.failures(STRANGER), 0)
        self.assertFalse(self.guard.banned(STRANGER))

    def test_failure_while_banned(self):
        """
        Failures during a ban (from connections opened before it) do not
        extend it.
        """
        self.fail_auth(times=3)
        self.clock.advance(30)
        self.assertTrue(self.fail_auth(times=5))
        self.clock.advance(30)
        self.assertFalse(self.guard.banned(STRANGER))

    def test_failure_while_banned_logged_and_listed(self):
        """
        A failure during a ban is logged, listed among the recent failures
        and counted for the metrics, like any other (review finding 1).
        """
        self.fail_auth(times=3)
        with capturedLogs() as events:
            self.assertTrue(self.guard.failure(STRANGER, "dashboard login", kind="dashboard_login"))
        self.assertEqual(messages(events, "during its ban"),
                         [f"authentication failure from {STRANGER} during its ban: dashboard login"])
        self.assertEqual(self.guard.recent_failures()[-1].reason, "dashboard login (during its ban)")
        self.assertEqual(len(self.guard.recent_failures()), 4)
        self.assertEqual(self.guard.failure_counts["dashboard_login"], 1)
        [ban] = self.guard.bans()
        self.assertEqual(ban.until, 60)

    def test_stale_failures_swept(self):
        """
        Addresses whose failures are older than a ban are dropped once many
        addresses are remembered, so strangers cannot grow memory forever.
        """
        self.patch(guard_module, "_SWEEP_AT", 10)
        for n in range(11):
            self.fail_auth(f"198.51.100.{n}")
        self.assertEqual(len(self.guard._failures), 11)
        self.clock.advance(60)
        self.fail_auth("198.51.100.200")
        self.assertEqual(list(self.guard._failures), ["198.51.100.200"])

    def test_sweeps_amortised_under_a_flood(self):
        """
        A flood of failures from ever new addresses, all recent, sweeps
        only each time their number has doubled, not at every failure
        (which made each one cost the whole table).
        """
        self.patch(guard_module, "_SWEEP_AT", 10)
        sweeps = []
        real = self.guard._sweep
        self.patch(self.guard, "_sweep", lambda now: sweeps.append(now) or real(now))
        for n in range(1000):
            self.guard.failure(f"2001:db8::{n:x}", "test")
        self.assertEqual(len(self.guard._failures), 1000)
        self.assertLessEqual(len(sweeps), 8)

    def test_allow_list(self):
        """
        Addresses in BAN_ALLOW, given alone or as a network, are never banned,
        however many failures they make.
        """
        for host in ["192.168.1.64", "10.0.0.7", "::ffff:192.168.1.2"]:
            self.assertFalse(self.fail_auth(host, times=10))
            self.assertTrue(self.guard.admits(host))
        self.assertTrue(self.fail_auth("10.0.0.8", times=3))

    def test_allow_list_in_mapped_spelling(self):
        """
        A BAN_ALLOW entry written as an IPv4-mapped IPv6 address holds for
        that IPv4 address, on either kind of socket.
        """
        guard = Guard(self.clock, ban_after=1, ban_seconds=60, allow=["::ffff:192.168.5.5"])
        for host in ["192.168.5.5", "::ffff:192.168.5.5"]:
            self.assertFalse(guard.failure(host, "test"))
            self.assertTrue(guard.allowed(host))
        self.assertTrue(guard.failure("192.168.5.6", "test"))

    def test_ipv4_mapped(self):
        """
        A ban earned over IPv4 holds for the same address on a dual-stack
        IPv6 listener, and the other way round.
        """
        self.fail_auth("::ffff:" + STRANGER, times=2)
        self.assertTrue(self.fail_auth(STRANGER))
        self.assertFalse(self.guard.admits("::ffff:" + STRANGER))

    def test_logged_once(self):
        """
        A ban and its lifting are logged once each, with the address; the
        lift says how many connections were refused.
        """
        with capturedLogs() as events:
            self.fail_auth(times=3)
            self.guard.failure(STRANGER, "test")
            self.guard.admits(STRANGER)
            self.guard.admits(STRANGER)
            self.clock.pump([60, 60])
        self.assertEqual(
            messages(events, "banned"),
            [f"banned {STRANGER} for 60 seconds after 3 authentication failures"],
        )
        self.assertEqual(
            messages(events, "lifted"),
            [f"ban on {STRANGER} lifted after 60 seconds (2 connections refused)"],
        )
        with capturedLogs() as events:
            self.fail_auth(times=3)
            self.guard.admits(STRANGER)
            self.guard.lift(STRANGER, "anna")
        self.assertEqual(messages(events, "lifted"), [f"ban on {STRANGER} lifted by anna (1 connection refused)"])

    def test_shared_bans(self):
        """
        With several nodes (SPEC 11), a ban this guard makes is shared (with
        its end and length), and a ban shared by another node holds here for
        the time it was given, is logged, and is lifted then; an address in
        BAN_ALLOW is not banned that way either.
        """
        class Board:
            shared = []
            watchers = []
            failures = []

            def watch(self, ban, failed, lifted, held):
                self.watchers.append(ban)
                self.held = held

            def failed(self, host):
                self.failures.append(host)

            def share(self, host, until, seconds):
                self.shared.append((host, until, seconds))

        board = Board()
        guard = Guard(self.clock, ban_after=1, ban_seconds=60, allow=["10.0.0.7"], shared=board)
        self.assertEqual(board.watchers, [guard.ban])
        self.clock.advance(5)
        guard.failure(STRANGER, "test")
        self.assertEqual(board.shared, [(STRANGER, 65, 60)])
        # What this node holds, for the bans Redis lost to be shared again.
        self.assertEqual(board.held(), [(STRANGER, 65)])
        with capturedLogs() as events:
            board.watchers[0]("198.51.100.1", 20.0)
            board.watchers[0]("10.0.0.7", 20.0)
        self.assertEqual((guard.banned("198.51.100.1"), guard.banned("10.0.0.7")), (True, False))
        self.assertEqual(messages(events, "banned"), ["banned 198.51.100.1 for 20 seconds by another node"])
        self.clock.pump([10, 10])
        self.assertFalse(guard.banned("198.51.100.1"))
        self.assertEqual((len(board.shared), board.failures), (1, [STRANGER]))

    def test_failures_elsewhere_count(self):
        """
        Failures other nodes counted (SPEC 11) count here too: with this
        node's own, BAN_AFTER of them ban the address, logged once; they
        are not shared again, nor counted for BAN_ALLOW addresses.
        """
        with capturedLogs() as events:
            self.guard.failed_elsewhere(STRANGER)
            self.guard.failed_elsewhere("10.0.0.7")
            self.assertFalse(self.fail_auth())
            self.guard.failed_elsewhere(STRANGER)
        self.assertTrue(self.guard.banned(STRANGER))
        self.assertEqual(self.guard.failures("10.0.0.7"), 0)
        self.assertEqual(messages(events, "banned"), [f"banned {STRANGER} for 60 seconds after 3 authentication failures"])

    def test_from_settings(self):
        """
        The guard takes BAN_AFTER, BAN_SECONDS and BAN_ALLOW from the settings.
        """
        settings = settings_from({"BAN_AFTER": 1, "BAN_SECONDS": 5, "BAN_ALLOW": ["127.0.0.1"]})
        guard = Guard.from_settings(settings, self.clock)
        self.assertFalse(guard.failure("127.0.0.1", "test"))
        self.assertTrue(guard.failure(STRANGER, "test"))
        self.clock.advance(5)
        self.assertFalse(guard.banned(STRANGER))


class Recorder(Protocol):
    """
    Records whether it was connected.
    """

    made = False
    lost = False

    def connectionMade(self):
        self.made = True

    def connectionLost(self, reason):
        self.lost = True


class GuardedFactoryTests(SynchronousTestCase):
    """
    A listener's factory behind the guard.
    """

    def setUp(self):
        self.guard = Guard(Clock(), ban_after=1)
        self.inner = Factory.forProtocol(Recorder)
        self.factory = self.guard.wrap(self.inner)

    def connect(self, address):
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_admitted(self):
        """
        A peer that is not banned gets the wrapped factory's protocol.
        """
        protocol, transport = self.connect(IPv4Address("TCP", STRANGER, 1234))
        self.assertIsInstance(protocol, Recorder)
        self.assertTrue(protocol.made)
        self.assertFalse(transport.disconnecting)

    def test_refused(self):
        """
        A banned peer's connection is aborted as soon as it is made, and the
        wrapped factory never builds a protocol for it; IPv6 peers too.
        """
        self.guard.failure(STRANGER, "test")
        self.guard.failure("2001:db8::1", "test")
        for address in [IPv4Address("TCP", STRANGER, 1234), IPv6Address("TCP", "2001:db8::1", 1234)]:
            protocol, transport = self.connect(address)
            self.assertNotIsInstance(protocol, Recorder)
            self.assertTrue(transport.disconnected)
            self.assertEqual(transport.value(), b"")

    def test_start_stop(self):
        """
        Starting and stopping the guarded factory starts and stops the
        wrapped one (Sites and WebSocket factories set up there).
        """
        self.factory.doStart()
        self.assertEqual(self.inner.numPorts, 1)
        self.factory.doStop()
        self.assertEqual(self.inner.numPorts, 0)
        self.assertIsInstance(self.factory, GuardedFactory)


class CloseOnBanTests(SynchronousTestCase):
    """
    A ban closes the open connections of a listener wrapped with
    C{close_on_ban} (the HTTP port's keep-alive connections; review
    finding 1), not those of the others.
    """

    def setUp(self):
        self.clock = Clock()
        self.guard = Guard(self.clock, ban_after=2, ban_seconds=60)
        self.http = self.guard.wrap(Factory.forProtocol(Recorder), close_on_ban=True)
        self.ws = self.guard.wrap(Factory.forProtocol(Recorder))

    def connect(self, factory, host):
        address = IPv4Address("TCP", host, 1234)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_ban_closes_open_http_connections(self):
        """
        When an address is banned, its open HTTP connections are closed
        (after the answer that made the ban had a moment to be written);
        its WebSocket connections and other addresses' connections stay.
        """
        _, mine = self.connect(self.http, STRANGER)
        _, mine_too = self.connect(self.http, "::ffff:" + STRANGER)
        _, socket = self.connect(self.ws, STRANGER)
        _, other = self.connect(self.http, "198.51.100.1")
        self.assertEqual(self.guard.open_connections(STRANGER), 2)
        self.guard.failure(STRANGER, "test")
        self.guard.failure(STRANGER, "test")
        self.assertFalse(mine.disconnecting)
        with capturedLogs() as events:
            self.clock.advance(guard_module.CLOSE_AFTER_BAN)
        self.assertTrue(mine.disconnecting)
        self.assertTrue(mine_too.disconnecting)
        self.assertFalse(socket.disconnecting)
        self.assertFalse(other.disconnecting)
        self.assertEqual(len(messages(events, "closing 2 open HTTP connection(s) of banned " + STRANGER)), 1)

    def test_proven_connection_stays(self):
        """
        A connection whose protocol has proven a credential (a logged-in
        dashboard page's live socket, which takes the HTTP channel's place)
        stays open through a ban of its address, and the log says so; the
        address's other HTTP connections close.
        """
        page, page_transport = self.connect(self.http, STRANGER)
        _, plain = self.connect(self.http, STRANGER)
        page.wrapped.proven = True
        self.guard.ban(STRANGER, 30)
        with capturedLogs() as events:
            self.clock.advance(guard_module.CLOSE_AFTER_BAN)
        self.assertTrue(plain.disconnecting)
        self.assertFalse(page_transport.disconnecting)
        self.assertEqual(len(messages(
            events, f"closing 1 open HTTP connection(s) of banned {STRANGER}; 1 logged-in dashboard page(s) stay open"
        )), 1)
        # With only the page open, the log says it stays.
        page_too, page_too_transport = self.connect(self.http, "198.51.100.7")
        page_too.wrapped.proven = True
        self.guard.ban("198.51.100.7", 30)
        with capturedLogs() as events:
            self.clock.advance(guard_module.CLOSE_AFTER_BAN)
        self.assertFalse(page_too_transport.disconnecting)
        self.assertEqual(len(messages(events, "1 logged-in dashboard page(s) of banned 198.51.100.7 stay open")), 1)

    def test_ban_from_another_node_closes_too(self):
        """
        A ban decided by another node (SPEC 11) closes the connections too.
        """
        _, mine = self.connect(self.http, STRANGER)
        self.guard.ban(STRANGER, 30)
        self.clock.advance(guard_module.CLOSE_AFTER_BAN)
        self.assertTrue(mine.disconnecting)

    def test_closed_connections_forgotten(self):
        """
        A connection that closes is no longer tracked; the wrapped protocol
        hears of the close; a lifted ban closes nothing more.
        """
        protocol, _ = self.connect(self.http, STRANGER)
        protocol.connectionLost(None)
        self.assertTrue(protocol.wrapped.lost)
        self.assertEqual(self.guard.open_connections(STRANGER), 0)
        _, late = self.connect(self.http, STRANGER)
        self.guard.ban(STRANGER, 30)
        self.guard.lift(STRANGER, "test")
        self.clock.advance(guard_module.CLOSE_AFTER_BAN)
        self.assertFalse(late.disconnecting)

    def test_banned_from_thread(self):
        """
        L{Guard.banned_from_thread} follows bans and lifts, in every spelling
        of the address.
        """
        self.assertFalse(self.guard.banned_from_thread(STRANGER))
        self.guard.ban(STRANGER, 30)
        self.assertTrue(self.guard.banned_from_thread("::ffff:" + STRANGER))
        self.guard.lift(STRANGER, "test")
        self.assertFalse(self.guard.banned_from_thread(STRANGER))
        self.guard.ban(STRANGER, 30)
        self.clock.advance(30)
        self.assertFalse(self.guard.banned_from_thread(STRANGER))


class KeyTests(SynchronousTestCase):
    """
    The API key comparison shared by every keyed route.
    """

    def test_no_key_required(self):
        """
        With no API_KEY, any key or none is accepted.
        """
        self.assertTrue(key_matches(None, None))
        self.assertTrue(key_matches(None, "anything"))

    def test_key_required(self):
        """
        With an API_KEY, only that exact key is accepted.
        """
        self.assertTrue(key_matches("s3cret-ké", "s3cret-ké"))
        for given in [None, "", "s3cret-k", "S3CRET-KÉ", "s3cret-ké "]:
            self.assertFalse(key_matches("s3cret-ké", given), given)


class NormalAddressTests(SynchronousTestCase):
    """
    One spelling per address.
    """

    def test_spellings(self):
        """
        IPv4-mapped IPv6 becomes IPv4, IPv6 is compressed, and what is not an
        address is left alone.
        """
        self.assertEqual(normal_address("::ffff:10.0.0.1"), "10.0.0.1")
        self.assertEqual(normal_address("2001:0db8:0:0::1"), "2001:db8::1")
        self.assertEqual(normal_address("10.0.0.1"), "10.0.0.1")
        self.assertEqual(normal_address("?"), "?")


class DashboardViewTests(SynchronousTestCase):
    """
    What the dashboard reads and does through the guard: current bans,
    recent failures, lifting a ban, and being told of changes.
    """

    def setUp(self):
        self.clock = Clock()
        self.guard = Guard(self.clock, ban_after=2, ban_seconds=60)
        self.changes = []
        self.guard.watch(lambda: self.changes.append(self.clock.seconds()))

    def test_bans_and_failures_listed(self):
        """
        A ban is listed with its end and failures; every failure is kept
        with its time, address and reason (most recent last), and each
        failure, ban and expiry is told.
        """
        self.guard.failure("::ffff:10.0.0.1", "wrong API key")
        self.clock.advance(1)
        self.guard.failure("10.0.0.1", "device port: wrong secret")
        self.guard.admits("10.0.0.1")
        self.assertEqual(self.guard.bans(), [guard_module.Ban("10.0.0.1", 61, 1, 2)])
        self.assertEqual(
            self.guard.recent_failures(),
            [guard_module.Failure(0, "10.0.0.1", "wrong API key"), guard_module.Failure(1, "10.0.0.1", "device port: wrong secret")],
        )
        self.assertEqual(self.changes, [0, 1, 1])
        self.clock.advance(60)
        self.assertEqual(self.guard.bans(), [])
        self.assertEqual(self.changes, [0, 1, 1, 61])

    def test_recent_failures_bounded(self):
        """
        Only the last RECENT_FAILURES failures are kept.
        """
        for i in range(guard_module.RECENT_FAILURES + 3):
            self.guard.failure(f"10.0.{i // 200}.{i % 200}", "test")
        failures = self.guard.recent_failures()
        self.assertEqual(len(failures), guard_module.RECENT_FAILURES)
        self.assertEqual(failures[0].address, "10.0.0.3")

    def test_lift(self):
        """
        Lifting a ban admits the address at once, cancels its timer, logs
        who lifted it, and is told; an address not banned is not lifted.
        """
        self.guard.failure("10.0.0.1", "test")
        self.guard.failure("10.0.0.1", "test")
        with capturedLogs() as events:
            self.assertTrue(self.guard.lift("10.0.0.1", "127.0.0.1 (dashboard: anna)"))
        self.assertTrue(self.guard.admits("10.0.0.1"))
        self.assertEqual(self.guard.bans(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(messages(events, "lifted by 127.0.0.1 (dashboard: anna)")), 1)
        self.assertFalse(self.guard.lift("10.0.0.1", "me"))
        self.assertEqual(len(self.changes), 4)  # two failures, the ban, the lift
