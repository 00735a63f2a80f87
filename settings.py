# smartplug backend settings. This file is Python; only UPPER_CASE names count,
# and each must be one of the settings below (a typo is an error that names the
# closest one). Every value shown is the default. Endpoint options given to
# twistd (--www, --ws, --device) override the ports here.

# --- listeners --------------------------------------------------------------
WWW_SERVER_PORT = 9000  # HTTP: POST /data from the plug, GET /plugs, /display, /publish
WS_SERVER_PORT = 9001  # app WebSocket: PlugBuddy and PiCloud pub/sub clients
DEVICE_SERVER_PORT = 6661  # device WebSocket (lamps); opened only when AUTH_SECRET is set
LISTEN_ADDRESS = "0.0.0.0"  # interface for all three; "127.0.0.1" keeps them local

# --- devices (butt-butt lamps) ----------------------------------------------
AUTH_SECRET = None  # e.g. "a long random string": a device's first message must equal it
DEVICE_AUTH_TIMEOUT = 10  # seconds a device has to send the secret
DEVICE_IDLE_TIMEOUT = 30  # seconds of silence before a device is disconnected

# --- PiCloud pub/sub and /display --------------------------------------------
API_KEY = None  # e.g. "my-key": required for pub/sub, the info socket and POST /display
INFO_INTERVAL = 5  # seconds between frames on the /info socket
PUBSUB_HISTORY = 100  # publications kept per event for last/since/history; 0 = off
PUBSUB_HISTORY_SECONDS = 86400  # how long a publication is kept

# --- tweets --------------------------------------------------------------------
TWITTER_ENABLED = False  # True tweets when a plug is plugged in or unplugged
CONSUMER_KEY = ""  # the app's API key (developer portal, "Consumer Keys")
CONSUMER_SECRET = ""  # the app's API key secret
ACCESS_TOKEN_KEY = ""  # your account's access token (read and write)
ACCESS_TOKEN_SECRET = ""  # your account's access token secret
TWEET_PLUGGED_IN = "Look at that, my #craplab #smartplug just got plugged in!"  # text on 0 -> 1 (or a first report of 1)
TWEET_UNPLUGGED = "It was fun while it lasted. I unplugged my #craplab #smartplug."  # text on 1 -> 0 (or a first report of 0)
TWITTER_API = "v1.1"  # "v1.1" (statuses/update) or "v2" (POST /2/tweets; new accounts)
TWITTER_API_URL = "https://api.twitter.com"  # API root; tests point it at a fake

# --- security ------------------------------------------------------------------
TLS_CERT_FILE = None  # e.g. "cert.pem": with TLS_KEY_FILE, every listener speaks TLS
TLS_KEY_FILE = None  # e.g. "key.pem"
BAN_AFTER = 3  # failed authentications from one address before it is banned
BAN_SECONDS = 60  # how long a ban lasts
BAN_ALLOW = []  # addresses/networks never banned, e.g. ["192.168.1.0/24"]
MAX_CONNECTIONS = 10000  # open connections over all listeners; more are refused
MAX_CONNECTIONS_PER_ADDRESS = 500  # of those, from one address (loopback, BAN_ALLOW: no limit); None = no limit
METRICS_ALLOW = ["127.0.0.1", "::1"]  # addresses/networks that may read GET /metrics (Prometheus)

# --- dashboard (http://host:9000/ui/, https:// with TLS) ---------------------------
DASHBOARD_USERS = {}  # {"anna": "<hash from: .venv/bin/python -m smartplug_backend passwd anna>"}; {} = off
DASHBOARD_SESSION_DAYS = 30  # days a dashboard login lasts

# --- state ---------------------------------------------------------------------
STATE_DB = "smartplug.sqlite"  # SQLite file for plugs, history, display; None = memory only
HISTORY_KEEP = 10000  # reports kept per plug in the history
BACKUP_INTERVAL = None  # seconds between automatic backups; None = no automatic backups
BACKUP_KEEP = 7  # automatic backups kept

# --- several nodes ---------------------------------------------------------------
REDIS_URL = None  # e.g. "redis://host:6379/0" (rediss:// for TLS): nodes sharing one Redis act as one
NODE_NAME = None  # this node's name in the info socket; None = the host name

# --- Home Assistant (MQTT) -----------------------------------------------------
MQTT_URL = None  # e.g. "mqtt://user:password@192.168.1.2:1883" (or mqtts://): joins that broker
MQTT_PREFIX = "smartplug"  # first topic level of our states, commands and events
HA_DISCOVERY_PREFIX = "homeassistant"  # Home Assistant's discovery prefix (its MQTT setting)
MQTT_EVENTS = False  # True also bridges pub/sub: <MQTT_PREFIX>/events/E out, <MQTT_PREFIX>/publish/E in
