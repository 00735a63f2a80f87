"""
Bans and failures shared through Redis (L{smartplug_backend.integrations.redis_bans}),
against a fake engine: what is committed, and what is logged when it is not.
"""

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smartplug_backend.integrations.redis_bans import SharedBans


class FakeState:
    def commit_lift(self, *args):
        pass

    def commit_ban(self, *args):
        pass

    def commit_announcement(self, *args):
        pass


class FakeEngine:
    def __init__(self, answer) -> None:
        self.answer = answer
        self.state = FakeState()
        self.up = True
        self.commits = []

    def commit(self, change, commit, *args):
        self.commits.append((change, commit, args))
        return self.answer()


class SharedBansTests(SynchronousTestCase):
    def make(self, answer):
        engine = FakeEngine(answer)
        bans = SharedBans(engine)
        self.events = []
        self.patch(bans, "_log", Logger(observer=self.events.append))
        return engine, bans

    def test_committed(self):
        """
        A ban made here and a ban lifted here are committed with their
        change and the state's own commit and arguments; nothing is logged.
        """
        engine, bans = self.make(lambda: succeed(None))
        bans.share("10.0.0.9", 160.0, 60.0)
        bans.lifted("10.0.0.9")
        self.assertEqual(engine.commits, [
            ({"kind": "ban", "address": "10.0.0.9", "until": 160.0, "seconds": 60.0},
             engine.state.commit_ban, ("10.0.0.9", 160.0, 60.0)),
            ({"kind": "lift", "address": "10.0.0.9"}, engine.state.commit_lift, ("10.0.0.9",)),
        ])
        self.assertEqual(self.events, [])

    def test_not_shared_is_logged(self):
        """
        A ban or a lift that Redis does not take is logged once each, with
        the address and the reason, as a warning; this node's view stands.
        """
        _, bans = self.make(lambda: fail(ConnectionError("Redis away")))
        bans.share("10.0.0.9", 160.0, 60.0)
        bans.lifted("10.0.0.8")
        self.assertEqual([formatEvent(e) for e in self.events], [
            "ban on 10.0.0.9 not shared with the other nodes: Redis away",
            "lifting the ban on 10.0.0.8 not shared with the other nodes: Redis away",
        ])
        self.assertEqual({e["log_level"].name for e in self.events}, {"warn"})
