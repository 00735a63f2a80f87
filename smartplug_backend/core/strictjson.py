"""
JSON from peers, read strictly: the one decoder for every body and message.

Python's C{json.loads} accepts more than JSON (RFC 8259), and some of what it
lets through hurts later:

- C{NaN}, C{Infinity}, and numbers like C{1e999} (read as infinity) would be
  written back as C{NaN}/C{Infinity}, which no JSON client can read;
- a lone surrogate escape (C{"\\ud800"}), or UTF-8 bytes for one, gives a
  string that cannot be encoded as UTF-8 again: a publication of it would
  fail while being sent to subscribers;
- deep nesting costs recursion wherever the value is written again.

L{loads} refuses all of these with L{InvalidJSON}, whose message says what
was wrong (never what was sent).
"""

import json
import math
import re
from typing import Any, Union

from .limits import MAX_JSON_DEPTH

# After strict UTF-8 decoding, a surrogate can only come from a \\u escape
# that is not half of a pair (json joins the pairs).
_SURROGATE = re.compile("[\ud800-\udfff]")


class InvalidJSON(ValueError):
    """
    Input that is not JSON by RFC 8259, or that is outside our limits;
    C{str(error)} says what is wrong and is safe to show to the sender.
    """


def _no_constants(name: str):
    raise InvalidJSON(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidJSON("a number is out of range")
    return value


# What json.loads(payload, parse_constant=..., parse_float=...) builds anew
# on every call; one decoder holds no state between calls.
_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite)


def loads(payload: Union[bytes, str]) -> Any:
    """
    Decode JSON text, UTF-8 if given bytes.

    @raise InvalidJSON: for invalid UTF-8, invalid JSON, C{NaN} or
        C{Infinity}, a number out of range or with too many digits, a lone
        surrogate, or nesting deeper than L{MAX_JSON_DEPTH}.
    """
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidJSON("not UTF-8") from None
    try:
        value = _DECODER.decode(payload)
    except InvalidJSON:
        raise
    except RecursionError:
        raise InvalidJSON(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        # Where it broke: enough to find the fault in a device's message.
        raise InvalidJSON(f"{e.msg} (line {e.lineno}, column {e.colno})") from None
    except ValueError:
        # int() refuses numbers of more than 4300 digits (CVE-2020-10735).
        raise InvalidJSON("a number has too many digits") from None
    if "\\u" in payload or payload.count("{") + payload.count("[") >= MAX_JSON_DEPTH or _SURROGATE.search(payload):
        # Only an escape or a surrogate in the text can make a lone
        # surrogate, and nesting needs as many brackets as levels: without
        # them (a plug's report) there is nothing to walk.
        _check(value)
    return value


def _check(value: Any) -> None:
    """
    Refuse lone surrogates and nesting deeper than L{MAX_JSON_DEPTH}; walks
    without recursion.
    """
    pending = [(value, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise InvalidJSON("a string holds a lone surrogate (\\ud800-\\udfff)")
        elif isinstance(value, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidJSON(f"nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(value, dict):
                pending.extend((key, depth) for key in value)
                pending.extend((item, depth + 1) for item in value.values())
            else:
                pending.extend((item, depth + 1) for item in value)
