"""
The app WebSocket port: the PlugBuddy protocol (SPEC 4.1) on every path, and
PiCloud's routes (SPEC 3) on the paths named in L{picloud.ROUTES}.

Thin adapters between Autobahn and the hub: status requests read the hub,
reports are broadcast to every PlugBuddy connection serialised once, PiCloud
messages go to the hub's pub/sub registry.
"""

from autobahn.websocket.types import ConnectionDeny
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..core.limits import APP_PING_INTERVAL, APP_PING_TIMEOUT, MAX_UNSENT
from ..core.reports import broadcast_bytes
from ..server.guard import BANNED
from . import picloud
from .base import LenientServerProtocol, LimitedServerFactory, peer_address, peer_host
from .origins import ANY_ORIGIN


class AppProtocol(LenientServerProtocol):
    """
    One app connection; C{_route} is C{"plugbuddy"} or a PiCloud route.
    """

    _log = Logger(namespace="smartplug_backend.ws.apps")
    _peer = "?"
    _route = "plugbuddy"
    _client_name = ""
    _opened = False
    _info_loop = None

    def onConnect(self, request):
        self._peer = peer_host(self.transport)
        self._route = picloud.ROUTES.get(request.path, "plugbuddy")
        key, name = picloud.credentials(*self.text_of(request))
        guard = self.factory.guard
        if guard is not None and guard.banned(self._peer):
            # A connection opened before the ban: the ban holds on it too,
            # and a key it brings is not even checked (an attacker would
            # otherwise guess once per connection opened beforehand).
            if key is not None:
                guard.failure(self._peer, f"API key for {request.path}: refused, not checked", kind="api_key")
            else:
                self._log.info("refused {path} from banned {peer}", path=request.path, peer=self._peer)
            raise ConnectionDeny(403, BANNED)
        if self._route == "plugbuddy":
            self._client_name = name or "plugbuddy"
            return None
        # PiCloud's clients never answer pings in time (SPEC 3.5): the Python
        # one never reads its publish socket, and its subscriber reads only
        # when asked.  No pings at all on these routes (PiCloud sent none);
        # TCP keepalive, which the peer's kernel answers, finds dead peers.
        # Autobahn starts its pings after onConnect, reading these.
        self.autoPingInterval = 0
        self.autoPingTimeout = 0
        try:
            self._client_name = picloud.authenticate(
                self.factory.api_key, key, name, needs_name=self._route in ("subscribe", "publish")
            )
        except picloud.Denied as denied:
            self._log.warn(
                "refused {path} from {peer}: {reason}", path=request.path, peer=self._peer, reason=str(denied)
            )
            if denied.bad_key and self.factory.guard is not None:
                self.factory.guard.failure(self._peer, f"wrong API key for {request.path}", kind="api_key")
            self._deny_body = denied.body
            raise ConnectionDeny(401, str(denied)) from None
        return None

    def onOpen(self):
        try:
            self._opened = True
            factory = self.factory
            # Info sockets are watchers, not clients: PiCloud does not list
            # them in its own frames (SPEC 3.4).
            if self._route != "info":
                self._hub.pubsub.connected(self, self._client_name, peer_address(self.transport))
            if self._route == "plugbuddy":
                factory.clients.add(self)
            elif self._route == "info":
                self._info_loop = LoopingCall(self._send_info)
                self._info_loop.clock = factory.clock
                self._info_loop.start(factory.info_interval, now=False).addErrback(
                    lambda f: self._log.failure("info frames to {peer}", f, peer=self._peer)
                )
            self._log.info(
                "app connected from {peer} ({route}{name})",
                peer=self._peer, route=self._route,
                name=f", {self._client_name}" if self._route != "plugbuddy" and self._client_name else "",
            )
        except Exception:
            self._log.failure("app connection from {peer}", peer=self._peer)

    def _send_info(self) -> None:
        self.sendMessage(self._hub.pubsub.info_frame())

    def onMessage(self, payload, isBinary):
        try:
            if isBinary:
                return self._ignore("binary message")
            try:
                message = picloud.decode(payload)
            except picloud.NotJSON as e:
                return self._ignore(str(e))
            hub = self._hub
            if self._route == "plugbuddy":
                problem = self._status(message)
            elif self._route == "subscribe":
                problem = picloud.handle_subscriber(hub.pubsub, self, message)
            elif self._route == "publish":
                problem = picloud.handle_publisher(hub, message, self._peer)
            else:
                problem = "the info socket only sends"
            if problem:
                self._ignore(problem)
        except Exception:
            self._log.failure("app message from {peer}", peer=self._peer)

    def _status(self, message):
        if not isinstance(message, dict) or not isinstance(message.get("status"), str):
            return 'expected {"status": "<plug id>"}'
        plug = self._hub.plug(message["status"])
        if plug is not None:
            self.sendMessage(broadcast_bytes(plug.id, plug.value))
        return None

    def _ignore(self, reason: str) -> None:
        self._log.warn("ignored app message from {peer}: {reason}", peer=self._peer, reason=reason)

    def slow_peer_cut_off(self) -> None:
        self._log.warn(
            "app client {peer} is too slow: over {mib} MiB unsent; dropping it (1008)",
            peer=self._peer, mib=MAX_UNSENT // 2**20,
        )

    def onClose(self, wasClean, code, reason):
        if not self._opened:
            return
        self._opened = False
        factory = self.factory
        factory.clients.discard(self)
        self._hub.pubsub.disconnected(self)
        if self._info_loop is not None and self._info_loop.running:
            self._info_loop.stop()
        self._log.info(
            "app disconnected from {peer}: {how}", peer=self._peer, how=self.how_closed(wasClean, code, reason, "the app")
        )


class AppFactory(LimitedServerFactory):
    """
    The app WebSocket listener.  Subscribe L{broadcast} to the hub, and give
    L{send_to_all} to the hub's pub/sub C{deliver_with}.

    @param api_key: PiCloud's API key, or C{None} for none.
    @param clock: drives the info socket's frames and the handshake deadline.
    @param guard: counts wrong API keys toward bans
        (L{smartplug_backend.server.guard.Guard}), or C{None}.
    """

    protocol = AppProtocol
    origin_options = ANY_ORIGIN
    noisy = False  # the listener logs where it listens, readably

    def __init__(self, hub, api_key=None, info_interval=5, clock=None, guard=None, url=None):
        super().__init__(hub, url, clock)
        self.api_key = api_key
        self.info_interval = info_interval
        self.guard = guard
        self.clients: set = set()
        self.setProtocolOptions(
            # Phones vanish without a close; pings find the dead connections.
            # Autobahn|Android and every browser answer pings by themselves;
            # PiCloud's routes turn them off per connection (onConnect).
            autoPingInterval=APP_PING_INTERVAL,
            autoPingTimeout=APP_PING_TIMEOUT,
        )

    def broadcast(self, report) -> None:
        """
        Send a hub report to every PlugBuddy connection: serialised and framed
        once, whatever the number of clients.
        """
        self.send_to_all(self.clients, broadcast_bytes(report.plug.id, report.plug.value))
