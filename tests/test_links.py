"""
Tests for smartplug_backend.server.links: what the dashboard and /metrics
know of an outside service.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.server.links import Link


class LinkTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(100)
        self.link = Link("mqtt", "mqtt://broker:1883", self.clock.seconds)
        self.changes = []
        self.link.watch(lambda: self.changes.append(self.link.as_json()))

    def test_connecting_at_first(self):
        """
        A new link is down, "connecting", since it was made.
        """
        self.assertEqual(self.link.as_json(),
                         {"name": "mqtt", "where": "mqtt://broker:1883", "up": False, "answers": False, "since": 100,
                          "why": "connecting"})

    def test_up_and_down(self):
        """
        Going up or down moves C{since} to that moment and tells the
        watchers; a new reason while down keeps C{since} (the outage's
        start) and tells them too; saying the same again tells no one.
        """
        self.clock.advance(5)
        self.link.went_up()
        self.link.went_up()
        self.clock.advance(60)
        self.link.went_down("cannot connect: Connection refused")
        self.clock.advance(30)
        self.link.went_down("refused: Not authorized")
        self.link.went_down("refused: Not authorized")
        self.link.went_down("it holds no state", answers=True)
        self.assertEqual([(c["up"], c["answers"], c["since"], c["why"]) for c in self.changes], [
            (True, True, 105, None),
            (False, False, 165, "cannot connect: Connection refused"),
            (False, False, 165, "refused: Not authorized"),
            (False, True, 165, "it holds no state"),
        ])
