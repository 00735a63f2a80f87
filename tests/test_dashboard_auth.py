"""
Tests for the dashboard's passwords, sessions and CSRF tokens
(L{smartplug_backend.http.dashboard.auth}) and the C{passwd} command.
"""

import base64
import io
import os
import runpy

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend import config
from smartplug_backend.http.dashboard import auth
from smartplug_backend.server import passwords
from smartplug_backend.state import cli

# Cheap parameters: these tests are about the format and the checks.
N = 2**10


class PasswordTests(SynchronousTestCase):
    """
    Passwords are stored as salted scrypt hashes with their parameters.
    """

    def test_right_and_wrong_password(self):
        """
        The password a hash was made from matches it; any other does not.
        """
        hashed = passwords.hash_password("hunter2", n=N)
        self.assertTrue(passwords.verify_password(hashed, "hunter2"))
        self.assertFalse(passwords.verify_password(hashed, "hunter3"))
        self.assertFalse(passwords.verify_password(hashed, ""))

    def test_salted_with_parameters_inside(self):
        """
        Two hashes of one password differ (a random salt), the parameters
        are part of the string, and the password is not in it. (The
        password holds characters base64 never writes, so a random salt
        cannot spell it by chance: "pw" once did, one CI run in hundreds.)
        """
        password = "p w!"
        first = passwords.hash_password(password, n=N)
        second = passwords.hash_password(password, n=N, r=4)
        self.assertNotEqual(first, second)
        self.assertTrue(first.startswith(f"scrypt${N}$8$1$"))
        self.assertTrue(second.startswith(f"scrypt${N}$4$1$"))
        self.assertTrue(passwords.verify_password(second, password))
        self.assertNotIn(password, first)

    def test_default_parameters_are_memory_hard(self):
        """
        By default scrypt uses n=2**15, r=8: 32 MiB per check.
        """
        self.assertEqual((passwords.SCRYPT_N, passwords.SCRYPT_R), (2**15, 8))
        hashed = passwords.hash_password("pw")
        self.assertTrue(hashed.startswith("scrypt$32768$8$1$"))
        self.assertTrue(passwords.verify_password(hashed, "pw"))

    def test_unknown_user_does_the_same_work(self):
        """
        Checking against no hash (an unknown user) is refused, after the
        same scrypt work as for a real user.
        """
        calls = []
        real = passwords._scrypt
        self.patch(passwords, "_scrypt", lambda *a: calls.append(a[2:]) or real(*a))
        self.assertFalse(passwords.verify_password(None, "anything"))
        self.assertEqual(calls, [(passwords.SCRYPT_N, passwords.SCRYPT_R, passwords.SCRYPT_P)])

    def test_damaged_hashes_refused(self):
        """
        Strings that are not our hashes are refused with a message that does
        not repeat them.
        """
        good = passwords.hash_password("pw", n=N)
        for bad in ["", "plain-password", good.replace("scrypt", "bcrypt"), good + "$x", good[:-8] + "!!!!!!!!",
                    good.replace(f"${N}$", "$1000$"), good.replace(f"${N}$", f"${2**30}$"), None, 5]:
            with self.assertRaises(passwords.InvalidHash) as raised:
                passwords.parse_hash(bad)
            if isinstance(bad, str) and bad:
                self.assertNotIn(bad, str(raised.exception))


class SessionTests(SynchronousTestCase):
    """
    Sessions live on the server, expire, and end on logout.
    """

    def setUp(self):
        self.clock = Clock()
        self.sessions = auth.Sessions(self.clock, days=30)

    def test_token_finds_its_session(self):
        """
        The cookie's token finds its session; other tokens find nothing.
        """
        token, session = self.sessions.create("anna")
        self.assertIs(self.sessions.find(token), session)
        self.assertEqual(session.user, "anna")
        self.assertIsNone(self.sessions.find(token + "x"))
        self.assertIsNone(self.sessions.find(""))
        self.assertIsNone(self.sessions.find(None))

    def test_tokens_random_and_not_kept(self):
        """
        Every session gets a new random token and CSRF token; the server
        keeps only a digest of the cookie token.
        """
        token1, session1 = self.sessions.create("anna")
        token2, session2 = self.sessions.create("anna")
        self.assertNotEqual(token1, token2)
        self.assertNotEqual(session1.csrf, session2.csrf)
        self.assertGreaterEqual(len(token1), 40)
        self.assertNotIn(token1, repr(vars(self.sessions)) + repr(session1))

    def test_expires(self):
        """
        A session ends after DASHBOARD_SESSION_DAYS, and its end is told.
        """
        ended = []
        self.sessions.when_ended(ended.append)
        token, session = self.sessions.create("anna")
        self.clock.advance(30 * 86400 - 1)
        self.assertIs(self.sessions.find(token), session)
        self.clock.advance(1)
        self.assertIsNone(self.sessions.find(token))
        self.assertFalse(self.sessions.alive(session))
        self.assertEqual(ended, [session])
        self.assertEqual(len(self.sessions), 0)

    def test_end(self):
        """
        Logging out ends the session at once, once.
        """
        ended = []
        self.sessions.when_ended(ended.append)
        token, session = self.sessions.create("anna")
        self.sessions.end(session)
        self.sessions.end(session)
        self.assertIsNone(self.sessions.find(token))
        self.assertEqual(ended, [session])

    def test_csrf(self):
        """
        Only the session's own CSRF token matches.
        """
        _, session = self.sessions.create("anna")
        _, other = self.sessions.create("anna")
        self.assertTrue(auth.csrf_matches(session, session.csrf))
        self.assertFalse(auth.csrf_matches(session, other.csrf))
        self.assertFalse(auth.csrf_matches(session, None))
        self.assertFalse(auth.csrf_matches(session, ""))
        self.assertFalse(auth.csrf_matches(session, "é" + session.csrf))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class PasswdCommandTests(SynchronousTestCase):
    """
    C{python -m smartplug_backend passwd NAME} prints the settings line.
    """

    def setUp(self):
        self.patch(passwords, "SCRYPT_N", N)
        self.patch(passwords.hash_password, "__defaults__", (N, passwords.SCRYPT_R, passwords.SCRYPT_P))

    def run_passwd(self, argv, stdin):
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(argv, out=out, err=err, stdin=stdin)
        return status, out.getvalue(), err.getvalue()

    def test_stdin_line(self):
        """
        Not on a terminal, one line of standard input is the password; the
        printed line, pasted into settings.py, lets that password in.
        """
        status, out, err = self.run_passwd(["passwd", "anna"], io.StringIO("s3cret pass\nignored\n"))
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith('DASHBOARD_USERS = {"anna": "scrypt$'))
        self.assertNotIn("s3cret", out)
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(out)
        settings = config.load(path)
        self.assertTrue(passwords.verify_password(settings.DASHBOARD_USERS["anna"], "s3cret pass"))
        self.assertEqual(runpy.run_path(path)["DASHBOARD_USERS"], settings.DASHBOARD_USERS)

    def test_terminal_end_and_interrupt(self):
        """
        Ctrl-D or Ctrl-C at the prompt is one line, no traceback, and
        nothing printed.
        """
        def eof(prompt):
            raise EOFError()

        def interrupt(prompt):
            raise KeyboardInterrupt()

        self.patch(cli.getpass, "getpass", eof)
        self.assertEqual(self.run_passwd(["passwd", "anna"], _Terminal()),
                         (1, "", "smartplug: no password given; nothing printed\n"))
        self.patch(cli.getpass, "getpass", interrupt)
        self.assertEqual(self.run_passwd(["passwd", "anna"], _Terminal()), (130, "", "\nsmartplug: interrupted\n"))

    def test_terminal_asks_twice(self):
        """
        On a terminal the password is asked twice without echo; two
        different answers print nothing.
        """
        answers = iter(["one", "one", "one", "two"])
        prompts = []
        self.patch(cli.getpass, "getpass", lambda prompt: prompts.append(prompt) or next(answers))
        status, out, _ = self.run_passwd(["passwd", "anna"], _Terminal())
        self.assertEqual(status, 0)
        self.assertEqual(prompts, ["Password: ", "Again: "])
        status, out, err = self.run_passwd(["passwd", "anna"], _Terminal())
        self.assertEqual((status, out), (1, ""))
        self.assertIn("differ", err)

    def test_empty_password_or_bad_name(self):
        """
        An empty password, or a name with quotes, prints only an error.
        """
        self.assertEqual(self.run_passwd(["passwd", "anna"], io.StringIO("\n"))[:2], (1, ""))
        status, out, err = self.run_passwd(["passwd", 'an"na'], io.StringIO("pw\n"))
        self.assertEqual((status, out), (1, ""))
        self.assertIn("NAME", err)


class SettingsTests(SynchronousTestCase):
    """
    DASHBOARD_USERS and DASHBOARD_SESSION_DAYS in the settings file.
    """

    def test_defaults(self):
        """
        By default no user (the dashboard is off) and 30-day sessions.
        """
        settings = config.settings_from({})
        self.assertEqual(settings.DASHBOARD_USERS, {})
        self.assertEqual(settings.DASHBOARD_SESSION_DAYS, 30)

    def test_plain_password_refused_without_echo(self):
        """
        A clear-text password instead of a hash stops start-up, naming the
        setting and the user but not repeating the password.
        """
        with self.assertRaises(config.ConfigError) as raised:
            config.settings_from({"DASHBOARD_USERS": {"anna": "hunter2"}})
        message = str(raised.exception)
        self.assertIn("DASHBOARD_USERS", message)
        self.assertIn("'anna'", message)
        self.assertIn("passwd", message)
        self.assertNotIn("hunter2", message)

    def test_wrong_types(self):
        """
        A list of users or non-positive session days are refused.
        """
        for values in ({"DASHBOARD_USERS": ["anna"]}, {"DASHBOARD_SESSION_DAYS": 0},
                       {"DASHBOARD_USERS": {"": passwords.hash_password("x", n=N)}}):
            with self.assertRaises(config.ConfigError):
                config.settings_from(values)


class ParameterBoundsTests(SynchronousTestCase):
    """
    scrypt parameters a Raspberry Pi can afford (review finding 5).
    """

    @staticmethod
    def forged(n, r, p=1):
        salt, key = base64.b64encode(b"s" * 16).decode(), base64.b64encode(b"k" * 32).decode()
        return f"scrypt${n}${r}${p}${salt}${key}"

    def test_memory_hungry_hashes_refused(self):
        """
        n=2^20, r=32 (4 GiB per check), n=2^18, r=32 and n=2^17 with r=16
        (256 MiB) are refused, naming the parameters and the memory they
        ask for; the defaults and up to 128 MiB (n=2^17, r=8) pass.
        """
        for n, r, p in ((2**20, 32, 1), (2**18, 8, 1), (2**15, 32, 1), (2**17, 16, 1), (2**15, 8, 16)):
            with self.assertRaises(passwords.InvalidHash) as raised:
                passwords.parse_hash(self.forged(n, r, p))
            self.assertIn(f"n={n}, r={r}", str(raised.exception))
        self.assertEqual(passwords.parse_hash(self.forged(2**17, 8)).n, 2**17)
        self.assertEqual(passwords.parse_hash(self.forged(passwords.SCRYPT_N, passwords.SCRYPT_R)).r, passwords.SCRYPT_R)

    def test_settings_refuse_with_one_line(self):
        """
        Such a hash in DASHBOARD_USERS stops start-up with one line naming
        the user and the memory it would cost.
        """
        with self.assertRaises(config.ConfigError) as raised:
            config.settings_from({"DASHBOARD_USERS": {"anna": self.forged(2**20, 32)}})
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        self.assertIn("'anna'", message)
        self.assertIn("4096 MiB per check", message)
