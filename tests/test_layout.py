"""
The package's layout holds: the core imports nothing outside itself.
"""

import json
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

OUTSIDE_THE_CORE = (
    "smartplug_backend.http", "smartplug_backend.ws", "smartplug_backend.state",
    "smartplug_backend.integrations", "smartplug_backend.server", "smartplug_backend.tap",
    "smartplug_backend.internals", "autobahn", "bottle", "sqlite3", "prometheus_client", "paho", "redis",
)


class CoreTests(SynchronousTestCase):
    """
    SPEC 7 and the README's map: the hub knows nothing of Autobahn, Bottle,
    threads, SQLite, Redis, MQTT, or any part of the server around it.
    """

    def test_importing_the_core_loads_nothing_outside_it(self):
        """
        Importing every module of C{smartplug_backend.core} in a fresh
        interpreter puts no module of the HTTP, WebSocket, state,
        integration or server packages, and no Autobahn or Bottle, into
        C{sys.modules}.
        """
        program = (
            "import json, pkgutil, sys, importlib, smartplug_backend.core as core\n"
            "for m in pkgutil.iter_modules(core.__path__): importlib.import_module('smartplug_backend.core.' + m.name)\n"
            "print(json.dumps(sorted(sys.modules)))\n"
        )
        loaded = json.loads(subprocess.check_output([sys.executable, "-c", program]))
        self.assertIn("smartplug_backend.core.hub", loaded)
        outside = [name for name in loaded if name.startswith(OUTSIDE_THE_CORE)]
        self.assertEqual(outside, [])
