"""
Tests for smartplug_backend.config: loading the settings file.
"""

import dataclasses
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend import config

REPO_SETTINGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "settings.py")


class LoadTests(SynchronousTestCase):
    """
    L{config.load} reads a Python settings file into a frozen Settings.
    """

    def write(self, text: str) -> str:
        path = self.mktemp() + ".py"
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults_without_file(self):
        """
        With no path and no ./settings.py, every setting has its SPEC 8 default.
        """
        cwd = os.getcwd()
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        os.chdir(empty)
        self.addCleanup(os.chdir, cwd)
        settings = config.load()
        self.assertIsNone(settings.path)
        self.assertEqual(settings.WWW_SERVER_PORT, 9000)
        self.assertEqual(settings.WS_SERVER_PORT, 9001)
        self.assertEqual(settings.DEVICE_SERVER_PORT, 6661)
        self.assertEqual(settings.LISTEN_ADDRESS, "0.0.0.0")
        self.assertIsNone(settings.AUTH_SECRET)
        self.assertEqual(settings.TWITTER_API, "v1.1")
        self.assertEqual(settings.BAN_ALLOW, ())
        self.assertEqual(settings.STATE_DB, "smartplug.sqlite")
        self.assertEqual((settings.PUBSUB_HISTORY, settings.PUBSUB_HISTORY_SECONDS), (100, 86400))

    def test_override(self):
        """
        Names set in the file replace the defaults; others keep them, and
        lower-case helpers and imports in the file are ignored.
        """
        path = self.write(
            "import os\nport = 1234\nWWW_SERVER_PORT = port\nAUTH_SECRET = 'x' * 3\n"
            "BAN_ALLOW = ['192.168.1.0/24']\nDEVICE_AUTH_TIMEOUT = 2.5\n"
        )
        settings = config.load(path)
        self.assertEqual(settings.WWW_SERVER_PORT, 1234)
        self.assertEqual(settings.AUTH_SECRET, "xxx")
        self.assertEqual(settings.BAN_ALLOW, ("192.168.1.0/24",))
        self.assertEqual(settings.DEVICE_AUTH_TIMEOUT, 2.5)
        self.assertEqual(settings.WS_SERVER_PORT, 9001)
        self.assertEqual(settings.path, path)

    def test_frozen(self):
        """
        Settings cannot be changed once loaded.
        """
        settings = config.settings_from({})
        with self.assertRaises(dataclasses.FrozenInstanceError):
            settings.WWW_SERVER_PORT = 1

    def test_unknown_name_suggests_closest(self):
        """
        An unknown UPPER_CASE name is an error that names the closest setting.
        """
        path = self.write("WWW_SEVRER_PORT = 80\n")
        error = self.assertRaises(config.ConfigError, config.load, path)
        self.assertEqual(str(error), f"{path}: unknown setting WWW_SEVRER_PORT; did you mean WWW_SERVER_PORT?")

    def test_unknown_name_without_close_match(self):
        """
        A name like no setting is still an error, without a suggestion.
        """
        error = self.assertRaises(config.ConfigError, config.load, self.write("FROBNICATE = 1\n"))
        self.assertTrue(str(error).endswith("unknown setting FROBNICATE"))

    def test_wrong_types(self):
        """
        A value of the wrong type is an error naming the setting and what it
        expects, on one line.
        """
        cases = {
            "WWW_SERVER_PORT = '9000'": "WWW_SERVER_PORT must be a port number from 0 to 65535",
            "WS_SERVER_PORT = 70000": "WS_SERVER_PORT must be a port number",
            "WWW_SERVER_PORT = True": "WWW_SERVER_PORT must be a port number",
            "TWITTER_ENABLED = 1": "TWITTER_ENABLED must be True or False",
            "TWITTER_API = 'v3'": 'TWITTER_API must be "v1.1" or "v2"',
            "DEVICE_IDLE_TIMEOUT = 0": "DEVICE_IDLE_TIMEOUT must be a number of seconds greater than 0",
            "BAN_ALLOW = ['not an address']": "BAN_ALLOW: 'not an address' is not an address or network",
            "BAN_ALLOW = ['10.0.0.1', '192.168.1.0/33']": "BAN_ALLOW: '192.168.1.0/33' is not an address or network",
            "BAN_ALLOW = '10.0.0.1'": "BAN_ALLOW must be a list of addresses or networks",
            "BAN_ALLOW = ['x' * 100]": "BAN_ALLOW: '" + "x" * 36 + "... is not an address",
            "BAN_AFTER = 0": "BAN_AFTER must be a whole number of at least 1",
            "STATE_DB = ''": "STATE_DB must be a non-empty string or None",
            "BACKUP_INTERVAL = 'daily'": "BACKUP_INTERVAL must be a number of seconds",
            "REDIS_URL = 'http://db:6379'": "REDIS_URL must be None or a URL such as",
            "NODE_NAME = ''": "NODE_NAME must be a non-empty string or None",
            "PUBSUB_HISTORY = -1": "PUBSUB_HISTORY must be a whole number of at least 0",
            "PUBSUB_HISTORY = 1.5": "PUBSUB_HISTORY must be a whole number of at least 0",
            "PUBSUB_HISTORY_SECONDS = 0": "PUBSUB_HISTORY_SECONDS must be a number of seconds greater than 0",
            "DASHBOARD_SESSION_DAYS = -1": "DASHBOARD_SESSION_DAYS must be a number of days greater than 0",
            "MQTT_URL = 'http://broker:1883'": "MQTT_URL must be an mqtt:// or mqtts:// URL such as",
            "MQTT_URL = 'mqtt://broker:99999'": "MQTT_URL must be a URL with a port number from 1 to 65535",
            "MQTT_URL = 'mqtt://:1883'": "MQTT_URL must be a URL with a host name",
            "MQTT_URL = 'mqtt://broker/topic'": "MQTT_URL must be a URL without a path",
            "MQTT_URL = 1883": "MQTT_URL must be an mqtt:// or mqtts:// URL",
            "MQTT_URL = 'mqtt://:s3cret@broker'": "MQTT_URL must be a URL with a user name before the password",
            "MQTT_URL = ' mqtt://broker'": "MQTT_URL must be a URL without spaces or line ends around it",
            "MQTT_URL = 'mqtt://broker\\n'": "MQTT_URL must be a URL without spaces or line ends around it",
            "MQTT_PREFIX = 'home/#'": "MQTT_PREFIX must be a topic prefix",
            "HA_DISCOVERY_PREFIX = ''": "HA_DISCOVERY_PREFIX must be a topic prefix",
            "MQTT_PREFIX = 'a//b'": "MQTT_PREFIX must be a topic prefix",
            "MQTT_PREFIX = '$SYS'": "MQTT_PREFIX must be a topic prefix such as \"smartplug\": no +, #, empty levels, "
                                    "or $ at the start",
            "HA_DISCOVERY_PREFIX = 'ha#'": "HA_DISCOVERY_PREFIX must be a topic prefix such as \"homeassistant\"",
            "MQTT_EVENTS = 'yes'": "MQTT_EVENTS must be True or False",
            "LISTEN_ADDRESS = '0.0.0.0:9000'": "LISTEN_ADDRESS must be an address to listen on, such as \"0.0.0.0\"",
            "AUTH_SECRET = ''": "AUTH_SECRET must be a non-empty string or None, not an empty string",
        }
        for line, expected in cases.items():
            error = self.assertRaises(config.ConfigError, config.load, self.write(line + "\n"))
            self.assertIn(expected, str(error), line)
            self.assertNotIn("\n", str(error))

    def test_secret_values_not_echoed(self):
        """
        A wrong-typed secret is reported without its value.
        """
        error = self.assertRaises(config.ConfigError, config.load, self.write("CONSUMER_SECRET = 12345678\n"))
        self.assertNotIn("12345678", str(error))
        self.assertIn("CONSUMER_SECRET must be a string", str(error))

    def test_redis_url_not_echoed(self):
        """
        A REDIS_URL that is not redis:// or rediss:// is refused without
        echoing it (it may carry a password); both schemes are accepted.
        """
        # A secret the temp directory's random name cannot hold ("pw" could).
        error = self.assertRaises(config.ConfigError, config.load, self.write("REDIS_URL = 'redis:/:P-W@x'\n"))
        self.assertNotIn("P-W", str(error))
        for url in ("redis://db:6379/0", "rediss://:pw@db:6380/1"):
            self.assertEqual(config.load(self.write(f"REDIS_URL = {url!r}\n")).REDIS_URL, url)

    def test_mqtt_password_not_echoed(self):
        """
        A bad C{MQTT_URL} is reported on one line with its password hidden,
        whether or not it has a scheme.
        """
        for url in ("http://me:hunter2@broker:1883", "me:hunter2@broker:1883", "mqtt://me:hunter2@broker:99999"):
            error = self.assertRaises(config.ConfigError, config.load, self.write(f"MQTT_URL = {url!r}\n"))
            self.assertNotIn("hunter2", str(error), url)
            self.assertIn("me:***@broker", str(error), url)
            self.assertNotIn("\n", str(error))

    def test_tweet_settings_checked(self):
        """
        Tweet texts Twitter would refuse every time (empty, over 280
        characters) and a Twitter URL without its scheme stop the start,
        naming the setting, rather than failing every tweet later.
        """
        cases = {
            "TWEET_PLUGGED_IN = ''": "TWEET_PLUGGED_IN must be a tweet's text: a string of 1 to 280 characters",
            "TWEET_UNPLUGGED = 'x' * 281": "TWEET_UNPLUGGED must be a tweet's text",
            "TWEET_UNPLUGGED = 5": "TWEET_UNPLUGGED must be a tweet's text",
            "TWITTER_API_URL = 'api.twitter.com'": "TWITTER_API_URL must be a URL starting with https://",
        }
        for line, expected in cases.items():
            error = self.assertRaises(config.ConfigError, config.load, self.write(line + "\n"))
            self.assertIn(expected, str(error))
        settings = config.load(self.write("TWEET_UNPLUGGED = 'x' * 280\nTWITTER_API_URL = 'http://127.0.0.1:8080'\n"))
        self.assertEqual((len(settings.TWEET_UNPLUGGED), settings.TWITTER_API_URL), (280, "http://127.0.0.1:8080"))

    def test_directory_as_settings(self):
        """
        A directory given as the settings file is named as one.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        error = self.assertRaises(config.ConfigError, config.load, directory)
        self.assertEqual(str(error), f"{directory} is a directory, not a settings file")

    def test_setting_in_the_wrong_case(self):
        """
        A name that is a setting but for its case (C{api_key}) would be
        ignored, leaving the server without a key: it is an error naming
        the setting.  Other lower-case names are helpers, and allowed.
        """
        for line, name in (("api_key = 'k'", "api_key"), ("Auth_Secret = 's'", "Auth_Secret")):
            error = self.assertRaises(config.ConfigError, config.load, self.write(line + "\n"))
            self.assertIn(f"unknown setting {name}; did you mean {name.upper()}?", str(error))
        settings = config.load(self.write("base = '/var/lib/smartplug'\nSTATE_DB = base + '/state.sqlite'\n"))
        self.assertEqual(settings.STATE_DB, "/var/lib/smartplug/state.sqlite")
        # A helper named like a setting is fine when the setting takes its
        # value; one added below the shipped "API_KEY = None" is not (the
        # server would start without the key it was given).
        settings = config.load(self.write("api_key = 'k' * 2\nAPI_KEY = api_key\n"))
        self.assertEqual(settings.API_KEY, "kk")
        settings = config.load(self.write("auth_secret = ' s3 \\n'\nAUTH_SECRET = auth_secret.strip()\n"))
        self.assertEqual(settings.AUTH_SECRET, "s3")
        settings = config.load(self.write("www_server_port = 9000\nWWW_SERVER_PORT = www_server_port\n"))
        self.assertEqual(settings.WWW_SERVER_PORT, 9000)
        # Below the shipped file's lines (a list where the default is a
        # tuple), a lower-case allow list is still a misspelling.
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "settings.py")) as f:
            shipped = f.read()
        for line, name in (("ban_allow = ['192.168.1.0/24']", "ban_allow"), ("api_key = 'k3y'", "api_key"),
                           ("metrics_allow = ['10.0.0.5']", "metrics_allow")):
            error = self.assertRaises(config.ConfigError, config.load, self.write(shipped + line + "\n"))
            self.assertIn(f"unknown setting {name}; did you mean {name.upper()}?", str(error))
        error = self.assertRaises(config.ConfigError, config.load, self.write("API_KEY = None\napi_key = 'K-3Y'\n"))
        self.assertIn("unknown setting api_key; did you mean API_KEY?", str(error))
        self.assertNotIn("K-3Y", str(error))
        # In a file edited in place (the real setting changed too), a name
        # only set is a misspelling all the same; a helper read anywhere
        # (a function, an f-string) is not.
        for text, name in (("WS_SERVER_PORT = 19801\nws_server_port = 19805\n", "ws_server_port"),
                           ("API_KEY = 'a'\napi_key = 'b'\n", "api_key")):
            error = self.assertRaises(config.ConfigError, config.load, self.write(text))
            self.assertIn(f"unknown setting {name}; did you mean {name.upper()}?", str(error))
        settings = config.load(self.write("node_name = 'pi'\ndef named():\n    return f'{node_name}-1'\n"
                                          "NODE_NAME = named()\n"))
        self.assertEqual(settings.NODE_NAME, "pi-1")
        # A helper the setting takes as it is (through globals()), or one
        # from another file (exec, import), is not this file's misspelling.
        settings = config.load(self.write("api_key = 'k'\nAPI_KEY = globals()['api_key']\n"))
        self.assertEqual(settings.API_KEY, "k")
        other = self.write("auth_secret = ' s \\n'\n")
        settings = config.load(self.write(f"exec(open({other!r}).read())\nAUTH_SECRET = 'x'\n"))
        self.assertEqual(settings.AUTH_SECRET, "x")
        # Nor is a settings file that is no source (runpy runs a .pyc).
        import py_compile

        compiled = py_compile.compile(self.write("API_KEY = 'k'\napi_key = 'b'\n"), cfile=self.mktemp() + ".pyc")
        self.assertEqual(config.load(compiled).API_KEY, "k")

    def test_damaged_dashboard_hash(self):
        """
        A DASHBOARD_USERS entry that is no hash (a truncated paste) is named
        with how to make one, by a command that runs here, and without the
        "not a value of type dict" of a wrong type.
        """
        from smartplug_backend.command import admin_command

        error = self.assertRaises(
            config.ConfigError, config.load, self.write('DASHBOARD_USERS = {"anna": "scrypt$32768$8$1$abc"}\n')
        )
        self.assertIn(f"DASHBOARD_USERS: the entry of 'anna' is not a password hash from '{admin_command()} passwd NAME'",
                      str(error))
        self.assertNotIn("type dict", str(error))
        error = self.assertRaises(config.ConfigError, config.load, self.write('DASHBOARD_USERS = {"anna": None}\n'))
        self.assertIn("DASHBOARD_USERS: the entry of 'anna' is not a password hash (a string) from '", str(error))

    def test_admin_command_runs_here(self):
        """
        Messages name the administration command with the interpreter that
        runs now (the project's .venv has Twisted; the system's python does
        not), relative to the current directory when below it.
        """
        from smartplug_backend import command

        here = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(here, ".venv", "bin"))
        self.patch(command.sys, "executable", os.path.join(here, ".venv", "bin", "python3"))
        self.patch(command.os, "getcwd", lambda: here)
        self.assertEqual(command.admin_command(), ".venv/bin/python3 -m smartplug_backend")
        self.patch(command.sys, "executable", "/opt/my python/bin/python3")
        self.assertEqual(command.admin_command(), "'/opt/my python/bin/python3' -m smartplug_backend")

        def gone():
            raise FileNotFoundError("the working directory was removed")

        self.patch(command.os, "getcwd", gone)
        self.assertEqual(command.admin_command(), "'/opt/my python/bin/python3' -m smartplug_backend")

    def test_errors_never_quote_a_secret(self):
        """
        A settings file that fails to run is one line with the line number;
        it does not quote a value that may be a secret: an unquoted secret is
        a NameError for the secret itself, and a secret's line may fail with
        the value in the message.
        """
        cases = {
            "AUTH_SECRET = mysecretvalue123": "a name that is not defined (text needs quotes",
            "AUTH_SECRET=hunter2secret": "a name that is not defined (text needs quotes",
            "API_KEY = int('verysecret42')": "ValueError (its message is not shown: the line may hold a secret)",
            "TWITTER_ENABLED = true": "true is not defined: Python writes True",
        }
        for text, expected in cases.items():
            error = self.assertRaises(config.ConfigError, config.load, self.write("# settings\n" + text + "\n"))
            self.assertIn(" line 2: " + expected, str(error))
            for secret in ("mysecretvalue123", "hunter2secret", "verysecret42"):
                self.assertNotIn(secret, str(error))
        error = self.assertRaises(config.ConfigError, config.load, self.write("HISTORY_KEEP = 1 / 0\n"))
        self.assertIn("line 1: ZeroDivisionError: division by zero", str(error))
        # The name of a missing environment variable is no secret.
        text = "import os\nAUTH_SECRET = os.environ['SMARTPLUG_NO_SUCH_VARIABLE']\n"
        error = self.assertRaises(config.ConfigError, config.load, self.write(text))
        self.assertIn("line 2: KeyError: 'SMARTPLUG_NO_SUCH_VARIABLE' (an environment variable that is not set)",
                      str(error))

    def test_redis_url_checked_at_start(self):
        """
        A C{REDIS_URL} that could not be used is one line naming what is
        wrong, with its password hidden, not a traceback at start; a
        database number and redis-py's query options are taken.
        """
        cases = {
            "redis://127.0.0.1:99999/0": "with a port number from 1 to 65535",
            "redis://127.0.0.1:abc/0": "with a port number from 1 to 65535",
            "redis://[::1/0": "with a valid host",
            "redis://h:6379/0?socket_timeout=abc": "redis-py cannot use it: Invalid value for 'socket_timeout'",
            "redis://:pw@h:6379/0?socket_timout=5": "redis-py cannot use it: ",
            "redis://h/abc": "whose path is only a database number",
            "redis://h/0/extra": "whose path is only a database number",
            "http://h:6379": "must be None or a URL such as",
            "redis://:pa/ss@h:6379/0": "percent-encode",
        }
        for url, expected in cases.items():
            error = self.assertRaises(config.ConfigError, config.load, self.write(f"REDIS_URL = {url!r}\n"))
            self.assertIn("REDIS_URL must be None or a URL such as", str(error), url)
            self.assertIn(expected, str(error), url)
            self.assertNotIn("pa/ss", str(error))
            self.assertNotIn("\n", str(error))
        error = self.assertRaises(config.ConfigError, config.load, self.write("REDIS_URL = 'redis://:s3cret@h:0/0'\n"))
        self.assertIn("not 'redis://:***@h:0/0'", str(error))
        # redis-py also takes the password in the query.
        text = "REDIS_URL = 'redis://h:0/0?password=hunter2'\n"
        error = self.assertRaises(config.ConfigError, config.load, self.write(text))
        self.assertIn("not 'redis://h:0/0?...'", str(error))
        self.assertNotIn("hunter2", str(error))
        for url in ("redis://h:6379/0", "rediss://:pw@h/1?ssl_ca_certs=/etc/ca.pem", "redis://h", "redis://h/"):
            self.assertEqual(config.load(self.write(f"REDIS_URL = {url!r}\n")).REDIS_URL, url)

    def test_mqtt_password_with_url_characters(self):
        """
        A password holding C{/}, C{?}, C{#} or C{@/} unencoded ends the host
        part early; the one-line error hides all of it and says to
        percent-encode.  A host that C{urlsplit} itself refuses (a broken
        IPv6 address) is one line too, not a traceback.
        """
        for url in ("mqtt://me:ab/cd@broker", "mqtt://me:a?b/c@broker", "mqtt://me:p@ss/w@broker",
                    "mqtt://me:x#y@broker:1883", "mqtt://me:q?r@broker"):
            error = self.assertRaises(config.ConfigError, config.load, self.write(f"MQTT_URL = {url!r}\n"))
            shown = str(error).rsplit(", not ", 1)[1]
            self.assertEqual(shown, repr("mqtt://me:***@" + url.rsplit("@", 1)[1]), url)
            self.assertIn("percent-encode", str(error), url)
            self.assertNotIn("\n", str(error))
        for url in ("mqtt://me:S3cr3tPW@[::1", "mqtt://me:S3cr3tPW@[zz]:1883"):
            error = self.assertRaises(config.ConfigError, config.load, self.write(f"MQTT_URL = {url!r}\n"))
            self.assertIn("MQTT_URL must be a URL with a valid host", str(error))
            self.assertNotIn("S3cr3tPW", str(error))
        # Encoded, the same password is taken.
        settings = config.load(self.write("MQTT_URL = 'mqtt://me:ab%2Fcd%3F%23@broker'\n"))
        self.assertEqual(settings.MQTT_URL, "mqtt://me:ab%2Fcd%3F%23@broker")

    def test_mqtt_settings(self):
        """
        MQTT is off by default; a valid URL and prefixes are taken as given.
        """
        self.assertIsNone(config.settings_from({}).MQTT_URL)
        self.assertFalse(config.settings_from({}).MQTT_EVENTS)
        settings = config.load(self.write(
            "MQTT_URL = 'mqtts://me:pw@broker.local'\nMQTT_PREFIX = 'home/plugs'\nHA_DISCOVERY_PREFIX = 'ha'\n"
        ))
        self.assertEqual(
            (settings.MQTT_URL, settings.MQTT_PREFIX, settings.HA_DISCOVERY_PREFIX),
            ("mqtts://me:pw@broker.local", "home/plugs", "ha"),
        )

    def test_mqtt_prefixes_differ(self):
        """
        The same prefix for our topics and Home Assistant's is refused: our
        status would read as Home Assistant's birth message.
        """
        error = self.assertRaises(config.ConfigError, config.load, self.write("MQTT_PREFIX = 'homeassistant'\n"))
        self.assertIn("MQTT_PREFIX must differ from HA_DISCOVERY_PREFIX", str(error))

    def test_repr_hides_values(self):
        """
        The repr of Settings shows where they came from, never their values.
        """
        settings = config.settings_from({"AUTH_SECRET": "hunter2"}, "s.py")
        self.assertEqual(repr(settings), "<Settings from s.py>")

    def test_syntax_error_is_one_line(self):
        """
        A syntax error in the file names the file and line.
        """
        error = self.assertRaises(config.ConfigError, config.load, self.write("A = 1\nB = (\n"))
        self.assertRegex(str(error), r"\.py line \d+: ")

    def test_exception_in_file_is_one_line(self):
        """
        An exception raised by the file's code names the file, line and error.
        """
        path = self.write("X = 1\nWWW_SERVER_PORT = int('nine')\n")
        error = self.assertRaises(config.ConfigError, config.load, path)
        self.assertRegex(str(error), r"\.py line 2: ValueError: invalid literal")

    def test_missing_explicit_file(self):
        """
        An explicit path that does not exist is an error, not the defaults.
        """
        error = self.assertRaises(config.ConfigError, config.load, "/nonexistent/settings.py")
        self.assertEqual(str(error), "/nonexistent/settings.py: no such settings file")

    def test_repository_settings_list_every_setting_with_default(self):
        """
        The repository's settings.py sets every known setting, each to its
        default, each with a comment.
        """
        with open(REPO_SETTINGS) as f:
            text = f.read()
        settings = config.load(REPO_SETTINGS)
        for name, setting in config.SETTINGS.items():
            self.assertRegex(text, re.compile(rf"^{name} = .+  # \S", re.MULTILINE), name)
            expected = tuple(setting.default) if name == "BAN_ALLOW" else setting.default
            self.assertEqual(getattr(settings, name), expected, name)
