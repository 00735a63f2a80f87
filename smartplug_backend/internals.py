"""
Every place where this server relies on a private part of Twisted, Autobahn
or python-twitter: the only module that may.

Each seam says what it relies on, why no public API does the job, and which
upstream version it was checked against (L{CHECKED_AGAINST}).
C{tests/test_internals.py} exercises every one of them on the installed
versions and fails, naming the seam, when an upgrade changes it.  Everything
else in the package uses these names and public APIs only.
"""

import contextlib
import os

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import tcp
from twisted.logger import FileLogObserver, Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel
from twisted.web.server import NOT_DONE_YET

CHECKED_AGAINST = {"twisted": "26.10.0", "autobahn": "26.10.2", "python-twitter": "3.5"}


# -- Twisted: writing to a TCP socket at once -------------------------------


def write_now(transport, data: bytes) -> None:
    """
    Write C{data} to C{transport}: to the socket at once when nothing is
    buffered ahead of it, else (and for what the kernel does not take) with
    C{transport.write}.

    Why: a Twisted TCP transport buffers every write until the reactor's
    next turn, so each write costs an epoll registration, an event, a
    dispatch and an unregistration around the one C{send} that does the
    work.  For one frame to thousands of connections that bookkeeping is
    most of the server's CPU.

    Relies on C{tcp.Server}'s C{socket}, C{dataBuffer}, C{_tempDataLen},
    C{_aborting}, C{connected}, C{disconnecting} and C{TLS}.  Only a plain
    TCP connection (no TLS, not closing or aborted) with an empty buffer
    takes the direct path; anything unexpected (an attribute missing: the
    C{getattr} defaults) falls back to C{write}, which also keeps the order
    of what is buffered and tells a registered producer when it fills.
    """
    if (
        type(transport) is tcp.Server
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not getattr(transport, "_aborting", True)
        and not transport.dataBuffer
        and not getattr(transport, "_tempDataLen", True)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # Full (EAGAIN) or failing: write() buffers it, and the reactor
            # reports a failure as a lost connection in the usual way.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


# -- Twisted: the HTTP channel ----------------------------------------------


class HTTPChannelSeams(HTTPChannel):
    """
    What our HTTP channel needs of C{HTTPChannel} beyond its public API.

    - C{_respondToBadRequestAndDisconnect}: twisted.web answers a malformed
      request line or header with a bare 400 and no body; it is routed to
      L{bad_request} so that ours can answer JSON (SPEC 1).
    - C{_handlingRequest}: whether a request is being answered (bytes that
      arrive meanwhile are only buffered), read by L{handling_request}.
    - C{length}: the declared Content-Length once the headers are in
      (C{None} for chunked), read by L{declared_length}.
    - C{delimiter}: C{HTTPChannel} is a C{LineReceiver}; setting
      C{delimiter = b"\\n"} (done by the subclass) makes it read bare-LF
      request heads, as the plug's firmware sends them.
    """

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.bad_request()

    def bad_request(self) -> None:
        """
        Answer a malformed request and close; by default, as twisted.web.
        """
        HTTPChannel._respondToBadRequestAndDisconnect(self)

    @property
    def handling_request(self) -> bool:
        """
        True while a request is being answered.
        """
        return self._handlingRequest

    @property
    def declared_length(self):
        """
        The request's declared Content-Length, or C{None}.
        """
        return self.length


# -- Twisted and Autobahn: a WebSocket inside the HTTP site ------------------


_takeover_log = Logger(namespace="smartplug_backend.http.dashboard")


class WebSocketResourceSeams(WebSocketResource):
    """
    Autobahn's C{WebSocketResource}, taking over connections that are
    wrapped the way our listeners wrap them (the dashboard's live socket).

    - twisted.web's channel registered itself as the transport's producer
      (C{HTTPChannel.connectionMade}); it is unregistered first, or the
      WebSocket protocol's own registration would raise.
    - The connection count (L{smartplug_backend.server.connections}), and
      on the HTTP port the guard's tracking, stand between the transport and
      the channel without being C{ProtocolWrapper}s; Autobahn would replace
      the outer one as the transport's C{protocol} (or, with an C{ssl:}
      endpoint, as the TLS wrapper's C{wrappedProtocol}), and the closed
      connection would never be counted.  There the WebSocket protocol takes
      the channel's place inside the innermost one, as
      Autobahn's C{render} does for a C{ProtocolWrapper}: relying on its
      C{_factory}, the channel's C{_networkProducer} (which paused reading
      while the request was handled) and the re-fed request head.
    """

    def render(self, request):
        channel = request.channel
        transport = channel.transport
        if transport is None:
            return super().render(request)
        transport.unregisterProducer()
        # The protocol the transport delivers to: a TLS transport of an
        # ssl: endpoint (a ProtocolWrapper outside our wrappers) delivers
        # to its wrappedProtocol, a TCP one to its protocol.
        if isinstance(transport, ProtocolWrapper):
            outer = transport.wrappedProtocol
        else:
            outer = getattr(transport, "protocol", None)
        if outer is channel:
            return super().render(request)
        # The wrappers (the guard's tracking, then the count) stand in a
        # chain; the WebSocket protocol takes the channel's place at its end.
        holder = outer
        while holder is not None and getattr(holder, "wrapped", None) is not channel:
            holder = getattr(holder, "wrapped", None)
        if holder is None and outer is not None:
            # Autobahn would replace the outer wrapper, and the connection
            # would never be counted closed (its place kept for good): say
            # so loudly instead, the upgrade refused.
            _takeover_log.error(
                "dashboard live socket refused: the connection's wrappers are not the chain "
                "smartplug_backend.internals.WebSocketResourceSeams expects (after an upgrade of Twisted?)"
            )
            request.setResponseCode(500)
            return b""
        if holder is None:
            return super().render(request)
        protocol = self._factory.buildProtocol(transport.getPeer())
        channel.transport = None
        holder.wrapped = protocol
        protocol.makeConnection(transport)
        channel._networkProducer.resumeProducing()
        data = request.method + b" " + request.uri + b" HTTP/1.1\r\n"
        for name, values in request.requestHeaders.getAllRawHeaders():
            data += name + b": " + b",".join(values) + b"\r\n"
        protocol.dataReceived(data + b"\r\n" + request.content.read())
        return NOT_DONE_YET


# -- Autobahn: the server protocol ------------------------------------------


class WebSocketServerSeams(WebSocketServerProtocol):
    """
    What our WebSocket protocols need of Autobahn's beyond its public API.

    - C{_onOpen}: Autobahn's step from the opening handshake to the open
      connection (it calls C{onOpen}).  Once it has run, the attributes in
      L{HANDSHAKE_ONLY}, which Autobahn never reads again, are dropped:
      about 1.5 KB per idle connection.
    - C{data}: the bytes received and not yet parsed; during the opening
      handshake, its head (L{unparsed}, L{insert_header}).
    - C{_perMessageCompress}, C{send_queue} and a prepared message's
      C{payloadHybi}: Autobahn's own condition for sending a prepared frame
      as it is (L{prepared_frame_as_is}).
    - C{CONFIG_ATTRS} and C{_connectionMade}'s copying: Autobahn copies each
      protocol option from the factory onto every new connection unless the
      protocol already has the attribute (L{read_options_from_factory}).
    - C{_protocol_violation}, which Autobahn's frame parser calls with a
      reason and whose False answer lets it read the frame on: a length
      written in more bytes than it needs (L{NON_MINIMAL_LENGTH}) is read as
      the length it is.  Autobahn|Android (PlugBuddy) writes a 125-byte
      message's length in 16 bits, arduinoWebSockets a 65535-byte one's in
      64; RFC 6455 says to write the minimal form, and nothing is ambiguous
      about the other, so both are read rather than failed with 1002.
    """

    # Autobahn's reason for a frame whose length is not in its minimal form.
    NON_MINIMAL_LENGTH = "invalid data frame length (not using minimal length encoding)"

    # What Autobahn keeps of the opening handshake and never reads once the
    # connection is open (onConnect has had it all as a ConnectionRequest).
    HANDSHAKE_ONLY = (
        "http_request_data",
        "http_response_data",
        "http_status_line",
        "http_headers",
        "http_request_uri",
        "http_request_host",
        "http_request_path",
        "http_request_params",
        "websocket_origin",
        "websocket_protocols",
        "websocket_extensions",
        "_wskey",
    )

    def _onOpen(self) -> None:
        try:
            super()._onOpen()
        finally:
            for name in self.HANDSHAKE_ONLY:
                setattr(self, name, None)

    def _protocol_violation(self, reason: str) -> bool:
        if reason == self.NON_MINIMAL_LENGTH:
            return False  # read on: the length is the length
        return super()._protocol_violation(reason)

    def unparsed(self) -> bytes:
        """
        What has been received and not parsed yet: during the opening
        handshake, the request head so far.
        """
        return self.data

    def insert_header(self, line: bytes) -> None:
        """
        Put the header C{line} (with its CRLF) right after the request line
        of the opening handshake received so far.
        """
        first = self.data.find(b"\n") + 1
        self.data = self.data[:first] + line + self.data[first:]

    def replace_request_line(self, line: bytes) -> None:
        """
        Put C{line} (without its line end) in place of the request line of
        the opening handshake received so far.
        """
        end = self.data.find(b"\n")
        if self.data[end - 1:end] == b"\r":
            end -= 1
        self.data = line + self.data[end:]

    def prepared_frame_as_is(self, prepared):
        """
        The bytes of C{prepared} if this connection may send them as they
        are (no per-message compression in use, nothing queued for chopped
        or synchronous sends), else C{None}.
        """
        if (self._perMessageCompress is None or prepared.doNotCompress) and not self.send_queue:
            return prepared.payloadHybi
        return None


class _FactoryOption:
    """
    A protocol option read from the connection's factory unless the
    connection sets its own.
    """

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, protocol, owner=None):
        if protocol is None:
            return self
        return getattr(protocol.factory, self.name)


def read_options_from_factory(protocol_class) -> None:
    """
    Give C{protocol_class} every Autobahn protocol option as a class
    attribute that reads the factory's value.

    Autobahn copies each of its protocol options from the factory onto every
    connection when it is made, unless the protocol already has that
    attribute.  With these on the class it has them all, so nothing is
    copied and each idle connection's attribute dict is a third smaller.
    The difference: a later C{factory.setProtocolOptions} also reaches
    connections already open.
    """
    for name in WebSocketServerProtocol.CONFIG_ATTRS:
        option = _FactoryOption()
        option.__set_name__(protocol_class, name)
        setattr(protocol_class, name, option)


# -- Twisted: twistd's text log observer ----------------------------------


def text_log_observers(publisher) -> list:
    """
    The C{FileLogObserver}s that C{publisher} (twistd's: the global one)
    sends events to.

    Why: twistd makes its log file's observer itself and keeps it only in
    its private C{AppLogger._observer}; no public API lists a publisher's
    observers.  Relies on C{LogPublisher._observers}, a list.
    """
    return [observer for observer in publisher._observers if isinstance(observer, FileLogObserver)]


def log_formatter(observer):
    """
    The function C{observer} turns each event into its text with.  Relies on
    C{FileLogObserver.formatEvent}, set from its constructor's argument and
    called for every event.
    """
    return observer.formatEvent


def set_log_formatter(observer, formatter) -> None:
    """
    Make C{observer} turn each event into its text with C{formatter}.
    """
    observer.formatEvent = formatter


# -- Twisted: twistd's daemon start-up ---------------------------------------


def tell_daemon_parent(twistd_config, line: str) -> None:
    """
    When C{twistd smartplug} runs as a daemon, tell the process waiting in
    the foreground that start-up failed, with C{line}, and remove the pid
    file, as twistd does for an exception; otherwise do nothing.

    Why: twistd's foreground parent waits, reading a pipe, until the
    daemon writes how its start went; it writes only when starting the
    application raises an C{Exception}.  Our one-line refusal ends the
    process with C{SystemExit} (no traceback), which it does not catch, and
    the parent holds the pipe's write end itself: it would wait for good
    (C{make start} hung with a port taken).  No public API reaches the
    pipe.  Relies on C{UnixApplicationRunner.daemonize} setting
    C{config["statusPipe"]} (the pipe's file descriptor) in twistd's options
    (C{twistd_config}: the plugin's options' C{parent}), on its parent's
    C{_waitForStart} reading up to 100 bytes, C{b"0"} for success and
    anything else for failure, printing all but its first two, and on
    C{config["pidfile"]}.  Without C{statusPipe} (C{twistd -n}, or before
    the daemon has forked) it does nothing.
    """
    if twistd_config is None:
        return
    try:
        pipe = twistd_config["statusPipe"]
    except KeyError:
        return
    if pipe is None:
        return
    # The pid file first: once told, the command in the foreground exits,
    # and what runs next must not find it.
    pidfile = twistd_config.get("pidfile")
    if pidfile:
        with contextlib.suppress(OSError):
            os.unlink(pidfile)
    with contextlib.suppress(OSError):
        os.write(pipe, b"1 " + line.encode("ascii", "backslashreplace")[:98])
        os.close(pipe)


# -- python-twitter ---------------------------------------------------------


def requests_session(api):
    """
    The C{requests} session a C{twitter.Api} sends everything through
    (C{Api._session}): python-twitter never looks at HTTP status codes, so a
    response hook on it checks them before python-twitter reads the body.
    """
    return api._session
