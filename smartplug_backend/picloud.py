"""
PiCloud compatibility (SPEC 3.1-3.3): who may connect, and what the clients'
messages mean.  Shared by the app WebSocket routes and C{POST /publish}.
"""

import hmac
import json
from typing import Any, Mapping, Optional

from .pubsub import InvalidPublication, PubSub, parse_publication

INVALID_API_KEY = b"Invalid API Key\n"
INVALID_CLIENT_NAME = b"Invalid client name\n"
BAD_REQUEST = b"Bad request\n"

# Paths of the app WebSocket port that speak PiCloud; every other path is
# PlugBuddy (SPEC 4.1).
ROUTES = {"/subscribe": "subscribe", "/publish": "publish", "/socket/info": "info", "/info": "info"}


class Denied(Exception):
    """
    A PiCloud request refused with 401 and C{body}.

    @ivar bad_key: True when a wrong API key was given (it counts toward a ban).
    """

    def __init__(self, body: bytes, bad_key: bool) -> None:
        super().__init__(body.decode().strip())
        self.body = body
        self.bad_key = bad_key


def _first(headers: Mapping[str, Any], params: Mapping[str, Any], header: str, param: str) -> Optional[str]:
    value = headers.get(header)
    if value:
        return value
    value = params.get(param)
    if isinstance(value, list):
        value = value[0] if value else None
    return value or None


def client_name(headers: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """
    The client's name from C{X-API-Client-Name} or C{clientName}, or "".
    """
    return _first(headers, params, "x-api-client-name", "clientName") or ""


def authenticate(api_key: Optional[str], headers: Mapping[str, Any], params: Mapping[str, Any], needs_name: bool) -> str:
    """
    Check a PiCloud request's API key and client name (SPEC 3.1).

    @param headers: request headers, keys in lower case.
    @param params: query parameters (values may be lists).
    @return: the client name ("" where none is needed and none was given).
    @raise Denied: a wrong key, or a missing name where one is required.
    """
    if api_key is not None:
        given = _first(headers, params, "x-api-key", "apiKey") or ""
        if not hmac.compare_digest(given.encode("utf-8"), api_key.encode("utf-8")):
            raise Denied(INVALID_API_KEY, bad_key=True)
    name = client_name(headers, params)
    if needs_name and not name:
        raise Denied(INVALID_CLIENT_NAME, bad_key=False)
    return name


def decode(payload: bytes) -> Any:
    """
    A client's JSON message, or C{None} if it is not JSON.
    """
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


def handle_subscriber(pubsub: PubSub, connection, message: Any) -> Optional[str]:
    """
    Act on a C{/subscribe} client's message (SPEC 3.2).

    @return: why the message was ignored, or C{None} when it was acted on.
    """
    if not isinstance(message, dict):
        return "expected a JSON object"
    action, event = message.get("action"), message.get("event")
    if action == "unsubscribe:all":
        pubsub.unsubscribe_all(connection)
    elif action in ("subscribe", "unsubscribe"):
        if not isinstance(event, str) or not event:
            return f"{action} without an event"
        if action == "subscribe":
            pubsub.subscribe(connection, event)
        else:
            pubsub.unsubscribe(connection, event)
    else:
        return "unknown action"
    return None


def handle_publisher(pubsub: PubSub, message: Any) -> Optional[str]:
    """
    Publish a C{/publish} client's message (SPEC 3.3).

    @return: why the message was ignored, or C{None} when it was published.
    """
    try:
        event, data = parse_publication(message)
    except InvalidPublication as e:
        return str(e)
    pubsub.publish(event, data)
    return None
