"""
Who may use the dashboard (SPEC 9): sessions and CSRF tokens (passwords are
L{smartplug_backend.server.passwords}).

A session is a random token in a cookie.  The server keeps only the token's
SHA-256, so a lookup compares digests (a timing difference tells nothing
about a valid token) and a memory dump holds no usable cookie.  Each session
has its own CSRF token, which the page sends back with every change.
"""

import dataclasses
import hashlib
import hmac
import secrets
from typing import Callable, Optional

from twisted.internet.interfaces import IReactorTime

COOKIE = b"smartplug_session"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


@dataclasses.dataclass(eq=False)
class Session:
    """
    One logged-in browser.

    @ivar user: the name it logged in with.
    @ivar csrf: the token the page must send with every change.
    @ivar expires: when it ends, in the clock's seconds.
    """

    user: str
    csrf: str
    expires: float
    _key: bytes = dataclasses.field(repr=False)


class Sessions:
    """
    The live sessions, in memory on the reactor thread (a restart logs
    everyone out).

    @param clock: the reactor's time.
    @param days: how long a session lasts (C{DASHBOARD_SESSION_DAYS}).
    """

    def __init__(self, clock: IReactorTime, days: float) -> None:
        self._clock = clock
        self.seconds = days * 86400
        self._sessions: dict[bytes, Session] = {}
        self._ended: list[Callable[[Session], None]] = []

    def create(self, user: str) -> tuple[str, Session]:
        """
        A new session for C{user}.

        @return: the cookie's token (not kept here) and the session.
        """
        self._sweep()
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), self._clock.seconds() + self.seconds, _digest(token))
        self._sessions[session._key] = session
        return token, session

    def find(self, token: Optional[str]) -> Optional[Session]:
        """
        The live session of the cookie C{token}, or C{None}.
        """
        if not token:
            return None
        session = self._sessions.get(_digest(token))
        if session is not None and session.expires <= self._clock.seconds():
            self.end(session)
            return None
        return session

    def end(self, session: Session) -> None:
        """
        End C{session} (log out, or it expired); its live sockets are told.
        """
        if self._sessions.pop(session._key, None) is None:
            return
        for listener in list(self._ended):
            listener(session)

    def alive(self, session: Session) -> bool:
        """
        Whether C{session} has neither ended nor expired.
        """
        return self._sessions.get(session._key) is session and session.expires > self._clock.seconds()

    def when_ended(self, listener: Callable[[Session], None]) -> None:
        """
        Call C{listener(session)} whenever a session ends.
        """
        self._ended.append(listener)

    def _sweep(self) -> None:
        now = self._clock.seconds()
        for session in [s for s in self._sessions.values() if s.expires <= now]:
            self.end(session)

    def __len__(self) -> int:
        return len(self._sessions)


def csrf_matches(session: Session, given: Optional[str]) -> bool:
    """
    Whether C{given} is C{session}'s CSRF token, compared in constant time.
    """
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), session.csrf.encode("ascii"))
