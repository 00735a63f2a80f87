"""
Time stamps on the wire: UTC RFC 3339 with milliseconds and C{Z}.
"""

from datetime import datetime, timezone
from typing import Optional


def utc_rfc3339(seconds: float) -> str:
    """
    C{seconds} since the epoch as UTC RFC 3339, e.g. C{2026-11-21T08:58:55.337Z}.
    """
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def seconds_of_rfc3339(text) -> Optional[float]:
    """
    The seconds since the epoch of a L{utc_rfc3339} time stamp, or C{None}
    for anything else (another node's listing is not trusted to be right).
    """
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None
