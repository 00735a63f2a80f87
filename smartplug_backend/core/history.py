"""
Pub/sub history (SPEC 3.6): per event, offsets 1, 2, 3..., an epoch, and the
last publications kept for late subscribers and reconnecting ones.

Plain data on the reactor thread; it knows nothing of SQLite.  The store keeps
a durable copy (written through the hub's journal before a publication is
accepted) and hands it back at start-up through L{History.restore}.
"""

import collections
import dataclasses
import secrets
import time
from typing import Callable, Iterable, Optional

from .times import utc_rfc3339


def new_epoch() -> str:
    """
    A fresh random epoch: 8 URL-safe characters (no JSON escaping needed).
    """
    return secrets.token_urlsafe(6)


@dataclasses.dataclass(frozen=True)
class Publication:
    """
    One publication of an event, numbered.

    @ivar data_json: the data as Go's json.Marshal writes it (serialised once).
    @ivar created_at: seconds since the epoch.
    """

    event: str
    offset: int
    epoch: str
    data_json: str
    created_at: float

    def _head(self, event_json: str) -> str:
        return (
            '{"action":"publish","event":' + event_json
            + ',"data":' + self.data_json
            + ',"created_at":"' + utc_rfc3339(self.created_at) + '"'
        )

    def frame(self, event_json: str) -> bytes:
        """
        PiCloud's frame (SPEC 3.2), for connections that asked for nothing.

        @param event_json: the event name as Go's JSON (the caller has it).
        """
        return (self._head(event_json) + "}\n").encode("utf-8")

    def positioned_text(self, event_json: str) -> str:
        """
        The frame object of SPEC 3.6 with offset and epoch, without the newline.
        """
        return self._head(event_json) + ',"offset":' + str(self.offset) + ',"epoch":"' + self.epoch + '"}'

    def positioned_frame(self, event_json: str) -> bytes:
        """
        SPEC 3.6's frame: PiCloud's, with C{,"offset":N,"epoch":"X"} before
        the closing brace.
        """
        return (self.positioned_text(event_json) + "\n").encode("utf-8")


@dataclasses.dataclass
class Stream:
    """
    One event's numbering and its kept publications (oldest first).

    @ivar assigned: the offset given to the newest publication, accepted or
        still being journaled.
    @ivar latest: the offset of the newest accepted publication (0: none).
    """

    epoch: str
    assigned: int = 0
    latest: int = 0
    kept: collections.deque = dataclasses.field(default_factory=collections.deque)


@dataclasses.dataclass(frozen=True)
class Recovery:
    """
    The answer to C{since}: whether every publication after the client's
    offset is kept, and those publications (none when not recovered).

    @ivar offset: the offset of the event's newest accepted publication.
    @ivar epoch: the event's current epoch.
    """

    recovered: bool
    publications: list
    offset: int
    epoch: str


class History:
    """
    The numbering and history of every event.

    @param keep: publications kept per event (C{PUBSUB_HISTORY}); 0 keeps
        none (offsets and epochs are still given, in memory).
    @param seconds: how long a publication is kept (C{PUBSUB_HISTORY_SECONDS}).
    @param now: the current time in seconds.
    @param make_epoch: makes a new epoch (tests pass a predictable one).
    """

    def __init__(self, keep: int = 100, seconds: float = 86400, now: Callable[[], float] = time.time,
                 make_epoch: Callable[[], str] = new_epoch) -> None:
        self.keep = keep
        self.seconds = seconds
        self._now = now
        self._make_epoch = make_epoch
        self._streams: dict[str, Stream] = {}

    @property
    def enabled(self) -> bool:
        """
        True when publications are kept (and so journaled).
        """
        return self.keep > 0

    def _stream(self, event: str) -> Stream:
        # Made on first use, even by a reader: a client that learns an
        # epoch before the first publication must see it kept.
        stream = self._streams.get(event)
        if stream is None:
            stream = self._streams[event] = Stream(self._make_epoch())
        return stream

    def oldest_kept(self) -> float:
        """
        Publications made before this time are no longer kept.
        """
        return self._now() - self.seconds

    def number(self, event: str, data_json: str) -> Publication:
        """
        The next publication of C{event}, numbered now (in the order
        publications arrive), not yet accepted.
        """
        stream = self._stream(event)
        stream.assigned += 1
        return Publication(event, stream.assigned, stream.epoch, data_json, self._now())

    def accept(self, publication: Publication) -> None:
        """
        Keep C{publication} (numbered by L{number}) as the newest of its
        event.  Publications are accepted in the order they were numbered;
        one the journal refused leaves its offset unused.
        """
        stream = self._stream(publication.event)
        if publication.epoch != stream.epoch:
            # Numbered by a shared journal (SPEC 11) under another epoch: the
            # event's history there was lost or made elsewhere; start over.
            stream = self._streams[publication.event] = Stream(publication.epoch)
        stream.latest = publication.offset
        if self.keep > 0:
            stream.kept.append(publication)
            while len(stream.kept) > self.keep:
                stream.kept.popleft()

    def _trimmed(self, event: str) -> Stream:
        stream = self._stream(event)
        cutoff = self.oldest_kept()
        while stream.kept and stream.kept[0].created_at < cutoff:
            stream.kept.popleft()
        return stream

    def position(self, event: str) -> tuple[int, str]:
        """
        C{(offset, epoch)}: the newest accepted offset of C{event} (0 for
        none) and its epoch.
        """
        stream = self._stream(event)
        return stream.latest, stream.epoch

    def last(self, event: str) -> Optional[Publication]:
        """
        The newest kept publication of C{event}, or C{None}.
        """
        if event not in self._streams:
            return None  # nothing to say, so no epoch to make up
        stream = self._trimmed(event)
        return stream.kept[-1] if stream.kept else None

    def since(self, event: str, offset: int, epoch: str) -> Recovery:
        """
        What a client that saw C{event} up to C{offset} in C{epoch} missed.

        Recovered when C{epoch} is current and every publication after
        C{offset} is still kept (none missed counts); otherwise nothing is
        replayed.
        """
        stream = self._trimmed(event)
        recovered = epoch == stream.epoch and offset <= stream.latest and (
            offset == stream.latest or (bool(stream.kept) and stream.kept[0].offset <= offset + 1)
        )
        missed = [p for p in stream.kept if p.offset > offset] if recovered else []
        return Recovery(recovered, missed, stream.latest, stream.epoch)

    def page(self, event: str, after: int, limit: int) -> tuple[str, list]:
        """
        C{(epoch, publications)}: the first C{limit} kept publications of
        C{event} after offset C{after}, oldest first.
        """
        stream = self._trimmed(event)
        found = []
        for publication in stream.kept:
            if publication.offset > after:
                found.append(publication)
                if len(found) == limit:
                    break
        return stream.epoch, found

    def restore(self, streams: Iterable[tuple[str, str, int, list]], replace: bool = False) -> None:
        """
        Take the streams loaded from the store at start-up: C{(event, epoch,
        latest offset, [(offset, data_json, created_at), ...] oldest first)};
        only the newest C{keep} publications younger than C{seconds} are kept.

        @param replace: forget every other stream (a shared store that lost
            its data: their epochs must change).
        """
        if replace:
            self._streams.clear()
        cutoff = self.oldest_kept()
        for event, epoch, latest, rows in streams:
            stream = self._streams[event] = Stream(epoch, latest, latest)
            if self.keep > 0:
                for offset, data_json, created_at in rows[-self.keep:]:
                    if created_at >= cutoff:
                        stream.kept.append(Publication(event, offset, epoch, data_json, created_at))

    def events(self) -> int:
        """
        How many events have a stream.
        """
        return len(self._streams)
