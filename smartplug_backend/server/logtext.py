"""
The log file's text, byte for byte as twistd writes it, at a quarter of the
cost.

twistd logs through twisted.logger's text observer, which formats each
event with C{string.Formatter} (a generic parser, run afresh for every
event) and its timestamp with three C{fromtimestamp} calls and a
C{strftime}.  For the one line each accepted report must write, that was
about a third of the report's whole server CPU (README, Benchmarks).

L{ClassicText} gives the same text for the same event: it parses each
distinct format string once, formats a second's timestamp once, and hands
every event it does not fully understand (a traceback, a flattened event, a
field with attributes, indexes, calls or nested specs, a value other than a
plain string, number or None, anything that fails) to the observer's own
formatter.  L{FastLogText} fits it onto twistd's text observers while the
server runs, after checking on sample events that it writes what they would; an observer that writes anything else (a different
time format, another layout) keeps its own formatter.

Either way the text goes through L{Escaped}: plug ids, client names and
event names come from the network, and a control character in one (an
escape sequence for the terminal that shows the log, a carriage return
that hides the start of the line) is written as C{\\x1b}, C{\\x0d}.
"""

import math
import re
import time
from string import Formatter
from typing import Callable, Optional

from twisted.application.service import Service
from twisted.logger import LogLevel, formatTime, globalLogPublisher

from .. import internals

# Formats kept parsed; more distinct ones than this (formats built at run
# time) are formatted by the observer's own formatter.
FORMATS_KEPT = 1000

_parse = Formatter().parse
# Field names that Twisted's formatter treats as more than a key of the
# event: attributes, indexes and calls ("{f()}"); positional fields.
_NOT_A_KEY = frozenset(".[]()")
_CONVERT = {None: None, "r": repr, "s": str, "a": ascii}
# Values formatted here: built-in types whose formatting runs no code of
# anyone else's.  Any other value's event goes to the fallback before any
# of its values is formatted, so that an object's __format__ or __repr__
# runs once, as under Twisted, never twice.
_PLAIN = frozenset({str, int, float, bool, type(None)})
# LogLevel's constants, whose name is a plain attribute.
_LEVEL = type(LogLevel.info)
_CANNOT = object()


# C0 controls but tab and line feed (twistd's observer indents a message's
# later lines itself), DEL, C1 controls (U+009B is a terminal's CSI), and the
# line and paragraph separators, which str.splitlines() and some log viewers
# take for line breaks.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _hex(match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class Escaped:
    """
    A formatter's text with control characters written as C{\\xNN}.

    @param formatter: the formatter whose text it escapes.
    """

    def __init__(self, formatter: Callable) -> None:
        self.formatter = formatter

    def __call__(self, event: dict) -> Optional[str]:
        text = self.formatter(event)
        if text and _CONTROL.search(text):
            return _CONTROL.sub(_hex, text)
        return text


def _compile(log_format: str):
    """
    C{log_format} as a tuple of (literal, key, conversion, spec), or C{None} when
    some field is more than a key of the event.
    """
    try:
        parsed = list(_parse(log_format))
    except ValueError:
        return None
    pieces = []
    for literal, key, spec, conversion in parsed:
        if key is not None:
            if not key or key.isdigit() or _NOT_A_KEY.intersection(key):
                return None
            if conversion not in _CONVERT or "{" in spec or "}" in spec:
                return None
        pieces.append((literal, key, _CONVERT.get(conversion), spec))
    return tuple(pieces)


class ClassicText:
    """
    C{twisted.logger.formatEventAsClassicLogText} with twistd's RFC 3339
    time format, for the events it understands; C{fallback} for the rest.

    @param fallback: the observer's own formatter.
    """

    def __init__(self, fallback: Callable) -> None:
        self.fallback = fallback
        self._formats: dict = {}
        # (second, its timestamp): one tuple, replaced whole, so that a line
        # logged from another thread never pairs a second with another's.
        self._stamp: tuple = (None, "")

    def __call__(self, event: dict) -> Optional[str]:
        try:
            text = self._format(event)
        except BaseException:
            # Twisted's formatter decides what an unformattable event says.
            text = _CANNOT
        if text is _CANNOT:
            return self.fallback(event)
        return text

    def _format(self, event: dict):
        log_format = event.get("log_format")
        if type(log_format) is not str or "log_failure" in event or "log_flattened" in event:
            return _CANNOT
        pieces = self._formats.get(log_format, _CANNOT)
        if pieces is _CANNOT:
            pieces = _compile(log_format)
            if len(self._formats) < FORMATS_KEPT:
                self._formats[log_format] = pieces
        if pieces is None:
            return _CANNOT
        parts = []
        for literal, key, convert, spec in pieces:
            parts.append(literal)
            if key is not None:
                value = event[key]
                if type(value) not in _PLAIN:
                    return _CANNOT
                if convert is not None:
                    value = convert(value)
                parts.append(format(value, spec))
        text = "".join(parts)
        if not text:
            return None
        stamp = self._time(event.get("log_time"))
        if stamp is None:
            return _CANNOT
        system = event.get("log_system")
        if system is None:
            # A namespace or level of another kind goes to the fallback
            # untouched too: its methods run there, once.
            namespace, level = event.get("log_namespace", "-"), event.get("log_level")
            if type(namespace) is not str or (level is not None and type(level) is not _LEVEL):
                return _CANNOT
            system = f"{namespace}#{'-' if level is None else level.name}"
        elif type(system) is not str:
            return _CANNOT
        return f"{stamp} [{system}] {text}".replace("\n", "\n\t") + "\n"

    def _time(self, when) -> Optional[str]:
        if when is None:
            return "-"
        if type(when) is not float:
            return None
        second = math.floor(when)
        if when - second >= 0.9999995:
            # fromtimestamp rounds to the microsecond: this may be the next
            # second already.
            return formatTime(when)
        cached, stamp = self._stamp
        if second != cached:
            stamp = formatTime(when)
            self._stamp = (second, stamp)
        return stamp


# Events a formatter must write exactly as the observer's own does before
# it takes over (one at this moment: the time zone's offset now).
_SAMPLES = (
    {"log_format": "plug {plug_id} -> {value} from {peer}", "plug_id": "3", "value": 1, "peer": "10.0.0.2",
     "log_namespace": "smartplug_backend.core.hub.Hub", "log_level": LogLevel.info, "log_time": 1764320471.25},
    {"log_format": "{a!r} and {b:>4}\nnext line {{literal}}", "a": "x", "b": 7, "log_system": "sys",
     "log_level": LogLevel.warn, "log_time": 1000000000.5},
    {"log_format": "no time", "log_namespace": "n", "log_level": LogLevel.error, "log_time": None},
)


def agrees(fast: ClassicText, samples=_SAMPLES) -> bool:
    """
    Whether C{fast} writes what its fallback writes for the sample events,
    and formats them itself.
    """
    for sample in samples + (dict(_SAMPLES[0], log_time=time.time()),):
        if fast._format(sample) is _CANNOT or fast(sample) != fast.fallback(sample):
            return False
    return True


class FastLogText(Service):
    """
    While running, every text file observer of C{publisher} whose output
    L{ClassicText} reproduces formats with it, and every one escapes control
    characters (L{Escaped}); stopping puts the observers' own formatters
    back.
    """

    def __init__(self, publisher=globalLogPublisher) -> None:
        self._publisher = publisher
        self._fitted: list = []

    def startService(self) -> None:
        super().startService()
        for observer in internals.text_log_observers(self._publisher):
            own = internals.log_formatter(observer)
            if isinstance(own, Escaped):
                continue
            fast = ClassicText(own)
            internals.set_log_formatter(observer, Escaped(fast if agrees(fast) else own))
            self._fitted.append((observer, own))

    def stopService(self):
        for observer, own in self._fitted:
            internals.set_log_formatter(observer, own)
        self._fitted = []
        return super().stopService()
