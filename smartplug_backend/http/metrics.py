"""
Prometheus metrics (SPEC 10): C{GET /metrics} on the HTTP port.

The parts of the server keep plain counts of what they do (the hub its
accepted and refused reports, the pub/sub registry its publications and
deliveries, the connection cap its open connections per listener, the guard
its failures and bans, the WebSocket factories their slow clients, the tweet
notifier its tweets).  L{ServerCollector} reads them when Prometheus scrapes,
so the busy paths pay one integer increment each and nothing outside this
module imports prometheus_client.  Only the two timings are observed as they
happen, into plain-count histograms (L{Timings}): the store's commit time
(L{MeteredJournal}, around the hub's journal) and each HTTP request's time
(L{RequestTimer}, called by the site).

No label holds anything a client chose: routes are the app's route
patterns (an unknown path is C{"unmatched"}), methods a fixed set, and the
other labels come from the code.
"""

import json
from bisect import bisect_left
from itertools import accumulate
from typing import Iterable, Optional

import bottle
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from twisted.web.resource import Resource

from ..core.hub import REFUSALS
from ..server.connections import FULL, PER_ADDRESS
from ..server.guard import AllowList

LISTENERS = ("http", "app", "device")
SOURCES = ("http", "device")
# Always shown, at 0 until they happen; other kinds appear once counted.
AUTH_KINDS = ("api_key", "device_secret", "dashboard_login")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
UNMATCHED = "unmatched"
LINK_HELP = {
    "redis": "1 while Redis answers and this node has loaded the shared state (changes are accepted), else 0.",
    "mqtt": "1 while connected to the MQTT broker (MQTT_URL), else 0.",
}

# Seconds.  A commit is an fsync: about a millisecond on an SSD, tens on an
# SD card.  Requests: the reports' sub-millisecond answers up to a slow WSGI
# pool.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def new_registry() -> CollectorRegistry:
    """
    A registry of the server's own (not the library's global one, so that
    tests do not share counts), with the library's process, platform and
    garbage-collector families.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class ServerCollector:
    """
    The server's counts, read when Prometheus scrapes.

    @param hub: the L{smartplug_backend.core.hub.Hub}.
    @param cap: the L{smartplug_backend.server.connections.ConnectionCap};
        its listeners wrapped with the names of L{LISTENERS}.
    @param guard: the L{smartplug_backend.server.guard.Guard}.
    @param factories: listener name -> WebSocket factory, for slow clients.
    @param notifier: the tweet L{smartplug_backend.integrations.tweets.Notifier},
        or C{None} when tweets are off.
    @param links: the L{smartplug_backend.server.links.Link}s to outside
        services (Redis, the MQTT broker): a gauge each.
    @param mqtt: the MQTT bridge, for its dropped messages, or C{None}.
    """

    def __init__(self, hub, cap, guard, factories: dict, notifier=None, links: Iterable = (), mqtt=None) -> None:
        self._hub = hub
        self._cap = cap
        self._guard = guard
        self._factories = dict(factories)
        self._notifier = notifier
        self._links = list(links)
        self._mqtt = mqtt

    def collect(self) -> Iterable:
        hub, pubsub = self._hub, self._hub.pubsub
        open_ = GaugeMetricFamily(
            "smartplug_open_connections", "Connections open now, per listener.", labels=["listener"]
        )
        for listener in LISTENERS:
            open_.add_metric([listener], self._cap.open_by_listener.get(listener, 0))
        yield open_
        refused_connections = CounterMetricFamily(
            "smartplug_connections_refused",
            "Connections closed at accept, per reason (max_connections: MAX_CONNECTIONS were open; "
            "per_address: their address held MAX_CONNECTIONS_PER_ADDRESS).",
            labels=["reason"],
        )
        for reason in (FULL, PER_ADDRESS):
            refused_connections.add_metric([reason], self._cap.refused_by_reason.get(reason, 0))
        yield refused_connections

        accepted = CounterMetricFamily(
            "smartplug_reports_accepted", "Plug reports accepted, per source.", labels=["source"]
        )
        refused = CounterMetricFamily(
            "smartplug_reports_refused",
            "Plug reports refused, per source and reason (invalid: not a valid report; "
            "store: the state store could not record it).",
            labels=["source", "reason"],
        )
        for source in SOURCES:
            accepted.add_metric([source], hub.accepted.get(source, 0))
            for reason in REFUSALS:
                refused.add_metric([source, reason], hub.refused.get((source, reason), 0))
        yield accepted
        yield refused

        yield CounterMetricFamily(
            "smartplug_publications",
            "Pub/sub publications this node took in (WebSocket, HTTP, MQTT and plug reports).",
            value=pubsub.publications,
        )
        yield CounterMetricFamily(
            "smartplug_deliveries",
            "Publication frames sent to subscribers (live, and sent again for last or since).",
            value=pubsub.deliveries,
        )

        slow = CounterMetricFamily(
            "smartplug_slow_clients_dropped",
            "WebSocket connections cut off for not reading (over 1 MiB unsent).",
            labels=["listener"],
        )
        # Every listener, at 0 when it is off (no AUTH_SECRET, no dashboard):
        # a series that comes and goes with settings breaks dashboards.
        for listener in LISTENERS:
            factory = self._factories.get(listener)
            slow.add_metric([listener], 0 if factory is None else factory.slow_dropped)
        yield slow

        failures = CounterMetricFamily(
            "smartplug_auth_failures", "Failed authentications, per kind.", labels=["kind"]
        )
        counts = self._guard.failure_counts
        for kind in sorted(set(AUTH_KINDS) | set(counts)):
            failures.add_metric([kind], counts.get(kind, 0))
        yield failures
        yield GaugeMetricFamily("smartplug_bans_active", "Addresses banned now.", value=self._guard.active_bans())

        notifier = self._notifier
        yield CounterMetricFamily("smartplug_tweets_sent", "Tweets posted.", value=notifier.sent if notifier else 0)
        yield CounterMetricFamily(
            "smartplug_tweets_failed",
            "Tweets given up on: failed every try, or dropped from a full queue.",
            value=notifier.failed if notifier else 0,
        )
        # Only for the services set up (REDIS_URL, MQTT_URL).
        for link in self._links:
            yield GaugeMetricFamily(
                f"smartplug_{link.name}_connected", LINK_HELP[link.name], value=1 if link.up else 0
            )
        if self._mqtt is not None:
            yield CounterMetricFamily(
                "smartplug_mqtt_messages_dropped",
                "MQTT messages dropped because paho's queue of messages waiting for the broker was full, "
                "and events dropped while too many waited to be written to a broker that does not read, or not "
                "yet written when the connection ended.",
                value=self._mqtt.dropped,
            )


class Timings:
    """
    One histogram kept as plain counts: the reactor thread observes into
    it, the scrape reads it.  (The library's Histogram takes a lock per
    observation: a few microseconds on every HTTP request.)

    @param bounds: the buckets' upper bounds, ascending, in seconds.
    """

    def __init__(self, bounds: tuple) -> None:
        self.bounds = bounds
        # One count per bound, then the one above them all (+Inf).
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list:
        """
        Prometheus's cumulative buckets: C{[(le, count), ..., ("+Inf", total)]}.
        """
        cumulative = list(accumulate(self.counts))
        # The last count (+Inf) has no bound: zip stops before it.
        below = [(floatToGoString(b), c) for b, c in zip(self.bounds, cumulative, strict=False)]
        return below + [("+Inf", cumulative[-1])]


class _TimingsCollector:
    """
    Shows C{timings()} (label values -> L{Timings}) as one histogram family.
    """

    def __init__(self, name: str, documentation: str, labelnames: list, timings) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._timings = timings

    def collect(self) -> Iterable:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for labels, timings in list(self._timings().items()):
            family.add_metric(list(labels), timings.buckets(), timings.sum)
        yield family


def commit_timings(registry: CollectorRegistry) -> Timings:
    """
    C{smartplug_store_commit_seconds}, shown by C{registry}: observe into
    the L{Timings} returned.
    """
    timings = Timings(COMMIT_BUCKETS)
    registry.register(_TimingsCollector(
        "smartplug_store_commit_seconds",
        "Time from asking the state store to record a change to its commit being confirmed "
        "(waiting for the writer thread included).",
        [],
        lambda: {(): timings},
    ))
    return timings


class MeteredJournal:
    """
    A journal (L{smartplug_backend.core.journal.Journal}) that times each
    write of the one it wraps into C{timings}; everything else is the
    wrapped journal's own.

    @param clock: gives the time (the reactor; a L{Clock} in tests).
    """

    def __init__(self, journal, timings: Timings, clock) -> None:
        self._journal = journal
        self._timings = timings
        self._clock = clock

    def __getattr__(self, name: str):
        return getattr(self._journal, name)

    def _timed(self, d):
        d.addBoth(self._observe, self._clock.seconds())
        return d

    def _observe(self, result, started: float):
        self._timings.observe(self._clock.seconds() - started)
        return result

    def save_report(self, plug_id: str, value: int, at: float, source: str, *publication):
        return self._timed(self._journal.save_report(plug_id, value, at, source, *publication))

    def save_display(self, display):
        return self._timed(self._journal.save_display(display))

    def save_publication(self, publication, keep: int, oldest: float):
        return self._timed(self._journal.save_publication(publication, keep, oldest))


class RequestTimer:
    """
    Times HTTP requests into C{smartplug_http_request_seconds} (shown by
    C{registry}), labelled by method and route pattern: from the request's
    arrival in whole (the site's C{getResourceFor}) to its answer's last
    byte (the site's C{log}), or to the client's leaving, if it leaves
    first.  Reactor thread only.

    @param app: the Bottle app, whose route patterns label its requests;
        requests a named child of the site's root served are labelled by
        that child's path (C{/metrics}).
    @param clock: gives the time (the reactor; a L{Clock} in tests).
    """

    def __init__(self, registry: CollectorRegistry, app: bottle.Bottle, clock) -> None:
        self._app = app
        self._clock = clock
        # (method, route) -> Timings: both come from fixed sets.
        self._timings: dict = {}
        # (method, path) -> (method, route) for the app's routes without
        # parameters (POST /data above all): a bounded set.
        self._static: dict = {}
        registry.register(_TimingsCollector(
            "smartplug_http_request_seconds",
            "Time from an HTTP request's arrival to its answer's last byte (or the client's leaving), "
            f"per method and route pattern ({UNMATCHED}: no route).",
            ["method", "route"],
            lambda: self._timings,
        ))

    def started(self, request) -> None:
        request.metrics_started = self._clock.seconds()

    def finished(self, request) -> None:
        started = getattr(request, "metrics_started", None)
        if started is None:
            return
        request.metrics_started = None  # once, whichever way it ended
        key = self.labels(request)
        timings = self._timings.get(key)
        if timings is None:
            timings = self._timings[key] = Timings(REQUEST_BUCKETS)
        timings.observe(self._clock.seconds() - started)

    def labels(self, request) -> tuple[str, str]:
        """
        C{(method, route)} of a request: a method of L{METHODS} or
        C{"other"}, and a route pattern or L{UNMATCHED}.
        """
        method = request.method.decode("latin-1")
        if method not in METHODS:
            method = "other"
        if request.prepath:
            # The site's root serves only its named children this way (it
            # hands the app the whole path back): a fixed set.
            return method, "/" + request.prepath[0].decode("latin-1")
        # What twisted.web's WSGIResource gives the app as PATH_INFO.
        path = b"/" + b"/".join(request.postpath) if request.postpath else b"/"
        known = self._static.get((method, path))
        if known is not None:
            return known
        route = self._route(path.decode("latin-1"), method)
        if route is None:
            return method, UNMATCHED
        if "<" not in route.rule:
            self._static[method, path] = (method, route.rule)
        return method, route.rule


    def _route(self, path: str, method: str):
        """
        The app's route of C{path}, or C{None} for an unknown path; a known
        path asked with a method it does not take (405) is still its route.
        """
        try:
            return self._app.match({"PATH_INFO": path, "REQUEST_METHOD": method})[0]
        except bottle.HTTPError as e:
            allowed = e.headers.get("Allow") if e.status_code == 405 else None
        if not allowed:
            return None
        try:
            return self._app.match({"PATH_INFO": path, "REQUEST_METHOD": allowed.split(",")[0].strip()})[0]
        except bottle.HTTPError:
            return None


def _json_error(request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": message}).encode("utf-8")


class MetricsResource(Resource):
    """
    C{GET /metrics}: the registry in Prometheus's text format, for addresses
    in C{allow} only (403 for others).

    Rendered on the reactor thread: a scrape reads counters and a few
    C{/proc} files, far quicker than a hop to a thread and back.  (The
    library's own C{prometheus_client.twisted.MetricsResource} is a WSGI
    resource on the reactor's shared thread pool.)

    @param allow: addresses and networks (strings) that may scrape.  The
        connection's own address counts; X-Forwarded-For is not believed.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, allow: Iterable[str]) -> None:
        super().__init__()
        self._registry = registry
        self._allow = AllowList(allow)

    def allowed(self, host: Optional[str]) -> bool:
        """
        True when C{host} may scrape.
        """
        return host in self._allow

    def render(self, request) -> bytes:
        body = self._answer(request)
        if request.method == b"HEAD":
            # twisted.web would drop the body itself, logging a warning at
            # every scrape that checks with HEAD.
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return b""
        return body

    def _answer(self, request) -> bytes:
        if not self.allowed(getattr(request.getClientAddress(), "host", None)):
            return _json_error(request, 403, "metrics are not served to this address: see METRICS_ALLOW")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            method = request.method.decode("latin-1")
            return _json_error(request, 405, f"method {method} not allowed on /metrics")
        # Prometheus's text format, or OpenMetrics when the scraper asks.
        encode, content_type = choose_encoder((request.getHeader(b"accept") or b"").decode("latin-1"))
        request.setHeader(b"Content-Type", content_type.encode("latin-1"))
        return encode(self._registry)
