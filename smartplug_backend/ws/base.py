"""
What every WebSocket listener of ours shares: a handshake lenient enough for
the clients that really connect, plain-text refusals, the size limits of the
handshake and of messages, a fixed deadline for the opening handshake, one
message sent to many connections, the peer address for logs, and a cut-off
for peers that do not read what they are sent.
"""

import collections
import collections.abc
import http.client
import re
from typing import Iterable

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from ..core.limits import MAX_HANDSHAKE, MAX_MESSAGE, MAX_UNSENT, WS_HANDSHAKE_TIMEOUT, WS_SEND_BUFFER
from ..internals import WebSocketServerSeams, read_options_from_factory, write_now
from ..server import utf8
from ..server.guard import normal_address
from ..server.sockets import bound_send_buffer

# What the kernel may hold for a WebSocket peer: its send buffer, fixed at
# WS_SEND_BUFFER (Linux doubles the size asked for, overhead included).
KERNEL_HOLDS = 2 * WS_SEND_BUFFER

#: The close reason of every connection when the server stops (code 1001).
GOING_AWAY = b"server going away"

_HOST_HEADER = re.compile(rb"\nhost[ \t]*:", re.IGNORECASE)


def _parse_head(head: bytes) -> tuple[bytes, bytes, list]:
    """
    The request line, its target and the C{(name, value)} headers of an
    opening handshake's request C{head}, as bytes, split on CR and LF only.
    """
    lines = head.splitlines()
    words = lines[0].split() if lines else []
    target = words[1] if len(words) > 1 else b""
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(b":") for line in lines[1:])]
    return (lines[0] if lines else b""), target, headers


def _escaped(target: bytes) -> bytes:
    # Non-ASCII bytes %-escaped: the same target once unquoted.
    return b"".join(b"%%%02X" % byte if byte >= 0x80 else bytes((byte,)) for byte in target)


def _text_headers(headers: list) -> dict:
    text: dict = {}
    for name, value in headers:
        key, value = name.decode("utf-8").lower(), value.decode("utf-8")
        text[key] = f"{text[key]}, {value}" if key in text else value
    return text


def peer_host(transport) -> str:
    """
    The peer's IP address, or "?" when the transport cannot tell; an IPv4
    peer of a dual-stack listener as IPv4 (C{127.0.0.1}, not
    C{::ffff:127.0.0.1}).
    """
    try:
        return normal_address(transport.getPeer().host)
    except Exception:
        return "?"


def peer_address(transport) -> str:
    """
    The peer as PiCloud's Go server writes it (C{net.Conn}'s C{RemoteAddr}):
    C{"<ip>:<port>"}, an IPv6 address in brackets (C{"[::1]:33862"}), an
    IPv4 peer of a dual-stack listener as IPv4; or "?".
    """
    try:
        peer = transport.getPeer()
        host = normal_address(peer.host)
        return f"[{host}]:{peer.port}" if ":" in host else f"{host}:{peer.port}"
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
        self._protocol._send_backlog()

    def stopProducing(self) -> None:
        pass


class LenientServerProtocol(WebSocketServerSeams):
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
    - Never quotes a request target's query or fragment (an C{apiKey}) in
      a refusal, to the log or the peer.
    - Drops a peer that has not completed the opening handshake within the
      factory's C{handshake_timeout} of connecting, however it trickles its
      bytes (Autobahn's own handler, run on the factory's clock).
    - Cuts off a peer that lets more than L{MAX_UNSENT} bytes pile up unsent,
      in Twisted's buffer and the kernel's, so that one slow client cannot
      grow memory without bound: the kernel's send buffer is fixed at
      L{WS_SEND_BUFFER} (L{bound_send_buffer}), so it cannot hide megabytes.
    - Keeps little per idle connection: protocol options are read from the
      factory, and what only the opening handshake needs is dropped once the
      connection is open (both in L{smartplug_backend.internals}).
    - Sends messages of any size: L{MAX_MESSAGE} limits what peers send,
      not what we send (Autobahn applies it to C{sendMessage} too).
    - Sends a replay (L{send_first}) as fast as the peer reads it, not
      counted as unsent; what is sent meanwhile waits behind it, in order,
      and does count.
    """

    _host_checked = False
    _deny_body = None
    _send_buffer_full = False
    _unsent_since_full = 0
    _cut_off = False
    _handshake_deadline = None
    # Messages waiting for the transport to drain (see send_first): None,
    # or a deque of iterators of payloads (a replay) and prepared messages;
    # _backlog_counted is the bytes of the prepared ones.
    _backlog = None
    _backlog_counted = 0

    @property
    def _hub(self):
        # The one way a connection reaches the server's state: its factory's
        # hub (a class attribute, so it costs idle connections nothing).
        return self.factory.hub

    def processHandshake(self):
        if not self._host_checked:
            received = self.unparsed()
            end = received.find(b"\r\n\r\n")
            if (end if end >= 0 else len(received)) > MAX_HANDSHAKE:
                self._host_checked = True
                return self.failHandshake(f"opening handshake over {MAX_HANDSHAKE} bytes", 431)
            if end >= 0:
                self._host_checked = True
                line, target, headers = _parse_head(received[:end])
                refused = utf8.problem(target, headers)
                if refused is not None:
                    return self.failHandshake(refused, 400)
                # Autobahn reads the head as Latin-1 and splits it with str
                # methods, for which bytes of UTF-8 letters (0x85 in "х",
                # 0xa0 in "à") are line ends and spaces: it would refuse the
                # request line and cut header values.  So its target gets
                # only ASCII, and text_of reads the headers from the bytes.
                self._text_headers = _text_headers(headers)
                escaped = _escaped(target)
                if escaped != target:
                    line = line.replace(target, escaped, 1)
                    self.replace_request_line(line)
                text = line.decode("latin-1")
                if len(text.splitlines()) != 1 or len(text.split()) != 3:
                    # Autobahn would refuse it too, quoting the line (and any
                    # apiKey in it) to the log: it reads the head as str
                    # lines, which also end at \x0b, \x0c and \x1c-\x1e.
                    return self.failHandshake("malformed request line", 400)
                if not _HOST_HEADER.search(received[: end + 2]):
                    self.insert_header(b"Host: localhost\r\n")
        return super().processHandshake()

    _text_headers: dict = {}

    def failHandshake(self, reason, code=400, responseHeaders=None):
        # Autobahn quotes parts of the request target in some reasons (a
        # target it cannot parse, a fragment): its query (where an apiKey
        # goes) and fragment are hidden, in the log and in the answer.
        reason = str(reason)
        target = getattr(self, "http_request_uri", None) or ""
        for cut in ("?", "#"):
            hidden = target.partition(cut)[2]
            if hidden:
                reason = reason.replace(hidden, "***")
        return super().failHandshake(reason, code, responseHeaders)

    def text_of(self, request) -> tuple[dict, dict]:
        """
        The C{(headers, params)} of the opening handshake C{request}, as
        C{onConnect} is given it, read as the UTF-8 they are (L{utf8.problem}):
        headers by lower-case name, repeated ones joined with ", ", as
        Autobahn keeps them; query parameters, each a list of values.
        Autobahn's own C{request.headers} are Latin-1 (C{küche} is
        C{kÃ¼che}), and cut where such text holds a byte it reads as a line
        end.
        """
        return self._text_headers, request.params

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
        self.factory.connections.add(self)
        # The kernel may hold at most KERNEL_HOLDS for the peer (no autotuning
        # up to megabytes that nothing counts); beyond that Twisted buffers,
        # pauses a streaming producer once it holds more than its bufferSize
        # (64 KiB), and what is written after that is counted.
        bound_send_buffer(self.transport)
        self.transport.registerProducer(_SendBuffer(self), True)
        timeout = self.factory.handshake_timeout
        if timeout:
            self._handshake_deadline = self.factory.clock.callLater(timeout, self.onOpenHandshakeTimeout)

    def succeedHandshake(self, res):
        self._end_handshake_deadline()
        # onConnect, the one reader of text_of, is done: an idle connection
        # keeps no headers (see WebSocketServerSeams.HANDSHAKE_ONLY).
        self.__dict__.pop("_text_headers", None)
        return super().succeedHandshake(res)

    def connectionLost(self, reason):
        self._end_handshake_deadline()
        self._backlog = None
        try:
            super().connectionLost(reason)
        finally:
            self.factory.forget(self)

    def go_away(self) -> None:
        """
        The server is stopping: close an open connection with 1001 (RFC
        6455's "going away"; the peer answers, then the connection ends),
        and drop one still in its opening handshake.
        """
        if self.state == self.STATE_OPEN:
            # sendClose() refuses 1001 as it does 1008 (see _too_slow).
            self.sendCloseFrame(code=1001, reasonUtf8=GOING_AWAY, isReply=False)
        elif self.state == self.STATE_CONNECTING:
            self.transport.loseConnection()

    def _end_handshake_deadline(self) -> None:
        deadline, self._handshake_deadline = self._handshake_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def sendMessage(self, payload, isBinary=False, fragmentSize=None, sync=False, doNotCompress=False):
        """
        Send a message of any size, as a prepared message.

        Autobahn refuses to send a message over C{maxMessagePayloadSize}
        (L{MAX_MESSAGE}, raising C{PayloadExceededError}); that limit is for
        what peers send us (SPEC 6.3), while the info frame, the dashboard's
        snapshot and replayed publications may be larger.  Prepared messages
        are sent uncompressed, so no limit applies to them.  Nothing is sent
        once the connection is closing.  Fragmented and synchronous sends
        (used by no route of ours) keep Autobahn's path and its limit.
        """
        if fragmentSize is None and not sync:
            return self.sendPreparedMessage(self.factory.prepareMessage(payload, isBinary, doNotCompress=True))
        return super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)

    def sendPreparedMessage(self, preparedMsg) -> None:
        """
        Send a prepared message: its frame goes straight to the socket
        (L{write_now}), or behind the messages waiting in the backlog (see
        L{send_first}).

        Autobahn's own path (C{sendData}) formats a debug log line on every
        send, with debug logging off too; in a broadcast to a thousand apps
        that is paid a thousand times.  This is Autobahn's condition for
        sending the prepared frame as is (no per-message compression in use,
        nothing queued for chopped or synchronous sends), and the transport
        must be taking data: once it is full, L{sendData} counts what is
        left unsent.  Autobahn's traffic counters, which nothing here reads,
        do not count these bytes.
        """
        if self.state != self.STATE_OPEN:
            # Closing or closed: no data frame may follow a close frame
            # (RFC 6455 5.5.1), and a broadcast may reach us in between.
            return
        if self._backlog:
            # Behind a replay: held here, unsent, so it counts.
            self._backlog.append(preparedMsg)
            self._backlog_counted += len(preparedMsg.payloadHybi)
            self._check_unsent()
            return
        self._write_prepared(preparedMsg)

    def _write_prepared(self, preparedMsg) -> None:
        frame = None if self._send_buffer_full else self.prepared_frame_as_is(preparedMsg)
        if frame is not None:
            write_now(self.transport, frame)
        else:
            super().sendPreparedMessage(preparedMsg)

    def send_first(self, payloads: Iterable[bytes]) -> None:
        """
        Send the text messages C{payloads} (a replay of kept publications)
        before anything sent after this call, each once the transport has
        room for it (when it drains; this connection is its producer).

        They do not count toward L{MAX_UNSENT}: a replay of a megabyte is
        not the peer being slow, and it is written only as fast as the peer
        reads.  Messages sent meanwhile wait behind it, in order, and do
        count: a peer that stops reading is still cut off.  Nothing more is
        written once the connection is no longer open.
        """
        if self.state != self.STATE_OPEN:
            return
        if self._backlog is None:
            self._backlog = collections.deque()
        self._backlog.append(iter(payloads))
        self._send_backlog()

    def _send_backlog(self) -> None:
        # Write waiting messages until the transport is full (it pauses us,
        # and resumes us, and so this, once drained) or none are left.
        backlog = self._backlog
        while backlog and not self._send_buffer_full:
            if self.state != self.STATE_OPEN:
                backlog.clear()
                break
            head = backlog[0]
            if isinstance(head, collections.abc.Iterator):
                payload = next(head, None)
                if payload is None:
                    backlog.popleft()
                    continue
                self._write_prepared(self.factory.prepareMessage(payload, doNotCompress=True))
            else:
                backlog.popleft()
                self._backlog_counted -= len(head.payloadHybi)
                self._write_prepared(head)
        if not backlog:
            self._backlog_counted = 0

    def sendData(self, data, sync=False, chopsize=None):
        if self._send_buffer_full:
            self._unsent_since_full += len(data)
            if self._check_unsent():
                return None
        return super().sendData(data, sync, chopsize)

    def _check_unsent(self) -> bool:
        """
        Cut the peer off if more than L{MAX_UNSENT} would be unsent; True
        when it was.
        """
        unsent = self._backlog_counted
        if self._send_buffer_full:
            # When it paused us, Twisted's buffer held the transport's
            # bufferSize (TCP's is 64 KiB; not every transport says), and the
            # kernel's send queue was full (SPEC 6.5: it counts too).
            unsent += self._unsent_since_full + getattr(self.transport, "bufferSize", 65536) + KERNEL_HOLDS
        if unsent > MAX_UNSENT:
            self._too_slow()
            return True
        return False

    def _too_slow(self) -> None:
        if self._cut_off:
            return
        self._cut_off = True
        self._backlog = None
        self.factory.slow_dropped += 1
        self.slow_peer_cut_off()
        self._send_buffer_full = False
        # sendClose() refuses protocol codes like 1008; the frame-level call
        # is what Autobahn itself uses to fail a connection.
        self.sendCloseFrame(code=1008, reasonUtf8=b"too slow", isReply=False)
        # The close frame waits behind a megabyte the peer is not reading:
        # drop the connection now rather than hold that memory.
        self.transport.abortConnection()

    def how_closed(self, was_clean: bool, code, reason, peer: str = "the peer") -> str:
        """
        Who closed the connection and why, for the disconnect's log line
        (C{onClose}'s arguments).  Autobahn closes by itself for what the
        peer broke (a message over the limit, text that is not UTF-8, a
        malformed frame); the peer then only echoes the server's code.
        """
        if self.closedByMe and self.localCloseCode is not None:
            said = (self.localCloseReason or b"").decode("utf-8", "replace")
            return f"closed by the server (code {self.localCloseCode}{': ' + said if said else ''})"
        if was_clean:
            return f"closed by {peer} (code {code})"
        return f"connection lost ({reason})" if reason else "connection lost"

    def slow_peer_cut_off(self) -> None:
        """
        Called once when this connection is cut off for not reading; log it.
        """


read_options_from_factory(LenientServerProtocol)


class LimitedServerFactory(WebSocketServerFactory):
    """
    A server factory whose connections refuse frames and messages over
    L{MAX_MESSAGE} (close 1009) and must complete their opening handshake
    within C{handshake_timeout} seconds, and that can send one message to
    many.

    @param hub: the server's state; connections reach it as C{self._hub}.
    @param url: C{wss://...} when the listener speaks TLS (Autobahn's
        C{isSecure}), else C{None}.
    @param clock: runs the handshake deadline (the reactor; a L{Clock} in
        tests).
    @param handshake_timeout: seconds from connecting (the TLS handshake
        included) to a completed WebSocket opening handshake; 0 for none.
    @ivar slow_dropped: connections cut off for not reading (for metrics).
    """

    slow_dropped = 0

    def __init__(self, hub, url=None, clock=None, handshake_timeout: float = WS_HANDSHAKE_TIMEOUT) -> None:
        # No Server header: strangers learn nothing of versions.
        super().__init__(url, server=None)
        self.hub = hub
        #: Every connection of this listener, open or still opening.
        self.connections: set = set()
        self._all_gone: list[Deferred] = []
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
            # A GET without Upgrade gets a plain 426, not Autobahn's HTML
            # status page (which names its version and follows ?redirect=).
            webStatus=False,
        )

    #: Autobahn's origin options of this listener (L{origins.ANY_ORIGIN} for
    #: the ones that authenticate by key or secret); empty: Autobahn's own.
    origin_options: dict = {}

    def setProtocolOptions(self, *args, **options) -> None:
        # Autobahn's setProtocolOptions sets allowNullOrigin on every call
        # (its default argument is False): the listener's origin policy is
        # applied with every call, so no later call can undo it.
        super().setProtocolOptions(*args, **{**self.origin_options, **options})

    def forget(self, connection) -> None:
        """
        C{connection} has ended.
        """
        self.connections.discard(connection)
        if not self.connections and self._all_gone:
            waiting, self._all_gone = self._all_gone, []
            for gone in waiting:
                if not gone.called:  # else timed out (go_away)
                    gone.callback(None)

    def go_away(self, timeout: float) -> Deferred:
        """
        Close every connection as the server stops (L{LenientServerProtocol.go_away}).

        @return: fires once all have ended, or after C{timeout} seconds, when
            the ones left (a peer that does not answer the close) are
            dropped.
        """
        if not self.connections:
            return succeed(None)
        gone: Deferred = Deferred()
        self._all_gone.append(gone)
        for connection in list(self.connections):
            connection.go_away()

        def too_late(failure):
            failure.trap(defer.TimeoutError, defer.CancelledError)
            for connection in list(self.connections):
                connection.transport.abortConnection()

        return gone.addTimeout(timeout, self.clock).addErrback(too_late)

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
