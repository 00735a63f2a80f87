"""
Which Origins our WebSocket listeners accept (SPEC 6.4): any.

The device port, the PlugBuddy paths and the PiCloud routes authenticate by
a secret or an API key, never by a cookie, so a page's Origin proves nothing
either way; PiCloud and butt-butt accepted every Origin.  Two real clients
depend on it: arduinoWebSockets (the usual ESP8266/ESP32 lamp library) sends
C{Origin: file://} by default, and a browser sends C{Origin: null} for a page
opened from disk (picloud-client-browser's test page).

Autobahn reads both as the "null" origin and refuses it unless the factory's
C{allowNullOrigin} is true.  Its C{setProtocolOptions} sets
C{allowNullOrigin} on every call (its default argument is C{False}), so a
factory names L{ANY_ORIGIN} as its C{origin_options}, which
L{base.LimitedServerFactory} applies with every C{setProtocolOptions} call.
"""

# Keyword arguments for WebSocketServerFactory.setProtocolOptions.
ANY_ORIGIN = {"allowedOrigins": ["*"], "allowNullOrigin": True}
