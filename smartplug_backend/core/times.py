"""
Time stamps on the wire: UTC RFC 3339 with milliseconds and C{Z}.
"""

from datetime import datetime, timezone


def utc_rfc3339(seconds: float) -> str:
    """
    C{seconds} since the epoch as UTC RFC 3339, e.g. C{2026-11-21T08:58:55.337Z}.
    """
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
