"""
The hub: the one object that holds the server's state (SPEC 7).

It lives on the reactor thread and knows nothing of Bottle, Autobahn,
threads or SQLite.  Protocols call it; listeners subscribe to its changes
(the app WebSocket broadcast, tweets, pub/sub; the devices for the display)
and are called in the order they subscribed.  A listener that fails is
logged and the others still run.

Every change of state (a report, a new display state) is first recorded in
the hub's journal (L{journal.Journal}); only once the journal has it does the
hub change its state and tell the listeners.  A change the journal refuses
changes nothing and reaches no one.
"""

import dataclasses
import time
from collections import Counter
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from .display import COMMANDS, NEVER_ON, OFF, Display, LastOn
from .history import History, Publication
from .journal import Journal, MemoryJournal, StoreAway, StoreFailed
from .limits import STORE_AWAY_LOG_EVERY
from .pubsub import REPORT_EVENT, PubSub
from .reports import broadcast_bytes
from .times import utc_rfc3339


@dataclasses.dataclass(frozen=True)
class Plug:
    """
    The last known state of one plug.
    """

    id: str
    value: int
    updated_at: float

    def as_json(self) -> dict:
        return {"id": self.id, "value": self.value, "updated_at": utc_rfc3339(self.updated_at)}


@dataclasses.dataclass(frozen=True)
class Report:
    """
    One accepted report, as listeners see it.

    @ivar previous: the plug's value before this report, or C{None} if this
        is the first report of the plug.
    @ivar source: how it arrived: C{"http"} or C{"device"}.
    @ivar peer: the sender's address, for logs.
    @ivar publication: its publication as event C{smartplug}, numbered and
        journaled with the report, for L{report_publisher} to send; C{None}
        when the hub does not publish reports or keeps no history.
    @ivar remote: True when another node accepted the report (a shared
        journal, L{Hub.apply_report}): listeners that act once for all nodes
        (tweets, the C{smartplug} publication) leave it to that node.
    """

    plug: Plug
    previous: Optional[int]
    source: str
    peer: str
    publication: Optional[Publication] = None
    remote: bool = False

    @property
    def changed(self) -> bool:
        """
        True when the value differs from the last one (a first report counts).
        """
        return self.previous != self.plug.value


@dataclasses.dataclass(frozen=True)
class DisplayEvent:
    """
    A packet for every device, as display listeners see it.

    @ivar packet: what the devices get, e.g. C{"[cc:2:255,65,174:0]"}.
    @ivar state: the display state after the event.
    @ivar command: C{"reset"} or C{"update"} for a one-off command (the state
        did not change), C{None} when the state was set.
    @ivar peer: who asked, for logs.
    """

    packet: str
    state: Display
    command: Optional[str]
    peer: str


@dataclasses.dataclass(frozen=True)
class KeptPlugs:
    """
    What L{Hub.keep_plugs} changed, as its listeners see it.

    @ivar kept: the plugs kept, in their new order.
    @ivar dropped: the plugs dropped, in their former order.
    """

    kept: list[Plug]
    dropped: list[Plug]


# Why a report was refused, as metrics count it: not a valid report (400),
# or the state store could not record it (503).
REFUSALS = ("invalid", "store")

Listener = Callable[[Report], None]
DisplayListener = Callable[[DisplayEvent], None]
KeepListener = Callable[[KeptPlugs], None]


class Hub:
    """
    The server's state, owned by the reactor thread: the plugs and the
    display here, the pub/sub registry in C{pubsub}.

    @param now: returns the current time in seconds (a clock's C{seconds}).
    @param journal: where changes are recorded before they are accepted;
        by default a L{MemoryJournal}, which keeps nothing across restarts.
    @param history: pub/sub offsets, epochs and kept publications (SPEC
        3.6); by default 100 per event for a day.
    @param publish_reports: reports are published as event C{smartplug}
        (by L{pubsub.report_publisher}, a listener): each report's
        publication is then numbered and journaled with the report, in one
        commit.
    @param node: this node's name when several nodes share a journal (SPEC
        11); the info frame then names each connection's node.
    """

    _log = Logger()

    def __init__(self, now: Callable[[], float] = time.time, journal: Optional[Journal] = None,
                 history: Optional[History] = None, publish_reports: bool = False,
                 node: Optional[str] = None) -> None:
        self._now = now
        self._publish_reports = publish_reports
        self._journal = MemoryJournal() if journal is None else journal
        # A journal several nodes share (SPEC 11) must see every change.
        self._shared = getattr(self._journal, "shared", False)
        self._plugs: dict[str, Plug] = {}
        self._display = OFF
        # What a bare "on" restores (SPEC 12); the journal keeps it with
        # each display state that sets it.
        self._last_on = NEVER_ON
        self._known = True
        self._listeners: list[Listener] = []
        self._display_listeners: list[DisplayListener] = []
        self._keep_listeners: list[KeepListener] = []
        self.pubsub = PubSub(now=now, history=History(now=now) if history is None else history, node=node)
        # Plain counts for /metrics: source -> reports accepted, and
        # (source, reason) -> reports refused (REFUSALS).
        self.accepted: Counter = Counter()
        self.refused: Counter = Counter()
        # While the store is away (StoreAway): when the last line about its
        # refusals was logged (None: not away), and how many were refused
        # since, unlogged.
        self._away_logged: Optional[float] = None
        self._away_unlogged = 0
        self._away_why = ""

    @property
    def display_known(self) -> bool:
        """
        False while the state is still to be loaded from a store several
        nodes share (it was unreachable at start): the display shown is
        then no one's, and devices are not sent it; nor are the pub/sub
        history's offsets and epochs anyone's (L{PubSub.history_known}).
        """
        return self._known

    @display_known.setter
    def display_known(self, known: bool) -> None:
        self._known = known
        self.pubsub.history_known = known

    def restore(self, plugs: Iterable[Plug], display: Optional[Display] = None, streams: Iterable = (),
                last_on: Optional[LastOn] = None) -> None:
        """
        Take C{plugs} (in first-report order) and C{display} (unless
        C{None}) as the state, C{streams} as the pub/sub history (see
        L{History.restore}) and C{last_on} (unless C{None}) as what the
        display was last when on (see L{remember}), as loaded from the
        store at start-up; no listener is told.
        """
        for plug in plugs:
            self._plugs[plug.id] = plug
        if display is not None:
            self._display = display
        self.remember(self._last_on if last_on is None else last_on)
        self.pubsub.history.restore(streams)

    def remember(self, last_on: LastOn) -> None:
        """
        Take C{last_on}, loaded from a store, as what the display was last
        when on.  The current display state counts too: a store written
        before this was kept knows only that.
        """
        self._last_on = last_on.after(self._display)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """
        Call C{listener(report)} for every accepted report from now on.

        @return: a function that stops the calls.
        """
        return _subscribe(self._listeners, listener)

    def watch_display(self, listener: DisplayListener) -> Callable[[], None]:
        """
        Call C{listener(event)} with a L{DisplayEvent} whenever the display
        state is set or a one-off command is given, from now on.

        @return: a function that stops the calls.
        """
        return _subscribe(self._display_listeners, listener)

    def watch_kept(self, listener: KeepListener) -> Callable[[], None]:
        """
        Call C{listener(KeptPlugs)} each time L{keep_plugs} drops plugs or
        changes their order, from now on.

        @return: a function that stops the calls.
        """
        return _subscribe(self._keep_listeners, listener)

    def _notify(self, listeners: list, event) -> None:
        for listener in list(listeners):
            try:
                listener(event)
            except Exception:
                self._log.failure("listener {listener!r} failed", listener=listener)

    def count_refused(self, source: str, reason: str) -> None:
        """
        Count a report from C{source} refused before it reached the hub
        (C{reason} is one of L{REFUSALS}), for metrics.
        """
        self.refused[source, reason] += 1

    def _journaled(self, save: Callable[..., Deferred], args: tuple, accept: Callable[[Any], object],
                   change: str, peer: str, source: Optional[str] = None,
                   publication: Optional[Publication] = None) -> Deferred:
        """
        C{save(*args)} in the journal, then C{accept(answer)} with the
        journal's answer: C{None}, or for a publication the publication as a
        shared journal numbered it (SPEC 11).

        @return: a Deferred firing with what C{accept} returns, or with
            C{None} when the journal refused (logged here, naming C{change}
            and C{peer}).  It never fails, so callers that do not care (the
            device port) may drop it.
        """
        saved = maybeDeferred(save, *args)
        saved.addCallbacks(self._saved, self._not_saved, callbackArgs=(accept,),
                           errbackArgs=(change, peer, source, publication))
        # accept() catches its listeners' errors; this keeps the promise
        # that the Deferred never fails even if accept() itself had a bug.
        return saved.addErrback(self._not_applied, change, peer)

    def _saved(self, answer, accept: Callable[[Any], object]):
        self.store_back()
        return accept(answer)

    def _not_applied(self, failure, change: str, peer: str) -> None:
        self._log.failure("{change} from {peer} saved but not applied", failure, change=change, peer=peer)
        return None

    def _not_saved(self, failure, change: str, peer: str, source: Optional[str],
                   publication: Optional[Publication]) -> None:
        if source is not None:
            self.refused[source, "store"] += 1
        if publication is not None and not self._shared:
            # Nobody got it: its offset may be given again (a shared
            # journal numbers in Redis, where nothing was used).
            self.pubsub.history.refused(publication)
        if failure.check(StoreAway):
            self._refused_while_away(change, peer, failure.getErrorMessage())
        elif failure.check(StoreFailed):
            self._log.error(
                "{change} from {peer} refused: state store cannot write: {why}",
                change=change, peer=peer, why=failure.getErrorMessage(),
            )
        else:
            self._log.failure("{change} from {peer} refused: state store failed", failure, change=change, peer=peer)
        return None

    def _refused_while_away(self, change: str, peer: str, why: str) -> None:
        """
        A change refused because the store is away (SPEC 11: the log says
        so once): the first of an outage is logged whole, the others summed
        up at the first refusal a period (L{STORE_AWAY_LOG_EVERY}) after the
        last line, and the rest once the store takes a change again.  No
        timer: nothing is left behind when the outage ends or the server
        stops.
        """
        now = self._now()
        self._away_why = why
        if self._away_logged is None:
            self._away_logged = now
            self._away_unlogged = 0
            self._log.error(
                "{change} from {peer} refused: state store cannot write: {why}; the next changes refused while it "
                "is away are summed up, at most once every {every:g} s",
                change=change, peer=peer, why=why, every=STORE_AWAY_LOG_EVERY,
            )
            return
        self._away_unlogged += 1
        if now - self._away_logged >= STORE_AWAY_LOG_EVERY:
            self._log.error(
                "{count} more changes refused in the last {seconds:.0f} s: state store cannot write: {why}",
                count=self._away_unlogged, seconds=now - self._away_logged, why=why,
            )
            self._away_logged = now
            self._away_unlogged = 0

    def store_back(self) -> None:
        """
        The store takes changes again (a change was saved, or a shared
        store is back): the refusals not logged yet are summed up now, and
        the first refusal of the next outage is logged whole.
        """
        if self._away_logged is None:
            return
        if self._away_unlogged:
            self._log.error(
                "{count} more changes refused in the last {seconds:.0f} s, until the state store took changes "
                "again: {why}",
                count=self._away_unlogged, seconds=self._now() - self._away_logged, why=self._away_why,
            )
        self._away_logged = None
        self._away_unlogged = 0

    def report(self, plug_id: str, value: int, source: str, peer: str) -> Deferred:
        """
        Record a validated report in the journal, then take it as the plug's
        state and tell every listener.  With the in-memory journal all of
        that happens before this returns.

        @return: a Deferred that fires with the L{Report}, or with C{None}
            when the journal could not record it (already logged; the state
            is unchanged).  It never fails.
        """
        plug = Plug(plug_id, value, self._now())
        args: tuple = (plug_id, value, plug.updated_at, source)
        publication = None
        history = self.pubsub.history
        if self._publish_reports and (history.enabled or self._shared):
            # One commit for the report and its publication, not two.
            data = broadcast_bytes(plug_id, value).decode("utf-8")
            publication = self.pubsub.number(REPORT_EVENT, data)
            args += ((publication, history.keep, history.oldest_kept()),)
        return self._journaled(
            self._journal.save_report, args,
            lambda numbered: self._accept(plug, source, peer, numbered or publication),
            f"report plug {plug_id} -> {value}", peer, source, publication,
        )

    def _accept(self, plug: Plug, source: str, peer: str, publication: Optional[Publication],
                remote: bool = False) -> Report:
        # The journal answers in call order, so reports of one plug are
        # accepted in the order they arrived and "previous" is right.
        old = self._plugs.get(plug.id)
        self._plugs[plug.id] = plug
        report = Report(plug, old.value if old else None, source, peer, publication, remote)
        if not remote:
            # Each report is counted by the node that accepted it.
            self.accepted[source] += 1
        self._log.info(
            "plug {plug_id} -> {value} from {peer}", plug_id=plug.id, value=plug.value, peer=peer
        )
        self._notify(self._listeners, report)
        return report

    def publish(self, event: str, data: Any, peer: str, origin: Optional[str] = None) -> Deferred:
        """
        Number a publication of C{event}, record it in the journal (when
        history is kept), then keep it and send it to the subscribers
        (SPEC 3.3, 3.6).  With the in-memory journal, or C{PUBSUB_HISTORY =
        0}, all of that happens before this returns.

        @param origin: who brought it in from outside (see L{PubSub.publish}).
        @return: a Deferred firing with the number of subscribers it was sent
            to, or with C{None} when the journal could not record it (logged;
            nobody got it, and its offset is given again if no later one
            was given meanwhile).  It never fails.
        """
        pubsub = self.pubsub
        publication = pubsub.number(event, data)
        history = pubsub.history
        if not history.enabled and not self._shared:
            # Nothing kept, so nothing to journal: PiCloud's cost.  (A shared
            # journal numbers every publication and hands it to the other
            # nodes: SPEC 11.)
            return succeed(pubsub.accept(publication, data, origin))
        return self._journaled(
            self._journal.save_publication, (publication, history.keep, history.oldest_kept()),
            lambda numbered: pubsub.accept(numbered or publication, data, origin),
            # A shared journal numbers it in Redis: this node's number is
            # only a guess, not to be logged.
            f"publication of {event}" if self._shared else f"publication {publication.offset} of {event}", peer,
            publication=publication,
        )

    def plug(self, plug_id: str) -> Optional[Plug]:
        """
        The plug with this id, or C{None} if it never reported.
        """
        return self._plugs.get(plug_id)

    def plugs(self) -> list[Plug]:
        """
        Every known plug, in the order they first reported.
        """
        return list(self._plugs.values())

    def history(self, plug_id: str, limit: int) -> Deferred:
        """
        The plug's recorded reports, newest first.

        @return: a Deferred firing with at most C{limit}
            L{journal.HistoryEntry}s, or with C{None} for an unknown plug.
        """
        if plug_id not in self._plugs:
            return succeed(None)
        return self._journal.history(plug_id, limit)

    def display(self) -> Display:
        """
        The current display state (off until someone sets it).
        """
        return self._display

    def last_on(self) -> LastOn:
        """
        What the display was last when it was not off, and the last colour
        (SPEC 12: a bare "on" restores the one, a new colour keeps the
        other's pulse), across restarts as far as the journal keeps them.
        """
        return self._last_on

    def known_plugs(self) -> Optional[list[Plug]]:
        """
        Every known plug (L{plugs}), or C{None} while the state is still to
        be loaded from a store several nodes share (L{display_known}): an
        empty list would say there is none.
        """
        return self.plugs() if self.display_known else None

    def known_display(self) -> Optional[Display]:
        """
        The current display state, or C{None} while it is still to be
        loaded from a store several nodes share (L{display_known}).
        """
        return self._display if self.display_known else None

    def set_display(self, display: Display, peer: str) -> Deferred:
        """
        Record C{display} in the journal, then make it the state and send its
        packet to the display listeners, even when it equals the old state
        (a lamp that missed a packet gets it again).

        @return: a Deferred firing with C{display}, or with C{None} when the
            journal could not record it (logged; the state is unchanged).
        """
        return self._journaled(
            self._journal.save_display, (display,), lambda _: self._show(display, peer),
            f"display {display.packet()}", peer,
        )

    def _show(self, display: Display, peer: str) -> Display:
        self._display = display
        # The journal kept the same with the state (Journal.save_display).
        self._last_on = self._last_on.after(display)
        self._log.info("display -> {packet} from {peer}", packet=display.packet(), peer=peer)
        self._notify(self._display_listeners, DisplayEvent(display.packet(), display, None, peer))
        return display

    def display_command(self, command: str, peer: str) -> Deferred:
        """
        Send the one-off packet of C{command} (a key of
        L{smartplug_backend.core.display.COMMANDS}) without changing the state,
        once the journal has it (a local journal keeps nothing; a shared one
        hands it to the other nodes).

        @return: a Deferred firing with the packet sent, or with C{None} when
            the journal refused it (logged; nobody got it).
        """
        return self._journaled(
            self._journal.save_command, (command,), lambda _: self._command(command, peer),
            f"display command {command}", peer,
        )

    def _command(self, command: str, peer: str) -> str:
        packet = COMMANDS[command]
        self._log.info("display command {command} from {peer}", command=command, peer=peer)
        self._notify(self._display_listeners, DisplayEvent(packet, self._display, command, peer))
        return packet

    # Changes another node committed to a shared journal (integrations/
    # redis_engine.py): accepted here as if this hub had journaled them, in
    # the order the journal gives, but never journaled again.

    def apply_report(self, plug_id: str, value: int, at: float, source: str, peer: str,
                     publication: Optional[Publication] = None) -> Report:
        """
        Accept a report that another node recorded in the shared journal,
        with its C{smartplug} publication as numbered there: the state
        changes and the listeners are told, with C{remote} set.
        """
        return self._accept(Plug(plug_id, value, at), source, peer, publication, remote=True)

    def keep_plugs(self, plug_ids: Iterable[str]) -> list[Plug]:
        """
        Keep only the plugs of C{plug_ids}, in that order (an id of no known
        plug is skipped), as the shared journal holds them once its data
        replaced this node's copy (another node's copy won, or it lost
        changes this node had seen): the others are dropped (their state
        and history are no longer listed).  If that drops a plug or changes
        the order, the keep listeners are told.  Nothing is journaled.

        @return: the plugs dropped, in their former order.
        """
        kept: dict[str, Plug] = {}
        for plug_id in plug_ids:
            plug = self._plugs.get(plug_id)
            if plug is not None:
                kept[plug_id] = plug
        dropped = [plug for plug in self._plugs.values() if plug.id not in kept]
        moved = list(kept) != [plug_id for plug_id in self._plugs if plug_id in kept]
        self._plugs = kept
        if dropped or moved:
            self._notify(self._keep_listeners, KeptPlugs(list(kept.values()), dropped))
        return dropped

    def apply_publication(self, publication: Publication, data: Any, origin: Optional[str] = None) -> int:
        """
        Keep and deliver a publication (of C{data}) that another node
        recorded in the shared journal, numbered there.
        """
        return self.pubsub.accept(publication, data, origin, remote=True)

    def apply_display(self, display: Display, peer: str) -> Display:
        """
        Take a display state that another node recorded, and send its packet.
        """
        return self._show(display, peer)

    def apply_command(self, command: str, peer: str) -> str:
        """
        Send a one-off display command that another node accepted.
        """
        return self._command(command, peer)


def _subscribe(listeners: list, listener) -> Callable[[], None]:
    listeners.append(listener)
    return lambda: listeners.remove(listener)
