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

from .limits import PUBSUB_HISTORY_BYTES, PUBSUB_STREAMS, PUBSUB_UNPUBLISHED_EPOCHS
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
    # Offsets the journal refused below the newest given (see History.refused).
    refused: set = dataclasses.field(default_factory=set)


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
    The numbering and history of every event, bounded in memory whatever
    clients send.

    - Reading an event never published (C{GET /events/E/history}, C{since},
      C{last}) makes no stream: it reads as empty, offset 0, with an epoch
      that its first publication adopts, so a client that learnt it resumes
      without loss.  The newest C{max_unpublished} such epochs are
      remembered; a client holding an older one is told C{recovered: false}
      (nothing was lost, but it cannot be told apart).
    - At most C{max_streams} events keep their numbering: beyond that the
      least recently published is forgotten, and its next publication
      starts over at offset 1 under a new epoch (as if its history was lost,
      which a resuming client learns from the epoch).
    - The kept publications of all events hold at most C{max_bytes} of data:
      beyond that the least recently published events lose their oldest.
    - Publications older than C{seconds} are dropped when their event is
      read or published, and events whose newest publication is that old
      are emptied at every publication.

    @param keep: publications kept per event (C{PUBSUB_HISTORY}); 0 keeps
        none (offsets and epochs are still given, in memory).
    @param seconds: how long a publication is kept (C{PUBSUB_HISTORY_SECONDS}).
    @param now: the current time in seconds.
    @param make_epoch: makes a new epoch (tests pass a predictable one).
    """

    def __init__(self, keep: int = 100, seconds: float = 86400, now: Callable[[], float] = time.time,
                 make_epoch: Callable[[], str] = new_epoch, max_bytes: int = PUBSUB_HISTORY_BYTES,
                 max_streams: int = PUBSUB_STREAMS, max_unpublished: int = PUBSUB_UNPUBLISHED_EPOCHS) -> None:
        self.keep = keep
        self.seconds = seconds
        self._now = now
        self._make_epoch = make_epoch
        self._max_bytes = max_bytes
        self._max_streams = max_streams
        self._max_unpublished = max_unpublished
        # Streams, least recently published first.
        self._streams: collections.OrderedDict[str, Stream] = collections.OrderedDict()
        # Epochs handed out for events without a stream, oldest first.
        self._unpublished: collections.OrderedDict[str, str] = collections.OrderedDict()
        # The streams that keep publications (or did), least recently
        # published first, and the data bytes of every kept publication.
        self._holding: collections.OrderedDict[str, Stream] = collections.OrderedDict()
        self.kept_bytes = 0
        # See share_epochs.
        self._shared_epoch: Optional[Callable[[str], Optional[str]]] = None

    def share_epochs(self, epoch_of: Callable[[str], Optional[str]]) -> None:
        """
        Take the epoch of an event without a stream from C{epoch_of(event)}
        instead of making one up: several nodes that derive it the same way
        (from what they share) hand out the same epoch for it, and its first
        publication, on any of them, adopts it.  C{None} from C{epoch_of}
        falls back to a random one.
        """
        self._shared_epoch = epoch_of

    @property
    def max_bytes(self) -> int:
        """
        The data bytes the kept publications of all events hold at most (a
        shared journal keeps to it too).
        """
        return self._max_bytes

    @property
    def max_streams(self) -> int:
        """
        How many events keep their numbering at most (a shared journal
        keeps to it too).
        """
        return self._max_streams

    @property
    def enabled(self) -> bool:
        """
        True when publications are kept (and so journaled).
        """
        return self.keep > 0

    def _epoch_unpublished(self, event: str) -> str:
        # The epoch a reader of an event without a stream learns, and that
        # its first publication adopts.
        if self._shared_epoch is not None:
            shared = self._shared_epoch(event)
            if shared is not None:
                return shared
        epoch = self._unpublished.get(event)
        if epoch is None:
            epoch = self._unpublished[event] = self._make_epoch()
            while len(self._unpublished) > self._max_unpublished:
                self._unpublished.popitem(last=False)
        return epoch

    def _peek(self, event: str) -> Stream:
        # The event's stream, or an empty one standing for it (not kept).
        stream = self._streams.get(event)
        return Stream(self._epoch_unpublished(event)) if stream is None else self._trimmed(stream)

    def _new_stream(self, event: str, stream: Stream) -> Stream:
        self._unpublished.pop(event, None)
        old = self._streams.pop(event, None)
        if old is not None:
            self._forget(event, old)
        self._streams[event] = stream
        while len(self._streams) > self._max_streams:
            self._forget(*self._streams.popitem(last=False))
        return stream

    def _forget(self, event: str, stream: Stream) -> None:
        # Drop every kept publication of the event's stream.
        self.kept_bytes -= sum(len(p.data_json) for p in stream.kept)
        stream.kept.clear()
        self._holding.pop(event, None)

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
        stream = self._streams.get(event)
        if stream is None:
            shared = self._shared_epoch(event) if self._shared_epoch is not None else None
            stream = self._new_stream(event, Stream(shared or self._unpublished.get(event) or self._make_epoch()))
        else:
            self._streams.move_to_end(event)
        stream.assigned += 1
        return Publication(event, stream.assigned, stream.epoch, data_json, self._now())

    def refused(self, publication: Publication) -> None:
        """
        C{publication} (numbered by L{number}) was refused by the journal:
        nobody got it.  If no later publication of its event was numbered
        meanwhile, its offset is given to the next one, so that the offsets
        clients see have no hole a resuming client would count as a loss;
        so are those of refused ones just below it (a group commit that
        failed refuses its publications oldest first).
        """
        stream = self._streams.get(publication.event)
        if stream is None or stream.epoch != publication.epoch or publication.offset <= stream.latest:
            return
        stream.refused.add(publication.offset)
        while stream.assigned in stream.refused:
            stream.refused.discard(stream.assigned)
            stream.assigned -= 1
        if stream.assigned <= stream.latest:
            stream.refused.clear()

    def accept(self, publication: Publication) -> None:
        """
        Keep C{publication} (numbered by L{number}) as the newest of its
        event.  Publications are accepted in the order they were numbered;
        one the journal refused is not (see L{refused}).
        """
        event = publication.event
        stream = self._streams.get(event)
        if stream is None or publication.epoch != stream.epoch:
            # Numbered by a shared journal (SPEC 11) under another epoch: the
            # event's history there was lost or made elsewhere; start over.
            # (Or its stream was dropped, over max_streams, meanwhile.)
            stream = self._new_stream(event, Stream(publication.epoch))
        else:
            self._streams.move_to_end(event)
        stream.latest = publication.offset
        if self.keep > 0:
            stream.kept.append(publication)
            self.kept_bytes += len(publication.data_json)
            self._holding[event] = stream
            self._holding.move_to_end(event)
            while len(stream.kept) > self.keep:
                self.kept_bytes -= len(stream.kept.popleft().data_json)
        self._trimmed(stream)
        self._bound()

    def _bound(self) -> None:
        # Events whose newest publication is too old keep nothing; then the
        # least recently published give up their oldest until the kept data
        # fits max_bytes.  Both start from the least recently published
        # event holding any: each step drops an event or ends the loop.
        cutoff = self.oldest_kept()
        holding = self._holding
        while holding:
            event = next(iter(holding))
            stream = holding[event]
            if stream.kept and stream.kept[-1].created_at >= cutoff:
                if self.kept_bytes <= self._max_bytes:
                    return
                while stream.kept and self.kept_bytes > self._max_bytes:
                    self.kept_bytes -= len(stream.kept.popleft().data_json)
                if not stream.kept:
                    del holding[event]
            else:
                self._forget(event, stream)

    def _trimmed(self, stream: Stream) -> Stream:
        cutoff = self.oldest_kept()
        while stream.kept and stream.kept[0].created_at < cutoff:
            self.kept_bytes -= len(stream.kept.popleft().data_json)
        return stream

    def position(self, event: str) -> tuple[int, str]:
        """
        C{(offset, epoch)}: the newest accepted offset of C{event} (0 for
        none) and its epoch.
        """
        stream = self._streams.get(event)
        return (0, self._epoch_unpublished(event)) if stream is None else (stream.latest, stream.epoch)

    def last(self, event: str) -> Optional[Publication]:
        """
        The newest kept publication of C{event}, or C{None}.
        """
        stream = self._streams.get(event)
        if stream is None:
            return None  # nothing to say, so no epoch to make up
        self._trimmed(stream)
        return stream.kept[-1] if stream.kept else None

    def since(self, event: str, offset: int, epoch: str) -> Recovery:
        """
        What a client that saw C{event} up to C{offset} in C{epoch} missed.

        Recovered when C{epoch} is current and every publication after
        C{offset} is still kept (none missed counts); otherwise nothing is
        replayed.
        """
        stream = self._peek(event)
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
        stream = self._peek(event)
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
            self._unpublished.clear()
            self._holding.clear()
            self.kept_bytes = 0
        cutoff = self.oldest_kept()
        for event, epoch, latest, rows in streams:
            stream = self._new_stream(event, Stream(epoch, latest, latest))
            if self.keep > 0:
                for offset, data_json, created_at in rows[-self.keep:]:
                    if created_at >= cutoff:
                        stream.kept.append(Publication(event, offset, epoch, data_json, created_at))
                        self.kept_bytes += len(data_json)
                if stream.kept:
                    self._holding[event] = stream
                    self._holding.move_to_end(event)
        self._bound()

    def events(self) -> int:
        """
        How many events have a stream.
        """
        return len(self._streams)
