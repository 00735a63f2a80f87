"""
The package's layout holds: the core imports nothing outside itself.
"""

import json
import os
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


class OptionalEnginesTests(SynchronousTestCase):
    """
    SPEC 11: with C{REDIS_URL = None} (the default) nothing changes, down to
    the modules loaded.
    """

    def test_redis_is_not_imported_without_redis_url(self):
        """
        Building the whole server with the default REDIS_URL, in a fresh
        interpreter, loads neither the redis library nor the Redis engine.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        settings = os.path.join(directory, "settings.py")
        with open(settings, "w") as f:
            f.write("STATE_DB = None\n")
        program = (
            "import json, sys\n"
            "from smartplug_backend import tap\n"
            "options = tap.Options(); options.parseOptions(['--settings', sys.argv[1]])\n"
            "tap.makeService(options)\n"
            "print(json.dumps(sorted(sys.modules)))\n"
        )
        output = subprocess.check_output([sys.executable, "-c", program, settings], stderr=subprocess.DEVNULL)
        loaded = json.loads(output.splitlines()[-1])
        self.assertIn("smartplug_backend.tap", loaded)
        self.assertEqual([m for m in loaded if m == "redis" or m.startswith(("redis.", "smartplug_backend.integrations.redis"))], [])
