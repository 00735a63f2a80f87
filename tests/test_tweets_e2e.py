"""
End-to-end: the real C{twistd -n smartplug} tweeting to the fake Twitter,
which the test reactor serves on 127.0.0.1.

The harness waits on the server's log lines by blocking, so those waits run
in a thread: the test reactor must keep serving the fake meanwhile.
"""

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from .fake_twitter import CREDENTIALS, serve
from .server import start_server
from .test_e2e import FIRMWARE_REQUEST, http, send_and_close
from .tweet_helpers import PLUGGED_IN, UNPLUGGED, settings_text


class TweetsEndToEndTests(TestCase):
    """
    Tweets from a running server.
    """

    timeout = 30

    def start(self, **overrides):
        self.fake = serve(self)
        self.server = start_server(self, settings_text(self.fake.url, **overrides))

    def wait_for(self, pattern: str, start: int = 0):
        return deferToThread(self.server.wait_for, pattern, 10, start)

    def assertNoCredentialLogged(self):
        log = self.server.log()
        for name, secret in CREDENTIALS.items():
            self.assertNotIn(secret, log, name)

    async def test_firmware_report_is_tweeted(self):
        """
        The server checks the credentials at start-up and says so; the
        firmware's bare-LF report is tweeted with TWEET_PLUGGED_IN; the
        plug's repeated 1 is not tweeted; its 0 is.
        """
        self.start(TWITTER_API="v1.1")
        await self.wait_for(r"Twitter credentials OK: tweeting as @craplab \(API v1\.1 at http://127\.0\.0\.1:\d+\)")
        send_and_close(self.server.ports["HTTP"], FIRMWARE_REQUEST)
        await self.fake.wait_posted(1)
        self.assertEqual(self.fake.posted, [("v1.1", PLUGGED_IN)])
        await self.wait_for(r"tweeted for plug 0xb00bf0cc \(tweet \d+\): " + PLUGGED_IN)

        # In this order: the two reports may run in different WSGI threads.
        seen = len(self.server.lines)
        send_and_close(self.server.ports["HTTP"], FIRMWARE_REQUEST)
        await self.wait_for(r"plug 0xb00bf0cc -> 1 from", start=seen)
        self.assertEqual(http(self.server.url("/data"), b'{"id": "0xb00bf0cc", "value": 0}')[0], 200)
        # The server's line, not the fake's record: the answer must have
        # reached the server before the test's cleanup blocks this reactor.
        await self.wait_for(r"tweeted for plug 0xb00bf0cc \(tweet \d+\): " + UNPLUGGED)
        self.assertEqual(self.fake.texts(), [PLUGGED_IN, UNPLUGGED])
        self.assertEqual(
            [path for _, path in self.fake.requests],
            ["/1.1/account/verify_credentials.json"] + ["/1.1/statuses/update.json"] * 2,
        )
        self.assertNoCredentialLogged()

    async def test_bad_credentials_logged_server_keeps_running(self):
        """
        With a wrong consumer secret the start-up line says what Twitter
        answered, the server keeps answering reports, and the refused tweet
        is logged; no credential appears in the log.
        """
        self.start(TWITTER_API="v2", CONSUMER_SECRET="not-the-consumer-secret")
        await self.wait_for(
            r"Twitter credentials check failed \(API v2 at http://127\.0\.0\.1:\d+\): HTTP 401: Unauthorized "
            r"\(check CONSUMER_KEY.*\); tweets will still be tried"
        )
        self.assertEqual(http(self.server.url("/data"), b'{"id": "lamp", "value": 1}'), (200, b"{}"))
        await self.wait_for(r"tweet for plug lamp not posted after 1 try: HTTP 401: Unauthorized")
        self.assertEqual((self.fake.refused, self.fake.posted), (2, []))
        self.assertNotIn("not-the-consumer-secret", self.server.log())
        self.assertNoCredentialLogged()
