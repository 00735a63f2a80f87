"""
C{twistd smartplug}: command-line options and the wiring of every part.

Nothing here does work of its own; it builds the parts and connects them.
"""

from functools import partial

from twisted.application.service import MultiService
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from . import config
from .apps import AppFactory
from .autobackup import BackupService, automatic_backup
from .backup import DEFAULT_DIRECTORY
from .channel import ThreadPoolService, make_site
from .devices import DeviceFactory
from .guard import Guard
from .hub import Hub
from .journal import MemoryJournal
from .limits import OpenFilesLimitService
from .listeners import ListenerService, endpoint_description, fail
from .persistence import StoreService
from .pubsub import report_publisher
from .runtime import FreezeStartupObjects
from .tweets import tweet_service
from .web import Bridge, make_app

_log = Logger(namespace="smartplug_backend")


class Options(usage.Options):
    """
    Options of C{twistd smartplug}.
    """

    synopsis = "[--settings PATH] [--www ENDPOINT] [--ws ENDPOINT] [--device ENDPOINT]"
    longdesc = (
        "Serve the SmartPlug HTTP API, the app WebSocket and the device WebSocket. "
        "ENDPOINT is a Twisted endpoint description such as "
        "tcp:9000:interface=127.0.0.1; it overrides the port in the settings file."
    )
    optParameters = [
        ["settings", "s", None, "Settings file (default: ./settings.py if present, else built-in defaults)."],
        ["www", None, None, "Endpoint for the HTTP API (default: tcp:WWW_SERVER_PORT)."],
        ["ws", None, None, "Endpoint for the app WebSocket (default: tcp:WS_SERVER_PORT)."],
        ["device", None, None, "Endpoint for the device WebSocket (default: tcp:DEVICE_SERVER_PORT)."],
    ]


def makeService(options: Options, reactor=None):
    """
    Build the whole server as one MultiService.
    """
    if reactor is None:
        from twisted.internet import reactor
    try:
        settings = config.load(options["settings"])
    except config.ConfigError as e:
        fail(str(e))
    _log.info("settings from {where}", where=settings.path or "built-in defaults")

    def endpoint(option: str, port: int) -> str:
        return options[option] or endpoint_description(port, settings.LISTEN_ADDRESS)

    top = MultiService()
    hub = _state(settings, reactor, top)
    # Every connection is a file descriptor; many systems allow 1024.
    OpenFilesLimitService(settings.MAX_CONNECTIONS).setServiceParent(top)
    # Start-up's objects out of the garbage collector's way, once all is up.
    FreezeStartupObjects(reactor).setServiceParent(top)
    # One guard for every listener: a ban holds on all ports.
    guard = Guard.from_settings(settings, reactor)

    # WSGI gets a pool of its own: the reactor's default pool also serves DNS.
    wsgi_pool = ThreadPool(minthreads=2, maxthreads=16, name="smartplug-wsgi")
    ThreadPoolService(wsgi_pool, reactor).setServiceParent(top)
    app = make_app(hub, Bridge.for_reactor(reactor), guard=guard, api_key=settings.API_KEY)
    site = guard.wrap(make_site(app, reactor, wsgi_pool))
    ListenerService("HTTP", reactor, endpoint("www", settings.WWW_SERVER_PORT), site).setServiceParent(top)

    apps = AppFactory(hub, api_key=settings.API_KEY, info_interval=settings.INFO_INTERVAL, clock=reactor, guard=guard)
    hub.pubsub.deliver = apps.send_to_all
    # SPEC 1.1's order: state (the hub itself), apps, pub/sub, then tweets.
    hub.listen(apps.broadcast)
    hub.listen(report_publisher(hub.pubsub))
    ListenerService("app WebSocket", reactor, endpoint("ws", settings.WS_SERVER_PORT), guard.wrap(apps)).setServiceParent(top)

    if settings.AUTH_SECRET is None:
        _log.info(
            "device WebSocket port not opened: set AUTH_SECRET in {where} to enable it",
            where=settings.path or "settings.py",
        )
    else:
        devices = DeviceFactory.from_settings(settings, hub, guard, reactor)
        hub.watch_display(devices.send_packet)
        ListenerService("device WebSocket", reactor, endpoint("device", settings.DEVICE_SERVER_PORT), guard.wrap(devices)).setServiceParent(top)

    # The hub's last listener: SPEC 1.1 puts tweets after state, apps, pub/sub.
    tweets = tweet_service(settings, hub, reactor)
    if tweets is not None:
        tweets.setServiceParent(top)
    return top


def _state(settings: config.Settings, reactor, top: MultiService) -> Hub:
    """
    The hub, on the state store when there is one, with automatic backups.
    Adds the store's services to C{top}, first: the hub is loaded before any
    listener binds.
    """
    if settings.STATE_DB is None:
        _log.info("STATE_DB is None: plug states, history and the display state are lost when the server stops")
        if settings.BACKUP_INTERVAL is not None:
            _log.warn("BACKUP_INTERVAL is ignored: with STATE_DB = None there is nothing to back up")
        return Hub(now=reactor.seconds, journal=MemoryJournal(settings.HISTORY_KEEP))
    state = StoreService(settings.STATE_DB, settings.HISTORY_KEEP, reactor)
    hub = state.hub = Hub(now=reactor.seconds, journal=state.journal)
    state.setServiceParent(top)
    if settings.BACKUP_INTERVAL is not None:
        # A thread of its own: a long backup must not hold up the writer.
        pool = ThreadPool(minthreads=0, maxthreads=1, name="smartplug-backup")
        ThreadPoolService(pool, reactor).setServiceParent(top)
        take = partial(automatic_backup, settings.STATE_DB, settings.path, DEFAULT_DIRECTORY, settings.BACKUP_KEEP)
        run = partial(deferToThreadPool, reactor, pool)
        BackupService(take, settings.BACKUP_INTERVAL, reactor, run).setServiceParent(top)
    return hub
