"""
PiCloud pub/sub (SPEC 3): the subscription registry and the delivery frame.

Reactor thread only; it knows nothing of Autobahn.  Subscribers are opaque
objects; one injected C{deliver(subscribers, frame)} function sends a frame to
them, so a publication is serialised once whatever the number of subscribers.
"""

import json
import time
from typing import Any, Callable, Hashable, Iterable, Optional

from twisted.logger import Logger

from .reports import broadcast_bytes
from .times import utc_rfc3339

Deliver = Callable[[list, bytes], None]

# Go's encoding/json (PiCloud is Go) escapes these inside strings; clients
# written against it may compare frames byte for byte.
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPE_TABLE = str.maketrans(_GO_ESCAPES)


def go_json(value: Any) -> str:
    """
    C{value} as Go's json.Marshal writes it: compact, UTF-8, HTML-escaped.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(_GO_ESCAPE_TABLE)


def delivery_frame(event: str, data: Any, created_at: float) -> bytes:
    """
    The frame a subscriber receives (SPEC 3.2): keys in PiCloud's order, and
    the trailing newline of Go's json.Encoder.
    """
    return (
        '{"action":"publish","event":' + go_json(event)
        + ',"data":' + go_json(data)
        + ',"created_at":' + go_json(utc_rfc3339(created_at))
        + "}\n"
    ).encode("utf-8")


class InvalidPublication(ValueError):
    """
    A publication without a usable event name.
    """


def parse_publication(message: Any) -> tuple[str, Any]:
    """
    C{(event, data)} from a decoded C{{"event": E, "data": D}} message; an
    C{"action": "publish"} key may be present.

    @raise InvalidPublication: no object, or a missing or empty event.
    """
    if not isinstance(message, dict):
        raise InvalidPublication("expected a JSON object")
    event = message.get("event")
    if not isinstance(event, str) or not event:
        raise InvalidPublication("missing or empty event")
    return event, message.get("data")


class PubSub:
    """
    Which subscribers want which events.

    @param deliver: C{deliver(subscribers, frame)} sends one frame to them all.
    @param now: the current time in seconds.
    """

    _log = Logger()

    def __init__(self, deliver: Optional[Deliver] = None, now: Callable[[], float] = time.time) -> None:
        self._deliver = deliver
        self._now = now
        # event -> subscribers, both in insertion order (dicts as ordered sets)
        self._events: dict[str, dict[Hashable, None]] = {}
        # connection -> its entry in the info frame
        self._connections: dict[Hashable, dict] = {}

    def deliver_with(self, deliver: Deliver) -> None:
        """
        Send publications with C{deliver(subscribers, frame)} from now on: the
        listener whose connections subscribe (built after the hub, since it
        needs the hub) registers here, as listeners do with C{Hub.listen}.
        """
        if self._deliver is not None:
            raise ValueError("publications already have a deliverer")
        self._deliver = deliver

    def connected(self, connection: Hashable, client_name: str, address: str) -> None:
        """
        Record an open connection (app or device port) for the info socket.

        @param address: C{"<ip>:<port>"} of the peer.
        """
        self._connections[connection] = {
            "client_name": client_name,
            "ip_address": address,
            "connected_at": utc_rfc3339(self._now()),
        }

    def disconnected(self, connection: Hashable) -> None:
        """
        Forget a closed connection and all its subscriptions.
        """
        self._connections.pop(connection, None)
        self.unsubscribe_all(connection)

    def subscribe(self, subscriber: Hashable, event: str) -> None:
        """
        Deliver every later publication of C{event} to C{subscriber}, once
        however often it subscribes.
        """
        self._events.setdefault(event, {})[subscriber] = None

    def unsubscribe(self, subscriber: Hashable, event: str) -> None:
        """
        Stop delivering C{event} to C{subscriber}; nothing if it was not subscribed.
        """
        subscribers = self._events.get(event)
        if subscribers is not None:
            subscribers.pop(subscriber, None)
            if not subscribers:
                del self._events[event]

    def unsubscribe_all(self, subscriber: Hashable) -> None:
        """
        Forget every subscription of C{subscriber} (its connection is gone, or
        it asked for C{unsubscribe:all}).
        """
        for event in list(self._events):
            self.unsubscribe(subscriber, event)

    def publish(self, event: str, data: Any) -> int:
        """
        Send a publication to the current subscribers of C{event}.

        @return: how many subscribers it was sent to.
        """
        subscribers = list(self._events.get(event, ()))
        if subscribers and self._deliver is not None:
            self._deliver(subscribers, delivery_frame(event, data, self._now()))
        return len(subscribers)

    def subscriptions(self) -> Iterable[tuple[str, list]]:
        """
        C{(event, [subscriber, ...])} for every event with subscribers.
        """
        return [(event, list(subscribers)) for event, subscribers in self._events.items()]

    def info_frame(self) -> bytes:
        """
        The info socket's frame (SPEC 3.4): subscriptions with their
        connections, every open connection, and the time.
        """
        known = self._connections
        info = {
            "subscriptions": [
                {"name": event, "connections": [known[s] for s in subscribers if s in known]}
                for event, subscribers in self._events.items()
            ],
            "all_connections": list(known.values()),
            "created_at": utc_rfc3339(self._now()),
        }
        return (go_json(info) + "\n").encode("utf-8")


def report_publisher(pubsub: PubSub):
    """
    A hub listener publishing each plug report as event C{smartplug}, its data
    the JSON text the apps receive (SPEC 1.1).
    """
    def publish(report) -> None:
        pubsub.publish("smartplug", broadcast_bytes(report.plug.id, report.plug.value).decode("utf-8"))

    return publish
