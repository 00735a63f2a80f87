"""
A deadline for a whole blocking HTTP request made with C{requests}.

requests' C{timeout} bounds each wait for the network, not a request: a
server that sends a byte every few seconds holds a request, and the thread
that made it, for ever (and a server that stops on such a thread never
stops).  L{DeadlineAdapter}, mounted on a session, keeps the sockets its
connections open per thread; L{deadline} shuts down the current thread's
sockets from a timer when the time is up, which ends the request at once
with a C{requests.ConnectionError}.

Built on requests' transport adapters (C{HTTPAdapter.init_poolmanager}) and
urllib3's pool and connection classes (C{pool_classes_by_scheme},
C{ConnectionCls}), its documented ways to customise connections; the tests
of L{smartplug_backend.integrations.twitter_client} fail if they stop
working.
"""

import contextlib
import socket
import threading
import weakref
from typing import Iterator

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_opened = threading.local()
# Guards every thread's set: the timer thread copies one while its thread
# may add to it.
_lock = threading.Lock()


def _sockets() -> "weakref.WeakSet":
    # The sockets opened by this thread's requests and not yet collected.
    found = getattr(_opened, "sockets", None)
    if found is None:
        found = _opened.sockets = weakref.WeakSet()
    return found


def _opened_here(sock) -> None:
    mine = _sockets()
    with _lock:
        mine.add(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _opened_here(self.sock)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _opened_here(self.sock)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """
    An C{HTTPAdapter} whose connections L{deadline} can cut.  Mount it on a
    session for C{http://} and C{https://}.
    """

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def watch(session) -> None:
    """
    Mount a L{DeadlineAdapter} on C{session} for both schemes.
    """
    for prefix in ("http://", "https://"):
        session.mount(prefix, DeadlineAdapter())


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[threading.Event]:
    """
    Within the block, requests this thread makes through a watched session
    are cut after C{seconds} in all.  Yields an event that is set if the
    deadline cut them.
    """
    mine = _sockets()
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        with _lock:
            cutting = list(mine)
        for sock in cutting:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also under TLS: the TLS
                # object stays as it is for the thread reading from it,
                # whose read then fails.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    finally:
        timer.cancel()
