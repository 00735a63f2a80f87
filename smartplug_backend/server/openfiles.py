"""
The process's open-files limit, raised at start so that C{MAX_CONNECTIONS}
connections fit: each connection is a file descriptor, and many systems
start processes with a soft limit of 1024.
"""

from typing import Optional

from twisted.logger import Logger

# Descriptors besides connections: listeners, logs, the state database,
# the reactor's own pipes and epoll, thread pools' wake-ups.
SPARE = 256


def raise_open_files_limit(connections: int, resource_module=None) -> tuple[int, int, Optional[int]]:
    """
    Raise the soft limit on open files to fit C{connections} plus L{SPARE},
    as far as the hard limit allows; never lower it.

    @param resource_module: the C{resource} module (a fake in tests).
    @return: C{(before, after, hard)}: the soft limit before and after, and
        the hard limit; C{None} stands for unlimited.
    """
    if resource_module is None:
        import resource as resource_module
    soft, hard = resource_module.getrlimit(resource_module.RLIMIT_NOFILE)
    unlimited = resource_module.RLIM_INFINITY
    shown_hard = None if hard == unlimited else hard
    if soft == unlimited:
        return None, None, shown_hard
    wanted = connections + SPARE
    target = wanted if hard == unlimited else min(wanted, hard)
    if target <= soft:
        return soft, soft, shown_hard
    resource_module.setrlimit(resource_module.RLIMIT_NOFILE, (target, hard))
    return soft, target, shown_hard


_log = Logger(namespace="smartplug_backend")


def make_room(connections: int, resource_module=None) -> None:
    """
    Raise the open-files limit for C{connections} (see
    L{raise_open_files_limit}) and say so in the log; warn when the hard
    limit leaves too little room.
    """
    try:
        before, after, hard = raise_open_files_limit(connections, resource_module)
    except (ImportError, OSError, ValueError) as e:
        _log.warn("could not check the open-files limit: {error}", error=str(e))
        return
    if after is None:
        return
    if after > before:
        _log.info(
            "raised the open-files limit from {before} to {after} for MAX_CONNECTIONS ({limit})",
            before=before, after=after, limit=connections,
        )
    if after < connections + SPARE:
        _log.warn(
            "the open-files limit is {after} (hard limit {hard}): fewer than MAX_CONNECTIONS ({limit}) "
            "connections fit; raise the hard limit (ulimit -Hn, or LimitNOFILE= under systemd) "
            "or lower MAX_CONNECTIONS",
            after=after, hard=hard, limit=connections,
        )
