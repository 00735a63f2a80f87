"""
The blocking half of tweeting (SPEC 5): one HTTP call to Twitter per method.

Every method blocks; L{smartplug_backend.integrations.tweets} runs them in a thread pool of
their own, never on the reactor thread.

C{TWITTER_API = "v1.1"} goes through python-twitter's C{Api} (C{PostUpdate},
C{VerifyCredentials}), as the original backend did.  C{"v2"} is a JSON POST to
C{/2/tweets} (and C{GET /2/users/me} to check the credentials) signed with the
same OAuth 1.0a user credentials by requests-oauthlib, which python-twitter
already depends on.  C{TWITTER_API_URL} is the root of both.

Every failure leaves as a L{TweetError} carrying Twitter's HTTP status, its own
error code and message, and whether trying again may help.  Its text never
holds a credential: everything taken from an answer or an exception is
scrubbed of them first, and no other exception leaves this module.
"""

import json
import re
import warnings
from typing import Callable, Optional
from urllib.parse import quote

import requests
import twitter
from requests_oauthlib import OAuth1

from ..core.limits import TWEET_REQUEST_TIMEOUT
from ..internals import requests_session
from .http_deadline import deadline, watch
from .urls import redact

# Seconds to wait for Twitter to connect, and then for each read.
REQUEST_TIMEOUT = TWEET_REQUEST_TIMEOUT
# A whole call ends after this many timeouts, however its answer trickles in.
DEADLINE_TIMEOUTS = 2

CREDENTIALS = ("CONSUMER_KEY", "CONSUMER_SECRET", "ACCESS_TOKEN_KEY", "ACCESS_TOKEN_SECRET")

_CHECK_CREDENTIALS = "check CONSUMER_KEY, CONSUMER_SECRET, ACCESS_TOKEN_KEY and ACCESS_TOKEN_SECRET"

# What to do about Twitter's error codes (v1.1), or HTTP statuses (v2 has no codes).
_ADVICE_BY_CODE = {
    32: _CHECK_CREDENTIALS,
    89: _CHECK_CREDENTIALS,
    88: "rate limited: later changes will be tweeted again",
    187: "Twitter refuses a status identical to a recent one",
    453: 'this account has no v1.1 access: set TWITTER_API = "v2" in the settings file',
}
_ADVICE_BY_STATUS = {
    401: _CHECK_CREDENTIALS,
    429: "rate limited: later changes will be tweeted again",
}

_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")


class TweetError(Exception):
    """
    A call to Twitter failed.  C{str(error)} is one line for the log, with
    no credential in it.

    @ivar status: the HTTP status of Twitter's answer, or C{None} (no answer).
    @ivar code: Twitter's own error code (v1.1 answers), or C{None}.
    @ivar message: Twitter's own message, or what went wrong.
    @ivar retry: C{True} when trying again later may succeed (server errors,
        timeouts, network errors); client errors are final.
    """

    def __init__(
        self, message: str, status: Optional[int] = None, code: Optional[int] = None, retry: bool = False
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.retry = retry
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code is not None:
            parts.append(f"Twitter error {self.code}")
        text = ", ".join(parts) + ": " + self.message if parts else self.message
        advice = _ADVICE_BY_CODE.get(self.code) or _ADVICE_BY_STATUS.get(self.status)
        return f"{text} ({advice})" if advice else text

    def redacted(self, scrub: Callable[[str], str]) -> "TweetError":
        """
        The same error with C{scrub} applied to its message, then shortened
        (in this order: a cut credential would escape the scrubbing).
        """
        return TweetError(_short(scrub(self.message)), self.status, self.code, self.retry)


def twitter_message(data: object) -> tuple[Optional[int], str]:
    """
    Twitter's error code and message from a decoded error body: v1.1's
    C{{"errors": [{"code", "message"}]}} or v2's C{{"title", "detail"}}.
    """
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = first.get("code")
            message = str(first.get("message") or first.get("detail") or first)
            if isinstance(code, int) and not data.get("detail"):
                return code, message
            return None, str(data.get("detail") or message)
        if data.get("detail") or data.get("title"):
            return None, str(data.get("detail") or data.get("title"))
        for key in ("error", "message"):
            # python-twitter's own errors: TwitterError({"message": ...}).
            if isinstance(data.get(key), str):
                return None, data[key]
    if isinstance(data, list) and data and isinstance(data[0], dict):
        # python-twitter raises TwitterError(data["errors"]), a list.
        return twitter_message({"errors": data})
    return None, json.dumps(data) if not isinstance(data, str) else data


def check_answer(response: requests.Response) -> None:
    """
    Raise a L{TweetError} for an error answer (HTTP 400 and above).

    Server errors (500 and above) may be retried; client errors may not.
    """
    status = response.status_code
    if status < 400:
        return
    body = response.content
    try:
        code, message = twitter_message(json.loads(body))
    except ValueError:
        # A proxy's or load balancer's HTML page, not Twitter's JSON.
        text = re.sub(r"<[^>]*>", " ", body.decode("utf-8", "replace"))
        code, message = None, "not a JSON answer: " + text
    raise TweetError(message, status=status, code=code, retry=status >= 500)


def _short(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _V1:
    """
    Twitter API v1.1 through python-twitter.
    """

    def __init__(self, root: str, credentials: tuple, timeout: float) -> None:
        with warnings.catch_warnings():
            # python-twitter warns that timeouts under 30 s are shorter than
            # the streaming API's keepalives; we never stream.
            warnings.simplefilter("ignore")
            self.api = twitter.Api(*credentials, base_url=root + "/1.1", timeout=timeout, cache=None)
        # python-twitter never looks at the HTTP status: it reads the body,
        # and would take a server error's JSON without "errors" for success.
        # Its (only) session checks every answer before python-twitter sees it.
        requests_session(self.api).hooks["response"].append(_check_hook)
        watch(requests_session(self.api))

    def verify(self) -> str:
        return _account(getattr(self.api.VerifyCredentials(skip_status=True), "screen_name", None))

    def post(self, text: str) -> str:
        return str(self.api.PostUpdate(text).id)

    def close(self) -> None:
        requests_session(self.api).close()


def _account(name: object) -> str:
    """
    C{"@name"} for the account name an answer gave, or a L{TweetError} if it
    gave none.
    """
    if not isinstance(name, str) or not name:
        raise TweetError(f"unexpected answer: no account name in it (got {name!r})")
    return "@" + name


def _check_hook(response, *args, **kwargs):
    check_answer(response)
    return response


class _V2:
    """
    Twitter API v2: signed JSON requests with requests-oauthlib.
    """

    def __init__(self, root: str, credentials: tuple, timeout: float) -> None:
        self._root = root
        self._timeout = timeout
        self._session = requests.Session()
        # HMAC-SHA1 in the Authorization header; a JSON body is not signed.
        self._session.auth = OAuth1(*credentials)
        watch(self._session)

    def _call(self, method: str, path: str, **kwargs) -> dict:
        response = self._session.request(method, self._root + path, timeout=self._timeout, **kwargs)
        check_answer(response)
        try:
            return response.json()["data"]
        except (ValueError, KeyError, TypeError):
            raise TweetError("unexpected answer: " + response.text, status=response.status_code) from None

    def verify(self) -> str:
        me = self._call("GET", "/2/users/me")
        return _account(me.get("username") if isinstance(me, dict) else None)

    def post(self, text: str) -> str:
        return str(self._call("POST", "/2/tweets", json={"text": text})["id"])

    def close(self) -> None:
        self._session.close()


class TwitterClient:
    """
    Blocking calls to Twitter with the settings' credentials and API version.

    Run its methods in a thread.  Each returns on success or raises a
    L{TweetError}; no other exception leaves them.

    @param settings: a L{smartplug_backend.config.Settings}.
    @param timeout: seconds to wait for a connection and for each read; a
        whole call ends after L{DEADLINE_TIMEOUTS} times as long.
    """

    def __init__(self, settings, timeout: float = REQUEST_TIMEOUT) -> None:
        self.api_version = settings.TWITTER_API
        self.root = settings.TWITTER_API_URL.rstrip("/")
        # The root as logs and errors show it: a proxy's password hidden.
        self.where = redact(self.root)
        self.timeout = timeout
        self.deadline = timeout * DEADLINE_TIMEOUTS
        credentials = tuple(getattr(settings, name) for name in CREDENTIALS)
        self._secrets = _scrubbable(credentials)
        transport = _V1 if self.api_version == "v1.1" else _V2
        self._transport = transport(self.root, credentials, timeout)

    def __repr__(self) -> str:
        return f"<TwitterClient {self.api_version} at {self.where}>"

    def verify(self) -> str:
        """
        Check the credentials; return the account's name as C{"@name"}.
        """
        return self._guarded(self._transport.verify)

    def post(self, text: str) -> str:
        """
        Tweet C{text}; return the new tweet's id.
        """
        return self._guarded(self._transport.post, text)

    def close(self) -> None:
        """
        Close the pooled connections.
        """
        self._transport.close()

    def scrub(self, text: str) -> str:
        """
        C{text} with every credential (plain or percent-encoded) replaced by
        C{***}; one shorter than L{SHORT_SECRET} (a placeholder such as
        C{"a"}, never a real one) only where it stands alone, or every
        C{a} of the line would go.
        """
        for secret in self._secrets:
            if len(secret) >= SHORT_SECRET:
                text = text.replace(secret, "***")
            else:
                text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
        return text

    def _guarded(self, call, *args):
        with deadline(self.deadline) as expired:
            try:
                return call(*args)
            except Exception as e:
                caught = e
        error = self._error(caught, expired.is_set())
        # Raised outside the except clause, so that the original exception,
        # which may hold a header or a credential, is not its context.
        raise error.redacted(self.scrub)

    def _error(self, caught: Exception, cut: bool) -> "TweetError":
        """
        The L{TweetError} for what C{call} raised; C{cut}: the deadline
        ended it (whatever it raised then).
        """
        if cut:
            return TweetError(f"no complete answer within {self.deadline:g} s", retry=True)
        try:
            raise caught
        except TweetError as e:
            error = e
        except requests.Timeout:
            error = TweetError(f"no answer within {self.timeout:g} s", retry=True)
        except requests.ConnectionError as e:
            reason = _ERRNO.search(str(e))
            error = TweetError(
                f"cannot reach {self.where}: " + (reason.group(0) if reason else "network error"), retry=True
            )
        except twitter.TwitterError as e:
            # python-twitter's own checks (a status too long, an error body
            # on a 2xx answer): the request itself was not the problem.
            code, message = twitter_message(e.message)
            error = TweetError(message, code=code)
        except Exception as e:
            error = TweetError(f"{type(e).__name__}: {e}")
        return error


# Twitter's credentials are 25 characters or more; one shorter than this is
# a placeholder.
SHORT_SECRET = 8


def _scrubbable(credentials: tuple) -> list:
    forms = set()
    for secret in credentials:
        if secret:
            forms.update({secret, quote(secret, safe=""), quote(secret, safe="~")})
    # Longest first, so a secret containing another is replaced whole.
    return sorted(forms, key=len, reverse=True)
