"""
What every WebSocket listener of ours shares: a handshake lenient enough for
the clients that really connect, plain-text refusals, the size limits of the
handshake and of messages, a fixed deadline for the opening handshake, one
message sent to many connections, the peer address for logs, and a cut-off
for peers that do not read what they are sent.
"""

import http.client
import re
from typing import Iterable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from .limits import MAX_HANDSHAKE, MAX_MESSAGE, MAX_UNSENT, WS_HANDSHAKE_TIMEOUT

_HOST_HEADER = re.compile(rb"\nhost[ \t]*:", re.IGNORECASE)


def peer_host(transport) -> str:
    """
    The peer's IP address, or "?" when the transport cannot tell.
    """
    try:
        return transport.getPeer().host
    except Exception:
        return "?"


def peer_address(transport) -> str:
    """
    The peer as C{"<ip>:<port>"}, or "?".
    """
    try:
        peer = transport.getPeer()
        return f"{peer.host}:{peer.port}"
    except Exception:
        return "?"


@implementer(IPushProducer)
class _SendBuffer:
    """
    Tells its connection when the transport's send buffer is full (it pauses
    this producer) and when it has drained (it resumes it).
    """

    def __init__(self, protocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol._send_buffer_full = True

    def resumeProducing(self) -> None:
        self._protocol._send_buffer_full = False
        self._protocol._unsent_since_full = 0

    def stopProducing(self) -> None:
        pass


class LenientServerProtocol(WebSocketServerProtocol):
    """
    The base of our server protocols.

    - Accepts an opening handshake without a Host header: Autobahn refuses
      one, but port-forwards, reverse proxies and small clients send them
      (SPEC 4.1).  The Host port is never checked: the factories are built
      without C{externalPort}.  Autobahn|Android 0.5.0 ends its
      Sec-WebSocket-Key line with a stray LF; Autobahn's header parser splits
      on any line end, so that needs nothing here.
    - Refuses a handshake with a plain-text HTTP answer whose body says why
      (set C{_deny_body} before raising C{ConnectionDeny} for an exact body).
    - Refuses an opening handshake whose head is over L{MAX_HANDSHAKE} bytes
      (431): Autobahn would buffer it without end.
    - Drops a peer that has not completed the opening handshake within the
      factory's C{handshake_timeout} of connecting, however it trickles its
      bytes (Autobahn's own handler, run on the factory's clock).
    - Cuts off a peer that lets more than L{MAX_UNSENT} bytes pile up unsent,
      so that one slow client cannot grow memory without bound.
    """

    _host_checked = False
    _handshake_deadline = None
    _deny_body = None
    _send_buffer_full = False
    _unsent_since_full = 0
    _cut_off = False

    def processHandshake(self):
        if not self._host_checked:
            end = self.data.find(b"\r\n\r\n")
            if (end if end >= 0 else len(self.data)) > MAX_HANDSHAKE:
                self._host_checked = True
                return self.failHandshake(f"opening handshake over {MAX_HANDSHAKE} bytes", 431)
            if end >= 0:
                self._host_checked = True
                head = self.data[: end + 2]
                if not _HOST_HEADER.search(head):
                    first = head.find(b"\n") + 1
                    self.data = self.data[:first] + b"Host: localhost\r\n" + self.data[first:]
        return super().processHandshake()

    def sendHttpErrorResponse(self, code, reason, responseHeaders=None):
        # Autobahn puts its reason in the status line and sends no body; the
        # clients (PiCloud's among them) expect a status text and a body.
        body = self._deny_body or (str(reason) + "\n").encode("utf-8")
        head = (
            f"HTTP/1.1 {code} {http.client.responses.get(code, 'Error')}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n"
        )
        for name, value in responseHeaders or ():
            head += f"{name}: {value}\r\n"
        self.sendData(head.encode("utf-8") + b"\r\n" + body)

    def connectionMade(self):
        super().connectionMade()
        timeout = self.factory.handshake_timeout
        if timeout:
            self._handshake_deadline = self.factory.clock.callLater(timeout, self.onOpenHandshakeTimeout)
        # Twisted pauses a streaming producer once the transport buffers more
        # than its bufferSize (64 KiB); what is written after that is counted.
        self.transport.registerProducer(_SendBuffer(self), True)

    def succeedHandshake(self, res):
        self._end_handshake_deadline()
        return super().succeedHandshake(res)

    def connectionLost(self, reason):
        self._end_handshake_deadline()
        super().connectionLost(reason)

    def _end_handshake_deadline(self) -> None:
        deadline, self._handshake_deadline = self._handshake_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _too_much_unsent(self, size: int) -> bool:
        """
        Count C{size} more bytes to send; True when that makes the peer too
        slow (it has been cut off).
        """
        if self._send_buffer_full:
            self._unsent_since_full += size
            # The buffer held the transport's bufferSize when it paused us
            # (TCP's is 64 KiB; not every transport says).
            if self._unsent_since_full > MAX_UNSENT - getattr(self.transport, "bufferSize", 65536):
                self._too_slow()
                return True
        return False

    def sendData(self, data, sync=False, chopsize=None):
        if self._too_much_unsent(len(data)):
            return None
        return super().sendData(data, sync, chopsize)

    def sendPreparedMessage(self, preparedMsg):
        # Autobahn's sendData formats a debug line's fields on every call,
        # logged or not: for a broadcast to thousands that is most of the
        # cost, so the prepared frame goes to the transport directly.
        if self._perMessageCompress is not None or self.send_queue:
            return super().sendPreparedMessage(preparedMsg)
        frame = preparedMsg.payloadHybi
        if self._too_much_unsent(len(frame)):
            return None
        self.transport.write(frame)
        self.trafficStats.outgoingOctetsWireLevel += len(frame)
        return None

    def _too_slow(self) -> None:
        if self._cut_off:
            return
        self._cut_off = True
        self.slow_peer_cut_off()
        self._send_buffer_full = False
        # sendClose() refuses protocol codes like 1008; the frame-level call
        # is what Autobahn itself uses to fail a connection.
        self.sendCloseFrame(code=1008, reasonUtf8=b"too slow", isReply=False)
        # The close frame waits behind a megabyte the peer is not reading:
        # drop the connection now rather than hold that memory.
        self.transport.abortConnection()

    def slow_peer_cut_off(self) -> None:
        """
        Called once when this connection is cut off for not reading; log it.
        """


class LimitedServerFactory(WebSocketServerFactory):
    """
    A server factory whose connections refuse frames and messages over
    L{MAX_MESSAGE} (close 1009) and must complete their opening handshake
    within C{handshake_timeout} seconds, and that can send one message to
    many.

    @param url: C{wss://...} when the listener speaks TLS (Autobahn's
        C{isSecure}), else C{None}.
    @param clock: runs the handshake deadline (the reactor; a L{Clock} in
        tests).
    @param handshake_timeout: seconds from connecting (the TLS handshake
        included) to a completed WebSocket opening handshake; 0 for none.
    """

    def __init__(self, url=None, clock=None, handshake_timeout: float = WS_HANDSHAKE_TIMEOUT) -> None:
        super().__init__(url)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE,
            maxMessagePayloadSize=MAX_MESSAGE,
            # Autobahn would drop the connection on a protocol error (the
            # peer sees 1006); SPEC 6.3 promises the close code, e.g. 1009.
            failByDrop=False,
            # Ours replaces Autobahn's timer, which only runs on the global
            # reactor; both are a fixed deadline, not reset by new bytes.
            openHandshakeTimeout=0,
        )

    def send_to_all(self, connections: Iterable, payload: bytes) -> None:
        """
        Send the text message C{payload} to every one of C{connections}:
        framed once, whatever their number.
        """
        connections = list(connections)
        if not connections:
            return
        prepared = self.prepareMessage(payload)
        for connection in connections:
            connection.sendPreparedMessage(prepared)
