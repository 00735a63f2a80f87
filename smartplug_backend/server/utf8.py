"""
SPEC 6.3: bytes that are not UTF-8 anywhere in a request (path, query, any
header) get a 4xx.  One check, shared by the HTTP port (twisted.web) and the
WebSocket ports' opening handshakes (Autobahn), made before any route reads
the request: so no route sees a name or key with its bytes replaced or
dropped (Bottle drops them from paths: C{/plugs/ab%ff} would have been plug
C{ab}), and every port refuses the same requests.
"""

from typing import Iterable, Optional
from urllib.parse import unquote_to_bytes


def problem(target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Optional[str]:
    """
    What is not UTF-8 in a request, or C{None} if nothing is.

    @param target: the request line's target, C{/path?query}, as sent
        (percent escapes are decoded here and must give UTF-8 too).
    @param headers: the request's C{(name, value)} pairs, as sent.
    @return: an error message naming the part ("the path", "the query",
        "header X-Name"), for the client and the log.
    """
    path, _, query = target.partition(b"?")
    if not _utf8(path) or not _utf8(unquote_to_bytes(path)):
        return "the path is not UTF-8"
    if not _utf8(query) or not _utf8(unquote_to_bytes(query)):
        return "the query is not UTF-8"
    for name, value in headers:
        if not _utf8(name) or not _utf8(value):
            return f"header {name.decode('utf-8', 'replace')} is not UTF-8"
    return None


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
