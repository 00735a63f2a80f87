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
# Tweets waiting for their turn; beyond this the oldest is dropped.
TWEET_QUEUE = 100
# Tries per tweet, the delays (seconds) before the 2nd and 3rd, and the
# timeout of one request to Twitter.
TWEET_TRIES = 3
TWEET_RETRY_DELAYS = (5.0, 30.0)
TWEET_REQUEST_TIMEOUT = 10.0
