"""
The listeners: Twisted's C{StreamServerEndpointService}, saying in one log
line where each one listens.
"""

import errno
import os
from typing import Callable

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from ..core.limits import LISTEN_BACKLOG
from .services import StartupError

BACKLOG = LISTEN_BACKLOG

_log = Logger(namespace="smartplug_backend")


def endpoint_description(port: int, interface: str) -> str:
    """
    A Twisted endpoint description for a plain TCP listener.
    """
    # Colons in an IPv6 interface must be escaped in endpoint descriptions.
    return f"tcp:{port}:interface={interface.replace(':', chr(92) + ':')}"


def brings_own_tls(description: str) -> bool:
    """
    True for an C{ssl:} endpoint description: it has its certificate and
    speaks TLS itself.
    """
    return description.strip().lower().startswith("ssl:")


def with_backlog(description: str) -> str:
    """
    C{description} with C{backlog=BACKLOG} added to a C{tcp:} or C{ssl:}
    endpoint that names none, so that endpoints given on the command line
    queue as many connections as the built-in ones.
    """
    kind = description.strip().split(":", 1)[0].lower()
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={BACKLOG}"
    return description


def listener(label: str, reactor, description: str, factory, secure_scheme=None) -> StreamServerEndpointService:
    """
    A service listening with C{factory} on C{description}.

    The bound address is logged as C{"<label> listening on <host>:<port>"};
    with a C{secure_scheme} (C{"https"}, C{"wss"}) a second line says that
    the listener speaks it.  A description that does not parse raises
    L{StartupError} here; one that cannot bind raises it when the service
    starts (a TCP listener binds at once), so start-up ends with one line.
    """
    try:
        endpoint = serverFromString(reactor, with_backlog(description))
    except Exception as e:
        raise StartupError(f"{label}: bad endpoint {description!r}: {e}") from e
    return _Listener(label, description, endpoint, factory, secure_scheme)


class _Listener(StreamServerEndpointService):
    #: The TCP port bound, once listening.
    bound_port = None

    def __init__(self, label: str, description: str, endpoint, factory, secure_scheme=None) -> None:
        super().__init__(_Announced(endpoint, label, secure_scheme, self._bound), factory)
        self.label = label
        self._description = description
        # Documented on StreamServerEndpointService: a listen() that fails
        # before start-up has finished raises from privilegedStartService,
        # instead of being logged while the server runs without the port.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            # Twisted's CannotListenError repeats the address; its socket
            # error alone says why, and keeps the line short enough for
            # twistd's daemon to print whole (about 100 characters).
            cause = getattr(e, "socketError", None)
            why = cause.strerror if isinstance(cause, OSError) and cause.strerror else e
            in_use = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
            taken_by = self._sibling_on(getattr(e, "port", None)) if in_use else None
            if taken_by is not None:
                # Short, the cause first: a daemon's foreground command
                # prints about 100 characters of the line.
                raise StartupError(
                    f"{self.label}: port {e.port} is the {taken_by} listener's too; give each its own port"
                ) from e
            raise StartupError(f"{self.label}: cannot listen on {self._description}: {why}") from e

    def _bound(self, port: int) -> None:
        self.bound_port = port

    def _sibling_on(self, port):
        """
        The label of another of this server's listeners bound to C{port},
        or C{None}: two settings naming one port is the likelier cause of
        "address in use" than a stranger holding it.
        """
        if not port:
            return None
        for service in self.parent or ():
            if service is not self and getattr(service, "bound_port", None) == port:
                return service.label
        return None


@implementer(IStreamServerEndpoint)
class _Announced:
    """
    An endpoint that logs where its port listens once it does.
    """

    def __init__(self, endpoint, label: str, secure_scheme, bound: Callable[[int], None]) -> None:
        self._endpoint = endpoint
        self._label = label
        self._secure_scheme = secure_scheme
        self._bound = bound

    def listen(self, factory) -> Deferred:
        return self._endpoint.listen(factory).addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        address = port.getHost()
        if hasattr(address, "port"):
            # An IPv6 address in brackets: "[::]:9001", not ":::9001".
            host = f"[{address.host}]" if ":" in address.host else address.host
            _log.info("{label} listening on {host}:{port}", label=self._label, host=host, port=address.port)
            self._bound(address.port)
            where = f"port {address.port}"
        else:
            # A unix: socket has a path and no port.
            name = getattr(address, "name", address)
            where = os.fsdecode(name) if isinstance(name, bytes) else str(name)
            _log.info("{label} listening on {path}", label=self._label, path=where)
        if self._secure_scheme:
            _log.info(
                "{label} on {where} speaks {scheme} (TLS 1.2 or newer)",
                label=self._label, where=where, scheme=self._secure_scheme,
            )
        return port
