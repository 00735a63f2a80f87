"""
What the dashboard shows (SPEC 9), as JSON messages: one snapshot for a page
that connects, then the changes.

The feed listens to the hub (reports, display), the pub/sub registry
(publications, connections), the guard (failures, bans) and the device
listener, and turns what it hears into messages for its watchers (the live
WebSocket).  Reports, display changes and publications go out at once, one
message each; lists that change in bursts (clients, devices, security, the
server's facts) are marked and sent whole a moment later
(L{FLUSH_DELAY}), once per burst.  Every message is serialised once,
whatever the number of pages open.

Times are seconds since the epoch (floats); the page formats them.  It runs
on the reactor thread and knows nothing of Autobahn.
"""

import collections
import dataclasses
import json
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ...core.limits import (
    DASHBOARD_FLUSH_DELAY,
    DASHBOARD_PUBLICATIONS,
    DASHBOARD_RECENT_REPORTS,
    DASHBOARD_SERVER_REFRESH,
)
from ...core.times import seconds_of_rfc3339
from ...integrations.urls import redact

# The page shows changes within a second; the delay bounds how often a
# burst of device pings or connections is re-sent.
FLUSH_DELAY = DASHBOARD_FLUSH_DELAY
SERVER_REFRESH = DASHBOARD_SERVER_REFRESH
PUBLICATIONS_KEPT = DASHBOARD_PUBLICATIONS
RECENT_REPORTS = DASHBOARD_RECENT_REPORTS

_SECTIONS = ("clients", "devices", "security", "server")


class Feed:
    """
    The dashboard's live view of the server.

    @param hub: the L{smartplug_backend.core.hub.Hub}.
    @param guard: the L{smartplug_backend.server.guard.Guard}.
    @param clock: the reactor's time; runs the flush and refresh timers.
    @param server_facts: returns the server section (version, uptime,
        settings, store, backups, TLS); see L{wiring.server_facts}.
    @param devices: the device listener's factory, or C{None} when the
        device port is closed.
    """

    _log = Logger(namespace="smartplug_backend.http.dashboard")

    def __init__(self, hub, guard, clock: IReactorTime, server_facts: Callable[[], dict], devices=None) -> None:
        self._hub = hub
        self._guard = guard
        self._clock = clock
        self._server_facts = server_facts
        self._devices = devices
        self._watchers: list[Callable[[bytes], None]] = []
        self._publications: collections.deque = collections.deque(maxlen=PUBLICATIONS_KEPT)
        self._reports: collections.deque = collections.deque(maxlen=RECENT_REPORTS)
        # plug id -> how its last report came, and since when its value holds,
        # for the changes seen since start-up (the page reads older ones from
        # the history route).
        self._sources: dict[str, str] = {}
        self._since: dict[str, float] = {}
        self._dirty: set = set()
        self._flush_call = None
        self._refresh_call = None
        # Pages open now: with none, changes are not even serialised.
        self._viewing = 0

    # -- what the page gets ------------------------------------------------

    def watch(self, listener: Callable[[bytes], None]) -> None:
        """
        Call C{listener(message)} with every change, serialised (UTF-8 JSON).
        """
        self._watchers.append(listener)

    def snapshot(self) -> bytes:
        """
        Everything the page shows, as one C{{"type": "snapshot", ...}}
        message.
        """
        message = {
            "type": "snapshot",
            "plugs": [self._plug(p) for p in self._hub.plugs()],
            "reports": list(self._reports),
            # None while a node on Redis has not loaded the state yet.
            "display": _json_or_none(self._hub.known_display()),
            "publications": list(self._publications),
        }
        for section in _SECTIONS:
            message.update(self._section(section))
        return _encode(message)

    def viewers(self, count: int) -> None:
        """
        Tell the feed how many pages are open: changes are sent, and the
        server's facts refreshed, only while one is.
        """
        self._viewing = count
        if count and self._refresh_call is None:
            self._refresh_call = self._clock.callLater(SERVER_REFRESH, self._refresh)
        elif not count and self._refresh_call is not None:
            if self._refresh_call.active():
                self._refresh_call.cancel()
            self._refresh_call = None

    # -- what the server tells the feed -------------------------------------

    def report(self, report) -> None:
        """
        A hub listener: an accepted plug report.
        """
        plug = report.plug
        self._sources[plug.id] = report.source
        # Only a change says when the value began: a repeated report of a
        # plug not seen changing since start-up leaves it unknown (None), and
        # the page finds it in the plug's history.
        if report.changed:
            self._since[plug.id] = plug.updated_at
        entry = {"id": plug.id, "value": plug.value, "at": plug.updated_at, "source": report.source}
        self._reports.append(entry)
        self._send({"type": "report", "report": entry, "plug": self._plug(plug)})

    def kept(self, event) -> None:
        """
        A hub keep listener: the plugs the hub keeps, in their new order,
        and those it no longer has (on Redis, another node's copy of the
        state won over this node's, or Redis lost them).  The page takes
        the dropped ones off its list and puts the others in order; a
        snapshot no longer holds the dropped ones.
        """
        gone = {plug.id for plug in event.dropped}
        for plug_id in gone:
            self._sources.pop(plug_id, None)
            self._since.pop(plug_id, None)
        kept = [entry for entry in self._reports if entry["id"] not in gone]
        self._reports.clear()
        self._reports.extend(kept)
        self._send({"type": "plugs", "order": [plug.id for plug in event.kept],
                    "dropped": [plug.id for plug in event.dropped]})

    def display(self, event) -> None:
        """
        A hub display listener: a new display state or a one-off command.
        """
        self._send({"type": "display", "display": event.state.as_json(), "packet": event.packet, "command": event.command})

    def publication(self, event: str, data: Any, origin: Optional[str] = None) -> None:
        """
        A pub/sub observer: keeps the last L{PUBLICATIONS_KEPT}.

        @param origin: who brought it in from outside (e.g. C{"mqtt"}), or
            C{None} for our own HTTP and WebSocket clients.
        """
        entry = {"event": event, "data": data, "at": self._clock.seconds(), "origin": origin}
        self._publications.append(entry)
        self._send({"type": "publication", "publication": entry})

    def clients_changed(self) -> None:
        """
        Connections or subscriptions changed, on this node or (through the
        shared presence) on others, whose devices are listed too.
        """
        self._mark("clients")
        self._mark("devices")

    def devices_changed(self) -> None:
        """
        A device came, left or was heard from.
        """
        self._mark("devices")

    def security_changed(self) -> None:
        """
        An authentication failure, a ban or a lift.
        """
        self._mark("security")

    def server_changed(self) -> None:
        """
        The server's facts changed (a backup was taken, Redis or the MQTT
        broker came or went).
        """
        self._mark("server")

    # -- inside --------------------------------------------------------------

    def _plug(self, plug) -> dict:
        return {
            "id": plug.id,
            "value": plug.value,
            "updated_at": plug.updated_at,
            "since": self._since.get(plug.id),
            "source": self._sources.get(plug.id),
        }

    def _section(self, name: str) -> dict:
        if name == "clients":
            clients = []
            # By the port they came on: a PiCloud client may call itself
            # "device" and still be an app.
            for entry, events in self._hub.pubsub.app_connections():
                entry["events"] = events
                clients.append(entry)
            return {"clients": clients}
        if name == "devices":
            return {"devices": self._device_list()}
        if name == "security":
            guard = self._guard
            return {
                "bans": [
                    {"address": b.address, "until": b.until, "refused": b.refused, "failures": b.failures}
                    for b in guard.bans()
                ],
                "failures": [{"at": f.at, "address": f.address, "reason": f.reason} for f in guard.recent_failures()],
            }
        return {"server": self._server_facts()}

    def _device_list(self) -> Optional[list]:
        """
        This node's devices (address, since, last heard), then the other
        nodes' (SPEC 11: every node's connections), with what their shared
        listing tells (address, since, their node; last heard is known only
        where the device is connected); C{None} when no node has a device
        port open here to say so (this node's is closed, no other lists one).
        """
        pubsub = self._hub.pubsub
        elsewhere = [
            {"address": entry.get("ip_address"), "connected_at": seconds_of_rfc3339(entry.get("connected_at")),
             "last_heard": None, "node": entry.get("node"), "remote": True}
            for entry in pubsub.devices_elsewhere()
        ]
        if self._devices is None:
            return elsewhere or None
        mine = self._devices.connected()
        if pubsub.node is not None:
            for device in mine:
                device["node"] = pubsub.node
        return mine + elsewhere

    def _mark(self, section: str) -> None:
        if not self._viewing:
            return
        self._dirty.add(section)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        dirty, self._dirty = self._dirty, set()
        message: dict = {"type": "update"}
        for section in _SECTIONS:
            if section in dirty:
                try:
                    message.update(self._section(section))
                except Exception:
                    self._log.failure("dashboard section {section}", section=section)
        self._send(message)

    def _refresh(self) -> None:
        self._refresh_call = self._clock.callLater(SERVER_REFRESH, self._refresh)
        self._mark("server")

    def _send(self, message: dict) -> None:
        if not self._viewing:
            return
        payload = _encode(message)
        for listener in list(self._watchers):
            try:
                listener(payload)
            except Exception:
                self._log.failure("dashboard watcher {listener!r} failed", listener=listener)


def _json_or_none(value):
    return None if value is None else value.as_json()


def _encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def public_settings(settings) -> dict:
    """
    The settings as the dashboard shows them: secrets only as whether they
    are set, user names without their hashes, URLs as the logs show them
    (L{redact}: passwords hidden, the rest as written).
    """
    shown: dict[str, Optional[object]] = {}
    for field in dataclasses.fields(settings):
        name = field.name
        if not name.isupper():
            continue
        value = getattr(settings, name)
        if name == "DASHBOARD_USERS":
            value = sorted(value)
        elif _secret(name):
            value = "(set)" if value else "(not set)"
        elif isinstance(value, str) and (name.endswith("_URL") or "://" in value):
            # As the logs show it: a password in the user information or
            # in the query (redis://host/0?password=...) becomes ***.
            value = redact(value)
        elif isinstance(value, tuple):
            value = list(value)
        shown[name] = value
    return shown


def _secret(name: str) -> bool:
    return name in ("AUTH_SECRET", "API_KEY") or name.endswith(("_SECRET", "_KEY", "_PASSWORD", "_TOKEN"))
