"""
The blocking Twitter client against the fake Twitter over 127.0.0.1: both API
versions, the signature, and every failure Twitter answers with.

The client's calls run in the reactor's thread pool while the test reactor
serves the fake.
"""

import socket

import requests
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from smartplug_backend.integrations.twitter_client import TweetError, TwitterClient

from .fake_twitter import CREDENTIALS, serve
from .tweet_helpers import PLUGGED_IN, tweet_settings


def closed_port() -> int:
    """
    A loopback port nothing listens on.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClientTestCase(TestCase):
    timeout = 15

    def setUp(self):
        self.fake = serve(self)

    def client(self, api="v1.1", timeout=5.0, **overrides) -> TwitterClient:
        client = TwitterClient(tweet_settings(self.fake.url, api, **overrides), timeout=timeout)
        self.addCleanup(client.close)
        return client

    async def failure(self, call, *args) -> TweetError:
        """
        Run C{call} in a thread; it must raise a TweetError, which is returned.
        """
        try:
            result = await deferToThread(call, *args)
        except TweetError as e:
            return e
        self.fail(f"no TweetError; returned {result!r}")


class PostingTests(ClientTestCase):
    """
    Successful calls, signed as the fake demands.
    """

    async def test_v1_posts_status_update(self):
        """
        With v1.1, the text is posted to statuses/update through
        python-twitter and the new tweet's id is returned.
        """
        tweet_id = await deferToThread(self.client("v1.1").post, PLUGGED_IN)
        self.assertEqual(self.fake.posted, [("v1.1", PLUGGED_IN)])
        self.assertEqual(self.fake.requests, [("POST", "/1.1/statuses/update.json")])
        self.assertTrue(tweet_id.isdigit(), tweet_id)

    async def test_v2_posts_json_tweet(self):
        """
        With v2, the text is posted as JSON to /2/tweets and the new tweet's
        id is returned.
        """
        tweet_id = await deferToThread(self.client("v2").post, PLUGGED_IN)
        self.assertEqual(self.fake.posted, [("v2", PLUGGED_IN)])
        self.assertEqual(self.fake.requests, [("POST", "/2/tweets")])
        self.assertTrue(tweet_id.isdigit(), tweet_id)

    async def test_non_ascii_text_is_signed_correctly(self):
        """
        A text with non-ASCII characters and URL-special characters is
        signed correctly by both API versions (the form body is part of a
        v1.1 signature).
        """
        text = "Steckdose \u2713 an: 100% #craplab & co = \U0001F50C"
        await deferToThread(self.client("v1.1").post, text)
        await deferToThread(self.client("v2").post, text + "!")
        self.assertEqual(self.fake.texts(), [text, text + "!"])
        self.assertEqual(self.fake.refused, 0)

    async def test_verify_names_the_account(self):
        """
        C{verify} checks the credentials with each version's own endpoint and
        returns the account's name.
        """
        self.assertEqual(await deferToThread(self.client("v1.1").verify), "@craplab")
        self.assertEqual(await deferToThread(self.client("v2").verify), "@craplab")
        self.assertEqual(
            self.fake.requests,
            [("GET", "/1.1/account/verify_credentials.json"), ("GET", "/2/users/me")],
        )

    async def test_verify_without_an_account_name(self):
        """
        An answer to the check that names no account is a TweetError saying
        so, in both versions (not a TypeError, nor "@None").
        """
        self.fake.username = None
        for api in ("v1.1", "v2"):
            error = await self.failure(self.client(api).verify)
            self.assertEqual(str(error), "unexpected answer: no account name in it (got None)")

    async def test_fake_refuses_unsigned_requests(self):
        """
        The fake itself refuses a request without an OAuth signature, so the
        tests above prove that the client signs.
        """
        answer = await deferToThread(
            requests.post, self.fake.url + "/2/tweets", json={"text": "x"}, timeout=5
        )
        self.assertEqual(answer.status_code, 401)
        self.assertEqual(self.fake.refused, 1)
        self.assertEqual(self.fake.posted, [])


class FailureTests(ClientTestCase):
    """
    Every failure is a TweetError with Twitter's status, code and message,
    and says whether trying again may help.
    """

    async def test_wrong_consumer_secret_is_refused(self):
        """
        A wrong consumer secret makes a signature the fake refuses: HTTP 401,
        Twitter error 32, not retried, with advice on the credentials.
        """
        for api, code in (("v1.1", 32), ("v2", None)):
            client = self.client(api, CONSUMER_SECRET="not-the-secret")
            error = await self.failure(client.post, PLUGGED_IN)
            self.assertEqual((error.status, error.code, error.retry), (401, code, False))
            self.assertIn("check CONSUMER_KEY", str(error))
        self.assertIn("HTTP 401, Twitter error 32: Could not authenticate you.", str(
            await self.failure(self.client("v1.1", ACCESS_TOKEN_SECRET="wrong").verify)
        ))
        self.assertEqual(self.fake.refused, 3)
        self.assertEqual(self.fake.posted, [])

    async def test_duplicate(self):
        """
        A repeated status is refused as Twitter does: v1.1 error 187, v2 a
        403 with its detail; neither is retried.
        """
        client = self.client("v1.1")
        await deferToThread(client.post, PLUGGED_IN)
        error = await self.failure(client.post, PLUGGED_IN)
        self.assertEqual((error.status, error.code, error.retry), (403, 187, False))
        self.assertIn("Status is a duplicate.", str(error))
        error = await self.failure(self.client("v2").post, PLUGGED_IN)
        self.assertEqual((error.status, error.code, error.retry), (403, None, False))
        self.assertIn("duplicate content", str(error))

    async def test_no_v1_access_says_to_use_v2(self):
        """
        Error 453 (an account without v1.1 access) says to set
        TWITTER_API = "v2", and is not retried.
        """
        self.fake.v1_access = False
        error = await self.failure(self.client("v1.1").post, PLUGGED_IN)
        self.assertEqual((error.status, error.code, error.retry), (403, 453, False))
        self.assertIn('set TWITTER_API = "v2"', str(error))
        self.assertIn("You currently have access to a subset", str(error))

    async def test_rate_limit(self):
        """
        A rate limit (429, v1.1 error 88) is reported and not retried.
        """
        self.fake.fail_next("rate_limit", 2)
        error = await self.failure(self.client("v1.1").post, PLUGGED_IN)
        self.assertEqual((error.status, error.code, error.retry), (429, 88, False))
        self.assertIn("Rate limit exceeded", str(error))
        error = await self.failure(self.client("v2").post, PLUGGED_IN)
        self.assertEqual((error.status, error.retry), (429, False))
        self.assertIn("Too Many Requests", str(error))

    async def test_server_errors_may_be_retried(self):
        """
        Server errors, JSON (500/131, 503/130) or a proxy's HTML page (502),
        are reported with Twitter's words and marked for a retry.
        """
        client = self.client("v1.1")
        for kind, status, code, words in (
            ("server_error", 500, 131, "Internal error"),
            ("over_capacity", 503, 130, "Over capacity"),
            ("bad_gateway", 502, None, "502 Bad Gateway"),
        ):
            self.fake.fail_next(kind)
            error = await self.failure(client.post, PLUGGED_IN)
            self.assertEqual((error.status, error.code, error.retry), (status, code, True), kind)
            self.assertIn(words, str(error))
        self.fake.fail_next("over_capacity")
        error = await self.failure(self.client("v2").post, PLUGGED_IN)
        self.assertEqual((error.status, error.retry), (503, True))
        self.assertEqual(self.fake.posted, [])

    async def test_timeout_may_be_retried(self):
        """
        A Twitter that does not answer within the client's timeout is a
        retryable error naming the timeout.
        """
        self.fake.fail_next("hang")
        error = await self.failure(self.client("v1.1", timeout=0.3).post, PLUGGED_IN)
        self.assertEqual((error.status, error.retry), (None, True))
        self.assertEqual(str(error), "no answer within 0.3 s")

    async def test_unreachable_may_be_retried(self):
        """
        A Twitter that refuses connections is a retryable error naming the
        root URL and the reason.
        """
        url = f"http://127.0.0.1:{closed_port()}"
        client = TwitterClient(tweet_settings(url, "v2"), timeout=2)
        error = await self.failure(client.post, PLUGGED_IN)
        self.assertTrue(error.retry)
        self.assertEqual(str(error), f"cannot reach {url}: [Errno 111] Connection refused")
        # Through a proxy with a password in the URL: the error, and the
        # client's repr, hide it.
        port = closed_port()
        client = TwitterClient(tweet_settings(f"http://proxy:Pr0xyPw@127.0.0.1:{port}", "v2"), timeout=2)
        error = await self.failure(client.post, PLUGGED_IN)
        self.assertEqual(str(error), f"cannot reach http://proxy:***@127.0.0.1:{port}: [Errno 111] Connection refused")
        self.assertNotIn("Pr0xyPw", repr(client))

    async def test_too_long_status_is_not_sent(self):
        """
        python-twitter's own length check refuses a status over 280
        characters before any request, and that is final.
        """
        error = await self.failure(self.client("v1.1").post, "x" * 281)
        self.assertFalse(error.retry)
        # python-twitter 3.5 forgets to format the limit into its message.
        self.assertIn("Text must be less than or equal to", str(error))
        self.assertEqual(self.fake.requests, [])


class SecrecyTests(ClientTestCase):
    """
    No credential leaves the client in an error.
    """

    def assertNoCredential(self, text: str) -> None:
        for name, secret in CREDENTIALS.items():
            self.assertNotIn(secret, text, name)
            self.assertNotIn(secret.replace("-", "%2D"), text, name)

    async def test_echoed_authorization_header_is_scrubbed(self):
        """
        An answer quoting the Authorization header back (which holds the
        consumer key and the access token) reaches the error with both
        replaced by C{***}.
        """
        for api in ("v1.1", "v2"):
            self.fake.fail_next("echo_auth")
            error = await self.failure(self.client(api).post, PLUGGED_IN)
            self.assertIn('oauth_consumer_key="***"', str(error))
            self.assertNoCredential(str(error))
            self.assertNoCredential(repr(error))
            self.assertIsNone(error.__context__)

    async def test_unexpected_exception_is_scrubbed(self):
        """
        Any other exception, whatever it says, becomes a TweetError without
        the credentials and without the original as its context.
        """
        client = self.client("v2")
        secret = CREDENTIALS["CONSUMER_SECRET"]

        def leaky(text):
            raise ValueError(f"cannot sign with {secret} and " + "y" * 300 + secret)

        client._transport.post = leaky
        error = await self.failure(client.post, PLUGGED_IN)
        self.assertTrue(str(error).startswith("ValueError: cannot sign with *** and yyy"))
        self.assertNoCredential(str(error))
        self.assertIsNone(error.__context__)
        self.assertFalse(error.retry)

    def test_placeholder_credentials_scrubbed_alone(self):
        """
        A placeholder credential far shorter than a real one ("a") is
        scrubbed where it stands alone, not out of every word: the error
        stays readable, and the credential is still not shown.
        """
        client = TwitterClient(tweet_settings("http://127.0.0.1:1", CONSUMER_KEY="a", ACCESS_TOKEN_KEY="b"))
        self.addCleanup(client.close)
        self.assertEqual(
            client.scrub("cannot reach http://127.0.0.1:1: Connection refused (oauth_consumer_key=a, token=b)"),
            "cannot reach http://127.0.0.1:1: Connection refused (oauth_consumer_key=***, token=***)",
        )
        secret = CREDENTIALS["CONSUMER_SECRET"]
        self.assertEqual(self.client("v1.1").scrub(f"x{secret}y"), "x***y")

    def test_repr_has_no_credential(self):
        """
        The client's repr names the API and root only.
        """
        client = TwitterClient(tweet_settings("http://127.0.0.1:1", "v1.1"))
        self.assertEqual(repr(client), "<TwitterClient v1.1 at http://127.0.0.1:1>")
        self.assertNoCredential(repr(client))

