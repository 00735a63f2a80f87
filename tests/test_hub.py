"""
Tests for the hub (smartplug_backend.hub) and report parsing (reports).
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.hub import Hub, utc_rfc3339
from smartplug_backend.reports import InvalidReport, broadcast_bytes, parse_report


class HubTests(SynchronousTestCase):
    """
    The hub holds plugs and tells listeners about reports.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1700000000.25)
        self.hub = Hub(now=self.clock.seconds)

    def test_report_records_plug(self):
        """
        A report is stored with its time and can be read back.
        """
        self.hub.report("p1", 1, "http", "10.0.0.1")
        plug = self.hub.plug("p1")
        self.assertEqual((plug.id, plug.value, plug.updated_at), ("p1", 1, 1700000000.25))
        self.assertEqual(plug.as_json(), {"id": "p1", "value": 1, "updated_at": "2023-11-14T22:13:20.250Z"})

    def test_unknown_plug(self):
        """
        An id that never reported is None.
        """
        self.assertIsNone(self.hub.plug("nope"))

    def test_plugs_in_first_report_order(self):
        """
        plugs() lists every plug once, in the order they first reported.
        """
        for plug_id, value in [("b", 1), ("a", 0), ("b", 0)]:
            self.hub.report(plug_id, value, "http", "x")
        self.assertEqual([(p.id, p.value) for p in self.hub.plugs()], [("b", 0), ("a", 0)])

    def test_listeners_see_changes(self):
        """
        Listeners get every report in subscription order; a first report and
        a new value count as changes, a repeated value does not.
        """
        seen = []
        self.hub.listen(lambda r: seen.append(("first", r.plug.value, r.previous, r.changed)))
        self.hub.listen(lambda r: seen.append(("second", r.plug.value, r.previous, r.changed)))
        self.hub.report("p", 1, "http", "x")
        self.hub.report("p", 1, "http", "x")
        self.hub.report("p", 0, "device", "x")
        self.assertEqual(
            seen,
            [
                ("first", 1, None, True), ("second", 1, None, True),
                ("first", 1, 1, False), ("second", 1, 1, False),
                ("first", 0, 1, True), ("second", 0, 1, True),
            ],
        )

    def test_failing_listener_does_not_stop_others(self):
        """
        A listener that raises is logged; later listeners still run and the
        state is updated.
        """
        seen = []

        def broken(report):
            raise RuntimeError("boom")

        self.hub.listen(broken)
        self.hub.listen(seen.append)
        self.hub.report("p", 1, "http", "x")
        self.assertEqual(len(seen), 1)
        self.assertEqual(self.hub.plug("p").value, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop_listening(self):
        """
        The function returned by listen() stops further calls.
        """
        seen = []
        stop = self.hub.listen(seen.append)
        stop()
        self.hub.report("p", 1, "http", "x")
        self.assertEqual(seen, [])

    def test_rfc3339(self):
        """
        Times are UTC RFC 3339 with milliseconds and Z.
        """
        self.assertEqual(utc_rfc3339(0), "1970-01-01T00:00:00.000Z")


class ReportTests(SynchronousTestCase):
    """
    parse_report accepts exactly the reports of SPEC 1.1.
    """

    def test_valid(self):
        """
        Valid reports, with booleans read as 1/0 and extra keys ignored.
        """
        self.assertEqual(parse_report(b'{"id": "0xb00bf0cc", "value": 1}'), ("0xb00bf0cc", 1))
        self.assertEqual(parse_report('{"id": "a", "value": 0, "rssi": -60}'), ("a", 0))
        self.assertEqual(parse_report(b'{"id": "a", "value": true}'), ("a", 1))
        self.assertEqual(parse_report(b'{"id": "a", "value": false}'), ("a", 0))
        self.assertEqual(parse_report(b'{"id": "' + b"x" * 128 + b'", "value": 1}')[0], "x" * 128)

    def test_invalid(self):
        """
        Every kind of bad report is refused with a message naming the field.
        """
        cases = {
            b"": "empty body",
            b"  \n": "empty body",
            b"{": "not valid JSON",
            b"\xff": "not valid JSON",
            b"[" * 100000: "not valid JSON",
            b"[1]": "JSON object",
            b"null": "JSON object",
            b'{"value": 1}': "missing field: id",
            b'{"id": "a"}': "missing field: value",
            b'{"id": "", "value": 1}': "id must be a non-empty string",
            b'{"id": 5, "value": 1}': "id must be a non-empty string",
            b'{"id": "' + b"x" * 129 + b'", "value": 1}': "at most 128",
            b'{"id": "a", "value": 2}': "value must be 0 or 1",
            b'{"id": "a", "value": "1"}': "value must be 0 or 1",
            b'{"id": "a", "value": 1.0}': "value must be 0 or 1",
            b'{"id": "a", "value": null}': "value must be 0 or 1",
        }
        for body, expected in cases.items():
            error = self.assertRaises(InvalidReport, parse_report, body)
            self.assertIn(expected, str(error), body[:40])

    def test_broadcast_bytes(self):
        """
        The broadcast is the original's json.dumps output, byte for byte.
        """
        self.assertEqual(broadcast_bytes("0xb00bf0cc", 1), b'{"id": "0xb00bf0cc", "value": 1}')
