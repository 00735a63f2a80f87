"""
The dashboard's live channel: one WebSocket at C{/ui/live} on the HTTP port
(SPEC 9), inside the same twisted.web site as Bottle.

A page that opens it must bring a live session cookie and an C{Origin} that
is the dashboard's own (SPEC 6.4: routes a cookie authenticates check
Origin, or any site the owner visits could open the socket with the owner's
cookie).  It gets the feed's snapshot at once, then every change; it sends
nothing.  Logging out, or the session expiring, closes it (code 4001).
"""

from http.cookies import CookieError, SimpleCookie
from typing import Optional

from autobahn.twisted.resource import WebSocketResource
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.server import NOT_DONE_YET

from ...ws.base import LenientServerProtocol, LimitedServerFactory, peer_host
from .auth import COOKIE

SESSION_ENDED = 4001


def session_token(cookie_header: Optional[str]) -> Optional[str]:
    """
    The session token in a C{Cookie} header, or C{None}.
    """
    if not cookie_header:
        return None
    try:
        jar = SimpleCookie(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE.decode("ascii"))
    return morsel.value if morsel is not None else None


def own_origin(secure: bool, host: Optional[str]) -> Optional[str]:
    """
    The Origin a page served under C{host} sends, or C{None} without a Host.
    """
    if not host:
        return None
    return ("https://" if secure else "http://") + host


class LiveProtocol(LenientServerProtocol):
    """
    One open dashboard page.
    """

    _log = Logger(namespace="smartplug_backend.http.dashboard")
    _peer = "?"
    _session = None
    _expiry = None
    _joined = False

    def onConnect(self, request):
        self._peer = peer_host(self.transport)
        factory = self.factory
        expected = own_origin(factory.isSecure, request.headers.get("host"))
        if expected is None or request.headers.get("origin") != expected:
            self._log.warn("refused dashboard socket from {peer}: Origin is not the dashboard's own", peer=self._peer)
            raise ConnectionDeny(403, "Origin is not the dashboard's own")
        session = factory.sessions.find(session_token(request.headers.get("cookie")))
        if session is None:
            raise ConnectionDeny(401, "not logged in")
        self._session = session
        return None

    def onOpen(self):
        try:
            factory = self.factory
            remaining = self._session.expires - factory.clock.seconds()
            self._expiry = factory.clock.callLater(max(remaining, 0), self.end_session)
            self._joined = True
            factory.join(self)
            self.sendMessage(factory.feed.snapshot())
        except Exception:
            self._log.failure("dashboard socket from {peer}", peer=self._peer)

    def onMessage(self, payload, isBinary):
        # The page only listens; its changes are POSTs with a CSRF token.
        pass

    def end_session(self) -> None:
        """
        The session ended (log out, expiry): close with L{SESSION_ENDED}.
        """
        if self.state == self.STATE_OPEN:
            self.sendClose(SESSION_ENDED, "session ended")

    def slow_peer_cut_off(self) -> None:
        self._log.warn("dashboard page at {peer} is too slow: over 1 MiB unsent; dropping it (1008)", peer=self._peer)

    def onClose(self, wasClean, code, reason):
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        if self._joined:
            self._joined = False
            self.factory.leave(self)


class LiveFactory(LimitedServerFactory):
    """
    The dashboard's WebSocket: sends the feed's messages to every open page.

    @param feed: the L{feed.Feed}.
    @param sessions: the L{auth.Sessions}; a session that ends closes its
        pages.
    @param url: C{wss://...} when the HTTP listener speaks TLS (then the
        Origin must be C{https://...}).
    """

    protocol = LiveProtocol
    noisy = False

    def __init__(self, feed, sessions, clock, url=None) -> None:
        super().__init__(url, clock)
        self.feed = feed
        self.sessions = sessions
        self.pages: set = set()
        self.setProtocolOptions(autoPingInterval=30, autoPingTimeout=30)
        feed.watch(self._send)
        sessions.when_ended(self._ended)

    def join(self, page: LiveProtocol) -> None:
        self.pages.add(page)
        self.feed.viewers(len(self.pages))

    def leave(self, page: LiveProtocol) -> None:
        self.pages.discard(page)
        self.feed.viewers(len(self.pages))

    def _send(self, payload: bytes) -> None:
        self.send_to_all(self.pages, payload)

    def _ended(self, session) -> None:
        for page in [p for p in self.pages if p._session is session]:
            page.end_session()


class LiveResource(WebSocketResource):
    """
    Autobahn's WebSocketResource, taking over connections that are wrapped
    the way our listeners wrap them.

    twisted.web's channel registered itself as the transport's producer, so
    it is unregistered before the WebSocket protocol registers its own; and
    the connection count (L{smartplug_backend.server.connections}) stands
    between the transport and the channel without being a ProtocolWrapper,
    so the WebSocket protocol takes the channel's place inside it (Autobahn
    would replace the counter, and the closed connection would never be
    counted).
    """

    def render(self, request):
        channel = request.channel
        transport = channel.transport
        if transport is None:
            return super().render(request)
        transport.unregisterProducer()
        outer = getattr(transport, "protocol", None)
        if not isinstance(transport, ProtocolWrapper) and outer is not channel and getattr(outer, "wrapped", None) is channel:
            protocol = self._factory.buildProtocol(transport.getPeer())
            channel.transport = None
            outer.wrapped = protocol
            protocol.makeConnection(transport)
            # The channel paused reading while it handled the request.
            channel._networkProducer.resumeProducing()
            data = request.method + b" " + request.uri + b" HTTP/1.1\r\n"
            for name, values in request.requestHeaders.getAllRawHeaders():
                data += name + b": " + b",".join(values) + b"\r\n"
            protocol.dataReceived(data + b"\r\n" + request.content.read())
            return NOT_DONE_YET
        return super().render(request)
