"""
The server's fixed limits (SPEC 6.3), in one place, and the process's own
limit on open files, raised to fit MAX_CONNECTIONS.
"""

from twisted.application.service import Service
from twisted.logger import Logger

# Request bodies over this are refused with 413, before they are read.
MAX_BODY = 64 * 1024
# WebSocket frames or messages over this close the connection with 1009.
MAX_MESSAGE = 64 * 1024
# A WebSocket peer with more than this written to it but unsent is cut off.
MAX_UNSENT = 1024 * 1024

# Descriptors beyond MAX_CONNECTIONS: listening sockets, log and state files,
# the reactor's waker, thread pools' DNS lookups.
SPARE_FILES = 256


def raise_open_files_limit(wanted: int, rlimits=None) -> tuple:
    """
    Raise this process's soft limit on open files to C{wanted}, or as near
    as its hard limit allows.  Never lowers it.

    Each connection is a file descriptor, and many systems start processes
    with a soft limit of 1024: a server that does not raise it refuses
    (EMFILE) every connection after about a thousand.

    @param rlimits: the C{resource} module, or a stand-in in tests; C{None}
        means the real one.
    @return: C{(soft limit before, soft limit after)}, or C{None} where
        there are no such limits (not a Unix).
    """
    if rlimits is None:
        try:
            import resource as rlimits
        except ImportError:
            return None
    soft, hard = rlimits.getrlimit(rlimits.RLIMIT_NOFILE)
    if soft == rlimits.RLIM_INFINITY or soft >= wanted:
        return soft, soft
    new = wanted if hard == rlimits.RLIM_INFINITY else min(wanted, hard)
    if new > soft:
        rlimits.setrlimit(rlimits.RLIMIT_NOFILE, (new, hard))
    return soft, max(new, soft)


class OpenFilesLimitService(Service):
    """
    On start, raise the open files limit so that C{max_connections} fit,
    and say so; warn when the hard limit does not allow it.
    """

    _log = Logger(namespace="smartplug_backend")

    def __init__(self, max_connections: int, rlimits=None) -> None:
        self.max_connections = max_connections
        self._rlimits = rlimits

    def startService(self) -> None:
        super().startService()
        wanted = self.max_connections + SPARE_FILES
        limits = raise_open_files_limit(wanted, self._rlimits)
        if limits is None:
            return
        before, after = limits
        if after < wanted:
            self._log.warn(
                "open files limit is {after} (the hard limit): fewer than MAX_CONNECTIONS = "
                "{max_connections} connections fit; raise it (ulimit -Hn, systemd LimitNOFILE=)",
                after=after,
                max_connections=self.max_connections,
            )
        elif after != before:
            self._log.info(
                "open files limit raised from {before} to {after} for MAX_CONNECTIONS = {max_connections}",
                before=before,
                after=after,
                max_connections=self.max_connections,
            )
