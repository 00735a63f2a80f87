"""
The server's links to outside services it depends on (the MQTT broker,
Redis): whether each answers now, since when, and why not.

Each integration keeps one L{Link} and says when it comes and goes; the
dashboard shows the links among the server's facts and C{/metrics} has a
gauge per link (C{smartplug_mqtt_connected}, C{smartplug_redis_connected}),
so an owner sees an unreachable broker without reading the log.  Plain
data, on the reactor thread: no import of what is linked to.
"""

from typing import Callable, Optional


class Link:
    """
    One outside service: down (connecting) from the start, until
    L{went_up}.

    @param name: the service's short name (C{"mqtt"}, C{"redis"}), for the
        metric's name and the page.
    @param where: where it is, without secrets (e.g. C{mqtt://host:1883}).
    @param now: the clock, in seconds.
    """

    def __init__(self, name: str, where: str, now: Callable[[], float]) -> None:
        self.name = name
        self.where = where
        self._now = now
        self.up = False
        # Down, but the service answers (e.g. a Redis that holds no state
        # this node can load yet).
        self.answers = False
        self.since = now()
        self.why: Optional[str] = "connecting"
        self._watchers: list[Callable[[], None]] = []

    def went_up(self) -> None:
        """
        It answers (again).
        """
        self._set(True, None, True)

    def went_down(self, why: str, answers: bool = False) -> None:
        """
        It does not answer, or refuses us, or (C{answers}) answers but cannot
        be used yet, because of C{why} (no secret in it: it is shown on the
        dashboard).  C{since} stays the moment it was last up, however often
        the reason changes.
        """
        self._set(False, why, answers)

    def watch(self, changed: Callable[[], None]) -> None:
        """
        Call C{changed()} whenever the link goes up or down, or its reason
        changes.
        """
        self._watchers.append(changed)

    def as_json(self) -> dict:
        """
        The link as the dashboard shows it.
        """
        return {"name": self.name, "where": self.where, "up": self.up, "answers": self.answers, "since": self.since,
                "why": self.why}

    def _set(self, up: bool, why: Optional[str], answers: bool) -> None:
        if (up, why, answers) == (self.up, self.why, self.answers):
            return
        if up != self.up:
            self.since = self._now()
        self.up, self.why, self.answers = up, why, answers
        for changed in self._watchers:
            changed()
