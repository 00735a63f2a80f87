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

from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

from ...core.limits import DASHBOARD_PING_INTERVAL, DASHBOARD_PING_TIMEOUT
from ...internals import WebSocketResourceSeams
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
    # Read by the guard (server/guard.py): a page that brought a live
    # session proved it; a ban of its address does not close it.
    proven = False
    _expiry = None
    _joined = False

    def onConnect(self, request):
        self._peer = peer_host(self.transport)
        factory = self.factory
        headers, _ = self.text_of(request)
        expected = own_origin(factory.isSecure, headers.get("host"))
        if expected is None or headers.get("origin") != expected:
            self._log.warn("refused dashboard socket from {peer}: Origin is not the dashboard's own", peer=self._peer)
            raise ConnectionDeny(403, "Origin is not the dashboard's own")
        session = factory.sessions.find(session_token(headers.get("cookie")))
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
            self.proven = True
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
    # Autobahn would refuse the "null" Origin itself (400, in its words);
    # onConnect refuses every Origin but the page's own, null included,
    # with the 403 the README names.
    origin_options = {"allowNullOrigin": True}

    def __init__(self, feed, sessions, clock, url=None) -> None:
        # The hub is the feed's business; the page only gets its messages.
        super().__init__(None, url, clock)
        self.feed = feed
        self.sessions = sessions
        self.pages: set = set()
        # A closed laptop lid leaves no close frame; pings find such pages.
        self.setProtocolOptions(autoPingInterval=DASHBOARD_PING_INTERVAL, autoPingTimeout=DASHBOARD_PING_TIMEOUT)
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


class LiveResource(WebSocketResourceSeams):
    """
    The live socket's resource at C{/ui/live}: Autobahn's
    C{WebSocketResource}, able to take over our listeners' connections
    (see L{smartplug_backend.internals.WebSocketResourceSeams}).
    """
