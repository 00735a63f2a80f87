"""
The server's fixed numbers (SPEC 6.3 and the README's Limits table), in one
place: everything here is a constant, not a setting.
"""

# Request bodies over this are refused with 413, before they are read.
MAX_BODY = 64 * 1024
# WebSocket frames or messages over this close the connection with 1009.
MAX_MESSAGE = 64 * 1024
# A WebSocket peer with more than this written to it but unsent is cut off.
MAX_UNSENT = 1024 * 1024
# JSON nested deeper than this is refused as invalid input.
MAX_JSON_DEPTH = 64
# A WebSocket opening handshake (request line and headers) over this is
# refused with 431.
MAX_HANDSHAKE = 16 * 1024
# Seconds from connecting to a completed WebSocket opening handshake (TLS
# included); a fixed deadline, however slowly the peer trickles its bytes.
WS_HANDSHAKE_TIMEOUT = 10
# Seconds an HTTP connection may stay idle between requests (twisted.web's
# timeout, restarted by every byte).
HTTP_IDLE_TIMEOUT = 60
# Seconds for one HTTP request to arrive whole, head and body, from its first
# byte (or from connecting); a fixed deadline against peers that trickle.
HTTP_REQUEST_TIMEOUT = 30
# Connections the kernel queues on every listener before we accept them.
# Twisted's default of 50 overflows when many apps reconnect at once (after a
# restart), and each overflow costs the client a SYN retransmission: a second
# or more.
LISTEN_BACKLOG = 1024
# The app port pings every PlugBuddy connection this often (seconds) and
# drops one that has not answered within APP_PING_TIMEOUT: phones vanish
# without a close.
APP_PING_INTERVAL = 60
APP_PING_TIMEOUT = 30
# TCP keepalive on every accepted connection (SPEC 3.5): seconds of silence
# before the first probe, seconds between probes, unanswered probes before
# the kernel resets the connection: a dead peer is gone within 60 + 8 x 15 =
# 180 s.  Sent data unacknowledged for as long also ends it (TCP_USER_TIMEOUT).
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT = 8
# The kernel send buffer asked for on each WebSocket connection (SPEC 6.5);
# Linux doubles it for its own bookkeeping, so the kernel holds at most twice
# this for a peer, counted in MAX_UNSENT.
WS_SEND_BUFFER = 64 * 1024
# Pages (4 KiB) of SQLite write-ahead log after which it is copied into the
# database: SQLite's own default (about 4 MB of log) while the disk has room,
# and a small log on a nearly full disk, so that the log cannot take its last
# room.  The disk counts as nearly full below LOW_DISK bytes free, and as
# roomy again from ROOMY_DISK (two thresholds, so that a disk hovering at
# one does not switch the log back and forth).
WAL_PAGES = 1000
WAL_PAGES_LOW_DISK = 80
# With the short log, SQLite truncates a longer log file (one written before
# the disk filled up, or before a restart) to this when it starts the log
# over, which it does once the log is copied and no reader still needs it.
WAL_BYTES_LOW_DISK = 512 * 1024
LOW_DISK = 64 * 1024 * 1024
ROOMY_DISK = 128 * 1024 * 1024
# Tweets waiting for their turn; beyond this the oldest is dropped.
TWEET_QUEUE = 100
# Tries per tweet, the delays (seconds) before the 2nd and 3rd, and the
# timeout of one request to Twitter.
TWEET_TRIES = 3
TWEET_RETRY_DELAYS = (5.0, 30.0)
TWEET_REQUEST_TIMEOUT = 10.0
# Authentication failures the guard remembers for the dashboard (SPEC 9).
RECENT_FAILURES = 50
# The dashboard (SPEC 9): dashboard password hashes are scrypt with these
# parameters (2**15 * 8 * 128 bytes = 32 MiB per check, about 0.1 s on a
# Raspberry Pi 4); stored hashes carry their own, so raising them later
# keeps old ones working.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
# Password checks in flight at once; more logins are refused (503), not
# queued: a flood must not queue minutes of scrypt.
MAX_LOGINS_AT_ONCE = 4
# Of those, at most this many from one address: one client cannot hold
# every slot and lock the owner out.
MAX_LOGINS_PER_ADDRESS = 2
# Seconds from the first of a burst of changes (connections, device pings,
# failures) to the one message that sends the changed lists to the page.
DASHBOARD_FLUSH_DELAY = 0.2
# Seconds between refreshes of the server's facts while a page is open.
DASHBOARD_SERVER_REFRESH = 10
# Publications and reports the dashboard keeps to show a page that opens.
DASHBOARD_PUBLICATIONS = 100
DASHBOARD_RECENT_REPORTS = 50
# The live socket pings an open page this often (seconds) and drops one
# that has not answered within the timeout.
DASHBOARD_PING_INTERVAL = 30
DASHBOARD_PING_TIMEOUT = 30
# Several nodes on one Redis (SPEC 11): seconds to wait for Redis to connect
# and to answer one command; the longest wait between two tries to reconnect;
# how long a change may wait for its own message back on the change channel
# before it is answered 503.
REDIS_CONNECT_TIMEOUT = 2.0
REDIS_COMMAND_TIMEOUT = 5.0
REDIS_MAX_BACKOFF = 10.0
REDIS_CONFIRM_TIMEOUT = 10.0
# Each node rewrites its list of connections in Redis this often (at most;
# INFO_INTERVAL when shorter), and the list expires after PRESENCE_TTL_FACTOR
# intervals without a rewrite: a dead node leaves the info frame within
# (factor + 1) * interval = 20 s, well inside SPEC 11's 30 s.
REDIS_PRESENCE_INTERVAL = 5.0
REDIS_PRESENCE_TTL_FACTOR = 3
# A node that never loaded the state and finds Redis empty waits this long
# (seconds) for a node that holds the state to seed it before it seeds it
# with an empty state itself, if no other node shows its presence: longer
# than a live node takes to try again (REDIS_MAX_BACKOFF, plus the connect
# and command timeouts of that try), and than a presence key lives
# (PRESENCE_INTERVAL * PRESENCE_TTL_FACTOR).
REDIS_EMPTY_GRACE = 30.0
# While the state store is away, the first change refused is logged whole and
# the others summed up in one line at most this often (seconds).
STORE_AWAY_LOG_EVERY = 10.0
# MQTT (SPEC 12): paho's reconnect backoff starts at MQTT_RECONNECT_MIN
# seconds and doubles up to MQTT_RECONNECT_MAX; the keepalive in seconds;
# QoS 1 messages paho keeps unacknowledged (everything retained is
# published again on reconnect anyway); of those, at most
# MQTT_REPUBLISH_WINDOW for a republish of every config and state (the rest
# follows as the broker acknowledges: thousands of plugs must not fill the
# queue); events (QoS 0, MQTT_EVENTS) handed to paho and not yet written to
# the broker's socket, past which new ones are dropped once the oldest of
# them has waited MQTT_EVENTS_STALLED seconds (paho does not bound them, and
# a broker that stops reading is only found by the keepalive; a burst to a
# broker that reads is not dropped), or at once past MQTT_MAX_EVENTS_HELD
# whatever their age; seconds stopService waits for paho's thread to end.
MQTT_RECONNECT_MIN = 1
MQTT_RECONNECT_MAX = 60
MQTT_KEEPALIVE = 60
MQTT_MAX_QUEUED = 10000
MQTT_REPUBLISH_WINDOW = 500
MQTT_MAX_EVENTS_UNSENT = 1000
MQTT_EVENTS_STALLED = 5
MQTT_MAX_EVENTS_HELD = 10000
MQTT_STOP_TIMEOUT = 5
# Pub/sub memory (SPEC 3.4, 3.6), bounded whatever clients send: events whose
# subscribers have all left stay in the info frame, the newest this many;
# epochs handed out for events never published (a reader may resume with
# one), the newest this many; events whose numbering (offset and epoch) is
# kept, the most recently published this many (a dropped one starts over
# under a new epoch); and the publications kept for recovery, across all
# events, at most this many bytes of data (the least recently published
# events' oldest go first).
PUBSUB_EMPTY_EVENTS = 1000
# Events one connection may subscribe to at once (each costs memory and a
# line of every info frame); subscribing to more is ignored.
PUBSUB_SUBSCRIPTIONS_PER_CONNECTION = 1000
PUBSUB_UNPUBLISHED_EPOCHS = 1000
PUBSUB_STREAMS = 10000
# Characters of a pub/sub event name (PiCloud's own are words such as
# "temperature"): a longer one is refused wherever it comes in (publish,
# subscribe, the history route, MQTT), since every kept publication, every
# subscription and every info frame holds the name.
PUBSUB_MAX_EVENT = 256
PUBSUB_HISTORY_BYTES = 32 * 1024 * 1024

#: Seconds WebSocket peers have to answer the server's 1001 close when it
#: stops (server.services.GoingAway) before they are dropped.
WS_GOING_AWAY_TIMEOUT = 2.0
