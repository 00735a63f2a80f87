# twistd plugin: makes `twistd smartplug` find smartplug_backend.tap.
# This directory must have no __init__.py (it would hide Twisted's own).
from twisted.application.service import ServiceMaker

smartplug = ServiceMaker(
    "smartplug backend",
    "smartplug_backend.tap",
    "SmartPlug HTTP API, app and device WebSockets (see README.md)",
    "smartplug",
)
