"""
The device WebSocket (SPEC 2): lamps and other always-connected devices.

A device proves itself with the shared secret as its first message
(SPEC 2.1), then gets the display packets, may send plug reports and must
keep talking (SPEC 2.2).  Both timeouts run on the factory's clock: Autobahn's
own timers run on the global reactor, which tests cannot drive.
"""

import hmac

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..core.limits import MAX_UNSENT
from ..core.reports import InvalidReport, parse_report
from .base import LenientServerProtocol, LimitedServerFactory, peer_address, peer_host
from .origins import ANY_ORIGIN

# Close codes Autobahn sends for what the peer broke: a malformed frame, a
# message over the limit (SPEC 6.3's 1009).  Text that is not UTF-8 (1007)
# is read by DeviceProtocol itself (see DeviceFactory).
_BROKEN_BY_PEER = frozenset({1002, 1007, 1009})

# Autobahn's sendClose() only takes 1000 and 3000-4999; 1008 is what SPEC 2.1
# asks for, so the close frame is sent one level down.
POLICY_VIOLATION = 1008
NORMAL = 1000

# Before onOpen the state is None: nothing to log or count yet.
_WAITING, _AUTHENTICATED, _CLOSING = "waiting", "authenticated", "closing"


class DeviceProtocol(LenientServerProtocol):
    """
    One device connection: waiting for the secret, then authenticated.
    """

    _log = Logger(namespace="smartplug_backend.ws.devices")
    _peer = "?"
    _state = None
    _timer = None
    _why = None
    connected_at = None
    last_heard = None

    def onConnect(self, request):
        try:
            self._peer = peer_host(self.transport)
        except Exception:
            self._log.failure("device handshake from {peer}", peer=self._peer)
        return None

    def onOpen(self):
        try:
            self._state = _WAITING
            self._log.info("device connected from {peer}", peer=self._peer)
            self._timer = self.factory.clock.callLater(self.factory.auth_timeout, self._auth_timed_out)
        except Exception:
            self._log.failure("device connection from {peer}", peer=self._peer)

    def onMessage(self, payload, isBinary):
        try:
            if self._state == _WAITING:
                self._authenticate(payload, isBinary)
            elif self._state == _AUTHENTICATED:
                self._alive()
                self._handle(payload, isBinary)
        except Exception:
            self._log.failure("device message from {peer}", peer=self._peer)

    def _authenticate(self, payload: bytes, isBinary: bool) -> None:
        self._timer.cancel()
        if self.factory.guard.banned(self._peer):
            # Opened before the ban: a ban holds on it too, or an attacker
            # would guess once per connection opened beforehand.
            return self._refuse("secret refused, not checked")
        if isBinary:
            return self._refuse("binary first message")
        if not hmac.compare_digest(payload, self.factory.secret):
            return self._refuse("wrong secret")
        self._state = _AUTHENTICATED
        self.connected_at = self.last_heard = self.factory.clock.seconds()
        self.factory.devices.add(self)
        self.factory.changed()
        # Listed on the PiCloud info socket (SPEC 3.4) once it is a device:
        # a stranger who only opened a socket is not one.
        self._hub.pubsub.connected(self, "device", peer_address(self.transport), kind="device")
        self._log.info("device {peer} authenticated", peer=self._peer)
        self.sendMessage(b"ok")
        if self._hub.display_known:
            # Else the node has not loaded the state yet (its shared store
            # was unreachable at start): the lamp keeps what it shows until
            # the loaded display reaches it.
            self.sendMessage(self._hub.display().packet().encode("ascii"))
        self._timer = self.factory.clock.callLater(self.factory.idle_timeout, self._idle_timed_out)

    def _auth_timed_out(self) -> None:
        if self.state != self.STATE_OPEN:
            return  # the device is closing by itself: no failure to count
        self._refuse(f"no secret within {self.factory.auth_timeout} seconds")

    def _refuse(self, reason: str) -> None:
        # The reason names what was wrong, never what the device sent.
        self.factory.guard.failure(self._peer, f"device port: {reason}", kind="device_secret")
        self._close(POLICY_VIOLATION, "authentication failed", f"refused ({reason})")

    def _close(self, code: int, text: str, why: str) -> None:
        self._state = _CLOSING
        self._why = why
        # No more packets for a device on its way out.
        self._forget()
        self.sendCloseFrame(code=code, reasonUtf8=text.encode("utf-8"), isReply=False)

    def _forget(self) -> None:
        if self in self.factory.devices:
            self.factory.devices.discard(self)
            self.factory.changed()

    def _alive(self, tell: bool = True) -> None:
        self._timer.reset(self.factory.idle_timeout)
        self.last_heard = self.factory.clock.seconds()
        if tell:
            self.factory.changed()

    def _idle_timed_out(self) -> None:
        if self.state != self.STATE_OPEN:
            return
        self._close(NORMAL, "idle timeout", f"silent for {self.factory.idle_timeout} seconds")

    def _handle(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            # Neither a ping nor a report: refused as invalid, as text is.
            self._hub.count_refused("device", "invalid")
            return self._ignore("binary message")
        if payload == b"ping":
            return self.sendMessage(b"pong")
        try:
            plug_id, value = parse_report(payload)
        except InvalidReport as e:
            self._hub.count_refused("device", "invalid")
            return self._ignore(f"not a ping or a plug report: {e}")
        self._hub.report(plug_id, value, "device", self._peer)

    def _ignore(self, reason: str) -> None:
        self._log.warn("ignored device message from {peer}: {reason}", peer=self._peer, reason=reason)

    def dataReceived(self, data: bytes) -> None:
        # Any byte is a sign of life (SPEC 2.2: silence is "no frame of any
        # kind"), not only a whole message: a long message sent in slow
        # frames, or one frame trickling in, is not silence.
        if self._state == _AUTHENTICATED:
            # The dashboard hears of it with the message, in onMessage.
            self._alive(tell=False)
        super().dataReceived(data)

    def onPing(self, payload):
        # Before the secret a device gets nothing but the close (SPEC 2.1).
        if self._state == _AUTHENTICATED:
            self._alive()
            super().onPing(payload)

    def onPong(self, payload):
        if self._state == _AUTHENTICATED:
            self._alive()

    def onClose(self, wasClean, code, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._forget()
        self._hub.pubsub.disconnected(self)
        state, self._state = self._state, None
        if state is None:
            return  # never opened, or already told
        if state == _WAITING and self.closedByMe and self.localCloseCode in _BROKEN_BY_PEER:
            # Autobahn refused the first message itself (SPEC 2.1: anything
            # but the secret counts; RFC 6455 fixes the code it closes with).
            self.factory.guard.failure(
                self._peer, f"device port: broken first message (code {self.localCloseCode})", kind="device_secret"
            )
        why = self._why
        if why is None:
            why = self.how_closed(wasClean, code, reason, "the device")
        self._log.info("device disconnected from {peer}: {why}", peer=self._peer, why=why)

    def slow_peer_cut_off(self) -> None:
        self._why = f"too slow: over {MAX_UNSENT // 2**20} MiB unsent; cut off"


class DeviceFactory(LimitedServerFactory):
    """
    The device WebSocket listener.  Subscribe L{send_packet} to the hub's
    display changes.

    @param secret: C{AUTH_SECRET}; a device's first message must equal it.
    @param guard: counts failed authentications (L{smartplug_backend.server.guard.Guard}).
    @param clock: runs both timeouts and the handshake deadline.
    """

    protocol = DeviceProtocol
    origin_options = ANY_ORIGIN
    _log = Logger(namespace="smartplug_backend.ws.devices")
    noisy = False  # the listener logs where it listens, readably

    def __init__(self, hub, guard, secret: str, clock: IReactorTime, auth_timeout: float = 10, idle_timeout: float = 30, url=None) -> None:
        super().__init__(hub, url, clock)
        self.guard = guard
        self.secret = secret.encode("utf-8")
        self.auth_timeout = auth_timeout
        self.idle_timeout = idle_timeout
        self.devices: set = set()
        self._watchers: list = []
        # Devices keep themselves alive (SPEC 2.2); the idle timeout finds
        # the silent ones.  Text that is not UTF-8 is read here, not closed
        # with 1007 by Autobahn: as a first message it is not the secret
        # (1008, SPEC 2.1), after it it is neither a ping nor a report
        # (ignored, SPEC 2.2).
        self.setProtocolOptions(autoPingInterval=0, utf8validateIncoming=False)

    @classmethod
    def from_settings(cls, settings, hub, guard, clock: IReactorTime, url=None) -> "DeviceFactory":
        """
        The factory configured by C{AUTH_SECRET} and the device timeouts.
        """
        return cls(hub, guard, settings.AUTH_SECRET, clock, settings.DEVICE_AUTH_TIMEOUT, settings.DEVICE_IDLE_TIMEOUT, url)

    def watch(self, listener) -> None:
        """
        Call C{listener()} whenever a device authenticates, leaves, or is
        heard from (the dashboard's list of devices).
        """
        self._watchers.append(listener)

    def changed(self) -> None:
        """
        Tell the watchers that the devices changed.
        """
        for listener in list(self._watchers):
            try:
                listener()
            except Exception:
                self._log.failure("device listener {listener!r} failed", listener=listener)

    def connected(self) -> list[dict]:
        """
        The authenticated devices: address, since when and last heard (in
        the clock's seconds), oldest first.
        """
        devices = sorted(self.devices, key=lambda d: d.connected_at or 0)
        return [
            {"address": peer_address(d.transport), "connected_at": d.connected_at, "last_heard": d.last_heard}
            for d in devices
        ]

    def send_packet(self, event) -> None:
        """
        Send a hub L{DisplayEvent}'s packet to every authenticated device:
        serialised and framed once, whatever the number of devices.
        """
        self.send_to_all(self.devices, event.packet.encode("ascii"))
