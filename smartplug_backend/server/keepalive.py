"""
TCP keepalive on every accepted connection (SPEC 3.5): how dead peers are
found without WebSocket pings.

PiCloud's clients never answer a ping in time (they do not read), and the
plug's firmware and lamps are small; but every peer's kernel answers TCP
keepalive probes, reading or not.  A peer that is gone (unplugged, out of
Wi-Fi, its NAT entry dropped) stops answering, and the kernel resets the
connection: after L{IDLE} seconds of silence, L{COUNT} probes L{INTERVAL}
seconds apart, so within about three minutes.  The system default (two
hours before the first probe) would keep a dead peer's memory that long,
and lets home routers forget quiet connections.

Keepalive is only sent while nothing is in flight.  When data waits for an
acknowledgement (a publication to a subscriber that has vanished) the
kernel retransmits instead, by default for some fifteen minutes;
C{TCP_USER_TIMEOUT} bounds that to the same few minutes.  A peer that is
alive but does not read still acknowledges (with a zero window), so it is
not cut off by this: the 1 MiB limit on what waits for it does that.
"""

import socket

from twisted.logger import Logger

# Seconds of silence before the first probe, seconds between probes, and
# unanswered probes before the connection is reset: 60 + 8 x 15 = 180 s.
IDLE = 60
INTERVAL = 15
COUNT = 8
# Milliseconds that sent data may stay unacknowledged (Linux).
USER_TIMEOUT_MS = (IDLE + INTERVAL * COUNT) * 1000

_log = Logger(namespace="smartplug_backend.server.keepalive")


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


def keep_alive(transport, idle: int = IDLE, interval: int = INTERVAL, count: int = COUNT) -> bool:
    """
    Turn on TCP keepalive, with these timings, on C{transport}'s socket.

    @return: True if it was set; False for a transport without a TCP socket
        (a unix socket, a test's fake) or one already reset.
    """
    sock = _tcp_socket(transport)
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # Linux names; other systems keep their own timings (still on).
        for name, value in (
            ("TCP_KEEPIDLE", idle),
            ("TCP_KEEPINTVL", interval),
            ("TCP_KEEPCNT", count),
            ("TCP_USER_TIMEOUT", (idle + interval * count) * 1000),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as e:
        # The peer may already have reset the connection; nothing to keep.
        _log.debug("no TCP keepalive on a new connection: {error}", error=e)
        return False
    return True
