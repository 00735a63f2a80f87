"""
Shared fakes for the trial tests: synchronous threads for WSGI, StubTreq over
the Bottle app, and WebSocket connections joined in memory with iosim.
"""

import json

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connect

from smartplug_backend.core.hub import Hub
from smartplug_backend.http.api import Bridge, make_app
from smartplug_backend.http.channel import make_site
from smartplug_backend.http.ingest import ingest_routes

PEER = "192.168.1.64"
# The client address StubTreq's requests come from.
STUB_PEER = "127.0.0.1"


@inlineCallbacks
def until(condition, what: str, timeout: float = 10):
    """
    Wait, on the real reactor, until C{condition()} is true, for work done
    on other threads (Redis', paho's) that gives no other signal.  Bounded
    in time; fails naming C{what}.
    """
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def run_now(f, *args, **kwargs):
    """
    A stand-in for a thread hop: run C{f} here and now.
    """
    return f(*args, **kwargs)


def call_now(f, *args, **kwargs):
    """
    A stand-in for C{blockingCallFromThread}: run C{f} here and now, and if
    it returns a Deferred, its result (which must already be there).
    """
    result = f(*args, **kwargs)
    if isinstance(result, Deferred):
        outcome = []
        result.addBoth(outcome.append)
        if not outcome:
            raise AssertionError(f"{f!r} returned a Deferred that has not fired")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]
    return result


SYNC_BRIDGE = Bridge(call=call_now, later=run_now)


class SynchronousThreadPool:
    """
    A ThreadPool stand-in for WSGIResource that runs work immediately.
    """

    def callInThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class SynchronousReactor(MemoryReactorClock):
    """
    A memory reactor whose callFromThread runs at once, so that
    blockingCallFromThread and WSGI's hops to the reactor are synchronous.
    """

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def http_client(hub: Hub, **options) -> StubTreq:
    """
    A treq-like client for the Bottle app over C{hub}, served by the real
    twisted.web Site, with the ingest routes on the reactor thread
    (L{ingest_routes}) and the rest under WSGIResource with every thread hop
    made synchronous.
    C{options} go to L{make_app} (C{guard}, C{api_key}).
    """
    app = make_app(hub, SYNC_BRIDGE, **options)
    fast = ingest_routes(hub, options.get("api_key"), options.get("guard"))
    site = make_site(app, SynchronousReactor(), SynchronousThreadPool(), fast=fast)
    return StubTreq(site.resource)


def quiet(factory):
    """
    Turn off Autobahn's own timers, which run on the global reactor, and the
    handshake deadline when it runs there too; tests drive time through the
    clocks they pass in.
    """
    from twisted.internet import reactor

    if getattr(factory, "clock", None) is reactor:
        factory.handshake_timeout = 0
    factory.setProtocolOptions(
        openHandshakeTimeout=0,
        closeHandshakeTimeout=0,
        autoPingInterval=0,
        autoPingTimeout=0,
    )
    return factory


class RecordingClient(WebSocketClientProtocol):
    """
    A WebSocket client that records what happens to it.
    """

    def __init__(self):
        super().__init__()
        self.opened = False
        self.messages: list = []
        self.pongs: list = []
        self.closed = None

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, isBinary):
        self.messages.append(payload if not isBinary else ("binary", payload))

    def onPong(self, payload):
        self.pongs.append(payload)

    def onClose(self, wasClean, code, reason):
        self.closed = (code, reason)

    def texts(self) -> list:
        return [m.decode("utf-8") for m in self.messages if isinstance(m, bytes)]

    def json(self) -> list:
        return [json.loads(t) for t in self.texts()]


def ws_connect(server_factory, path="/", headers=None, peer=PEER, port=50000, client_protocol=None, quiet_server=True):
    """
    Join a server protocol from C{server_factory} to a L{RecordingClient}
    (or C{client_protocol}) in memory.

    @param quiet_server: turn the server factory's own timers off (L{quiet}).
    @return: C{(client, server, pump)}; call C{pump.flush()} after acting.
    """
    if quiet_server:
        quiet(server_factory)
    address = IPv4Address("TCP", peer, port)
    server = server_factory.buildProtocol(address)
    client_factory = quiet(WebSocketClientFactory(f"ws://localhost:9001{path}", headers=headers))
    client_factory.protocol = client_protocol or RecordingClient
    client = client_factory.buildProtocol(None)
    pump = connect(
        server,
        FakeTransport(server, isServer=True, peerAddress=address),
        client,
        FakeTransport(client, isServer=False),
    )
    pump.flush()
    return client, server, pump


def accept(factory, peer=PEER, port=50001):
    """
    A new connection from C{peer} accepted by C{factory} (any wrappers
    included), on a L{StringTransport}.

    @return: C{(protocol, transport)}; C{transport.value()} is what was sent.
    """
    address = IPv4Address("TCP", peer, port)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def raw_handshake(server_factory, request: bytes, peer=PEER):
    """
    Feed the raw bytes C{request} to a new server protocol.

    @return: C{(server, transport)}; C{transport.value()} is the answer.
    """
    quiet(server_factory)
    server, transport = accept(server_factory, peer)
    server.dataReceived(request)
    return server, transport
