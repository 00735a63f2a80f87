"""
Tweets on plug changes (SPEC 5): a L{Notifier} subscribed to the hub, posting
through a L{TwitterClient} in a thread pool of its own.

The hub calls L{Notifier.report} on the reactor thread; it only queues.  Each
post runs in a tweet thread and reports back through a Deferred, so no HTTP
answer or broadcast ever waits for Twitter.  A plug's tweets are posted in the
order of its changes, one at a time; other plugs' tweets go meanwhile.  Server
errors and timeouts are tried again after a delay on the injected clock;
everything else is logged once with Twitter's own words and forgotten.

With C{TWITTER_ENABLED = False}, L{tweet_service} builds nothing at all.
"""

import dataclasses
from collections import deque
from functools import partial
from typing import Any, Callable, Optional

from twisted.application.service import MultiService
from twisted.internet.defer import maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ..core.limits import TWEET_QUEUE, TWEET_RETRY_DELAYS, TWEET_TRIES
from ..server.services import ThreadPoolService
from .twitter_client import CREDENTIALS, TweetError, TwitterClient

MAX_WAITING = TWEET_QUEUE
TRIES = TWEET_TRIES
RETRY_DELAYS = TWEET_RETRY_DELAYS

_log = Logger(namespace="smartplug_backend.integrations.tweets")


@dataclasses.dataclass
class Tweet:
    """
    One status to post for one plug's change.
    """

    plug_id: str
    text: str
    tries: int = 0


class Notifier:
    """
    Queue a tweet for every change of a plug's value and post them in threads.

    @param post: blocking C{post(text)} returning the tweet's id or raising
        L{TweetError}; run only through C{run_in_thread}.
    @param run_in_thread: C{run_in_thread(f, *args)} returns a Deferred of
        C{f(*args)} run in a tweet thread.
    @param clock: an C{IReactorTime} for the delays between tries.
    @param texts: the status for each value: C{{1: plugged in, 0: unplugged}}.
    @param concurrency: tweets posted at the same time (threads in the pool).
    @ivar sent: tweets posted, for metrics.
    @ivar failed: tweets given up on (failed every try, or dropped from a
        full queue), for metrics.
    """

    sent = 0
    failed = 0

    _log = _log

    def __init__(
        self,
        post: Callable[[str], str],
        run_in_thread: Callable[..., Any],
        clock,
        texts: dict,
        max_waiting: int = MAX_WAITING,
        tries: int = TRIES,
        delays: tuple = RETRY_DELAYS,
        concurrency: int = 1,
    ) -> None:
        self._post = post
        self._run = run_in_thread
        self._clock = clock
        self._texts = dict(texts)
        self._max_waiting = max_waiting
        self._tries = tries
        self._delays = delays
        self._concurrency = concurrency
        self._waiting: deque = deque()
        # Plugs with a tweet in a thread or waiting to be tried again: their
        # next tweet waits, which keeps each plug's tweets in order.
        self._busy: set = set()
        self._running = 0
        self._retries: dict = {}
        self._stopped = False

    def report(self, report) -> None:
        """
        Hub listener: queue a tweet when the plug's value changed, unless
        another node accepted the report (that node tweets: SPEC 11).
        """
        if report.changed and not report.remote:
            self.queue(report.plug.id, self._texts[report.plug.value])

    def queue(self, plug_id: str, text: str) -> None:
        """
        Queue C{text} for C{plug_id}, dropping the oldest waiting tweet if
        C{max_waiting} are already waiting.
        """
        if self._stopped:
            return
        if len(self._waiting) >= self._max_waiting:
            dropped = self._waiting.popleft()
            self.failed += 1
            self._log.warn(
                "tweet queue full ({limit} waiting): dropped the oldest, for plug {plug_id}: {text}",
                limit=self._max_waiting,
                plug_id=dropped.plug_id,
                text=dropped.text,
            )
        self._waiting.append(Tweet(plug_id, text))
        self._dispatch()

    def waiting(self) -> list:
        """
        The tweets waiting for their turn, oldest first.
        """
        return list(self._waiting)

    def stop(self) -> int:
        """
        Post nothing more: forget waiting tweets and pending tries.

        @return: how many tweets are still in a thread (they finish alone).
        """
        self._stopped = True
        for call in self._retries.values():
            call.cancel()
        forgotten = len(self._waiting) + len(self._retries)
        self._waiting.clear()
        self._retries.clear()
        if forgotten:
            self._log.warn("{count} tweet(s) not posted: shutting down", count=forgotten)
        return self._running

    def _dispatch(self) -> None:
        while not self._stopped and self._running < self._concurrency:
            tweet = next((t for t in self._waiting if t.plug_id not in self._busy), None)
            if tweet is None:
                return
            self._waiting.remove(tweet)
            self._busy.add(tweet.plug_id)
            self._attempt(tweet)

    def _attempt(self, tweet: Tweet) -> None:
        tweet.tries += 1
        self._running += 1
        # maybeDeferred: a runner that raises (a pool refusing work) must not
        # leave the plug busy and the thread counted for ever.
        d = maybeDeferred(self._run, self._post, tweet.text)
        d.addCallbacks(self._posted, self._failed, callbackArgs=(tweet,), errbackArgs=(tweet,))
        d.addErrback(
            lambda f: self._log.failure("tweet bookkeeping for plug {plug_id}", f, plug_id=tweet.plug_id)
        )

    def _posted(self, tweet_id: str, tweet: Tweet) -> None:
        self._running -= 1
        self.sent += 1
        self._log.info(
            "tweeted for plug {plug_id} (tweet {tweet_id}): {text}",
            plug_id=tweet.plug_id,
            tweet_id=tweet_id,
            text=tweet.text,
        )
        self._done(tweet)

    def _failed(self, failure, tweet: Tweet) -> None:
        self._running -= 1
        if not failure.check(TweetError):
            self.failed += 1
            self._log.failure("tweet for plug {plug_id} failed", failure, plug_id=tweet.plug_id)
            return self._done(tweet)
        error = failure.value
        if error.retry and tweet.tries < self._tries and not self._stopped:
            delay = self._delays[min(tweet.tries, len(self._delays)) - 1]
            self._log.warn(
                "tweet for plug {plug_id} failed (try {tries} of {limit}), trying again in {delay:g} s: {error}",
                plug_id=tweet.plug_id,
                tries=tweet.tries,
                limit=self._tries,
                delay=delay,
                error=str(error),
            )
            self._retries[tweet.plug_id] = self._clock.callLater(delay, self._retry, tweet)
            # The thread is free for other plugs meanwhile.
            return self._dispatch()
        self.failed += 1
        self._log.error(
            "tweet for plug {plug_id} not posted after {tries} tr{ies}: {error}",
            plug_id=tweet.plug_id,
            tries=tweet.tries,
            ies="y" if tweet.tries == 1 else "ies",
            error=str(error),
        )
        self._done(tweet)

    def _retry(self, tweet: Tweet) -> None:
        # A DelayedCall's exception would be lost in the reactor's log
        # without the plug: catch it here.
        try:
            del self._retries[tweet.plug_id]
            self._busy.discard(tweet.plug_id)
            # At the front: before this plug's later changes.
            self._waiting.appendleft(tweet)
            self._dispatch()
        except Exception:
            self._log.failure("retrying the tweet for plug {plug_id}", plug_id=tweet.plug_id)

    def _done(self, tweet: Tweet) -> None:
        self._busy.discard(tweet.plug_id)
        self._dispatch()


class TweetService(MultiService):
    """
    Runs the tweet thread pool, checks the credentials once at start-up, and
    stops the notifier before the pool.

    A failed check is logged as one line and changes nothing else: each
    change is still tried (networks come up late).  Stopping waits for a
    tweet still in a thread, at most the client's timeout per request.
    """

    name = "tweets"
    _log = _log

    def __init__(self, client: TwitterClient, notifier: Notifier, pool: ThreadPool, run_in_thread, reactor=None) -> None:
        super().__init__()
        self.client = client
        self.notifier = notifier
        self._run = run_in_thread
        # With the reactor, a tweet in flight is waited for without blocking it.
        ThreadPoolService(pool, reactor).setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        d = self._run(self.client.verify)
        d.addCallbacks(self._verified, self._not_verified)
        d.addErrback(lambda f: self._log.failure("checking the Twitter credentials", f))

    def _verified(self, account: str) -> None:
        self._log.info(
            "Twitter credentials OK: tweeting as {account} (API {api} at {root})",
            account=account,
            api=self.client.api_version,
            root=self.client.where,
        )

    def _not_verified(self, failure) -> None:
        failure.trap(TweetError)
        self._log.error(
            "Twitter credentials check failed (API {api} at {root}): {error}; tweets will still be tried",
            api=self.client.api_version,
            root=self.client.where,
            error=str(failure.value),
        )

    def stopService(self):
        running = self.notifier.stop()
        if running:
            self._log.info(
                "waiting for {count} tweet(s) in flight (at most {timeout:g} s each)",
                count=running,
                timeout=self.client.deadline,
            )
        d = super().stopService()

        def close(result):
            self.client.close()
            return result

        return d.addBoth(close)


def tweet_service(settings, hub, reactor) -> Optional[TweetService]:
    """
    Build the tweet service and subscribe its notifier to C{hub}, or return
    C{None}, building nothing, when C{TWITTER_ENABLED} is False or a
    credential is empty (logged).
    """
    if not settings.TWITTER_ENABLED:
        return None
    empty = [name for name in CREDENTIALS if not getattr(settings, name)]
    if empty:
        _log.error(
            "tweets are off: TWITTER_ENABLED is True but {names} empty in {where}",
            names=", ".join(empty) + (" is" if len(empty) == 1 else " are"),
            where=settings.path or "the settings",
        )
        return None
    client = TwitterClient(settings)
    # A pool of its own: the reactor's pool also resolves names, and the WSGI
    # pool answers HTTP; a hanging Twitter must hold up neither.
    pool = ThreadPool(minthreads=0, maxthreads=1, name="smartplug-tweets")
    run_in_thread = partial(deferToThreadPool, reactor, pool)
    texts = {1: settings.TWEET_PLUGGED_IN, 0: settings.TWEET_UNPLUGGED}
    notifier = Notifier(client.post, run_in_thread, reactor, texts)
    hub.listen(notifier.report)
    return TweetService(client, notifier, pool, run_in_thread, reactor)
