"""
A service that listens on one endpoint and says where, in one log line.
"""

import sys

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger


def endpoint_description(port: int, interface: str) -> str:
    """
    A Twisted endpoint description for a plain TCP listener.
    """
    # Colons in an IPv6 interface must be escaped in endpoint descriptions.
    return f"tcp:{port}:interface={interface.replace(':', chr(92) + ':')}"


class ListenerService(Service):
    """
    Listen with C{factory} on the endpoint C{description} when started.

    The bound address is logged as C{"<name> listening on <host>:<port>"}.
    A listener that cannot start stops start-up with one line on stderr.
    """

    _log = Logger(namespace="smartplug_backend")

    def __init__(self, label: str, reactor, description: str, factory) -> None:
        self.label = label
        self._reactor = reactor
        self._description = description
        self._factory = factory
        self.port = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            endpoint = serverFromString(self._reactor, self._description)
        except Exception as e:
            fail(f"{self.label}: bad endpoint {self._description!r}: {e}")
        d = endpoint.listen(self._factory)
        d.addCallbacks(self._listening, self._failed)

    def _listening(self, port) -> None:
        self.port = port
        address = port.getHost()
        self._log.info(
            "{label} listening on {host}:{port}",
            label=self.label,
            host=address.host,
            port=address.port,
        )

    def _failed(self, failure) -> None:
        fail(f"{self.label}: cannot listen on {self._description}: {failure.getErrorMessage()}")

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
