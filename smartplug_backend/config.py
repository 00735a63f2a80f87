"""
Load the Python settings file (SPEC 8) into one frozen L{Settings} object.

The file is ordinary Python, executed in a namespace of its own.  Only its
UPPER_CASE names count; each must be a known setting of the right type.
Every problem is reported as a L{ConfigError} whose message is one line that
names the file, the setting and what was expected, so twistd can print it
instead of a traceback.
"""

import ast
import dataclasses
import difflib
import ipaddress
import os
import re
import runpy
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from .integrations.mqtt_url import InvalidBrokerURL, parse_broker_url, userinfo_hint
from .integrations.urls import redact

DEFAULT_PATH = "settings.py"

_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")


class ConfigError(Exception):
    """
    The settings file cannot be used; C{str(error)} is one line for a human.
    """


def _port(v: Any) -> Optional[str]:
    if type(v) is int and 0 <= v <= 65535:
        return None
    return "a port number from 0 to 65535"


def _positive(v: Any, unit: str = "seconds") -> Optional[str]:
    if type(v) in (int, float) and v > 0:
        return None
    return f"a number of {unit} greater than 0"


def _positive_days(v: Any) -> Optional[str]:
    return _positive(v, "days")


def _optional_positive(v: Any) -> Optional[str]:
    return None if v is None else _positive(v)


def _count(v: Any) -> Optional[str]:
    if type(v) is int and v >= 1:
        return None
    return "a whole number of at least 1"


def _optional_count(v: Any) -> Optional[str]:
    if v is None or (type(v) is int and v >= 1):
        return None
    return "a whole number of at least 1, or None"


def _whole(v: Any) -> Optional[str]:
    if type(v) is int and v >= 0:
        return None
    return "a whole number of at least 0"


def _text(v: Any) -> Optional[str]:
    return None if isinstance(v, str) else "a string"


_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _listen_address(v: Any) -> Optional[str]:
    # An interface's address ("0.0.0.0", "::", "192.168.1.5") or a host
    # name; a port belongs to the port settings ("0.0.0.0:9000" would
    # only fail when listening, as a host name that does not resolve).
    if v == "":
        # The socket's own spelling of every IPv4 interface, as "0.0.0.0".
        return None
    if isinstance(v, str):
        try:
            ipaddress.ip_address(v)
            return None
        except ValueError:
            if len(v) <= 253 and _HOST_NAME.fullmatch(v):
                return None
    return 'an address to listen on, such as "0.0.0.0" (every IPv4 interface), "::" (IPv6 too) or "192.168.1.5", without a port'


def _tweet_text(v: Any) -> Optional[str]:
    # Twitter takes 1 to 280 characters (it counts some twice; most texts
    # are far from that).
    if isinstance(v, str) and 1 <= len(v.strip()) and len(v) <= 280:
        return None
    return "a tweet's text: a string of 1 to 280 characters"


def _http_url(v: Any) -> Optional[str]:
    if isinstance(v, str) and v.startswith(("https://", "http://")) and len(v) > len("https://"):
        return None
    return 'a URL starting with https:// (or http://), such as "https://api.twitter.com"'


def _optional_text(v: Any) -> Optional[str]:
    if v is None or (isinstance(v, str) and v):
        return None
    return "a non-empty string or None"


def _redis_url(v: Any) -> Optional[str]:
    if v is None:
        return None
    expected = 'None or a URL such as "redis://host:6379/0" (rediss:// for TLS)'
    if not isinstance(v, str):
        return expected
    try:
        parts = urlsplit(v)
    except ValueError:
        return expected + ", with a valid host"
    try:
        port = parts.port
    except ValueError:
        return expected + ", with a port number from 1 to 65535" + userinfo_hint(v)
    if parts.scheme not in ("redis", "rediss"):
        return expected
    if port == 0:
        return expected + ", with a port number from 1 to 65535"
    if not re.fullmatch(r"/?|/[0-9]+", parts.path) or parts.fragment:
        return expected + ", whose path is only a database number" + userinfo_hint(v)
    try:
        # Loaded only when REDIS_URL is set; its own reading of the query
        # (ssl_ca_certs=..., socket_timeout=...) must not fail at start.
        from redis import ConnectionPool
        from redis.connection import parse_url

        parse_url(v)
        # Builds a connection object (connecting nothing): an option redis-py
        # does not know (socket_timout=5) fails here, not at start-up.
        ConnectionPool.from_url(v).make_connection()
    except ImportError:
        return None  # the engine's import says what is missing
    except (TypeError, ValueError) as e:
        return f"{expected}; redis-py cannot use it: {e}"
    return None


def _bool(v: Any) -> Optional[str]:
    return None if type(v) is bool else "True or False"


def _api(v: Any) -> Optional[str]:
    return None if v in ("v1.1", "v2") else '"v1.1" or "v2"'


def _networks(v: Any) -> Optional[str]:
    expected = 'a list of addresses or networks, e.g. ["192.168.1.0/24"]'
    if not isinstance(v, (list, tuple)):
        return expected
    for item in v:
        try:
            ipaddress.ip_network(item, strict=False)
        except (TypeError, ValueError):
            # Which entry, in a list that may be long.
            shown = repr(item) if len(repr(item)) <= 40 else repr(item)[:37] + "..."
            return _Detailed(f'{shown} is not an address or network (such as "192.168.1.5" or "192.168.1.0/24")')
    return None


def _mqtt_url(v: Any) -> Optional[str]:
    if v is None:
        return None
    try:
        parse_broker_url(v)
    except InvalidBrokerURL as e:
        return str(e)
    return None


def _topic_prefix(example: str) -> Callable[[Any], Optional[str]]:
    # A prefix is used as the first levels of topics we publish to and
    # subscribe under: no wildcards, no empty levels, and no leading $
    # (topics a broker keeps for itself, such as $SYS: it drops what
    # clients publish there).
    def check(v: Any) -> Optional[str]:
        if (isinstance(v, str) and v and "+" not in v and "#" not in v and "\0" not in v
                and "" not in v.split("/") and not v.startswith("$")):
            return None
        return f'a topic prefix such as "{example}": no +, #, empty levels, or $ at the start'

    return check


class _Detailed(str):
    """
    A check's answer that says in full what is wrong with a value of the
    right type (no "must be ..., not ..." around it).
    """


def _users(v: Any) -> Optional[str]:
    from .command import admin_command

    def expected() -> str:
        return f'a dict of user names to hashes from "{admin_command()} passwd NAME"'

    if not isinstance(v, dict):
        return expected()
    from .server.passwords import InvalidHash, parse_hash

    for name, hashed in v.items():
        if not isinstance(name, str) or not name:
            return expected()
        try:
            parse_hash(hashed)
        except InvalidHash as e:
            # The value is a dict: "not a value of type dict" would confuse.
            return _Detailed(f"the entry of {name!r} is {e}")
    return None


@dataclasses.dataclass(frozen=True)
class _Setting:
    default: Any
    check: Callable[[Any], Optional[str]]


TWEET_PLUGGED_IN = "Look at that, my #craplab #smartplug just got plugged in!"
TWEET_UNPLUGGED = "It was fun while it lasted. I unplugged my #craplab #smartplug."

# SPEC 8, in its order; the repository's settings.py mirrors this table.
SETTINGS: dict[str, _Setting] = {
    "WWW_SERVER_PORT": _Setting(9000, _port),
    "WS_SERVER_PORT": _Setting(9001, _port),
    "DEVICE_SERVER_PORT": _Setting(6661, _port),
    "LISTEN_ADDRESS": _Setting("0.0.0.0", _listen_address),
    "AUTH_SECRET": _Setting(None, _optional_text),
    "DEVICE_AUTH_TIMEOUT": _Setting(10, _positive),
    "DEVICE_IDLE_TIMEOUT": _Setting(30, _positive),
    "API_KEY": _Setting(None, _optional_text),
    "INFO_INTERVAL": _Setting(5, _positive),
    "TWITTER_ENABLED": _Setting(False, _bool),
    "CONSUMER_KEY": _Setting("", _text),
    "CONSUMER_SECRET": _Setting("", _text),
    "ACCESS_TOKEN_KEY": _Setting("", _text),
    "ACCESS_TOKEN_SECRET": _Setting("", _text),
    "TWEET_PLUGGED_IN": _Setting(TWEET_PLUGGED_IN, _tweet_text),
    "TWEET_UNPLUGGED": _Setting(TWEET_UNPLUGGED, _tweet_text),
    "TWITTER_API": _Setting("v1.1", _api),
    "TWITTER_API_URL": _Setting("https://api.twitter.com", _http_url),
    "TLS_CERT_FILE": _Setting(None, _optional_text),
    "TLS_KEY_FILE": _Setting(None, _optional_text),
    "BAN_AFTER": _Setting(3, _count),
    "BAN_SECONDS": _Setting(60, _positive),
    "BAN_ALLOW": _Setting((), _networks),
    "STATE_DB": _Setting("smartplug.sqlite", _optional_text),
    "HISTORY_KEEP": _Setting(10000, _count),
    "BACKUP_INTERVAL": _Setting(None, _optional_positive),
    "BACKUP_KEEP": _Setting(7, _count),
    "MAX_CONNECTIONS": _Setting(10000, _count),
    "MAX_CONNECTIONS_PER_ADDRESS": _Setting(500, _optional_count),
    "PUBSUB_HISTORY": _Setting(100, _whole),
    "PUBSUB_HISTORY_SECONDS": _Setting(86400, _positive),
    "DASHBOARD_USERS": _Setting({}, _users),
    "DASHBOARD_SESSION_DAYS": _Setting(30, _positive_days),
    "METRICS_ALLOW": _Setting(("127.0.0.1", "::1"), _networks),
    "REDIS_URL": _Setting(None, _redis_url),
    "NODE_NAME": _Setting(None, _optional_text),
    "MQTT_URL": _Setting(None, _mqtt_url),
    "MQTT_PREFIX": _Setting("smartplug", _topic_prefix("smartplug")),
    "HA_DISCOVERY_PREFIX": _Setting("homeassistant", _topic_prefix("homeassistant")),
    "MQTT_EVENTS": _Setting(False, _bool),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """
    Every setting of SPEC 8, validated; immutable once loaded.

    C{path} is the file the values came from, or C{None} for built-in
    defaults.
    """

    WWW_SERVER_PORT: int
    WS_SERVER_PORT: int
    DEVICE_SERVER_PORT: int
    LISTEN_ADDRESS: str
    AUTH_SECRET: Optional[str]
    DEVICE_AUTH_TIMEOUT: float
    DEVICE_IDLE_TIMEOUT: float
    API_KEY: Optional[str]
    INFO_INTERVAL: float
    TWITTER_ENABLED: bool
    CONSUMER_KEY: str
    CONSUMER_SECRET: str
    ACCESS_TOKEN_KEY: str
    ACCESS_TOKEN_SECRET: str
    TWEET_PLUGGED_IN: str
    TWEET_UNPLUGGED: str
    TWITTER_API: str
    TWITTER_API_URL: str
    TLS_CERT_FILE: Optional[str]
    TLS_KEY_FILE: Optional[str]
    BAN_AFTER: int
    BAN_SECONDS: float
    BAN_ALLOW: tuple
    STATE_DB: Optional[str]
    HISTORY_KEEP: int
    BACKUP_INTERVAL: Optional[float]
    BACKUP_KEEP: int
    MAX_CONNECTIONS: int
    MAX_CONNECTIONS_PER_ADDRESS: Optional[int]
    PUBSUB_HISTORY: int
    PUBSUB_HISTORY_SECONDS: float
    DASHBOARD_USERS: dict
    DASHBOARD_SESSION_DAYS: float
    METRICS_ALLOW: tuple
    REDIS_URL: Optional[str]
    NODE_NAME: Optional[str]
    MQTT_URL: Optional[str]
    MQTT_PREFIX: str
    HA_DISCOVERY_PREFIX: str
    MQTT_EVENTS: bool
    path: Optional[str] = None

    def __repr__(self) -> str:
        # Secrets must never reach a log through a stray repr().
        return f"<Settings from {self.path or 'built-in defaults'}>"


def settings_from(values: dict[str, Any], path: Optional[str] = None) -> Settings:
    """
    Validate C{values} (UPPER_CASE names only) over the defaults.

    @raise ConfigError: for an unknown name or a value of the wrong type.
    """
    where = path or "settings"
    merged = {name: s.default for name, s in SETTINGS.items()}
    for name, value in values.items():
        if name not in SETTINGS:
            close = difflib.get_close_matches(name, SETTINGS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{where}: unknown setting {name}{hint}")
        problem = SETTINGS[name].check(value)
        if isinstance(problem, _Detailed):
            raise ConfigError(f"{where}: {name}: {problem}")
        if problem:
            raise ConfigError(
                f"{where}: {name} must be {problem}, not {_describe(name, value)}"
            )
        merged[name] = value
    merged["BAN_ALLOW"] = tuple(merged["BAN_ALLOW"])
    merged["DASHBOARD_USERS"] = dict(merged["DASHBOARD_USERS"])
    merged["METRICS_ALLOW"] = tuple(merged["METRICS_ALLOW"])
    if merged["MQTT_PREFIX"] == merged["HA_DISCOVERY_PREFIX"]:
        # Our <prefix>/status would read as Home Assistant's birth message.
        raise ConfigError(f"{where}: MQTT_PREFIX must differ from HA_DISCOVERY_PREFIX")
    return Settings(path=path, **merged)


def _describe(name: str, value: Any) -> str:
    # Never echo the value of a setting that may hold a secret.
    if name in ("AUTH_SECRET", "API_KEY", "DASHBOARD_USERS") or name.endswith(("_SECRET", "_KEY")):
        # An empty text gives nothing away, and "a value of type str" would
        # read as if a string were wrong.
        return "an empty string" if value == "" else f"a value of type {type(value).__name__}"
    if name.endswith("_URL") and isinstance(value, str):
        # A query may hold a password too (redis://h/0?password=...).
        value = redact(value)
        value = value.split("?", 1)[0] + ("?..." if "?" in value else "")
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load(path: Optional[str] = None) -> Settings:
    """
    Load settings from C{path}.

    With C{path=None}, C{./settings.py} is used if it exists, else the
    built-in defaults.  An explicit path that does not exist is an error.
    """
    if path is None:
        if not os.path.exists(DEFAULT_PATH):
            return settings_from({})
        path = DEFAULT_PATH
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory, not a settings file")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such settings file")
    try:
        namespace = runpy.run_path(path, run_name="smartplug_settings")
    except SyntaxError as e:
        raise ConfigError(f"{path} line {e.lineno}: {e.msg}") from None
    except Exception as e:
        number = _line_in(path, e.__traceback__)
        line = f" line {number}" if number else ""
        raise ConfigError(f"{path}{line}: {_settings_error(e, _source_line(path, number))}") from None
    set_only = _names_set_only(path)
    for name in namespace:
        # api_key = "..." would be ignored, leaving the server without a
        # key: a name that is a setting but for its case is an error when
        # the file sets it and never reads it, unless the setting takes its
        # very value (API_KEY = globals()["api_key"]).  A helper the file
        # reads (API_KEY = api_key.strip()) is fine, and so is one that
        # comes from elsewhere (exec, import): that file is not this one.
        if (not _UPPER.match(name) and name.upper() in SETTINGS and name in set_only
                and not _same(namespace.get(name.upper(), _UNSET), namespace[name])):
            raise ConfigError(f"{path}: unknown setting {name}; did you mean {name.upper()}? (settings are UPPER_CASE)")
    values = {k: v for k, v in namespace.items() if _UPPER.match(k)}
    return settings_from(values, path)


_UNSET = object()


def _names_set_only(path: str) -> set:
    """
    The names the settings file at C{path} (which ran) sets but never
    reads, anywhere in it: a lower-case one like a setting's is a
    misspelling, whatever else the file sets (a value of the real
    setting's own, in a file edited in place, used to pass for a helper).
    Nothing for a file that is no Python source (a C{.pyc}, a zip), which
    runpy runs too.
    """
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return set()
    stored, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else stored).add(node.id)
    return stored - read


def _same(setting: Any, helper: Any) -> bool:
    try:
        return setting is helper or bool(setting == helper)
    except Exception:
        return False


# Words people write for Python's True, False and None.
_LITERAL_SLIPS = {"true": "True", "false": "False", "none": "None", "null": "None", "yes": "True", "no": "False"}
# A settings line that may hold a secret: its error never quotes values.
_SECRET_LINE = re.compile(r"SECRET|KEY|TOKEN|PASSW|USERS|_URL", re.IGNORECASE)


def _settings_error(error: Exception, source: str) -> str:
    """
    What went wrong running the settings file, without quoting a value that
    may be a secret: C{AUTH_SECRET = hunter2} is a NameError for
    C{hunter2}.
    """
    if isinstance(error, NameError):
        name = getattr(error, "name", None)
        if name and name.lower() in _LITERAL_SLIPS:
            return f"{name} is not defined: Python writes {_LITERAL_SLIPS[name.lower()]}"
        return "a name that is not defined (text needs quotes, as in \"...\"; Python writes True, False and None)"
    text = f"{type(error).__name__}: {error}".rstrip(": ")
    if isinstance(error, KeyError) and "environ" in source:
        # os.environ["SMARTPLUG_SECRET"]: the variable's name is no secret.
        return f"{text} (an environment variable that is not set)"
    if _SECRET_LINE.search(source):
        return f"{type(error).__name__} (its message is not shown: the line may hold a secret)"
    return text


def _source_line(path: str, number: int) -> str:
    """
    Line C{number} of C{path}, or "".
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, text in enumerate(f, start=1):
                if i == number:
                    return text
    except OSError:
        pass
    return ""


def _line_in(path: str, tb) -> int:
    """
    The line of C{path} in traceback C{tb}, or 0.
    """
    target = os.path.abspath(path)
    line = 0
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == target:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
