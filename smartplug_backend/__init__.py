"""
smartplug_backend: a Twisted/Autobahn home-IoT backend, compatible with the
CrapLab SmartPlug firmware, the PlugBuddy app, butt-butt lamps and PiCloud
clients.  Run it with C{twistd -n smartplug}.
"""

__version__ = "0.1.0"
