"""
Test doubles for the tweet tests: settings aimed at the fake Twitter, thread
runners (manual, and a real pool that remembers its calls), and a capture of
every log event.
"""

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from smartplug_backend.config import settings_from

from .fake_twitter import CREDENTIALS

PLUGGED_IN = "Look at that, my #craplab #smartplug just got plugged in!"
UNPLUGGED = "It was fun while it lasted. I unplugged my #craplab #smartplug."
TEXTS = {1: PLUGGED_IN, 0: UNPLUGGED}


def _tweet_values(url: str, api: str, overrides: dict) -> dict:
    values = dict(CREDENTIALS, TWITTER_ENABLED=True, TWITTER_API=api, TWITTER_API_URL=url)
    values.update(overrides)
    return values


def tweet_settings(url: str, api: str = "v1.1", **overrides):
    """
    Settings with tweets on, the fake's credentials, aimed at C{url}.
    """
    return settings_from(_tweet_values(url, api, overrides))


def settings_text(url: str, api: str = "v1.1", **overrides) -> str:
    """
    The same settings as the text of a settings file.
    """
    values = _tweet_values(url, api, overrides)
    return "".join(f"{name} = {value!r}\n" for name, value in values.items())


def run_now(f, *args):
    """
    A synchronous thread runner: C{f(*args)} here and now, as a Deferred.
    """
    return maybeDeferred(f, *args)


class ManualRunner:
    """
    A thread runner that runs nothing: it records each call, and the test
    ends it with L{succeed} or L{fail}.
    """

    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, f, *args) -> Deferred:
        d = Deferred()
        self.calls.append((f, args, d))
        return d

    def texts(self) -> list:
        return [args[0] for _, args, _ in self.calls]

    def succeed(self, index: int, result="1") -> None:
        self.calls[index][2].callback(result)

    def fail(self, index: int, error: Exception) -> None:
        self.calls[index][2].errback(Failure(error))


class PoolRunner:
    """
    C{deferToThreadPool} on a real pool of one thread, keeping every call's
    Deferred so a test can wait until the caller's callbacks have run.

    At cleanup it waits for every call to finish, then stops the pool.
    Create it before L{fake_twitter.serve}, so that the fake's cleanup
    (which answers hanging requests) runs first.
    """

    def __init__(self, testcase) -> None:
        self.pool = ThreadPool(minthreads=0, maxthreads=1, name="test-tweets")
        self.pool.start()
        self.calls: list = []
        self.broken = False
        testcase.addCleanup(self._stop)

    def __call__(self, f, *args) -> Deferred:
        if self.broken:
            return fail(RuntimeError("runner broken on purpose"))
        d = deferToThreadPool(reactor, self.pool, f, *args)
        self.calls.append(d)
        return d

    def done(self, index: int) -> Deferred:
        """
        Fires once call C{index} finished and its callbacks ran.
        """
        finished = Deferred()

        def passthrough(result):
            finished.callback(None)
            return result

        self.calls[index].addBoth(passthrough)
        return finished

    async def _stop(self) -> None:
        # Calls may start while earlier ones finish: wait until none is new,
        # so that stopping (joining) the pool never blocks on a request.
        waited = 0
        while waited < len(self.calls):
            waited = len(self.calls)
            await DeferredList(self.calls, consumeErrors=True)
        self.pool.stop()


class LogCapture:
    """
    Every log event emitted while a test runs, from any logger.
    """

    def __init__(self, testcase) -> None:
        self.events: list = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> list:
        return [formatEvent(e) for e in self.events]

    def matching(self, text: str) -> list:
        return [line for line in self.lines() if text in line]

    def everything(self) -> str:
        """
        Every line, with the traceback of every logged failure.
        """
        parts = []
        for event in self.events:
            parts.append(formatEvent(event))
            if event.get("log_failure") is not None:
                parts.append(event["log_failure"].getTraceback())
        return "\n".join(parts)
