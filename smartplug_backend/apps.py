"""
The app WebSocket (SPEC 4.1): the PlugBuddy protocol.

Thin adapter between Autobahn and the hub: a status request reads the hub; a
hub report is broadcast to every open app connection, serialised once.
"""

import json

from twisted.logger import Logger

from .reports import broadcast_bytes
from .wsbase import LenientServerProtocol, LimitedServerFactory, peer_host


class AppProtocol(LenientServerProtocol):
    """
    One app connection.  C{{"status": id}} is answered on this connection
    with the plug's state when the plug is known; everything else is logged
    and ignored.
    """

    _log = Logger(namespace="smartplug_backend.apps")
    _peer = "?"
    _opened = False

    def onConnect(self, request):
        self._peer = peer_host(self.transport)
        return None

    def onOpen(self):
        try:
            self._opened = True
            self.factory.clients.add(self)
            self._log.info("app connected from {peer}", peer=self._peer)
        except Exception:
            self._log.failure("app connection from {peer}", peer=self._peer)

    def onMessage(self, payload, isBinary):
        try:
            self._handle(payload, isBinary)
        except Exception:
            self._log.failure("app message from {peer}", peer=self._peer)

    def _handle(self, payload, isBinary):
        if isBinary:
            return self._ignore("binary message")
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError):
            return self._ignore("not JSON")
        if not isinstance(message, dict) or not isinstance(message.get("status"), str):
            return self._ignore('expected {"status": "<plug id>"}')
        plug = self.factory.hub.plug(message["status"])
        if plug is not None:
            self.sendMessage(broadcast_bytes(plug.id, plug.value))

    def _ignore(self, reason: str) -> None:
        self._log.warn("ignored app message from {peer}: {reason}", peer=self._peer, reason=reason)

    def onClose(self, wasClean, code, reason):
        if self._opened:
            self._opened = False
            self.factory.clients.discard(self)
            self._log.info(
                "app disconnected from {peer} (code {code})", peer=self._peer, code=code
            )


class AppFactory(LimitedServerFactory):
    """
    The app WebSocket listener.  Subscribe L{broadcast} to the hub.
    """

    protocol = AppProtocol

    def __init__(self, hub, url=None) -> None:
        super().__init__(url)
        self.hub = hub
        self.clients: set = set()
        self.setProtocolOptions(
            # Phones vanish without a close; pings find the dead connections.
            autoPingInterval=60,
            autoPingTimeout=30,
        )

    def broadcast(self, report) -> None:
        """
        Send a hub report to every open app connection: serialised and framed
        once, whatever the number of clients.
        """
        self.send_to_all(self.clients, broadcast_bytes(report.plug.id, report.plug.value))
