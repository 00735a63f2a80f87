"""
Tests for the HTTP API (smartplug_backend.http.api) through the real Site and
WSGIResource, with StubTreq and synchronous thread hops.
"""

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.core.hub import Hub
from smartplug_backend.core.journal import MemoryJournal, StoreFailed

from .helpers import http_client


class RequestMixin:
    """
    Requests through StubTreq and checks of JSON errors.
    """

    def request(self, method, path, body=None, headers=None):
        """
        Make a request; return C{(status, headers, body bytes)}.
        """
        response = self.successResultOf(
            self.client.request(method, "http://smartplug.test" + path, data=body, headers=headers)
        )
        content = self.successResultOf(response.content())
        return response.code, response.headers, content

    def assertJSONError(self, answer, status, fragment):
        code, headers, body = answer
        self.assertEqual(code, status)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        error = json.loads(body)
        self.assertEqual(list(error), ["error"])
        self.assertIn(fragment, error["error"])
        self.assertNotIn(b"Traceback", body)


class HTTPTests(RequestMixin, SynchronousTestCase):
    """
    Every route of SPEC 1 with good and bad input.
    """

    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(now=self.clock.seconds)
        self.reports = []
        self.hub.listen(self.reports.append)
        self.client = http_client(self.hub)

    def test_index(self):
        """
        GET / says hallo., as the original did.
        """
        code, _, body = self.request("GET", "/")
        self.assertEqual((code, body), (200, b"hallo."))

    def test_post_data(self):
        """
        A valid report answers 200 {} as JSON and reaches the hub.
        """
        code, headers, body = self.request("POST", "/data", b'{"id": "0xb00bf0cc", "value": 1}')
        self.assertEqual((code, body), (200, b"{}"))
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(self.hub.plug("0xb00bf0cc").value, 1)
        self.assertEqual(self.reports[0].source, "http")

    def test_post_data_any_content_type(self):
        """
        The body is read as JSON whatever the Content-Type says.
        """
        code, _, _ = self.request(
            "POST", "/data", b'{"id": "a", "value": false}',
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assertEqual(code, 200)
        self.assertEqual(self.hub.plug("a").value, 0)

    def test_bad_reports_change_nothing(self):
        """
        Malformed JSON, missing or wrong id/value and empty bodies get a JSON
        400 naming the problem, and reach no listener.
        """
        for body, fragment in [
            (b"", "empty body"),
            (b"{nope", "not valid JSON"),
            (b'{"value": 1}', "id"),
            (b'{"id": "a"}', "value"),
            (b'{"id": "a", "value": 3}', "value"),
            (b'{"id": ["a"], "value": 1}', "id"),
        ]:
            self.assertJSONError(self.request("POST", "/data", body), 400, fragment)
        self.assertEqual((self.reports, self.hub.plugs()), ([], []))

    def test_body_too_large(self):
        """
        A body over 64 KiB gets a JSON 413 and changes nothing.
        """
        body = b'{"id": "a", "value": 1, "pad": "' + b"x" * (64 * 1024) + b'"}'
        self.assertJSONError(self.request("POST", "/data", body), 413, "too large")
        self.assertEqual(self.reports, [])

    def test_plugs(self):
        """
        GET /plugs lists every plug with id, value and updated_at.
        """
        self.assertEqual(json.loads(self.request("GET", "/plugs")[2]), [])
        self.clock.advance(60)
        self.request("POST", "/data", b'{"id": "a", "value": 1}')
        self.request("POST", "/data", b'{"id": "b", "value": 0}')
        code, headers, body = self.request("GET", "/plugs")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(
            json.loads(body),
            [
                {"id": "a", "value": 1, "updated_at": "1970-01-01T00:01:00.000Z"},
                {"id": "b", "value": 0, "updated_at": "1970-01-01T00:01:00.000Z"},
            ],
        )

    def test_one_plug(self):
        """
        GET /plugs/<id> answers the plug, or a JSON 404 naming the id.
        """
        self.request("POST", "/data", b'{"id": "a", "value": 1}')
        code, _, body = self.request("GET", "/plugs/a")
        self.assertEqual((code, json.loads(body)["value"]), (200, 1))
        self.assertJSONError(self.request("GET", "/plugs/zzz"), 404, "zzz")

    def test_ids_with_slashes_and_non_ascii(self):
        """
        Any id a report may use can be read back, slashes and non-ASCII
        letters included, escaped or not, and so can its history.
        """
        for plug_id in ["kitchen/kettle", "küche", "a/b/c"]:
            self.request("POST", "/data", json.dumps({"id": plug_id, "value": 1}).encode())
        for path, plug_id in [
            ("/plugs/kitchen/kettle", "kitchen/kettle"),
            ("/plugs/kitchen%2Fkettle", "kitchen/kettle"),
            ("/plugs/k%C3%BCche", "küche"),
            ("/plugs/a/b/c", "a/b/c"),
        ]:
            code, _, body = self.request("GET", path)
            self.assertEqual((code, json.loads(body)["id"]), (200, plug_id), path)
        code, _, body = self.request("GET", "/plugs/kitchen/kettle/history")
        self.assertEqual((code, [e["value"] for e in json.loads(body)]), (200, [1]))

    def test_unknown_path_and_wrong_method(self):
        """
        Unknown paths get a JSON 404 and wrong methods a JSON 405.
        """
        self.assertJSONError(self.request("GET", "/nowhere"), 404, "/nowhere")
        # Bottle's request.path would strip the doubled slash, naming a path
        # that exists.
        code, _, body = self.request("GET", "//plugs")
        self.assertEqual((code, json.loads(body)), (404, {"error": "no such path: //plugs"}))
        self.assertJSONError(self.request("GET", "/data"), 405, "GET")
        self.assertJSONError(self.request("DELETE", "/plugs"), 405, "DELETE")

    def test_internal_error_has_no_traceback(self):
        """
        If the hub fails, the answer is a JSON 500 without details, and the
        failure is logged.
        """
        def broken(*args):
            raise RuntimeError("secret internals")

        self.hub.plugs = broken
        code, _, body = self.request("GET", "/plugs")
        self.assertJSONError((code, _, body), 500, "internal server error")
        self.assertNotIn(b"secret internals", body)


class FillingJournal(MemoryJournal):
    """
    An in-memory journal whose disk can fill up: once C{full}, saves fail.
    """

    full = False

    def save_report(self, plug_id, value, at, source):
        if self.full:
            raise StoreFailed("database or disk is full")
        return super().save_report(plug_id, value, at, source)


class StoreHTTPTests(RequestMixin, SynchronousTestCase):
    """
    The routes that depend on the journal: 503 when it cannot write, and the
    history.
    """

    def setUp(self):
        self.clock = Clock()
        self.journal = FillingJournal(keep=150)
        self.hub = Hub(now=self.clock.seconds, journal=self.journal)
        self.reports = []
        self.hub.listen(self.reports.append)
        self.client = http_client(self.hub)

    def report(self, plug_id, value):
        self.clock.advance(1.5)
        body = json.dumps({"id": plug_id, "value": value}).encode()
        self.assertEqual(self.request("POST", "/data", body)[0], 200)

    def test_store_cannot_write(self):
        """
        When the store cannot write, POST /data answers a JSON 503 and the
        plug keeps its old value: no listener hears of the refused report.
        """
        self.report("a", 1)
        self.journal.full = True
        self.assertJSONError(self.request("POST", "/data", b'{"id": "a", "value": 0}'), 503, "state store cannot write")
        self.assertEqual(self.hub.plug("a").value, 1)
        self.assertEqual(len(self.reports), 1)
        self.assertEqual(json.loads(self.request("GET", "/plugs")[2])[0]["value"], 1)

    def test_history(self):
        """
        GET /plugs/<id>/history lists {"value", "at"} newest first, with the
        same time format as updated_at, and only that plug's reports.
        """
        self.report("a", 1)
        self.report("b", 1)
        self.report("a", 0)
        code, headers, body = self.request("GET", "/plugs/a/history")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(
            json.loads(body),
            [{"value": 0, "at": "1970-01-01T00:00:04.500Z"}, {"value": 1, "at": "1970-01-01T00:00:01.500Z"}],
        )

    def test_history_limit(self):
        """
        Without ?limit= the 100 newest entries are listed; ?limit=N lists the
        N newest; a limit above the number kept lists all that is kept.
        """
        for n in range(120):
            self.report("a", n % 2)
        everything = json.loads(self.request("GET", "/plugs/a/history?limit=1000")[2])
        self.assertEqual(len(everything), 120)
        self.assertEqual(json.loads(self.request("GET", "/plugs/a/history")[2]), everything[:100])
        self.assertEqual(json.loads(self.request("GET", "/plugs/a/history?limit=3")[2]), everything[:3])
        self.assertEqual(everything[0]["value"], 1)

    def test_history_bad_limit(self):
        """
        A limit that is not a whole number from 1 to 1000000 gets a JSON 400
        naming limit.
        """
        self.report("a", 1)
        for bad in ["0", "-1", "x", "1.5", "", "1000001", "9" * 5000, "%C2%B2"]:
            self.assertJSONError(self.request("GET", "/plugs/a/history?limit=" + bad), 400, "limit")

    def test_history_unknown_plug(self):
        """
        The history of a plug that never reported is a JSON 404 naming it.
        """
        self.assertJSONError(self.request("GET", "/plugs/zzz/history"), 404, "zzz")
