"""
The dashboard put together for the tap: one call, L{dashboard}, that builds
the sessions, the feed, the live socket and the routes, and subscribes the
feed to the hub, the pub/sub registry, the guard and the devices.
"""

import os
import socket
import time
from functools import partial
from typing import Callable, Iterable, Optional

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource

from ... import __version__
from ...command import admin_command
from ...server.services import ThreadPoolService
from ...state import backup as backups
from .auth import Sessions
from .feed import Feed, public_settings
from .live import LiveFactory, LiveResource
from .routes import IN_REDIS, NO_STORE, Api, Dashboard

_log = Logger(namespace="smartplug_backend.http.dashboard")


def server_facts(settings, clock, tls=None, backup_directory: str = backups.DEFAULT_DIRECTORY,
                 started: Optional[float] = None, last_backup: Optional["LastBackup"] = None,
                 endpoint_tls: bool = False, links: Iterable = ()) -> Callable[[], dict]:
    """
    The feed's server section: version, node, start time, the settings
    without secrets, the store's size, the last backup, the TLS certificate,
    the links to outside services (L{smartplug_backend.server.links.Link}).

    @param last_backup: where the last backup is read from (off the reactor
        thread); by default read on the spot, for tests.
    @param endpoint_tls: the HTTP listener is an C{ssl:} endpoint: it speaks
        TLS with a certificate of its own, which is not read here.
    """
    started = clock.seconds() if started is None else started
    shown = public_settings(settings)
    node = getattr(settings, "NODE_NAME", None) or socket.gethostname()
    certificate = None
    if endpoint_tls:
        certificate = {"endpoint": True, "note": "TLS by the ssl: endpoint; certificate not read"}
    elif tls is not None:
        certificate = {"file": tls.cert_file, "subject": tls.subject, "not_after": tls.not_after.timestamp()}
    newest = last_backup.get if last_backup is not None else partial(_last_backup, backup_directory)

    def facts() -> dict:
        return {
            "version": __version__,
            "node": node,
            "started_at": started,
            "now": clock.seconds(),
            "settings": shown,
            "store": _store(settings),
            "last_backup": newest(),
            "tls": certificate,
            "links": [link.as_json() for link in links],
        }

    return facts


class LastBackup:
    """
    The newest backup in C{directory}, as last read: listing and stat-ing
    every backup file is done in a thread (C{run}), never on the reactor
    thread.  L{get} answers at once with the last reading and starts a new
    one (one at a time); C{changed()} is called when a reading differs.
    """

    def __init__(self, directory: str, run: Callable[..., Deferred], changed: Callable[[], None]) -> None:
        self._directory = directory
        self._run = run
        self._changed = changed
        self._value: Optional[dict] = None
        self._reading = False

    def get(self) -> Optional[dict]:
        if not self._reading:
            self._reading = True
            self._run(_last_backup, self._directory).addCallbacks(self._read, self._failed)
        return self._value

    def _read(self, value: Optional[dict]) -> None:
        self._reading = False
        if value != self._value:
            self._value = value
            self._changed()

    def _failed(self, failure) -> None:
        self._reading = False
        _log.failure("reading the backups in {directory}", failure, directory=self._directory)


def backup_button(settings) -> tuple[Optional[Callable[[], str]], str]:
    """
    What the backup button does: C{(take, why_not)}, C{take()} writing a
    backup of the state database into C{backups/} and returning its path,
    or C{None} and C{why_not} saying why there is none to take.
    """
    if settings.REDIS_URL is not None:
        # STATE_DB is not used: a file there is not the state.
        return None, IN_REDIS
    if settings.STATE_DB is None:
        return None, NO_STORE
    return partial(backups.take, settings.STATE_DB, settings.path, backups.DEFAULT_DIRECTORY, now=time.time), ""


def _store(settings) -> Optional[dict]:
    # A stat or two per refresh: small enough for the reactor thread.
    if settings.REDIS_URL is not None:
        # STATE_DB is not used; the Redis URL may hold a password.
        return {"redis": True}
    path = settings.STATE_DB
    if path is None:
        return None
    size = 0
    for name in (path, path + "-wal"):
        try:
            size += os.stat(name).st_size
        except OSError:
            pass
    return {"path": path, "bytes": size}


def _last_backup(directory: str) -> Optional[dict]:
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".tar.gz") and not n.startswith(".")]
    except OSError:
        return None
    newest = None
    for name in names:
        try:
            at = os.stat(os.path.join(directory, name)).st_mtime
        except OSError:
            continue
        if newest is None or at > newest[1]:
            newest = (name, at)
    return {"file": os.path.join(directory, newest[0]), "at": newest[1]} if newest else None


def dashboard(settings, hub, guard, reactor, top: MultiService, tls=None, devices=None,
              ws_url: Optional[str] = None, endpoint_tls: bool = False, links: Iterable = ()) -> Optional[Resource]:
    """
    The C{/ui} resource, or C{None} (with one log line saying how to turn
    it on) when C{DASHBOARD_USERS} is empty.  Adds its thread pools
    (password checks; backups and reading the backup folder) to C{top}.

    @param devices: the device listener's factory, or C{None}.
    @param ws_url: C{wss://...} when the HTTP listener speaks TLS.
    @param endpoint_tls: the HTTP listener is an C{ssl:} endpoint (its
        certificate is its own, not C{tls}'s).
    @param links: the links to outside services (Redis, the MQTT broker).
    """
    if not settings.DASHBOARD_USERS:
        _log.info(
            "dashboard off: add DASHBOARD_USERS to {where} ({command} passwd NAME prints the line)",
            where=settings.path or "settings.py",
            command=admin_command(),
        )
        return None
    # scrypt off the reactor thread, in a small pool of its own: a slow
    # backup (the other pool) never delays a login.
    logins = ThreadPool(minthreads=0, maxthreads=2, name="smartplug-dashboard-logins")
    ThreadPoolService(logins, reactor).setServiceParent(top)
    run = partial(deferToThreadPool, reactor, logins)
    # Backups, and listing the backup folder for the page.
    files = ThreadPool(minthreads=0, maxthreads=1, name="smartplug-dashboard-backups")
    ThreadPoolService(files, reactor).setServiceParent(top)
    run_files = partial(deferToThreadPool, reactor, files)

    sessions = Sessions(reactor, settings.DASHBOARD_SESSION_DAYS)
    # The feed is made after the facts it reads: it is told of a new backup
    # through this late-bound call.
    feed = None
    newest = LastBackup(backups.DEFAULT_DIRECTORY, run_files, lambda: feed.server_changed())
    facts = server_facts(settings, reactor, tls, last_backup=newest, endpoint_tls=endpoint_tls, links=links)
    feed = Feed(hub, guard, reactor, facts, devices)
    for link in links:
        # Redis or the broker coming or going shows at once.
        link.watch(feed.server_changed)
    hub.listen(feed.report)
    hub.watch_kept(feed.kept)
    hub.watch_display(feed.display)
    hub.pubsub.observe(feed.publication)
    hub.pubsub.watch_connections(feed.clients_changed)
    guard.watch(feed.security_changed)
    if devices is not None:
        devices.watch(feed.devices_changed)

    take, no_backup = backup_button(settings)
    api = Api(hub, guard, sessions, settings.DASHBOARD_USERS, run, settings.HISTORY_KEEP, take, feed.server_changed,
              run_backup=run_files, no_backup=no_backup)
    live_factory = LiveFactory(feed, sessions, reactor, url=ws_url)
    _log.info(
        "dashboard on at /ui/ of the HTTP port for {users}",
        users=", ".join(sorted(settings.DASHBOARD_USERS)),
    )
    return Dashboard(api, LiveResource(live_factory), live_factory)
