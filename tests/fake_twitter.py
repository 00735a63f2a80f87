"""
A fake Twitter API for the tests, served by twisted.web on 127.0.0.1 in the
test process.

It checks the OAuth 1.0a HMAC-SHA1 signature of every request with oauthlib
(consumer key, token, nonce, and the signature over method, URL, query and form
body), answers like Twitter (v1.1 and v2 JSON bodies, status codes and error
codes), and records the statuses it accepted.  Tests script failures with
L{FakeTwitter.fail_next}; C{"hang"} holds a request until L{release} or for
C{hang_seconds}; C{"drip"} answers a space every C{drip_seconds}, for ever.

Simplification: a status equal to the last accepted one is a duplicate
(Twitter compares with the account's recent statuses).
"""

import itertools
import json
from collections import deque
from urllib.parse import parse_qs, urlsplit

from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1.rfc5849 import signature, utils
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

CREDENTIALS = {
    "CONSUMER_KEY": "fake-consumer-key",
    "CONSUMER_SECRET": "fake-consumer-secret",
    "ACCESS_TOKEN_KEY": "1234-fake-access-token",
    "ACCESS_TOKEN_SECRET": "fake-access-token-secret",
}

V1_UPDATE = "/1.1/statuses/update.json"
V1_VERIFY = "/1.1/account/verify_credentials.json"
V2_TWEETS = "/2/tweets"
V2_ME = "/2/users/me"


def _problem(status: int, title: str, detail: str) -> dict:
    return {"title": title, "detail": detail, "type": "about:blank", "status": status}


# kind -> (HTTP status, v1.1 body, v2 body), as Twitter answers them.
ANSWERS = {
    "bad_auth": (
        401,
        {"errors": [{"code": 32, "message": "Could not authenticate you."}]},
        _problem(401, "Unauthorized", "Unauthorized"),
    ),
    "duplicate": (
        403,
        {"errors": [{"code": 187, "message": "Status is a duplicate."}]},
        _problem(403, "Forbidden", "You are not allowed to create a Tweet with duplicate content."),
    ),
    "no_v1_access": (
        403,
        {
            "errors": [
                {
                    "message": "You currently have access to a subset of Twitter API v2 endpoints and "
                    "limited v1.1 endpoints (e.g. media post, oauth) only. If you need access to this "
                    "endpoint, you may need a different access level. You can learn more here: "
                    "https://developer.twitter.com/en/portal/product",
                    "code": 453,
                }
            ]
        },
        None,
    ),
    "rate_limit": (
        429,
        {"errors": [{"code": 88, "message": "Rate limit exceeded"}]},
        _problem(429, "Too Many Requests", "Too Many Requests"),
    ),
    "server_error": (
        500,
        {"errors": [{"code": 131, "message": "Internal error"}]},
        _problem(500, "Internal Server Error", "Internal Server Error"),
    ),
    "over_capacity": (
        503,
        {"errors": [{"code": 130, "message": "Over capacity"}]},
        _problem(503, "Service Unavailable", "Service Unavailable"),
    ),
    "not_found": (
        404,
        {"errors": [{"code": 34, "message": "Sorry, that page does not exist."}]},
        _problem(404, "Not Found Error", "Sorry, that page does not exist."),
    ),
}
BAD_GATEWAY_HTML = b"<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>"


class FakeTwitter(Resource):
    """
    The fake API.  Start it with L{serve}.

    @ivar posted: C{(api, text)} of every accepted status, in order.
    @ivar requests: C{(method, path)} of every request received.
    @ivar refused: how many requests failed the signature check.
    @ivar v1_access: C{False} answers every v1.1 request with error 453.
    """

    isLeaf = True

    def __init__(self, credentials: dict = CREDENTIALS, username: str = "craplab", clock=reactor) -> None:
        super().__init__()
        self._consumer_key = credentials["CONSUMER_KEY"]
        self._consumer_secret = credentials["CONSUMER_SECRET"]
        self._token = credentials["ACCESS_TOKEN_KEY"]
        self._token_secret = credentials["ACCESS_TOKEN_SECRET"]
        self.username = username
        self.v1_access = True
        self.hang_seconds = 10.0
        self.drip_seconds = 0.05
        self.posted: list = []
        self.requests: list = []
        self.refused = 0
        self.url = None
        self._clock = clock
        self._script: deque = deque()
        self._held: dict = {}
        self._nonces: set = set()
        self._ids = itertools.count(1_600_000_000_000_000_000)
        self._waiters: list = []

    def texts(self) -> list:
        """
        The accepted statuses' texts, in order.
        """
        return [text for _, text in self.posted]

    def fail_next(self, kind: str, times: int = 1) -> None:
        """
        Answer the next C{times} requests with C{kind}: a key of L{ANSWERS},
        C{"bad_gateway"} (an HTML 502), C{"echo_auth"} (a 400 quoting the
        Authorization header back) or C{"hang"}.
        """
        assert kind in ANSWERS or kind in ("bad_gateway", "echo_auth", "hang", "drip"), kind
        self._script.extend([kind] * times)

    def wait_posted(self, count: int) -> Deferred:
        """
        A Deferred that fires once C{count} statuses have been accepted.
        """
        return self._wait(self.posted, count)

    def wait_requests(self, count: int) -> Deferred:
        """
        A Deferred that fires once C{count} requests have arrived.
        """
        return self._wait(self.requests, count)

    def _wait(self, seen: list, count: int) -> Deferred:
        if len(seen) >= count:
            return succeed(None)
        d = Deferred()
        self._waiters.append((seen, count, d))
        return d

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            seen, count, d = waiter
            if len(seen) >= count:
                self._waiters.remove(waiter)
                d.callback(None)

    def held(self) -> int:
        """
        How many requests are hanging now.
        """
        return len(self._held)

    def release(self) -> None:
        """
        Answer every hanging request now.
        """
        for request, call in list(self._held.items()):
            call.cancel()
            self._finish_held(request)

    def render(self, request):
        path = request.path.decode("ascii", "replace")
        self.requests.append((request.method.decode("ascii", "replace"), path))
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        # One request per connection: nothing stays open when a test ends.
        request.setHeader(b"connection", b"close")
        request.channel.persistent = False
        kind = self._script.popleft() if self._script else None
        if kind == "hang":
            self._held[request] = self._clock.callLater(self.hang_seconds, self._finish_held, request)
            request.notifyFinish().addBoth(self._gone, request)
            body = NOT_DONE_YET
        elif kind == "drip":
            # An answer that never ends: a space (JSON whitespace) every
            # drip_seconds, so no single read ever waits long.
            self._held[request] = self._clock.callLater(0, self._drip, request)
            request.notifyFinish().addBoth(self._gone, request)
            body = NOT_DONE_YET
        else:
            body = self._answer(request, path, kind)
        # Waiters run now, so the request must already be held or answered.
        self._wake()
        return body

    def _gone(self, _, request) -> None:
        # The client gave up (its timeout): forget the request and its timer.
        call = self._held.pop(request, None)
        if call is not None and call.active():
            call.cancel()

    def _drip(self, request) -> None:
        if request in self._held:
            request.write(b" ")
            self._held[request] = self._clock.callLater(self.drip_seconds, self._drip, request)

    def _finish_held(self, request) -> None:
        if self._held.pop(request, None) is not None:
            request.write(self._answer(request, request.path.decode("ascii", "replace"), None))
            request.finish()
            self._wake()

    def _answer(self, request, path: str, kind) -> bytes:
        v2 = path.startswith("/2/")
        if not self._signed(request):
            self.refused += 1
            kind = "bad_auth"
        elif kind is None and not v2 and not self.v1_access:
            kind = "no_v1_access"
        if kind == "bad_gateway":
            request.setResponseCode(502)
            request.setHeader(b"content-type", b"text/html")
            return BAD_GATEWAY_HTML
        if kind == "echo_auth":
            auth = (request.getHeader(b"authorization") or b"").decode("utf-8", "replace")
            return self._json(request, 400, {"errors": [{"code": 214, "message": f"bad request: {auth}"}]})
        if kind is None:
            kind, status, body = self._endpoint(request, path, v2)
            if kind is None:
                return self._json(request, status, body)
        status, v1_body, v2_body = ANSWERS[kind]
        return self._json(request, status, v2_body if v2 else v1_body)

    def _endpoint(self, request, path: str, v2: bool):
        """
        C{(None, status, body)} for a success, or C{(kind, None, None)}.
        """
        method = request.method
        if method == b"GET" and path == V1_VERIFY:
            return None, 200, {"id": 1, "id_str": "1", "name": "CrapLab", "screen_name": self.username}
        if method == b"GET" and path == V2_ME:
            return None, 200, {"data": {"id": "1", "name": "CrapLab", "username": self.username}}
        if method == b"POST" and path == V1_UPDATE:
            text = parse_qs(request.content.read().decode("utf-8")).get("status", [""])[0]
        elif method == b"POST" and path == V2_TWEETS:
            try:
                text = json.loads(request.content.read())["text"]
            except (ValueError, KeyError, TypeError):
                return None, 400, _problem(400, "Invalid Request", "One or more parameters to your request was invalid.")
        else:
            return "not_found", None, None
        if self.posted and self.posted[-1][1] == text:
            return "duplicate", None, None
        tweet_id = str(next(self._ids))
        self.posted.append(("v2" if v2 else "v1.1", text))
        if v2:
            return None, 201, {"data": {"id": tweet_id, "text": text, "edit_history_tweet_ids": [tweet_id]}}
        return None, 200, {"id": int(tweet_id), "id_str": tweet_id, "text": text}

    def _json(self, request, status: int, body: dict) -> bytes:
        request.setResponseCode(status)
        return json.dumps(body).encode("utf-8")

    def _signed(self, request) -> bool:
        """
        Whether the request carries a valid OAuth 1.0a HMAC-SHA1 signature by
        the expected consumer and token, with a fresh nonce.
        """
        header = (request.getHeader(b"authorization") or b"").decode("utf-8", "replace")
        try:
            oauth = dict(utils.parse_authorization_header(header))
        except ValueError:
            return False
        oauth = {k: utils.unescape(v) for k, v in oauth.items()}
        if (
            oauth.get("oauth_signature_method") != "HMAC-SHA1"
            or oauth.get("oauth_consumer_key") != self._consumer_key
            or oauth.get("oauth_token") != self._token
            or not oauth.get("oauth_timestamp")
            or not oauth.get("oauth_nonce")
            or oauth["oauth_nonce"] in self._nonces
        ):
            return False
        self._nonces.add(oauth["oauth_nonce"])
        body = request.content.read()
        request.content.seek(0)
        form = (request.getHeader(b"content-type") or b"").startswith(b"application/x-www-form-urlencoded")
        uri = "http://" + request.getHeader(b"host").decode("ascii") + request.uri.decode("ascii")
        checked = OAuthRequest(uri, request.method.decode("ascii"))
        checked.params = signature.collect_parameters(
            uri_query=urlsplit(uri).query,
            body=body.decode("utf-8") if form else None,
            headers={"Authorization": header},
        )
        checked.signature = oauth.get("oauth_signature", "")
        return signature.verify_hmac_sha1(checked, self._consumer_secret, self._token_secret)


class _TrackedChannel(HTTPChannel):
    def connectionMade(self):
        super().connectionMade()
        self.site.channels.add(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.site.channels.discard(self)
        if not self.site.channels:
            waiters, self.site.waiters = self.site.waiters, []
            for d in waiters:
                d.callback(None)


class _TrackingSite(Site):
    protocol = _TrackedChannel

    def __init__(self, resource) -> None:
        # No idle timeout: its DelayedCall would outlive the test.
        super().__init__(resource, timeout=None)
        self.channels: set = set()
        self.waiters: list = []

    def log(self, request) -> None:
        pass

    def all_closed(self) -> Deferred:
        # Gracefully: an answer just released is still sent.
        for channel in list(self.channels):
            channel.transport.loseConnection()
        if not self.channels:
            return succeed(None)
        d = Deferred()
        self.waiters.append(d)
        return d


def serve(testcase, fake: FakeTwitter = None) -> FakeTwitter:
    """
    Serve C{fake} (a new one by default) on 127.0.0.1, on a port the OS
    picks, until C{testcase} ends; C{fake.url} is its root URL.

    At cleanup, hanging requests are answered, then connections closed.
    """
    fake = fake or FakeTwitter()
    site = _TrackingSite(fake)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    fake.url = f"http://127.0.0.1:{port.getHost().port}"

    async def stop():
        fake.release()
        await site.all_closed()
        await maybeDeferred(port.stopListening)

    testcase.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return fake
