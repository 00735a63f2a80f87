"""
Socket options of accepted connections: TCP keepalive on every one
(L{keep_alive}), and a bounded kernel send buffer on WebSocket ones
(L{bound_send_buffer}).

TCP keepalive (SPEC 3.5) is how dead peers are found without WebSocket pings.

PiCloud's clients never answer a ping in time (they do not read), and the
plug's firmware and lamps are small; but every peer's kernel answers TCP
keepalive probes, reading or not.  A peer that is gone (unplugged, out of
Wi-Fi, its NAT entry dropped) stops answering, and the kernel resets the
connection: after C{KEEPALIVE_IDLE} seconds of silence, C{KEEPALIVE_COUNT}
probes C{KEEPALIVE_INTERVAL} seconds apart, so within about three minutes.  The system default (two
hours before the first probe) would keep a dead peer's memory that long,
and lets home routers forget quiet connections.

Keepalive is only sent while nothing is in flight.  When data waits for an
acknowledgement (a publication to a subscriber that has vanished) the
kernel retransmits instead, by default for some fifteen minutes;
C{TCP_USER_TIMEOUT} bounds that to the same few minutes.  A peer that is
alive but does not read still acknowledges (with a zero window), so it is
not cut off by this: the 1 MiB limit on what waits for it does that.

The kernel's send buffer (SPEC 6.5): Linux grows a socket's send buffer by
itself up to C{net.ipv4.tcp_wmem}'s maximum (4 MB by default), and what the
kernel holds is invisible to Twisted's buffer count, so a peer that never
reads could hold 4 MB of kernel memory, and one sent less than that was
never cut off.  A fixed C{SO_SNDBUF} turns that growth off: the kernel holds
at most twice C{WS_SEND_BUFFER} for the peer, and the rest waits in
Twisted's buffer, where the 1 MiB limit counts it.  A reading peer is not
slowed down by it on a home network: 128 KiB in flight is 1.3 MB/s at a
100 ms round trip, far above what this server sends.
"""

import socket

from twisted.logger import Logger

from ..core.limits import KEEPALIVE_COUNT, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, WS_SEND_BUFFER

# Milliseconds that sent data may stay unacknowledged (Linux).
USER_TIMEOUT_MS = (KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT) * 1000

_log = Logger(namespace="smartplug_backend.server.sockets")


def _tcp_socket(transport):
    # A TLS layer outside our wrappers (an ssl: endpoint) stands between us
    # and the TCP transport: walk down to the transport with the socket.
    for _ in range(4):
        if transport is None:
            return None
        handle = getattr(transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            return handle if handle.family in (socket.AF_INET, socket.AF_INET6) else None
        transport = getattr(transport, "transport", None)
    return None


def keep_alive(
    transport, idle: int = KEEPALIVE_IDLE, interval: int = KEEPALIVE_INTERVAL, count: int = KEEPALIVE_COUNT
) -> bool:
    """
    Turn on TCP keepalive, with these timings, on C{transport}'s socket.

    @return: True if it was set; False for a transport without a TCP socket
        (a unix socket, a test's fake) or one already reset.
    """
    sock = _tcp_socket(transport)
    if sock is None:
        return False
    try:
        # Linux names; other systems keep their own timings (still on).  The
        # timings go first: keepalive turned on before them would start its
        # timer at the system's two hours, to be restarted a moment later.
        for name, value in (
            ("TCP_KEEPIDLE", idle),
            ("TCP_KEEPINTVL", interval),
            ("TCP_KEEPCNT", count),
            ("TCP_USER_TIMEOUT", (idle + interval * count) * 1000),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError as e:
        # The peer may already have reset the connection; nothing to keep.
        _log.debug("no TCP keepalive on a new connection: {error}", error=e)
        return False
    return True


def kernel_send_buffer(transport) -> int:
    """
    The most the kernel may hold unsent or unacknowledged for
    C{transport}'s socket once L{bound_send_buffer} has run: what
    C{SO_SNDBUF} reads back (Linux doubles what was asked), or 0 for a
    transport without a TCP socket.
    """
    sock = _tcp_socket(transport)
    if sock is None:
        return 0
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    except OSError:
        return 0


def bound_send_buffer(transport, size: int = WS_SEND_BUFFER) -> int:
    """
    Fix the kernel send buffer of C{transport}'s socket at C{size} (no
    autotuning beyond it).

    @return: what the kernel may now hold for it (L{kernel_send_buffer});
        0 for a transport without a TCP socket or one already reset.
    """
    sock = _tcp_socket(transport)
    if sock is None:
        return 0
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError as e:
        _log.debug("no send buffer bound on a new connection: {error}", error=e)
        return 0
    return kernel_send_buffer(transport)
