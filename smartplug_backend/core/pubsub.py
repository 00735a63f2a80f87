"""
PiCloud pub/sub (SPEC 3): the subscription registry and the delivery frames,
with offsets, epochs and history (SPEC 3.6, kept in L{history.History}).

Reactor thread only; it knows nothing of Autobahn.  Subscribers are opaque
objects; one injected C{deliver(subscribers, frame)} function sends a frame to
them, so a publication is serialised once whatever the number of subscribers
(twice when some subscribers asked for offsets: once for each kind).
"""

import collections
import json
import time
from typing import Any, Callable, Hashable, Iterable, Optional

from twisted.logger import Logger

from .history import History, Publication
from .limits import PUBSUB_EMPTY_EVENTS, PUBSUB_MAX_EVENT
from .reports import broadcast_bytes
from .times import utc_rfc3339

Deliver = Callable[[list, bytes], None]
# Plug reports are published as this event (SPEC 1.1).
REPORT_EVENT = "smartplug"
# observer(event, data, origin): every publication, with the origin its
# publisher gave (None for the server's own clients; the dashboard shows
# it).
Observer = Callable[[str, Any, Optional[str]], None]

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
    return Publication(event, 0, "", go_json(data), created_at).frame(go_json(event))


def recovered_frame(event: str, recovered: bool, offset: int, epoch: str) -> bytes:
    """
    The message that ends a replay (SPEC 3.6), written as Go would.
    """
    message = {"action": "recovered", "event": event, "recovered": recovered, "offset": offset, "epoch": epoch}
    return (go_json(message) + "\n").encode("utf-8")


class InvalidSince(ValueError):
    """
    A C{since} that is not C{{"offset": N, "epoch": X}}.
    """


def parse_since(since: Any) -> tuple[int, str]:
    """
    C{(offset, epoch)} from a subscribe message's C{since}.

    @raise InvalidSince: not an object with a whole C{offset} of at least 0
        and a string C{epoch}.
    """
    if not isinstance(since, dict):
        raise InvalidSince('since must be {"offset": N, "epoch": X}')
    offset, epoch = since.get("offset"), since.get("epoch")
    if type(offset) is not int or offset < 0:
        raise InvalidSince("since.offset must be a whole number of at least 0")
    if not isinstance(epoch, str):
        raise InvalidSince("since.epoch must be a string")
    return offset, epoch


class InvalidPublication(ValueError):
    """
    A publication without a usable event name.
    """


def parse_publication(message: Any) -> tuple[str, Any]:
    """
    C{(event, data)} from a decoded C{{"event": E, "data": D}} message; an
    C{"action": "publish"} key may be present.

    @raise InvalidPublication: no object, or a missing, empty or too long
        event (L{check_event}).
    """
    if not isinstance(message, dict):
        raise InvalidPublication("expected a JSON object")
    event = message.get("event")
    if not isinstance(event, str) or not event:
        raise InvalidPublication("missing or empty event")
    check_event(event)
    return event, message.get("data")


def check_event(event: str) -> None:
    """
    @raise InvalidPublication: C{event} is longer than L{PUBSUB_MAX_EVENT}
        characters.
    """
    if len(event) > PUBSUB_MAX_EVENT:
        raise InvalidPublication(f"event name of {len(event)} characters: at most {PUBSUB_MAX_EVENT}")


class PubSub:
    """
    Which subscribers want which events.

    @param deliver: C{deliver(subscribers, frame)} sends one frame to them all.
    @param now: the current time in seconds.
    @param history: offsets, epochs and kept publications; by default one
        that keeps 100 publications per event for a day.
    @param node: this node's name when several nodes act as one (SPEC 11):
        every connection in the info frame then says C{"node"}; C{None} for
        one node alone (PiCloud's frame exactly).
    @param max_empty: events whose subscribers have all left that are kept
        for the info frame (the most recently emptied).
    """

    _log = Logger()

    def __init__(self, deliver: Optional[Deliver] = None, now: Callable[[], float] = time.time,
                 history: Optional[History] = None, node: Optional[str] = None,
                 max_empty: int = PUBSUB_EMPTY_EVENTS) -> None:
        self._deliver = deliver
        self._now = now
        self.history = History(now=now) if history is None else history
        self._node = node
        # Other nodes' listings (see listing()), as last read.
        self._elsewhere: list = []
        # event -> {subscriber: whether it asked for offsets}, both in
        # insertion order.  An event stays once its last subscriber has
        # left, as in PiCloud's Go map: the info frame lists it with
        # "connections": null; the newest max_empty such events stay.
        self._events: dict[str, dict[Hashable, bool]] = {}
        # Events without subscribers, least recently emptied first.
        self._empty: collections.OrderedDict[str, None] = collections.OrderedDict()
        # The info frame up to its time, or None after a change (info_frame).
        self._info_lists: Optional[bytes] = None
        self._max_empty = max_empty
        # subscriber -> the events it is subscribed to (in order): what
        # unsubscribe_all walks, whatever the number of events.
        self._subscribed: dict[Hashable, dict[str, None]] = {}
        # connection -> its entry in the info frame
        self._connections: dict[Hashable, dict] = {}
        # connection -> which port it came on: "app" or "device" (never
        # guessed from its name: a client may call itself anything)
        self._kinds: dict[Hashable, str] = {}
        # Plain counts for /metrics: publications read, frames delivered.
        self.publications = 0
        self.deliveries = 0
        self._observers: list[Observer] = []
        # Who is connected or subscribed changed (the dashboard).
        self._connection_watchers: list[Callable[[], None]] = []
        # False while the history is still to be loaded from a store several
        # nodes share (it was unreachable at start): its offsets and epochs
        # are then no one's.  The recoveries (last, since) asked meanwhile
        # wait for it, the newest of each subscription, as (subscriber,
        # event) -> (last, since), while it stands.
        self._history_known = True
        self._waiting: dict[tuple, tuple] = {}

    def observe(self, observer: Observer) -> Callable[[], None]:
        """
        Call C{observer(event, data, origin)} for every later publication,
        subscribers or not.

        @return: a function that stops the calls.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def watch_connections(self, listener: Callable[[], None]) -> Callable[[], None]:
        """
        Call C{listener()} whenever a connection opens or closes or a
        subscription changes, from now on.

        @return: a function that stops the calls.
        """
        self._connection_watchers.append(listener)
        return lambda: self._connection_watchers.remove(listener)

    def _connections_changed(self) -> None:
        # A connection, a subscription or another node's listing changed:
        # the info frame's lists are written again (L{info_frame}).
        self._info_lists = None
        self._tell(self._connection_watchers)

    def _tell(self, watchers: list, *args) -> None:
        for listener in list(watchers):
            try:
                listener(*args)
            except Exception:
                self._log.failure("pub/sub listener {listener!r} failed", listener=listener)

    def connections(self) -> list[tuple[dict, list[str]]]:
        """
        Every open connection: its info-frame entry and the events it is
        subscribed to.
        """
        events: dict[Hashable, list[str]] = {}
        for event, subscribers in self._events.items():
            for subscriber in subscribers:
                events.setdefault(subscriber, []).append(event)
        mine = [(dict(entry), events.get(c, [])) for c, entry in self._connections.items()]
        return mine + [(entry, found) for listing in self._elsewhere for entry, found, _ in _listed_connections(listing)]

    @property
    def node(self) -> Optional[str]:
        """
        This node's name when several nodes share a journal, else C{None}.
        """
        return self._node

    def devices_elsewhere(self) -> list[dict]:
        """
        The info-frame entries of the other nodes' devices (authenticated
        connections of their device port, each with its C{"node"}), as
        their shared listings last said (L{show_elsewhere}).
        """
        return [
            entry
            for listing in self._elsewhere
            for entry, _, kind in _listed_connections(listing)
            if kind == "device"
        ]

    def app_connections(self) -> list[tuple[dict, list[str]]]:
        """
        L{connections} of the app port only (PlugBuddy and PiCloud clients),
        whatever they call themselves: no device.
        """
        events: dict[Hashable, list[str]] = {}
        for event, subscribers in self._events.items():
            for subscriber in subscribers:
                events.setdefault(subscriber, []).append(event)
        mine = [
            (dict(entry), events.get(c, []))
            for c, entry in self._connections.items()
            if self._kinds.get(c) != "device"
        ]
        return mine + [
            (entry, found)
            for listing in self._elsewhere
            for entry, found, kind in _listed_connections(listing)
            if kind != "device"
        ]

    def deliver_with(self, deliver: Deliver) -> None:
        """
        Send publications with C{deliver(subscribers, frame)} from now on: the
        listener whose connections subscribe (built after the hub, since it
        needs the hub) registers here, as listeners do with C{Hub.listen}.
        """
        if self._deliver is not None:
            raise ValueError("publications already have a deliverer")
        self._deliver = deliver

    def connected(self, connection: Hashable, client_name: str, address: str, kind: str = "app") -> None:
        """
        Record an open connection (app or device port) for the info socket.

        @param address: C{"<ip>:<port>"} of the peer.
        @param kind: the port it came on: C{"app"} or C{"device"}.
        """
        entry = {
            "client_name": client_name,
            "ip_address": address,
            "connected_at": utc_rfc3339(self._now()),
        }
        if self._node is not None:
            entry["node"] = self._node
        self._connections[connection] = entry
        self._kinds[connection] = kind
        self._connections_changed()

    def disconnected(self, connection: Hashable) -> None:
        """
        Forget a closed connection and all its subscriptions.
        """
        known = self._connections.pop(connection, None) is not None
        self._kinds.pop(connection, None)
        self.unsubscribe_all(connection)
        if known:
            self._connections_changed()

    def subscribe(self, subscriber: Hashable, event: str, last: bool = False,
                  since: Optional[tuple[int, str]] = None) -> list[bytes]:
        """
        Deliver every later publication of C{event} to C{subscriber}, once
        however often it subscribes.

        With C{last} or C{since} (SPEC 3.6) the subscriber gets offsets and
        epochs in every frame of C{event} from now on, and the frames to send
        it first are returned.  They are taken here, on the reactor thread,
        together with the subscription: every publication accepted before
        this call is in them, every later one is delivered live; none twice.

        @param last: send the newest kept publication first.
        @param since: C{(offset, epoch)}: send the kept publications after
            C{offset}, then a C{recovered} message (C{since} wins over C{last}).
        @return: the frames to send C{subscriber} now, in order, before
            anything else.
        """
        subscribers = self._events.setdefault(event, {})
        new = subscriber not in subscribers
        positioned = last or since is not None
        subscribers[subscriber] = positioned or subscribers.get(subscriber, False)
        if new:
            self._empty.pop(event, None)
            self._subscribed.setdefault(subscriber, {})[event] = None
            self._connections_changed()
        if positioned and not self._history_known:
            self._waiting[subscriber, event] = (last, since)
            return []
        return self._recovery(event, last, since)

    def _recovery(self, event: str, last: bool, since: Optional[tuple[int, str]]) -> list[bytes]:
        """
        The frames that answer a subscription's C{last} or C{since}.
        """
        event_json = go_json(event)
        if since is not None:
            recovery = self.history.since(event, *since)
            frames = [p.positioned_frame(event_json) for p in recovery.publications]
            # Publications sent again are deliveries too (the recovered
            # frame is not a publication).
            self.deliveries += len(frames)
            frames.append(recovered_frame(event, recovery.recovered, recovery.offset, recovery.epoch))
            return frames
        if last:
            newest = self.history.last(event)
            if newest is None:
                return []
            self.deliveries += 1
            return [newest.positioned_frame(event_json)]
        return []

    @property
    def history_known(self) -> bool:
        """
        Whether the history is loaded: set C{False} while it is still to be
        loaded from a store several nodes share; set C{True} once it is,
        and the recoveries asked meanwhile are sent, to the subscribers
        still subscribed.
        """
        return self._history_known

    @history_known.setter
    def history_known(self, known: bool) -> None:
        self._history_known = known
        if not known:
            return
        waiting, self._waiting = self._waiting, {}
        for (subscriber, event), (last, since) in waiting.items():
            if self._deliver is not None:
                for frame in self._recovery(event, last, since):
                    self._deliver([subscriber], frame)

    def subscription_count(self, subscriber: Hashable) -> int:
        """
        How many events C{subscriber} is subscribed to.
        """
        return len(self._subscribed.get(subscriber, ()))

    def is_subscribed(self, subscriber: Hashable, event: str) -> bool:
        """
        Whether C{subscriber} is subscribed to C{event}.
        """
        return event in self._subscribed.get(subscriber, ())

    def unsubscribe(self, subscriber: Hashable, event: str) -> None:
        """
        Stop delivering C{event} to C{subscriber}; nothing if it was not subscribed.
        """
        subscribers = self._events.get(event)
        if subscribers is not None and subscriber in subscribers:
            mine = self._subscribed[subscriber]
            del mine[event]
            if not mine:
                del self._subscribed[subscriber]
            self._leave(subscriber, event, subscribers)
            self._connections_changed()

    def _leave(self, subscriber: Hashable, event: str, subscribers: dict) -> None:
        # The event stays, empty, for the info frame (see _events), among
        # the max_empty most recently emptied.
        del subscribers[subscriber]
        self._waiting.pop((subscriber, event), None)
        if not subscribers:
            self._empty[event] = None
            while len(self._empty) > self._max_empty:
                del self._events[self._empty.popitem(last=False)[0]]

    def unsubscribe_all(self, subscriber: Hashable) -> None:
        """
        Forget every subscription of C{subscriber} (its connection is gone, or
        it asked for C{unsubscribe:all}): only its own are walked.
        """
        mine = self._subscribed.pop(subscriber, None)
        if not mine:
            return
        for event in mine:
            self._leave(subscriber, event, self._events[event])
        self._connections_changed()

    def publish(self, event: str, data: Any, origin: Optional[str] = None) -> int:
        """
        Number a publication and send it to the current subscribers of
        C{event} at once, then show it to the observers, journaling nothing
        (L{hub.Hub.publish} journals; with a store, publish through it).

        @param origin: who brought it in from outside (e.g. C{"mqtt"}).
        @return: how many subscribers it was sent to.
        """
        return self.accept(self.number(event, data), data, origin)

    def number(self, event: str, data: Any) -> Publication:
        """
        The next publication of C{event} with C{data}, numbered but not yet
        sent: L{accept} sends it once the journal has it.
        """
        return self.history.number(event, go_json(data))

    def accept(self, publication: Publication, data: Any, origin: Optional[str] = None, remote: bool = False) -> int:
        """
        Keep C{publication} (of C{data}) in the history and send it to the
        current subscribers of its event: PiCloud's frame to those that
        asked for nothing, the frame with offset and epoch to the others;
        then show it to the observers.

        @param origin: who brought it in from outside (e.g. C{"mqtt"}).
        @param remote: another node took it in (SPEC 11): it counts there.
        @return: how many subscribers it was sent to.
        """
        self.history.accept(publication)
        if not remote:
            self.publications += 1
        subscribers = self._events.get(publication.event) or {}
        if subscribers and self._deliver is not None:
            self.deliveries += len(subscribers)
            event_json = go_json(publication.event)
            if any(subscribers.values()):
                plain = [s for s, positioned in subscribers.items() if not positioned]
                positioned = [s for s, positioned in subscribers.items() if positioned]
                self._deliver(positioned, publication.positioned_frame(event_json))
            else:
                plain = list(subscribers)
            if plain:
                self._deliver(plain, publication.frame(event_json))
        for observer in list(self._observers):
            try:
                observer(publication.event, data, origin)
            except Exception:
                self._log.failure("pub/sub observer {observer!r} failed", observer=observer)
        return len(subscribers)

    def history_page(self, event: str, after: int, limit: int) -> bytes:
        """
        The body of C{GET /events/<event>/history} (SPEC 3.6):
        C{{"epoch": X, "publications": [F...]}}, the first C{limit} kept
        publications after offset C{after}, oldest first.
        """
        epoch, publications = self.history.page(event, after, limit)
        event_json = go_json(event)
        frames = ",".join(p.positioned_text(event_json) for p in publications)
        return ('{"epoch":' + go_json(epoch) + ',"publications":[' + frames + "]}").encode("utf-8")

    def subscriptions(self) -> Iterable[tuple[str, list]]:
        """
        C{(event, [subscriber, ...])} for every event with subscribers.
        """
        return [(event, list(subscribers)) for event, subscribers in self._events.items() if subscribers]

    def listing(self) -> dict:
        """
        This node's part of the info frame, as plain JSON-able data:
        C{{"subscriptions": [{"name": E, "connections": [C...]}...],
        "all_connections": [C...], "kinds": ["app" or "device", ...]}} (empty
        lists where the frame has C{null}; C{kinds} is not in the frame: it
        says which port each of C{all_connections} came on).
        """
        known = self._connections
        return {
            "subscriptions": [
                {"name": event, "connections": [known[s] for s in subscribers if s in known]}
                for event, subscribers in self._events.items()
            ],
            "all_connections": list(known.values()),
            "kinds": [self._kinds.get(c, "app") for c in known],
        }

    def show_elsewhere(self, listings: list) -> None:
        """
        Take the other nodes' L{listing}s (read from where they share them)
        into the info frame and L{connections} from now on, replacing the
        last ones.
        """
        listings = list(listings)
        if listings != self._elsewhere:
            self._elsewhere = listings
            self._connections_changed()

    def info_frame(self) -> bytes:
        """
        The info socket's frame (SPEC 3.4): subscriptions with their
        connections, every open connection, and the time; this node's
        first, then the other nodes' (see L{show_elsewhere}).

        Written as PiCloud's Go server writes it, which picloud-info-web
        renders: an empty list of connections is C{null} (a nil Go slice),
        while no subscriptions at all is C{[]}; an event whose subscribers
        have all left stays listed, with C{"connections": null}.
        """
        # The lists are written once per change, not once per info socket
        # and interval: with many connections and subscriptions they are
        # megabytes (the time is the only part that moves).
        if self._info_lists is None:
            mine = self.listing()
            subscriptions = {s["name"]: list(s["connections"]) for s in mine["subscriptions"]}
            connections = mine["all_connections"]
            for other in self._elsewhere:
                for subscription in other.get("subscriptions", ()):
                    subscriptions.setdefault(subscription["name"], []).extend(subscription["connections"] or ())
                connections.extend(other.get("all_connections") or ())
            self._info_lists = (
                '{"subscriptions":'
                + go_json([{"name": name, "connections": found or None} for name, found in subscriptions.items()])
                + ',"all_connections":' + go_json(connections or None) + ',"created_at":'
            ).encode("utf-8")
        return self._info_lists + (go_json(utc_rfc3339(self._now())) + "}\n").encode("utf-8")


def _listed_connections(listing: dict) -> list:
    """
    C{[(entry, [event, ...], kind)]} for the connections of another node's
    L{PubSub.listing}.  A listing without C{kinds} (a node of an older
    version) has its devices known by their name, C{"device"}.
    """
    entries = [dict(entry) for entry in listing.get("all_connections") or ()]
    kinds = listing.get("kinds")
    if not isinstance(kinds, list) or len(kinds) != len(entries):
        kinds = ["device" if entry.get("client_name") == "device" else "app" for entry in entries]
    events: list = [[] for _ in entries]
    # Each subscriber found by its entry's items (the first of equal
    # entries), not by comparing it with every entry: another node's 500
    # connections of 1000 events each took seconds of the reactor.
    index: dict = {}
    for i, entry in enumerate(entries):
        index.setdefault(_entry_key(entry), i)
    for subscription in listing.get("subscriptions", ()):
        for subscriber in subscription["connections"] or ():
            i = index.get(_entry_key(subscriber)) if isinstance(subscriber, dict) else None
            if i is not None:
                events[i].append(subscription["name"])
    return list(zip(entries, events, kinds, strict=True))


def _entry_key(entry: dict):
    # A connection's entry as a key: its items, whatever their values
    # (another node's JSON: a list or an object is written out).
    return tuple(sorted((k, v if isinstance(v, (str, int, float, bool, type(None))) else json.dumps(v, sort_keys=True))
                        for k, v in entry.items()))


def report_publisher(hub):
    """
    A hub listener publishing each plug report as event C{smartplug}, its data
    the JSON text the apps receive (SPEC 1.1), numbered and journaled like
    any publication: with the report itself when the hub was built with
    C{publish_reports}, else through C{hub.publish}.
    """
    def publish(report) -> None:
        data = broadcast_bytes(report.plug.id, report.plug.value).decode("utf-8")
        if report.publication is not None:
            # Counted as a publication on the node that took the report in.
            hub.pubsub.accept(report.publication, data, remote=report.remote)
        elif not report.remote:
            # (Another node's report comes with its publication, or that
            # node publishes it.)
            hub.publish(REPORT_EVENT, data, report.peer)

    return publish
