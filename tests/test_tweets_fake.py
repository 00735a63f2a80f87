"""
Tweets from the hub to the fake Twitter: the real client in a real tweet
thread, the Notifier on a Clock the test drives, the fake served over
127.0.0.1 by the test reactor.
"""

import json
import threading
import time

from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from smartplug_backend.core.hub import Hub
from smartplug_backend.integrations.tweets import Notifier, TweetService
from smartplug_backend.integrations.twitter_client import TwitterClient
from smartplug_backend.ws.apps import AppFactory

from .fake_twitter import CREDENTIALS, serve
from .helpers import http_client, ws_connect
from .test_twitter_client import closed_port
from .tweet_helpers import PLUGGED_IN, TEXTS, UNPLUGGED, LogCapture, PoolRunner, tweet_settings

# The client's timeout where one is to expire: short, yet long enough that
# the requests that must get through (served by this test's own reactor) are
# not cut off by a pause of a loaded machine.
SHORT = 1.0


class FakeTwitterTestCase(TestCase):
    timeout = 15

    def setUp(self):
        # The runner first: its cleanup (waiting for calls) must run after
        # the fake's, which answers hanging requests.
        self.runner = PoolRunner(self)
        self.fake = serve(self)
        self.clock = Clock()
        self.hub = Hub()
        self.logs = LogCapture(self)

    def notifier(self, api="v1.1", timeout=5.0, url=None, **overrides) -> Notifier:
        self.client = TwitterClient(tweet_settings(url or self.fake.url, api, **overrides), timeout=timeout)
        notifier = Notifier(self.client.post, self.runner, self.clock, TEXTS)
        self.hub.listen(notifier.report)
        return notifier

    def report(self, plug_id: str, value: int):
        self.hub.report(plug_id, value, "http", "192.168.1.64")

    async def done(self, *indexes: int) -> None:
        for index in indexes:
            await self.runner.done(index)


class TweetingTests(FakeTwitterTestCase):
    """
    Changes become tweets with the right text, through either API.
    """

    async def test_v1_tweet_after_change(self):
        """
        With v1.1, a plug's first report is tweeted with TWEET_PLUGGED_IN
        through statuses/update, and logged with the tweet's id.
        """
        self.notifier("v1.1")
        self.report("0xb00bf0cc", 1)
        await self.done(0)
        self.assertEqual(self.fake.posted, [("v1.1", PLUGGED_IN)])
        [line] = self.logs.matching("tweeted for plug 0xb00bf0cc")
        self.assertRegex(line, r"^tweeted for plug 0xb00bf0cc \(tweet \d+\): " + PLUGGED_IN + "$")

    async def test_v2_tweets_in_order(self):
        """
        With v2, plugging in and out are tweeted to /2/tweets with their two
        texts, in the order of the changes.
        """
        self.notifier("v2")
        self.report("lamp", 1)
        self.report("lamp", 0)
        await self.done(0, 1)
        self.assertEqual(self.fake.posted, [("v2", PLUGGED_IN), ("v2", UNPLUGGED)])

    async def test_repeated_value_is_not_tweeted(self):
        """
        Reports repeating a plug's value send nothing to Twitter.
        """
        self.notifier("v1.1")
        for _ in range(3):
            self.report("lamp", 1)
        await self.done(0)
        self.assertEqual(len(self.runner.calls), 1)
        self.assertEqual(self.fake.requests, [("POST", "/1.1/statuses/update.json")])

    async def test_posts_run_in_the_tweet_thread(self):
        """
        The post runs in a thread of the tweet pool, not the reactor thread.
        """
        client = TwitterClient(tweet_settings(self.fake.url, "v2"))
        threads = []

        def post(text):
            threads.append(threading.current_thread())
            return client.post(text)

        Notifier(post, self.runner, self.clock, TEXTS).queue("lamp", PLUGGED_IN)
        await self.done(0)
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.current_thread())
        self.assertIn("test-tweets", threads[0].name)


class FailureTests(FakeTwitterTestCase):
    """
    Every failure is logged with Twitter's code and message and harms
    nothing: the next change is tweeted.
    """

    async def assertLoggedThenRecovers(self, plug_id: str, expected: str, index: int) -> None:
        await self.done(index)
        self.assertEqual(self.logs.matching(f"tweet for plug {plug_id} not posted"), [expected])
        self.report(plug_id, 0)
        await self.done(index + 1)
        self.assertEqual(self.fake.posted[-1][1], UNPLUGGED)

    async def test_wrong_consumer_secret_is_refused_and_logged(self):
        """
        A wrong consumer secret is refused by the fake's signature check,
        logged as Twitter's 401/32 with advice, and not retried.
        """
        self.notifier("v1.1", CONSUMER_SECRET="not-the-consumer-secret")
        self.report("lamp", 1)
        await self.done(0)
        self.assertEqual((self.fake.refused, self.fake.posted), (1, []))
        self.assertEqual(
            self.logs.matching("not posted"),
            [
                "tweet for plug lamp not posted after 1 try: HTTP 401, Twitter error 32: Could not "
                "authenticate you. (check CONSUMER_KEY, CONSUMER_SECRET, ACCESS_TOKEN_KEY and "
                "ACCESS_TOKEN_SECRET)"
            ],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def assertDuplicateLogged(self, api: str, expected: str) -> None:
        self.notifier(api)
        self.report("a", 1)
        self.report("b", 1)
        await self.done(0)
        await self.assertLoggedThenRecovers("b", expected, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def test_duplicate(self):
        """
        Two plugs plugged in one after the other make the same status: the
        second is refused as a duplicate (187) and logged, not retried.
        """
        await self.assertDuplicateLogged(
            "v1.1",
            "tweet for plug b not posted after 1 try: HTTP 403, Twitter error 187: Status is a "
            "duplicate. (Twitter refuses a status identical to a recent one)",
        )

    async def test_v2_duplicate(self):
        """
        With v2, a duplicate is logged with v2's own detail, not retried.
        """
        await self.assertDuplicateLogged(
            "v2",
            "tweet for plug b not posted after 1 try: HTTP 403: You are not allowed to create a "
            "Tweet with duplicate content.",
        )

    async def test_no_v1_access(self):
        """
        An account without v1.1 access (453) is logged with the advice to set
        TWITTER_API = "v2".
        """
        self.fake.v1_access = False
        self.notifier("v1.1")
        self.report("lamp", 1)
        await self.done(0)
        [line] = self.logs.matching("not posted")
        self.assertTrue(line.startswith("tweet for plug lamp not posted after 1 try: HTTP 403, Twitter error 453: "))
        self.assertTrue(line.endswith('(this account has no v1.1 access: set TWITTER_API = "v2" in the settings file)'))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def assertRateLimitLogged(self, api: str, expected: str) -> None:
        self.notifier(api)
        self.fake.fail_next("rate_limit")
        self.report("lamp", 1)
        await self.assertLoggedThenRecovers("lamp", expected, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def test_rate_limit(self):
        """
        A rate limit (429/88) is logged and not retried.
        """
        await self.assertRateLimitLogged(
            "v1.1",
            "tweet for plug lamp not posted after 1 try: HTTP 429, Twitter error 88: Rate limit "
            "exceeded (rate limited: later changes will be tweeted again)",
        )

    async def test_v2_bad_credentials(self):
        """
        With v2, a wrong access token secret is refused and logged with v2's
        words and the advice on credentials.
        """
        self.notifier("v2", ACCESS_TOKEN_SECRET="not-the-token-secret")
        self.report("lamp", 1)
        await self.done(0)
        self.assertEqual(
            self.logs.matching("not posted"),
            [
                "tweet for plug lamp not posted after 1 try: HTTP 401: Unauthorized (check CONSUMER_KEY, "
                "CONSUMER_SECRET, ACCESS_TOKEN_KEY and ACCESS_TOKEN_SECRET)"
            ],
        )

    async def test_v2_rate_limit(self):
        """
        With v2, a rate limit (429) is logged with v2's words, not retried.
        """
        await self.assertRateLimitLogged(
            "v2",
            "tweet for plug lamp not posted after 1 try: HTTP 429: Too Many Requests (rate limited: "
            "later changes will be tweeted again)",
        )


class RetryTests(FakeTwitterTestCase):
    """
    Server errors and timeouts are tried again on the test's clock.
    """

    async def test_server_errors_retried_then_posted(self):
        """
        A 500 and then an HTML 502 are tried again after 5 s and 30 s of the
        clock; the third try is posted once.
        """
        self.notifier("v1.1")
        self.fake.fail_next("server_error")
        self.fake.fail_next("bad_gateway")
        self.report("lamp", 1)
        await self.done(0)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [5])
        self.clock.advance(5)
        await self.done(1)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [35])
        self.clock.advance(30)
        await self.done(2)
        self.assertEqual(len(self.fake.requests), 3)
        self.assertEqual(self.fake.posted, [("v1.1", PLUGGED_IN)])
        self.assertEqual(
            self.logs.matching("trying again"),
            [
                "tweet for plug lamp failed (try 1 of 3), trying again in 5 s: HTTP 500, Twitter error 131: Internal error",
                "tweet for plug lamp failed (try 2 of 3), trying again in 30 s: HTTP 502: not a JSON answer: "
                "502 Bad Gateway bad gateway",
            ],
        )

    async def test_gives_up_after_three_tries(self):
        """
        Three server errors in a row: three requests, then one error line and
        nothing more scheduled.
        """
        self.notifier("v2")
        self.fake.fail_next("over_capacity", 3)
        self.report("lamp", 1)
        await self.done(0)
        self.clock.advance(5)
        await self.done(1)
        self.clock.advance(30)
        await self.done(2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((len(self.fake.requests), self.fake.posted), (3, []))
        self.assertEqual(
            self.logs.matching("not posted"),
            ["tweet for plug lamp not posted after 3 tries: HTTP 503: Service Unavailable"],
        )

    async def test_timeout_retried(self):
        """
        A Twitter that hangs past the client's timeout is tried again, and
        the next try is posted.
        """
        self.notifier("v1.1", timeout=SHORT)
        self.fake.fail_next("hang")
        self.report("lamp", 1)
        await self.done(0)
        self.assertEqual(
            self.logs.matching("trying again"),
            ["tweet for plug lamp failed (try 1 of 3), trying again in 5 s: no answer within 1 s"],
        )
        self.clock.advance(5)
        await self.done(1)
        self.assertEqual(self.fake.posted, [("v1.1", PLUGGED_IN)])

    async def dripping(self, api: str) -> None:
        self.notifier(api, timeout=SHORT)
        self.fake.fail_next("drip")
        started = time.monotonic()
        self.report("lamp", 1)
        await self.done(0)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(
            self.logs.matching("trying again"),
            ["tweet for plug lamp failed (try 1 of 3), trying again in 5 s: no complete answer within 2 s"],
        )
        self.clock.advance(5)
        await self.done(1)
        self.assertEqual(self.fake.posted, [(api, PLUGGED_IN)])

    async def test_dripping_answer_cut_v1(self):
        """
        A Twitter that answers a byte at a time, each within the timeout,
        is cut off after twice the timeout in all (not held for ever), and
        tried again (python-twitter's session).
        """
        await self.dripping("v1.1")

    async def test_dripping_answer_cut_v2(self):
        """
        The same through the v2 session.
        """
        await self.dripping("v2")

    async def test_unreachable_retried(self):
        """
        A Twitter that cannot be reached (networks come up late) is tried
        again like a server error.
        """
        self.notifier("v2", url=f"http://127.0.0.1:{closed_port()}")
        self.report("lamp", 1)
        await self.done(0)
        [line] = self.logs.matching("trying again")
        self.assertIn("Connection refused", line)


class NeverInTheWayTests(FakeTwitterTestCase):
    """
    HTTP answers and broadcasts never wait for Twitter.
    """

    async def test_post_data_answered_and_broadcast_while_twitter_hangs(self):
        """
        While the fake Twitter holds the first tweet's request (for 10 s;
        released at cleanup), two POST /data are answered 200 and broadcast
        to an app at once; the second tweet waits its turn.
        """
        apps = AppFactory(self.hub)
        self.hub.listen(apps.broadcast)
        notifier = self.notifier("v1.1", timeout=30)
        # Stop first at cleanup, so the released tweet starts no other.
        self.addCleanup(notifier.stop)
        app, _, pump = ws_connect(apps)
        http = http_client(self.hub)
        self.fake.fail_next("hang")

        answer = self.successResultOf(http.post("http://x/data", data=b'{"id": "lamp", "value": 1}'))
        self.assertEqual(answer.code, 200)
        await self.fake.wait_requests(1)
        answer = self.successResultOf(http.post("http://x/data", data=b'{"id": "lamp", "value": 0}'))
        self.assertEqual(answer.code, 200)
        self.assertEqual(json.loads(self.successResultOf(answer.content())), {})
        pump.flush()

        self.assertEqual(app.json(), [{"id": "lamp", "value": 1}, {"id": "lamp", "value": 0}])
        self.assertEqual((self.fake.held(), self.fake.posted), (1, []))
        self.assertEqual([t.text for t in notifier.waiting()], [UNPLUGGED])


class SecrecyTests(FakeTwitterTestCase):
    """
    No credential reaches the log, whatever fails.
    """

    async def test_no_credential_in_any_log_event(self):
        """
        After a failed start-up check, a refused signature, an answer quoting
        the Authorization header, a rate limit, a timeout and an unreachable
        Twitter, no log event (text, fields or failure) holds a credential.
        """
        wrong = dict(CONSUMER_SECRET="wrong-" + CREDENTIALS["CONSUMER_SECRET"])
        client = TwitterClient(tweet_settings(self.fake.url, "v1.1", **wrong), timeout=SHORT)
        service = TweetService(client, Notifier(client.post, self.runner, self.clock, TEXTS), ThreadPool(0, 1), self.runner)
        service.startService()
        self.addCleanup(service.stopService)
        await self.done(0)
        self.notifier("v2", timeout=SHORT)
        for index, kind in enumerate(("echo_auth", "rate_limit", "hang", None), start=1):
            if kind:
                self.fake.fail_next(kind)
            self.report(f"plug{index}", 1)
            await self.done(index)
        unreachable = Notifier(
            TwitterClient(tweet_settings(f"http://127.0.0.1:{closed_port()}"), timeout=1).post,
            self.runner,
            Clock(),
            TEXTS,
        )
        unreachable.queue("lamp", PLUGGED_IN)
        await self.done(5)

        self.assertEqual(len(self.logs.matching("credentials check failed")), 1)
        self.assertEqual(len(self.logs.matching("bad request: OAuth")), 1)
        self.assertEqual(len(self.logs.matching("no answer within")), 1)
        self.assertEqual(len(self.logs.matching("Connection refused")), 1)
        everything = self.logs.everything() + "\n".join(repr(e) for e in self.logs.events)
        for name, secret in list(CREDENTIALS.items()) + [("wrong", wrong["CONSUMER_SECRET"])]:
            self.assertNotIn(secret, everything, name)
