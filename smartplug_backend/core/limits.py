"""
The server's fixed limits (SPEC 6.3), in one place.
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
