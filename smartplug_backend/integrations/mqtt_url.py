"""
C{MQTT_URL}: C{mqtt://user:password@host:1883} or C{mqtts://...}, read into a
L{Broker}.  Pure, and free of paho, so the settings can check the URL
without loading the MQTT client.
"""

import dataclasses
from typing import Optional
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
EXAMPLE = "mqtt://user:password@host:1883"


class InvalidBrokerURL(ValueError):
    """
    C{MQTT_URL} is not usable; C{str(error)} says why and never holds the
    password.
    """


@dataclasses.dataclass(frozen=True)
class Broker:
    """
    Where the MQTT broker is and how to log in.  The password is left out of
    C{repr}, so a stray log of this object shows no secret.
    """

    host: str
    port: int
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = dataclasses.field(default=None, repr=False)

    @property
    def where(self) -> str:
        """C{mqtt://host:port} (an IPv6 host in brackets), for logs: no user, no password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str) -> Broker:
    """
    Read C{mqtt[s]://[user[:password]@]host[:port]}; user and password may
    be percent-encoded (C{%40} for C{@}).

    @raise InvalidBrokerURL: anything else, or a path, query or fragment.
    """
    if not isinstance(url, str):
        raise InvalidBrokerURL(f"an mqtt:// or mqtts:// URL such as {EXAMPLE!r}")
    if url != url.strip():
        # urlsplit drops some of it (leading spaces), not the rest.
        raise InvalidBrokerURL(f"a URL without spaces or line ends around it, such as {EXAMPLE!r}")
    try:
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise InvalidBrokerURL(f"an mqtt:// or mqtts:// URL such as {EXAMPLE!r}")
        try:
            port = parts.port
        except ValueError:
            raise InvalidBrokerURL("a URL with a port number from 1 to 65535" + userinfo_hint(url)) from None
        if not parts.hostname:
            raise InvalidBrokerURL(f"a URL with a host name, such as {EXAMPLE!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidBrokerURL(f"a URL without a path or query, such as {EXAMPLE!r}" + userinfo_hint(url))
    except InvalidBrokerURL:
        raise
    except ValueError:
        # urlsplit's own complaints: "Invalid IPv6 URL", a bracketed host
        # that is no address.
        raise InvalidBrokerURL(f"a URL with a valid host, such as {EXAMPLE!r}") from None
    if port == 0:
        raise InvalidBrokerURL("a URL with a port number from 1 to 65535")
    if parts.password is not None and not parts.username:
        # MQTT sends a password only with a user name: it would be dropped.
        raise InvalidBrokerURL(f"a URL with a user name before the password, such as {EXAMPLE!r}")
    return Broker(
        host=parts.hostname,
        port=port or DEFAULT_PORTS[parts.scheme],
        tls=parts.scheme == "mqtts",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def userinfo_hint(url: str) -> str:
    """
    For an error about a URL with user information: a C{/}, C{?} or C{#}
    in the password ends the host part early, and the rest reads as a
    port, path, query or fragment; say how to write them (and C{%}, which
    would otherwise start an escape).
    """
    if "@" not in url:
        return ""
    return "; if the user or password holds % / ? # or @, percent-encode them (%25 %2F %3F %23 %40)"
