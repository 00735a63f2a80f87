"""
The plug report (SPEC 1.1): parsing and validation, and the bytes the apps get.

Shared by every way a report arrives (HTTP, the device port), so they accept
and refuse exactly the same input.
"""

import functools
import json
from typing import Union

from . import strictjson

MAX_ID_LENGTH = 128


class InvalidReport(ValueError):
    """
    A report that must be refused; C{str(error)} names the field and the
    problem, and is safe to show to the sender.
    """


def parse_report(body: Union[bytes, str]) -> tuple[str, int]:
    """
    Parse a JSON plug report into C{(plug_id, value)}.

    JSON C{true}/C{false} are read as 1/0; extra keys are ignored.

    @raise InvalidReport: for anything that is not a valid report.
    """
    if not body or not body.strip():
        raise InvalidReport("empty body: expected a JSON object with id and value")
    try:
        data = strictjson.loads(body)
    except strictjson.InvalidJSON as e:
        raise InvalidReport(f"not valid JSON: {e}") from None
    return validate_report(data)


def validate_report(data: object) -> tuple[str, int]:
    """
    Validate an already decoded report; see L{parse_report}.
    """
    if not isinstance(data, dict):
        raise InvalidReport("body must be a JSON object with id and value")
    if "id" not in data:
        raise InvalidReport("missing field: id")
    plug_id = data["id"]
    if not isinstance(plug_id, str) or not plug_id:
        raise InvalidReport("id must be a non-empty string")
    if len(plug_id) > MAX_ID_LENGTH:
        raise InvalidReport(f"id must be at most {MAX_ID_LENGTH} characters")
    if "value" not in data:
        raise InvalidReport("missing field: value")
    value = data["value"]
    # bool is an int subclass: True/False are the documented 1/0, but 1.0 or
    # "1" are not values the firmware sends.
    if value is True or value is False:
        value = int(value)
    elif type(value) is not int or value not in (0, 1):
        raise InvalidReport("value must be 0 or 1")
    return plug_id, value


@functools.lru_cache(maxsize=4096, typed=True)
def broadcast_bytes(plug_id: str, value: int) -> bytes:
    """
    The message every app client gets for a report: the original backend's
    C{json.dumps} with default separators, byte for byte.  Kept for the
    plugs that report often (each report needs it three times: its
    publication, the pub/sub frame and the apps' frame).
    """
    return json.dumps({"id": plug_id, "value": value}).encode("utf-8")
