"""
URLs of outside services (C{REDIS_URL}, C{MQTT_URL}, C{TWITTER_API_URL})
as logs, error messages and the dashboard show them: L{redact}, the one
function they all use, so a password hidden in one is hidden in all.  Pure:
no client library is loaded.
"""

import re
from urllib.parse import unquote, urlsplit

HIDDEN = "***"

# Query parameters whose value is a secret: redis-py reads the password and
# the TLS key's passphrase from the query (password=, ssl_password=).
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)


def redact(url: str) -> str:
    """
    C{url} with its secrets hidden as C{***}, the rest as written: the
    password of the user information (and a lone C{user@}, which may be a
    password), and the value of every query parameter whose name says it
    is a secret (C{password=}, C{ssl_password=}, C{token=}...) or that
    holds an C{@}.

    A URL that does not read cleanly (no host, a bad port, an C{@} in its
    path or fragment, a query part that is no C{name=value}) may hold a
    password written with an unencoded C{/}, C{?} or C{#}: then everything
    up to the last C{@} is taken as user information and hidden (at worst,
    more than the user information is), and so is its query or fragment.
    Never raises.
    """
    try:
        parts = urlsplit(url)
        clean = bool(parts.hostname) and parts.port != 0
    except ValueError:
        clean = False
    if clean and ("@" in parts.path or "@" in parts.fragment or ("@" in parts.query and "@" not in parts.netloc)):
        # An "@" after the host (in a query: with none before it): the user
        # information may have been cut short by a / ? or # in the password
        # (redis://u:12345?x=y@host reads as port 12345 and a query), so it
        # is hidden roughly.
        clean = False
    query = []
    if clean and parts.query:
        for item in parts.query.split("&"):
            name, equals, value = item.partition("=")
            if not equals:
                clean = False
                break
            if value and (_SECRET_NAME.search(unquote(name)) or "@" in unquote(value)):
                value = HIDDEN
            query.append(f"{name}={value}")
    if not clean:
        return _redact_roughly(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = _hide_userinfo(userinfo) + "@" + host if at else host
    text = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        text += "?" + "&".join(query)
    if parts.fragment:
        text += "#" + parts.fragment
    return text


def _hide_userinfo(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    # A user name is shown only when it cannot hold part of a password.
    if colon and not any(c in user for c in "/?#"):
        return f"{user}:{HIDDEN}"
    return HIDDEN


def _redact_roughly(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    # What follows the host may hold secrets too: a query or fragment is
    # hidden whole.
    cut = min((i for i in (host.find("?"), host.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        host = host[:cut + 1] + HIDDEN
    return f"{scheme}{sep}{_hide_userinfo(userinfo) + at if at else ''}{host}"
