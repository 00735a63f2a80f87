"""
A service that listens on one endpoint and says where, in one log line.
"""

import os
import sys

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger


# Connections the kernel queues before we accept them.  Twisted's default of
# 50 overflows when many apps reconnect at once (after a restart), and each
# overflow costs the client a SYN retransmission: a second or more.
BACKLOG = 1024


def endpoint_description(port: int, interface: str) -> str:
    """
    A Twisted endpoint description for a plain TCP listener.
    """
    # Colons in an IPv6 interface must be escaped in endpoint descriptions.
    return f"tcp:{port}:interface={interface.replace(':', chr(92) + ':')}:backlog={BACKLOG}"


def brings_own_tls(description: str) -> bool:
    """
    True for an C{ssl:} endpoint description: it has its certificate and
    speaks TLS itself.
    """
    return description.strip().lower().startswith("ssl:")


class ListenerService(Service):
    """
    Listen with C{factory} on the endpoint C{description} when started.

    The bound address is logged as C{"<name> listening on <host>:<port>"};
    with a C{secure_scheme} (C{"https"}, C{"wss"}) a second line says that
    the listener speaks it.  A listener that cannot start stops start-up
    with one line on stderr.
    """

    _log = Logger(namespace="smartplug_backend")

    def __init__(self, label: str, reactor, description: str, factory, secure_scheme=None) -> None:
        self.label = label
        self.secure_scheme = secure_scheme
        self._reactor = reactor
        self._description = description
        self._factory = factory
        self.port = None
        self._report_to = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            endpoint = serverFromString(self._reactor, self._description)
        except Exception as e:
            fail(f"{self.label}: bad endpoint {self._description!r}: {e}")
        # A TCP listener binds (or fails) at once; raise SystemExit outside
        # the Deferred, which would otherwise swallow it.
        problems = []
        self._report_to = problems
        endpoint.listen(self._factory).addCallbacks(self._listening, self._cannot_listen)
        self._report_to = None
        if problems:
            fail(problems[0])

    def _cannot_listen(self, failure) -> None:
        message = f"{self.label}: cannot listen on {self._description}: {failure.getErrorMessage()}"
        if self._report_to is not None:
            self._report_to.append(message)
        else:
            # Endpoints that bind later (systemd, tor) fail later; without
            # this listener the server cannot do its job.
            self._log.critical("{message}; stopping", message=message)
            self._reactor.stop()

    def _listening(self, port) -> None:
        self.port = port
        address = port.getHost()
        if hasattr(address, "port"):
            self._log.info(
                "{label} listening on {host}:{port}",
                label=self.label,
                host=address.host,
                port=address.port,
            )
            where = f"port {address.port}"
        else:
            # A unix: socket has a path and no port.
            name = getattr(address, "name", address)
            where = os.fsdecode(name) if isinstance(name, bytes) else str(name)
            self._log.info("{label} listening on {path}", label=self.label, path=where)
        if self.secure_scheme:
            self._log.info(
                "{label} on {where} speaks {scheme} (TLS 1.2 or newer)",
                label=self.label,
                where=where,
                scheme=self.secure_scheme,
            )

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


def fail(message: str) -> None:
    """
    Stop start-up with C{message} as one line on stderr: no traceback.
    """
    sys.stderr.write(f"smartplug: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)
