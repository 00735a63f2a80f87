"""
C{twistd smartplug}: command-line options and the wiring of every part.

Nothing here does work of its own; it builds the parts and connects them.
"""

import socket
from functools import partial

from twisted.application.service import MultiService
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from . import config
from .core.history import History
from .core.hub import Hub
from .core.journal import MemoryJournal
from .core.limits import WS_GOING_AWAY_TIMEOUT
from .core.pubsub import report_publisher
from .http.api import Bridge, make_app
from .http.channel import make_site
from .http.dashboard.wiring import dashboard
from .http.ingest import ingest_routes
from .http.metrics import MeteredJournal, MetricsResource, RequestTimer, ServerCollector, commit_timings, new_registry
from .integrations.tweets import tweet_service
from .server.connections import ConnectionCap
from .server.guard import Guard
from .server.listeners import brings_own_tls, endpoint_description, listener
from .server.logtext import FastLogText
from .server.openfiles import make_room
from .server.runtime import FreezeStartupObjects, StopInOrder
from .server.services import GoingAway, StartupError, ThreadPoolService, exit_startup
from .server.tls import TLS, TLSError
from .state.autobackup import BackupService, automatic_backup
from .state.backup import AUTOMATIC, DEFAULT_DIRECTORY, before_upgrade, newest
from .state.persistence import StoreService
from .ws.apps import AppFactory
from .ws.devices import DeviceFactory

_log = Logger(namespace="smartplug_backend")
# A TLS certificate this close to its end is warned about at start.
CERTIFICATE_WARNING_DAYS = 14


class Options(usage.Options):
    """
    Options of C{twistd smartplug}.
    """

    synopsis = "[--settings PATH] [--www ENDPOINT] [--ws ENDPOINT] [--device ENDPOINT]"
    longdesc = (
        "Serve the SmartPlug HTTP API, the app WebSocket and the device WebSocket. "
        "ENDPOINT is a Twisted endpoint description such as "
        "tcp:9000:interface=127.0.0.1; it replaces both the port and LISTEN_ADDRESS of the settings file "
        "(tcp:9000 alone listens on every interface)."
    )
    optParameters = [
        ["settings", "s", None, "Settings file (default: ./settings.py if present, else built-in defaults)."],
        ["www", None, None, "Endpoint for the HTTP API (default: tcp:WWW_SERVER_PORT:interface=LISTEN_ADDRESS)."],
        ["ws", None, None, "Endpoint for the app WebSocket (default: tcp:WS_SERVER_PORT:interface=LISTEN_ADDRESS)."],
        ["device", None, None,
         "Endpoint for the device WebSocket (default: tcp:DEVICE_SERVER_PORT:interface=LISTEN_ADDRESS)."],
    ]


def _in_days(seconds: float) -> str:
    days = max(1, round(seconds / 86400))
    return f"expires in {days} day{'' if days == 1 else 's'}"


def makeService(options: Options, reactor=None):
    """
    Build the whole server as one MultiService.
    """
    if reactor is None:
        from twisted.internet import reactor
    try:
        return _build(options, reactor)
    except StartupError as e:
        exit_startup(str(e))


def _build(options: Options, reactor) -> MultiService:
    try:
        settings = config.load(options["settings"])
    except config.ConfigError as e:
        raise StartupError(str(e)) from e
    _log.info("settings from {where}", where=settings.path or "built-in defaults")

    try:
        tls = TLS.from_settings(settings)
    except TLSError as e:
        raise StartupError(str(e)) from e
    if tls is not None:
        _log.info(
            "TLS certificate {path}: {subject}, valid until {until}",
            path=tls.cert_file, subject=tls.subject, until=tls.not_after.isoformat(),
        )
        left = tls.not_after.timestamp() - reactor.seconds()
        if left < CERTIFICATE_WARNING_DAYS * 86400:
            _log.warn(
                "TLS certificate {path} {when}: clients that check it will refuse to connect; "
                "renew it and restart",
                path=tls.cert_file,
                when="has expired" if left <= 0 else _in_days(left),
            )
    make_room(settings.MAX_CONNECTIONS)

    # Stopped last-added first, one at a time: listeners, then the WSGI
    # pool's requests, then the store they write to.
    top = StopInOrder(twistd_config=getattr(options, "parent", None))
    # The server's own registry: /metrics serves it (SPEC 10).
    registry = new_registry()
    # The outside services this server depends on (Redis, the MQTT broker):
    # shown on the dashboard and in /metrics.
    links = []
    hub, shared_bans = _state(settings, reactor, top, registry, links)
    # Start-up's objects out of the garbage collector's way, once all is up.
    FreezeStartupObjects(reactor).setServiceParent(top)
    # The log file's lines, the same text at a quarter of the cost.
    FastLogText().setServiceParent(top)
    # One guard and one connection count for every listener: a ban holds on
    # all ports, and MAX_CONNECTIONS counts them all together.
    guard = Guard.from_settings(settings, reactor, shared_bans)
    cap = ConnectionCap.from_settings(settings, reactor)

    def endpoint(option: str, port: int) -> str:
        return options[option] or endpoint_description(port, settings.LISTEN_ADDRESS)

    def secure(description: str) -> bool:
        return tls is not None or brings_own_tls(description)

    def listen(label: str, name: str, description: str, factory, scheme: str) -> None:
        # Outside in: bans, then the count, then TLS: a refused peer costs
        # no TLS handshake, and each layer sees the peer's real address.
        if tls is not None and brings_own_tls(description):
            _log.info("{label}: the ssl: endpoint brings its own certificate; TLS_CERT_FILE is not used for it", label=label)
        elif tls is not None:
            factory = tls.wrap(factory, reactor)
        # A ban also closes the HTTP port's open (keep-alive) connections;
        # WebSocket connections that already proved their key stay.
        protected = guard.wrap(cap.wrap(factory, name), close_on_ban=name == "http")
        secure_scheme = scheme + "s" if secure(description) else None
        listener(label, reactor, description, protected, secure_scheme).setServiceParent(top)

    def ws_url(description: str):
        # Autobahn's isSecure follows the URL's scheme.
        return "wss://localhost" if secure(description) else None

    # WSGI gets a pool of its own: the reactor's default pool also serves DNS.
    wsgi_pool = ThreadPool(minthreads=2, maxthreads=16, name="smartplug-wsgi")
    ThreadPoolService(wsgi_pool, reactor).setServiceParent(top)
    app = make_app(hub, Bridge.for_reactor(reactor), guard=guard, api_key=settings.API_KEY)
    www_endpoint = endpoint("www", settings.WWW_SERVER_PORT)

    ws_endpoint = endpoint("ws", settings.WS_SERVER_PORT)
    apps = AppFactory(
        hub, api_key=settings.API_KEY, info_interval=settings.INFO_INTERVAL, clock=reactor, guard=guard, url=ws_url(ws_endpoint)
    )
    hub.pubsub.deliver_with(apps.send_to_all)
    # SPEC 1.1's order: state (the hub itself), apps, pub/sub, then tweets.
    hub.listen(apps.broadcast)
    hub.listen(report_publisher(hub))
    websockets = {"app": apps}

    devices = None
    if settings.AUTH_SECRET is None:
        _log.info(
            "device WebSocket port not opened: set AUTH_SECRET in {where} to enable it",
            where=settings.path or "settings.py",
        )
    else:
        device_endpoint = endpoint("device", settings.DEVICE_SERVER_PORT)
        devices = DeviceFactory.from_settings(settings, hub, guard, reactor, url=ws_url(device_endpoint))
        hub.watch_display(devices.send_packet)
        websockets["device"] = devices

    bridge = None
    if settings.MQTT_URL is not None:
        # Imported only here: without MQTT_URL, paho is never loaded.
        from .integrations.mqtt import mqtt_service

        bridge = mqtt_service(settings, hub, reactor)
        bridge.setServiceParent(top)
        links.append(bridge.link)

    # The HTTP site after those: the dashboard listens to all of the above,
    # after the apps and pub/sub (SPEC 1.1's order) and before tweets.
    children = {b"metrics": MetricsResource(registry, settings.METRICS_ALLOW)}
    ui = dashboard(settings, hub, guard, reactor, top, tls=tls, devices=devices, ws_url=ws_url(www_endpoint),
                   endpoint_tls=brings_own_tls(www_endpoint), links=links)
    if ui is not None:
        children[b"ui"] = ui
        # The dashboard's live socket is on the HTTP port.
        websockets["http"] = ui.live_factory
    # POST /data and POST /publish are answered on the reactor thread; the
    # app keeps every other route, and the refusals of those two.
    site = make_site(
        app, reactor, wsgi_pool, children=children, timer=RequestTimer(registry, app, reactor),
        fast=ingest_routes(hub, settings.API_KEY, guard),
    )

    # Once the listeners have closed, every WebSocket connection is closed
    # with 1001, before the pools and the store stop.
    GoingAway(websockets.values(), WS_GOING_AWAY_TIMEOUT).setServiceParent(top)
    # The listeners open in one order whatever is built first: HTTP, apps,
    # devices (and close in the reverse order, before the pools they use).
    listen("HTTP", "http", www_endpoint, site, "http")
    listen("app WebSocket", "app", ws_endpoint, apps, "ws")
    if devices is not None:
        listen("device WebSocket", "device", device_endpoint, devices, "ws")

    # The hub's last listener: SPEC 1.1 puts tweets after state, apps, pub/sub.
    tweets = tweet_service(settings, hub, reactor)
    if tweets is not None:
        tweets.setServiceParent(top)
    registry.register(ServerCollector(hub, cap, guard, websockets, tweets.notifier if tweets else None, links, bridge))
    return top


def _state(settings: config.Settings, reactor, top: MultiService, registry, links: list):
    """
    The hub, on Redis (C{REDIS_URL}) or on the state store when there is
    one, with automatic backups.  Adds the store's services to C{top},
    first: the hub is loaded before any listener binds.  The journal's
    commits are timed into C{registry}; the link to Redis is added to
    C{links}.

    @return: the hub, and where bans are shared (C{None}: nowhere).
    """
    commits = commit_timings(registry)

    def history() -> History:
        return History(settings.PUBSUB_HISTORY, settings.PUBSUB_HISTORY_SECONDS, now=reactor.seconds)

    if settings.REDIS_URL is not None:
        return _on_redis(settings, reactor, top, commits, history, links)
    return _local_state(settings, reactor, top, commits, history), None


def _on_redis(settings: config.Settings, reactor, top: MultiService, commits, history, links: list):
    # Imported here: with REDIS_URL = None the redis library is never loaded.
    from .integrations.redis_engine import RedisEngine

    node = settings.NODE_NAME or socket.gethostname()
    if settings.STATE_DB is not None or settings.BACKUP_INTERVAL is not None:
        _log.info("REDIS_URL is set: the state lives in Redis; STATE_DB and BACKUP_INTERVAL are not used")
    engine = RedisEngine(
        settings.REDIS_URL, node, reactor, settings.HISTORY_KEEP, settings.INFO_INTERVAL,
        lambda journal: Hub(now=reactor.seconds, journal=MeteredJournal(journal, commits, reactor), history=history(),
                            publish_reports=True, node=node),
    )
    engine.setServiceParent(top)
    links.append(engine.link)
    return engine.hub, engine.bans


def _local_state(settings: config.Settings, reactor, top: MultiService, commits, history) -> Hub:
    if settings.STATE_DB is None:
        _log.info("STATE_DB is None: plug states, history and the display state are lost when the server stops")
        if settings.BACKUP_INTERVAL is not None:
            _log.warn("BACKUP_INTERVAL is ignored: with STATE_DB = None there is nothing to back up")
        return Hub(now=reactor.seconds, journal=MemoryJournal(settings.HISTORY_KEEP), history=history(),
                   publish_reports=True)
    state = StoreService.with_hub(
        settings.STATE_DB, settings.HISTORY_KEEP, reactor,
        lambda journal: Hub(now=reactor.seconds, journal=MeteredJournal(journal, commits, reactor), history=history(),
                            publish_reports=True),
        # A file upgraded to a newer schema is backed up first: older
        # versions refuse it, and their restore takes the backup.
        before_upgrade=before_upgrade(settings.STATE_DB, settings.path, DEFAULT_DIRECTORY),
    )
    hub = state.hub
    state.setServiceParent(top)
    if settings.BACKUP_INTERVAL is not None:
        # A thread of its own: a long backup must not hold up the writer.
        pool = ThreadPool(minthreads=0, maxthreads=1, name="smartplug-backup")
        ThreadPoolService(pool, reactor).setServiceParent(top)
        take = partial(automatic_backup, settings.STATE_DB, settings.path, DEFAULT_DIRECTORY, settings.BACKUP_KEEP)
        run = partial(deferToThreadPool, reactor, pool)
        last = partial(newest, DEFAULT_DIRECTORY, AUTOMATIC)
        BackupService(take, settings.BACKUP_INTERVAL, reactor, run, last=last, where=DEFAULT_DIRECTORY,
                      keep=settings.BACKUP_KEEP).setServiceParent(top)
    return hub
