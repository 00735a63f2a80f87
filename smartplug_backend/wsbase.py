"""
What every WebSocket listener of ours shares: a handshake lenient enough for
the clients that really connect, the message size limit, one message sent to
many connections, and the peer address for logs.
"""

import re
from typing import Iterable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

# A single frame or message larger than this closes the connection with 1009.
MAX_MESSAGE = 64 * 1024

_HOST_HEADER = re.compile(rb"\nhost[ \t]*:", re.IGNORECASE)


def peer_host(transport) -> str:
    """
    The peer's IP address, or "?" when the transport cannot tell.
    """
    try:
        return transport.getPeer().host
    except Exception:
        return "?"


class LenientServerProtocol(WebSocketServerProtocol):
    """
    A server protocol that accepts an opening handshake without a Host header.

    Autobahn refuses such a handshake, but port-forwards, reverse proxies and
    small clients do send them (SPEC 4.1).  The Host port is never checked:
    the factories are built without C{externalPort}.  Autobahn|Android 0.5.0
    ends its Sec-WebSocket-Key line with a stray LF; Autobahn's header parser
    splits on any line end, so that needs nothing here.
    """

    _host_checked = False

    def processHandshake(self):
        if not self._host_checked:
            end = self.data.find(b"\r\n\r\n")
            if end >= 0:
                self._host_checked = True
                head = self.data[: end + 2]
                if not _HOST_HEADER.search(head):
                    first = head.find(b"\n") + 1
                    self.data = self.data[:first] + b"Host: localhost\r\n" + self.data[first:]
        return super().processHandshake()


class LimitedServerFactory(WebSocketServerFactory):
    """
    A server factory whose connections refuse frames and messages over
    L{MAX_MESSAGE} (close 1009), and that can send one message to many.
    """

    def __init__(self, url=None) -> None:
        super().__init__(url)
        self.setProtocolOptions(maxFramePayloadSize=MAX_MESSAGE, maxMessagePayloadSize=MAX_MESSAGE)

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
