"""
The Notifier's queue, ordering, bound and retries, and the tweet service's
start-up and wiring, with synchronous or manual thread runners and a Clock.
"""

from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend import tap
from smartplug_backend.config import settings_from
from smartplug_backend.core.hub import Hub
from smartplug_backend.integrations import tweets
from smartplug_backend.integrations.tweets import Notifier, TweetService, tweet_service
from smartplug_backend.integrations.twitter_client import TweetError

from .fake_twitter import CREDENTIALS
from .helpers import SynchronousReactor
from .tweet_helpers import PLUGGED_IN, TEXTS, UNPLUGGED, LogCapture, ManualRunner, run_now, settings_text

SERVER_ERROR = TweetError("Over capacity", status=503, code=130, retry=True)
DUPLICATE = TweetError("Status is a duplicate.", status=403, code=187)


class NotifierTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(now=self.clock.seconds)
        self.runner = ManualRunner()
        self.logs = LogCapture(self)

    def notifier(self, **kwargs) -> Notifier:
        notifier = Notifier(self.post, kwargs.pop("runner", self.runner), self.clock, TEXTS, **kwargs)
        self.hub.listen(notifier.report)
        return notifier

    def post(self, text):
        raise AssertionError("the notifier must not call post itself, only through the runner")


class QueueTests(NotifierTestCase):
    """
    Which reports make tweets, with which text.
    """

    def test_changes_are_tweeted_with_their_texts(self):
        """
        A plug's first report and each change of value are posted, with
        TWEET_PLUGGED_IN for 1 and TWEET_UNPLUGGED for 0.
        """
        posted = []
        self.post = lambda text: posted.append(text) or str(len(posted))
        self.notifier(runner=run_now)
        for value in (1, 0, 1):
            self.hub.report("plug", value, "http", "peer")
        self.assertEqual(posted, [PLUGGED_IN, UNPLUGGED, PLUGGED_IN])
        self.assertEqual(len(self.logs.matching("tweeted for plug plug (tweet 3): " + PLUGGED_IN)), 1)

    def test_other_nodes_reports_are_not_tweeted(self):
        """
        With several nodes (SPEC 11), a change another node accepted reaches
        this hub remote, and is not tweeted here: that node tweets it.
        """
        posted = []
        self.post = lambda text: posted.append(text) or "1"
        self.notifier(runner=run_now)
        self.hub.apply_report("plug", 1, 5.0, "http", "node B")
        self.hub.report("plug", 0, "http", "peer")
        self.assertEqual(posted, [UNPLUGGED])

    def test_repeated_value_is_not_tweeted(self):
        """
        A report repeating the plug's value (the plug re-sends 1 after each
        Wi-Fi re-association) queues nothing.
        """
        posted = []
        self.post = lambda text: posted.append(text) or "1"
        self.notifier(runner=run_now)
        for value in (1, 1, 1, 0, 0):
            self.hub.report("plug", value, "http", "peer")
        self.assertEqual(posted, [PLUGGED_IN, UNPLUGGED])

    def test_post_goes_through_the_runner(self):
        """
        The hub's call only hands the post to the thread runner: nothing is
        posted on the calling thread, and the report returns at once.
        """
        self.notifier()
        self.hub.report("plug", 1, "http", "peer")
        self.assertEqual(self.runner.texts(), [PLUGGED_IN])
        self.assertEqual(self.runner.calls[0][0], self.post)


class OrderTests(NotifierTestCase):
    """
    One plug's tweets in the order of its changes; other plugs meanwhile.
    """

    def test_one_plug_in_order_one_at_a_time(self):
        """
        While a plug's tweet is being posted, its later changes wait and are
        then posted one by one in their order.
        """
        self.notifier(concurrency=4)
        for value in (1, 0, 1):
            self.hub.report("plug", value, "http", "peer")
        self.assertEqual(self.runner.texts(), [PLUGGED_IN])
        self.runner.succeed(0)
        self.assertEqual(self.runner.texts(), [PLUGGED_IN, UNPLUGGED])
        self.runner.fail(1, DUPLICATE)
        self.assertEqual(self.runner.texts(), [PLUGGED_IN, UNPLUGGED, PLUGGED_IN])

    def test_other_plugs_go_meanwhile(self):
        """
        With threads to spare, another plug's tweet is posted while the
        first plug's is still in flight.
        """
        notifier = self.notifier(concurrency=2)
        self.hub.report("a", 1, "http", "peer")
        self.hub.report("a", 0, "http", "peer")
        self.hub.report("b", 0, "http", "peer")
        self.assertEqual([args for _, args, _ in self.runner.calls], [(PLUGGED_IN,), (UNPLUGGED,)])
        self.assertEqual([t.plug_id for t in notifier.waiting()], ["a"])

    def test_concurrency_bounds_threads(self):
        """
        No more posts run at once than the notifier's concurrency.
        """
        notifier = self.notifier(concurrency=1)
        self.hub.report("a", 1, "http", "peer")
        self.hub.report("b", 1, "http", "peer")
        self.assertEqual(len(self.runner.calls), 1)
        self.assertEqual([t.plug_id for t in notifier.waiting()], ["b"])
        self.runner.succeed(0)
        self.assertEqual(len(self.runner.calls), 2)


class BoundTests(NotifierTestCase):
    """
    At most 100 tweets wait; the oldest waiting one gives way.
    """

    def test_oldest_waiting_is_dropped_with_warning(self):
        """
        With 100 tweets waiting, a new one drops the oldest waiting tweet
        (not the one in flight) and logs a warning naming it.
        """
        notifier = self.notifier()
        self.hub.report("busy", 1, "http", "peer")
        for n in range(101):
            self.hub.report(f"plug{n}", n % 2, "http", "peer")
        waiting = notifier.waiting()
        self.assertEqual(len(waiting), 100)
        self.assertEqual((waiting[0].plug_id, waiting[-1].plug_id), ("plug1", "plug100"))
        self.assertEqual(
            self.logs.matching("tweet queue full"),
            [f"tweet queue full (100 waiting): dropped the oldest, for plug plug0: {UNPLUGGED}"],
        )
        self.assertEqual(self.runner.texts(), [PLUGGED_IN])

    def test_bound_is_a_parameter(self):
        """
        The bound is the C{max_waiting} given; nothing is dropped below it.
        """
        notifier = self.notifier(max_waiting=2)
        for plug in ("busy", "a", "b"):
            self.hub.report(plug, 1, "http", "peer")
        self.assertEqual(self.logs.matching("tweet queue full"), [])
        self.hub.report("c", 1, "http", "peer")
        self.assertEqual([t.plug_id for t in notifier.waiting()], ["b", "c"])


class RetryTests(NotifierTestCase):
    """
    Server errors and timeouts are tried again after delays on the clock, at
    most three tries; client errors are not.
    """

    def test_retried_after_delays_at_most_three_tries(self):
        """
        A retryable failure is tried again 5 s and then 30 s later (on the
        injected clock, not before), and given up after the third try with
        one error line.
        """
        self.notifier()
        self.hub.report("plug", 1, "http", "peer")
        self.runner.fail(0, SERVER_ERROR)
        self.clock.pump([1] * 4)
        self.assertEqual(len(self.runner.calls), 1)
        self.clock.pump([1])
        self.assertEqual(len(self.runner.calls), 2)
        self.runner.fail(1, SERVER_ERROR)
        self.clock.pump([1] * 29)
        self.assertEqual(len(self.runner.calls), 2)
        self.clock.pump([1])
        self.assertEqual(self.runner.texts(), [PLUGGED_IN] * 3)
        self.runner.fail(2, SERVER_ERROR)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            self.logs.matching("tweet for plug plug"),
            [
                "tweet for plug plug failed (try 1 of 3), trying again in 5 s: HTTP 503, Twitter error 130: Over capacity",
                "tweet for plug plug failed (try 2 of 3), trying again in 30 s: HTTP 503, Twitter error 130: Over capacity",
                "tweet for plug plug not posted after 3 tries: HTTP 503, Twitter error 130: Over capacity",
            ],
        )

    def test_success_on_retry(self):
        """
        A tweet that succeeds on its second try is logged as tweeted, and
        nothing more is scheduled.
        """
        self.notifier()
        self.hub.report("plug", 1, "http", "peer")
        self.runner.fail(0, SERVER_ERROR)
        self.clock.advance(5)
        self.runner.succeed(1, "42")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.logs.matching("tweeted for plug plug (tweet 42)")), 1)

    def test_client_error_is_not_retried(self):
        """
        A client error (duplicate, bad credentials, rate limit...) is logged
        once with Twitter's words and not tried again; the plug's next change
        is posted.
        """
        self.notifier()
        self.hub.report("plug", 1, "http", "peer")
        self.runner.fail(0, DUPLICATE)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            self.logs.matching("not posted"),
            [
                "tweet for plug plug not posted after 1 try: HTTP 403, Twitter error 187: "
                "Status is a duplicate. (Twitter refuses a status identical to a recent one)"
            ],
        )
        self.hub.report("plug", 0, "http", "peer")
        self.assertEqual(self.runner.texts(), [PLUGGED_IN, UNPLUGGED])

    def test_plug_waits_for_its_retry_others_do_not(self):
        """
        During a plug's retry delay its later change waits (order), while
        another plug's tweet uses the free thread; the retry then goes first.
        """
        notifier = self.notifier(concurrency=1)
        self.hub.report("a", 1, "http", "peer")
        self.runner.fail(0, SERVER_ERROR)
        self.hub.report("a", 0, "http", "peer")
        self.hub.report("b", 1, "http", "peer")
        self.assertEqual([args for _, args, _ in self.runner.calls][1:], [(PLUGGED_IN,)])
        self.assertEqual([t.plug_id for t in notifier.waiting()], ["a"])
        self.runner.succeed(1)
        self.clock.advance(5)
        self.assertEqual(self.runner.texts()[2:], [PLUGGED_IN])
        self.runner.succeed(2)
        self.assertEqual(self.runner.texts()[3:], [UNPLUGGED])

    def test_retry_catches_its_own_exceptions(self):
        """
        An exception inside a retry's DelayedCall is logged with the plug,
        not raised into the reactor.
        """
        notifier = self.notifier()
        self.hub.report("plug", 1, "http", "peer")
        self.runner.fail(0, SERVER_ERROR)

        def broken():
            raise RuntimeError("broken on purpose")

        notifier._dispatch = broken
        self.clock.advance(5)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.logs.matching("retrying the tweet for plug plug")), 1)

    def test_runner_that_raises_is_logged_and_harmless(self):
        """
        A thread runner that raises at once (a pool refusing work) is logged
        for that plug, and the plug's next change is still handed over.
        """
        calls = []

        def refusing(f, *args):
            calls.append(args)
            raise RuntimeError("pool refuses work")

        self.notifier(runner=refusing)
        self.hub.report("plug", 1, "http", "peer")
        self.hub.report("plug", 0, "http", "peer")
        self.assertEqual(calls, [(PLUGGED_IN,), (UNPLUGGED,)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(len(self.logs.matching("tweet for plug plug failed")), 2)

    def test_unexpected_failure_is_logged_and_harmless(self):
        """
        A failure that is not a TweetError (a bug) is logged with its
        traceback, not retried, and the plug's next change is still posted.
        """
        self.notifier()
        self.hub.report("plug", 1, "http", "peer")
        self.runner.fail(0, KeyError("bug"))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.hub.report("plug", 0, "http", "peer")
        self.assertEqual(self.runner.texts(), [PLUGGED_IN, UNPLUGGED])

    def test_stop_forgets_waiting_and_retries(self):
        """
        Once stopped, pending retries are cancelled, waiting tweets are
        forgotten with one line, and new changes queue nothing.
        """
        notifier = self.notifier()
        self.hub.report("a", 1, "http", "peer")
        self.runner.fail(0, SERVER_ERROR)
        self.hub.report("b", 1, "http", "peer")
        self.hub.report("c", 1, "http", "peer")
        self.assertEqual(notifier.stop(), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.logs.matching("shutting down"), ["2 tweet(s) not posted: shutting down"])
        self.runner.succeed(1)
        self.hub.report("d", 1, "http", "peer")
        self.assertEqual(len(self.runner.calls), 2)


class FakeClient:
    """
    A TwitterClient stand-in for the service tests.
    """

    api_version = "v2"
    root = "http://127.0.0.1:1"
    where = root
    timeout = 10.0
    deadline = 20.0

    def __init__(self, verify_error=None):
        self.verify_error = verify_error
        self.closed = False

    def verify(self):
        if self.verify_error:
            raise self.verify_error
        return "@craplab"

    def post(self, text):
        return "1"

    def close(self):
        self.closed = True


class ServiceTests(SynchronousTestCase):
    """
    The service: built only when enabled, checks credentials at start-up.
    """

    def setUp(self):
        self.logs = LogCapture(self)

    def service(self, client) -> TweetService:
        notifier = Notifier(client.post, run_now, Clock(), TEXTS)
        return TweetService(client, notifier, ThreadPool(minthreads=0, maxthreads=1), run_now)

    def test_disabled_builds_nothing(self):
        """
        With TWITTER_ENABLED = False no client, no thread pool and no hub
        listener is made.
        """

        def forbidden(*args, **kwargs):
            raise AssertionError("built while tweets are disabled")

        self.patch(tweets, "TwitterClient", forbidden)
        self.patch(tweets, "ThreadPool", forbidden)
        hub = Hub()
        self.assertIsNone(tweet_service(settings_from(dict(CREDENTIALS)), hub, Clock()))
        self.assertEqual(hub._listeners, [])

    def test_empty_credentials_turn_tweets_off_with_one_line(self):
        """
        Enabled but with an empty credential: nothing is built, and one
        error line names the empty settings (and no credential's value).
        """
        values = dict(CREDENTIALS, TWITTER_ENABLED=True, CONSUMER_SECRET="", ACCESS_TOKEN_SECRET="")
        hub = Hub()
        self.assertIsNone(tweet_service(settings_from(values, "my.py"), hub, Clock()))
        self.assertEqual(
            self.logs.lines(),
            ["tweets are off: TWITTER_ENABLED is True but CONSUMER_SECRET, ACCESS_TOKEN_SECRET are empty in my.py"],
        )
        self.assertEqual(hub._listeners, [])

    def test_enabled_subscribes_to_the_hub(self):
        """
        Enabled with credentials: a service named "tweets" whose notifier is
        subscribed to the hub, on a thread pool of its own.
        """
        hub = Hub()
        service = tweet_service(
            settings_from(dict(CREDENTIALS, TWITTER_ENABLED=True)), hub, Clock()
        )
        self.addCleanup(service.client.close)
        self.assertEqual(service.name, "tweets")
        self.assertEqual(hub._listeners, [service.notifier.report])
        pool = list(service)[0].pool
        self.assertEqual((pool.name, pool.max), ("smartplug-tweets", 1))

    def test_startup_check_success_is_logged(self):
        """
        At start-up the credentials are checked through the thread runner and
        the account is named in one line.
        """
        service = self.service(FakeClient())
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            self.logs.matching("Twitter credentials"),
            ["Twitter credentials OK: tweeting as @craplab (API v2 at http://127.0.0.1:1)"],
        )

    def test_startup_check_failure_is_one_line_and_harmless(self):
        """
        A failed check is one error line with Twitter's answer; the service
        keeps running and still posts changes.
        """
        client = FakeClient(TweetError("Unauthorized", status=401))
        service = self.service(client)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            self.logs.matching("Twitter credentials"),
            [
                "Twitter credentials check failed (API v2 at http://127.0.0.1:1): HTTP 401: Unauthorized "
                "(check CONSUMER_KEY, CONSUMER_SECRET, ACCESS_TOKEN_KEY and ACCESS_TOKEN_SECRET); "
                "tweets will still be tried"
            ],
        )
        self.assertTrue(service.running)
        service.notifier.queue("plug", PLUGGED_IN)
        self.assertEqual(len(self.logs.matching("tweeted for plug plug")), 1)

    def test_stop_closes_the_client(self):
        """
        Stopping the service stops the notifier and closes the client.
        """
        client = FakeClient()
        service = self.service(client)
        service.startService()
        service.stopService()
        self.assertTrue(client.closed)
        service.notifier.queue("plug", PLUGGED_IN)
        self.assertEqual(self.logs.matching("tweeted"), [])

    def test_stop_says_how_long_it_may_wait(self):
        """
        A tweet still in its thread at stop is waited for, and the log says
        for how long at most: the client's deadline for a whole request.
        """
        client = FakeClient()
        service = self.service(client)
        service.startService()
        self.patch(service.notifier, "stop", lambda: 1)
        service.stopService()
        self.assertEqual(self.logs.matching("waiting for"), ["waiting for 1 tweet(s) in flight (at most 20 s each)"])


class WiringTests(SynchronousTestCase):
    """
    C{twistd smartplug} builds the tweet service only when enabled.
    """

    def make(self, text: str):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("STATE_DB = None\n" + text)
        options = tap.Options()
        options.parseOptions(["--settings", path])
        return tap.makeService(options, reactor=SynchronousReactor())

    def test_tweets_service_only_when_enabled(self):
        """
        With TWITTER_ENABLED the server has a "tweets" service after its
        listeners; without it, none.
        """
        top = self.make(settings_text("http://127.0.0.1:1"))
        service = top.getServiceNamed("tweets")
        self.addCleanup(service.client.close)
        self.assertIs(list(top)[-1], service)
        top = self.make("")
        self.assertRaises(KeyError, top.getServiceNamed, "tweets")

    def test_tweets_are_the_last_listener(self):
        """
        The notifier hears a report after the app broadcast (SPEC 1.1's order).
        """
        hubs = []

        class RecordedHub(Hub):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                hubs.append(self)

        self.patch(tap, "Hub", RecordedHub)
        service = self.make(settings_text("http://127.0.0.1:1")).getServiceNamed("tweets")
        self.addCleanup(service.client.close)
        listeners = hubs[0]._listeners
        self.assertEqual(listeners[-1], service.notifier.report)
        names = [listener.__name__ for listener in listeners]
        self.assertLess(names.index("broadcast"), names.index("report"))

