"""
PiCloud compatibility (SPEC 3.1-3.3): who may connect, and what the clients'
messages mean.  Shared by the app WebSocket routes and C{POST /publish}.
"""

from typing import Any, Mapping, Optional

from ..core import strictjson
from ..core.limits import PUBSUB_SUBSCRIPTIONS_PER_CONNECTION
from ..core.pubsub import InvalidPublication, InvalidSince, PubSub, check_event, parse_publication, parse_since
from ..server.guard import key_matches

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


def credentials(headers: Mapping[str, Any], params: Mapping[str, list]) -> tuple[Optional[str], str]:
    """
    C{(api_key, client_name)} of a WebSocket opening handshake: each from its
    header, else its query parameter (SPEC 3.1).

    @param headers: request headers, keys in lower case.
    @param params: query parameters, each a list of values.
    """

    def first(header: str, param: str) -> Optional[str]:
        return headers.get(header) or (params.get(param) or [None])[0] or None

    return first("x-api-key", "apiKey"), first("x-api-client-name", "clientName") or ""


def authenticate(api_key: Optional[str], given_key: Optional[str], name: Optional[str], needs_name: bool) -> str:
    """
    Check a PiCloud request's API key and client name (SPEC 3.1).

    @param api_key: C{API_KEY}, or C{None} when no key is required.
    @return: the client name ("" where none is needed and none was given).
    @raise Denied: a wrong or missing key (only a wrong one counts toward a
        ban: a missing one guesses nothing), or a missing name where one is
        required.
    """
    if not key_matches(api_key, given_key):
        raise Denied(INVALID_API_KEY, bad_key=given_key is not None)
    if needs_name and not name:
        raise Denied(INVALID_CLIENT_NAME, bad_key=False)
    return name or ""


class NotJSON(InvalidPublication):
    """
    A client's message or body that is not JSON; C{str(error)} says where
    it broke.
    """


def decode(payload: bytes) -> Any:
    """
    A client's JSON message (as L{strictjson.loads} reads it: no NaN, no
    lone surrogates...).

    @raise NotJSON: if it is not JSON.
    """
    try:
        return strictjson.loads(payload)
    except strictjson.InvalidJSON as e:
        raise NotJSON(f"not valid JSON: {e}") from None


def handle_subscriber(pubsub: PubSub, connection, message: Any) -> Optional[str]:
    """
    Act on a C{/subscribe} client's message (SPEC 3.2, and 3.6's C{last}
    and C{since}).  The replay, if any, is taken in the same reactor turn
    as the subscription (nothing published can come between them) and
    handed to C{connection.send_first}, which sends it as the peer reads it,
    ahead of the live publications that arrive meanwhile.

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
            since = message.get("since")
            try:
                check_event(event)
                position = None if since is None else parse_since(since)
            except (InvalidPublication, InvalidSince) as e:
                return str(e)
            if (pubsub.subscription_count(connection) >= PUBSUB_SUBSCRIPTIONS_PER_CONNECTION
                    and not pubsub.is_subscribed(connection, event)):
                return f"already subscribed to {PUBSUB_SUBSCRIPTIONS_PER_CONNECTION} events, the most one connection may"
            frames = pubsub.subscribe(connection, event, last=message.get("last") is True, since=position)
            if frames:
                connection.send_first(frames)
        else:
            pubsub.unsubscribe(connection, event)
    else:
        return "unknown action"
    return None


def handle_publisher(hub, message: Any, peer: str) -> Optional[str]:
    """
    Publish a C{/publish} client's message (SPEC 3.3) through C{hub.publish}
    (journaled; a refusal is logged by the hub, and PiCloud's publish socket
    has no answer to carry it).

    @return: why the message was ignored, or C{None} when it was published.
    """
    try:
        event, data = parse_publication(message)
    except InvalidPublication as e:
        return str(e)
    hub.publish(event, data, peer)
    return None
