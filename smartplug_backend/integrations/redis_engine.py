"""
Several nodes on one Redis (SPEC 11): the engine that connects a node to
Redis and applies the other nodes' changes to its hub.  The hub's journal is
L{redis_journal.RedisJournal}, the guard's shared bans
L{redis_bans.SharedBans}, the keys and Lua scripts L{redis_store}.

How a change travels.  The hub records every change in its journal before it
accepts it (L{smartplug_backend.core.hub}).  L{RedisJournal} commits it to
Redis with one Lua script (L{redis_store}) that numbers it in one global
sequence, writes it, and publishes it on the change channel.  Every node (the
one that committed too) listens to that channel and takes the changes in its
order, so the reports of one plug are applied in one order everywhere:

- its own change: the journal's Deferred fires, and the hub accepts it as
  with any journal (apps, subscribers, devices, tweets, MQTT);
- another node's: the engine calls the hub's C{apply_*} methods, which tell
  the same listeners with C{remote} set (no tweet: the accepting node sends
  it), and journal nothing again.

Threads.  redis-py is blocking: its commands run on a one-thread pool of the
engine's own (a L{ThreadPoolService}), and the channel is read by a thread of
its own; both hand their results to the reactor thread
(C{deferToThreadPool}, C{callFromThread}), which alone touches state.

Failure.  When the channel's connection drops, the node refuses changes
(L{StoreFailed}: 503) and serves reads from its own copy; it logs one line,
reconnects with backoff (at most L{REDIS_MAX_BACKOFF} s), and on every
(re)subscription loads the whole state again (a snapshot that carries its
sequence number: changes already in it are skipped, later ones applied).  A
Redis that lost its data (restarted empty) is seeded again from the first
node's copy under a new I{incarnation}; the others notice and load it.  A
node without a copy of its own seeds it with an empty state, marked as an
I{empty seed}: until a change is committed on it, a node that holds a copy
puts its copy in place of it instead of loading it (L{RedisState.replace}),
and the nodes that loaded the empty seed load that copy.  A
Redis that restarted (its run_id is not the one the data was last checked
under) may have come back from a file that misses its latest writes, unless
it persists every write: the first node that loads it then gives every
pub/sub event a new epoch (SPEC 3.6), with no state of its own needed, and
until then Redis refuses every change.
"""

import base64
import collections
import hashlib
import itertools
import json
import secrets
import threading
import time
from functools import partial
from typing import Callable, Optional

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ..core.display import NEVER_ON, Display, InvalidDisplay, LastOn, remembered, validate_display
from ..core.history import Publication
from ..core.hub import Plug
from ..core.journal import StoreAway, StoreFailed
from ..core.limits import (
    REDIS_COMMAND_TIMEOUT,
    REDIS_CONFIRM_TIMEOUT,
    REDIS_CONNECT_TIMEOUT,
    REDIS_EMPTY_GRACE,
    REDIS_MAX_BACKOFF,
    REDIS_PRESENCE_INTERVAL,
    REDIS_PRESENCE_TTL_FACTOR,
)
from ..server.links import Link
from ..server.services import ThreadPoolService
from .redis_bans import SharedBans
from .redis_journal import RedisJournal, display_state, last_on_states, publication_of
from .redis_store import CHANNEL, Late, RedisState, Snapshot, Stale
from .urls import redact

# The engine's modes.
DOWN, SYNCING, UP = "down", "syncing", "up"

# How many times a node with a copy tries to put it in place of an empty
# seed that changes under it (renewed, or seeded again) before it gives up
# this load (and tries again later): it never loads an empty seed over its
# copy.
_REPLACE_TRIES = 3

# Seconds by which a ban this node holds may end after Redis' ban of the
# same address and still count as that ban (each node times it from when
# it heard of it).
_BAN_END_SLACK = 1.0

# The kinds of change that change the state: the first one committed on an
# empty seed makes it a state like any other (redis_store._CHANGE, whose
# scripts are written apart: a test checks that the two agree).
_STATE_KINDS = frozenset({"report", "display", "publication", "ban", "lift"})


class _NothingToSeed(redis.RedisError):
    """
    Redis holds no state, and this node has none to seed it with (it could
    not load any since it started): seeding it with nothing would wipe the
    other nodes' copies, unless none comes to seed it (L{REDIS_EMPTY_GRACE}).
    """


class _SeedChanging(redis.RedisError):
    """
    The empty seed in Redis changed under every try to put this node's copy
    in its place: Redis answers; the node tries again later, rather than
    load an empty seed over its copy.
    """


class _Unanswered(redis.ConnectionError):
    """
    Work refused on the Redis thread because Redis stopped answering before
    it ran: Redis was not asked.
    """


def shared_epoch(incarnation: str, event: str) -> str:
    """
    The epoch every node hands out for C{event} before its first
    publication: derived from Redis' incarnation, so all nodes agree on it
    without asking Redis, and it changes when Redis loses its data.  (An
    event once published keeps its epoch in Redis for as long as the
    incarnation lives.)  8 URL-safe characters, like a random epoch.
    """
    digest = hashlib.sha256(f"{incarnation}\0{event}".encode("utf-8", "surrogatepass")).digest()
    return base64.urlsafe_b64encode(digest[:6]).decode("ascii")


def make_client(url: str) -> "redis.Redis":
    """
    A redis-py client for C{url} that fails fast instead of retrying on its
    own: the engine decides when to try again.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
        socket_timeout=REDIS_COMMAND_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=REDIS_COMMAND_TIMEOUT,
    )


class RedisEngine(ThreadPoolService):
    """
    The Redis connection of one node: the journal's commits, the change
    channel, the start-up load, and this node's connections in the info
    frame.  Add it to the application before the listeners (like the SQLite
    store, it loads the hub before they bind).

    @param url: C{REDIS_URL}.
    @param node_name: C{NODE_NAME} (the host name when not set).
    @param keep: C{HISTORY_KEEP}.
    @param info_interval: C{INFO_INTERVAL}: this node's connections are
        written to Redis this often (at most every
        L{REDIS_PRESENCE_INTERVAL} s).
    @param make_hub: C{make_hub(journal)} builds the hub on the journal.
    @param client: a redis-py client (tests); made from C{url} by default.
    """

    _log = Logger(namespace="smartplug_backend.integrations.redis")

    def __init__(self, url: str, node_name: str, reactor, keep: int, info_interval: float,
                 make_hub: Callable[[RedisJournal], object], client=None) -> None:
        super().__init__(ThreadPool(minthreads=1, maxthreads=1, name="smartplug-redis"), reactor)
        # As the dashboard shows it: one function hides the secrets in both.
        self.where = redact(url)
        self.node_name = node_name
        self._clock = reactor
        self._client = make_client(url) if client is None else client
        self._run = partial(deferToThreadPool, reactor, self.pool)
        self.journal = RedisJournal(self, keep)
        self.bans = SharedBans(self)
        self.hub = make_hub(self.journal)
        # Redis keeps to the node's own caps on kept publications.
        history = self.hub.pubsub.history
        self.state = RedisState(self._client, history.max_bytes, history.max_streams)
        self.hub.pubsub.history.share_epochs(
            lambda event: shared_epoch(self._incarnation, event) if self._incarnation is not None else None
        )
        # One id per process: two nodes may share a host name.
        self.node_id = secrets.token_hex(8)
        self._tokens = itertools.count(1)
        self._mode = DOWN
        self._incarnation: Optional[str] = None
        # The last few incarnations this node loaded and left.
        self._left: collections.deque = collections.deque(maxlen=8)
        # The last few empty seeds this node loaded and heard were replaced
        # by a node's copy.
        self._replaced: collections.deque = collections.deque(maxlen=8)
        self._applied = 0
        # From the last snapshot (see Snapshot.loaded_at): publications of
        # changes up to _applied that came after their stream was read.
        self._loaded_at: dict = {}
        self._loaded_from = 0
        self._buffer: list = []
        self._generation = 0
        # What loads overtaken by a newer one did (see _merged).
        self._superseded: Optional[tuple] = None
        # token -> (Deferred, timeout) of this node's changes not yet back
        self._pending: dict = {}
        self._away = False
        self._stopping = threading.Event()
        # Set while Redis does not answer: work queued on the Redis thread
        # before that was noticed fails at once instead of waiting out its
        # own timeout behind the others.
        self._unanswered = threading.Event()
        self._showing = False
        # The next try to load the state while Redis is away, if one waits.
        self._retry = None
        self._retry_delay = 0.5
        self._told_nothing_to_seed = False
        # This node holds no state that anyone committed: it never loaded
        # one, or only an empty seed that nothing changed since.  It seeds
        # an empty Redis with an empty seed, and never puts its copy in
        # place of one.
        self._no_copy = True
        # When this node, without a state of its own, first found Redis
        # answering and empty (None: it did not, or loaded since).
        self._empty_since: Optional[float] = None
        self._now = reactor.seconds
        # Up or not, since when, why: the dashboard and GET /metrics.
        self.link = Link("redis", self.where, reactor.seconds)
        self._listener: Optional[threading.Thread] = None
        self._channel = None
        self.presence_interval = min(info_interval, REDIS_PRESENCE_INTERVAL)
        self._presence = LoopingCall(self._show_presence)
        self._presence.clock = reactor

    @property
    def mode(self) -> str:
        """
        L{DOWN}, L{SYNCING} (loading the state after a (re)connection) or
        L{UP}.
        """
        return self._mode

    @property
    def up(self) -> bool:
        """
        True while changes can be committed: not while Redis is known not to
        answer, even while a try to load the state again waits for it (they
        would wait behind it and then be refused all the same).
        """
        return self._mode != DOWN and self._incarnation is not None and not self._unanswered.is_set()

    # -- start and stop ------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Before the reactor runs nothing waits on this thread, so the first
        # load runs here, synchronously: the listeners bind after it.
        super().privilegedStartService()
        try:
            # Subscribed first, then loaded: no change can fall between the
            # two, and the node is up before its listeners bind.
            self._channel = self._subscribe()
            snapshot, seeded, renewed, _replaced, _beaten = self._load([], None)
        except (redis.RedisError, OSError) as e:
            self._away = True
            self.hub.display_known = False
            self._drop_channel()
            self.link.went_down(_why(e, self.where))
            self._log.warn(
                "Redis at {where} unreachable at start ({why}): changes answer 503 until it answers, and until "
                "then this node knows no state: it lists no plugs and sends lamps no display packet",
                where=self.where, why=_why(e, self.where),
            )
            return
        if seeded is not None:
            self._log_empty_seed()
        if renewed:
            self._log_restarted()
        self._incarnation = snapshot.incarnation
        self._no_copy = _holds_nothing(snapshot)
        self._applied = snapshot.seq
        self._streams_read(snapshot)
        self._mode = UP
        self.link.went_up()
        self.hub.restore([Plug(p[0], p[1], p[2]) for p in snapshot.plugs], self._display_of(snapshot),
                         snapshot.streams, self._last_on_of(snapshot))
        self._share_bans(snapshot)
        self._log.info(
            "state from Redis at {where}: {count} plugs, display {packet}; this node is {node}",
            where=self.where, count=len(snapshot.plugs), packet=self.hub.display().packet(), node=self.node_name,
        )

    def startService(self) -> None:
        super().startService()
        self._stopping.clear()
        self._listener = threading.Thread(target=self._listen, name="smartplug-redis-channel", daemon=True)
        self._listener.start()
        self._presence.start(self.presence_interval, now=False).addErrback(
            lambda f: self._log.failure("Redis presence loop", f)
        )

    def stopService(self):
        if self._presence.running:
            self._presence.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._stopping.set()
        self._generation += 1
        self._mode = DOWN
        self._fail_pending("the server is stopping")
        # A clean stop leaves the info frames at once, not after the expiry.
        hidden = self._run(self.state.hide_node, self.node_id)
        hidden.addErrback(lambda f: None)
        listener = self._listener
        if listener is not None:
            hidden.addBoth(lambda _: deferToThreadPool(self._clock, self._clock.getThreadPool(), listener.join, 5))
        hidden.addBoth(lambda _: super(RedisEngine, self).stopService())
        hidden.addBoth(lambda _: self._client.close())
        return hidden

    # -- the journal's side --------------------------------------------------

    def commit(self, change: dict, write: Callable, *args) -> Deferred:
        """
        Commit C{change} (a JSON-able dict with C{"kind"}) with
        C{write(incarnation, change_json, *args)} on the Redis thread.

        @return: a Deferred that fires with the change as it came back on the
            channel (C{"seq"} added) once every node can see it, or fails
            with L{StoreFailed} when Redis is unreachable or did not take it.
        """
        if not self.up:
            state = ("answers, but holds no state this node can load yet" if self.link.answers and self._mode == DOWN
                     else "unreachable")
            return fail(StoreAway(f"Redis at {self.where} {state}"))
        token = f"{self.node_id}:{next(self._tokens)}"
        # The incarnation goes out with the change: a node that loaded other
        # data (Redis was emptied and seeded again meanwhile) notices.
        text = json.dumps(
            {"origin": self.node_id, "node": self.node_name, "token": token, "incarnation": self._incarnation,
             **change},
            separators=(",", ":"),
        )
        done = Deferred()
        timeout = self._clock.callLater(REDIS_CONFIRM_TIMEOUT, self._unconfirmed, token)
        self._pending[token] = (done, timeout)
        gives_up = time.monotonic() + REDIS_CONFIRM_TIMEOUT

        def with_deadline(incarnation: str, text: str, *args):
            # Stamped as it is sent, on the Redis thread: the time a change
            # waited there for its turn does not count against it.
            return write(incarnation, self.state.deadline(gives_up) + text[1:], *args)

        written = self._run(self._answered(with_deadline), self._incarnation, text, *args)
        written.addErrback(self._not_committed, token, self._incarnation)
        return done

    def _answered(self, f: Callable) -> Callable:
        # (Redis thread) f, unless Redis stopped answering since it was
        # queued; a timeout or lost connection here tells the work queued
        # behind it at once, before the reactor has heard of it.
        def run(*args):
            if self._unanswered.is_set():
                raise _Unanswered("Redis is not answering")
            try:
                return f(*args)
            except (redis.TimeoutError, redis.ConnectionError, OSError):
                self._unanswered.set()
                raise
        return run

    def read(self, f: Callable, *args) -> Deferred:
        """
        C{f(*args)} on the Redis thread; fails with L{StoreFailed} when Redis
        is unreachable.
        """
        if not self.up:
            return fail(StoreFailed(f"Redis at {self.where} unreachable"))
        return self._run(self._answered(f), *args).addErrback(self._as_store_failure)

    def _as_store_failure(self, failure):
        failure.trap(redis.RedisError, OSError)
        self._unreachable_if_so(failure)
        raise StoreFailed(f"Redis at {self.where}: {failure.getErrorMessage()}")

    def _unreachable_if_so(self, failure) -> None:
        """
        A command that timed out or lost its connection means Redis is
        away, even while the channel's connection looks open (a Redis that
        hangs): refuse changes at once from now on, and load the state
        again once it answers.
        """
        if failure.check(_Unanswered):
            return  # refused without asking Redis: no news about it
        if failure.check(redis.TimeoutError, redis.ConnectionError, OSError) and self._mode != DOWN:
            self._lost(_why(failure.value, self.where))
            self._retry_later()

    def _redis_failed(self, failure) -> None:
        # A Redis error of work that has no one to answer: Redis may be
        # away; anything else goes on down the chain.
        failure.trap(redis.RedisError, OSError)
        self._unreachable_if_so(failure)

    def _retry_later(self) -> None:
        # 0.5, 1, 2, 4, 8, then every REDIS_MAX_BACKOFF seconds, as the
        # channel thread waits (reset once loaded).
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        delay, self._retry_delay = self._retry_delay, min(self._retry_delay * 2, REDIS_MAX_BACKOFF)
        self._retry = self._clock.callLater(delay, self._retry_sync, self._generation)

    def _settle(self, token: str):
        entry = self._pending.pop(token, None)
        if entry is None:
            return None
        done, timeout = entry
        if timeout.active():
            timeout.cancel()
        return done

    def _not_committed(self, failure, token: str, incarnation: Optional[str]) -> None:
        done = self._settle(token)
        if failure.check(Stale):
            # Redis no longer holds the data this node loaded, or restarted
            # since (the script says which): load again.  Redis lost
            # nothing if a node's copy took the place of the empty seed
            # this change was made on: said so when its notice came first.
            if incarnation in self._replaced:
                what = "holds a node's copy now, in place of the empty state this node had loaded"
            else:
                what = failure.getErrorMessage().removeprefix("STALE ").removeprefix("Redis ")
            self._log.warn("Redis at {where} {what}: loading it again", where=self.where, what=what)
            if self._mode == UP:
                self._resync()
            why = f"Redis {what}; loading it again"
        else:
            why = f"Redis at {self.where}: {failure.getErrorMessage()}"
            self._unreachable_if_so(failure)
            if failure.check(Late):
                # Hung past the deadline, or a clock stepped since it was
                # last read: read it again.
                measured = self._run(self._answered(self.state.measure_clock)).addErrback(self._redis_failed)
                measured.addErrback(lambda f: self._log.failure("reading Redis' clock", f))
        if done is not None:
            # Redis away (a timeout, a lost connection) is an outage, paced
            # in the log; anything else Redis said is news every time.
            away = failure.check(redis.TimeoutError, redis.ConnectionError, OSError)
            done.errback((StoreAway if away else StoreFailed)(why))

    def _unconfirmed(self, token: str) -> None:
        entry = self._pending.pop(token, None)
        if entry is not None:
            entry[0].errback(StoreFailed(f"Redis at {self.where} did not confirm within {REDIS_CONFIRM_TIMEOUT:g} s"))

    def _fail_pending(self, why: str, error: type = StoreFailed) -> None:
        pending, self._pending = self._pending, {}
        for done, timeout in pending.values():
            if timeout.active():
                timeout.cancel()
            done.errback(error(why))

    # -- the change channel (its own thread) ----------------------------------

    def _subscribe(self):
        """
        (Blocking) A PubSub subscribed to the change channel, once Redis has
        confirmed the subscription.
        """
        channel = self._client.pubsub()
        try:
            channel.subscribe(CHANNEL)
            for _ in range(int(REDIS_CONNECT_TIMEOUT / 0.1)):
                message = channel.get_message(timeout=0.1)
                if message is not None and message["type"] == "subscribe":
                    return channel
        except BaseException:
            channel.close()
            raise
        channel.close()
        raise redis.TimeoutError("Redis did not confirm the subscription")

    def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def _listen(self) -> None:
        """
        The channel thread: subscribe, hand every message to the reactor,
        and on any error tell it and try again after a growing delay.
        """
        delay = 0.0
        call = self._clock.callFromThread
        while not self._stopping.is_set():
            # The first time, the channel that start-up subscribed, if any.
            channel, self._channel = self._channel, None
            try:
                if channel is None:
                    channel = self._client.pubsub()
                    channel.subscribe(CHANNEL)
                while not self._stopping.is_set():
                    message = channel.get_message(timeout=0.5)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        # The first subscription, or redis-py's own silent
                        # reconnection: either way changes may have been
                        # missed, so load everything again.
                        delay = 0.0
                        call(self._subscribed)
                    elif message["type"] == "message":
                        call(self._received, message["data"])
            except (redis.RedisError, OSError) as e:
                if not self._stopping.is_set():
                    call(self._lost, str(e) or type(e).__name__)
            except Exception as e:  # a bug must not end the thread silently
                call(self._log.error, "Redis channel thread: {error!r}", error=e)
            finally:
                try:
                    if channel is not None:
                        channel.close()
                except Exception:
                    pass
            delay = min(max(delay * 2, 0.5), REDIS_MAX_BACKOFF)
            self._stopping.wait(delay)

    def _subscribed(self) -> None:
        if not self._stopping.is_set():
            self._resync()

    def _received(self, data: bytes) -> None:
        try:
            change = json.loads(data)
            change["seq"]
        except (ValueError, TypeError, KeyError):
            self._log.warn("ignored a message on {channel} that is not a change", channel=CHANNEL)
            return
        if self._mode == SYNCING:
            self._buffer.append(change)
        elif self._mode == UP:
            self._take(change)

    def _take(self, change: dict) -> None:
        if change.get("kind") == "replaced":
            # Another node's copy took the place of an empty seed: the nodes
            # that loaded that seed load the copy (and log it then).
            if change.get("replaced") == self._incarnation:
                self._replaced.append(self._incarnation)
                self._resync()
            return
        incarnation = change.get("incarnation")
        if incarnation in self._left:
            return  # made on data Redis has lost since; the snapshot stands for it
        if incarnation is not None and incarnation != self._incarnation:
            # Committed under data this node did not load: Redis lost its
            # data and another node seeded it again.  Its numbers start
            # over, so none of them can be compared with ours: load again.
            self._log.warn(
                "Redis at {where} holds other data than this node loaded (it lost its data and another node "
                "seeded it): loading it again",
                where=self.where,
            )
            self._resync()
            self._buffer.append(change)
            return
        seq = change["seq"]
        if seq <= self._applied:
            # Already in the snapshot just loaded.  If it is this node's own,
            # its sender still waits: it is in Redis, so answer it.
            done = self._settle(change.get("token")) if change.get("origin") == self.node_id else None
            if done is not None:
                done.callback(change)
            else:
                self._late_publication(change)
            return
        if seq > self._applied + 1:
            self._log.warn(
                "missed changes {first} to {last} from Redis: loading the state again",
                first=self._applied + 1, last=seq - 1,
            )
            self._resync()
            self._buffer.append(change)
            return
        self._applied = seq
        if change.get("kind") in _STATE_KINDS and self._no_copy:
            # The empty seed is a state like any other now: the bans this
            # node held back from it go to Redis.
            self._no_copy = False
            read = self._run(self._answered(self.state.bans))
            read.addCallbacks(self._share_bans_again, self._redis_failed)
            read.addErrback(lambda f: self._log.failure("sharing this node's bans with Redis", f))
        done = self._settle(change.get("token")) if change.get("origin") == self.node_id else None
        if done is not None:
            done.callback(change)
        else:
            self._apply(change)

    def _streams_read(self, snapshot: Snapshot) -> None:
        if snapshot.streams_from >= snapshot.seq:
            # No change came while the streams were read: nothing to take.
            self._loaded_at, self._loaded_from = {}, snapshot.seq
        else:
            self._loaded_at, self._loaded_from = snapshot.loaded_at, snapshot.streams_from

    def _late_publication(self, change: dict) -> None:
        """
        The publication of a change the snapshot holds, except for its
        stream, which was read before that change (the streams are read in
        pieces, before the rest): keep and deliver it now.
        """
        if "offset" not in change or change.get("kind") not in ("publication", "report"):
            return
        try:
            event = change["event"]
            if change["seq"] <= self._loaded_at.get(event, self._loaded_from):
                return
            via = change.get("via") if change["kind"] == "publication" else None
            self.hub.apply_publication(publication_of(change), json.loads(change["data"]), via)
        except (KeyError, TypeError, ValueError):
            self._log.failure("ignored a malformed change from Redis (seq {seq})", seq=change.get("seq"))

    def _apply(self, change: dict) -> None:
        """
        Apply another node's change to this node's hub.
        """
        hub = self.hub
        peer = "node " + str(change.get("node"))
        kind = change.get("kind")
        try:
            if kind == "report":
                publication = publication_of(change) if "offset" in change else None
                hub.apply_report(change["plug"], change["value"], change["at"], change["source"], peer, publication)
            elif kind == "publication":
                hub.apply_publication(publication_of(change), json.loads(change["data"]), change.get("via"))
            elif kind == "display":
                display = validate_display(change["state"])
                if isinstance(display, Display):
                    hub.apply_display(display, peer)
            elif kind == "command":
                hub.apply_command(change["command"], peer)
            elif kind == "ban":
                self.bans.banned_elsewhere(change["address"], change["until"] - self._clock.seconds())
            elif kind == "failure":
                self.bans.failed_elsewhere(change["address"])
            elif kind == "lift":
                self.bans.lifted_elsewhere(change["address"], peer)
            else:
                self._log.warn("ignored a change of unknown kind {kind!r} from Redis", kind=kind)
        except (KeyError, TypeError, ValueError, InvalidDisplay):
            self._log.failure("ignored a malformed change from Redis (seq {seq})", seq=change.get("seq"))

    # -- loading -------------------------------------------------------------

    def _load(self, plugs: list, display: Optional[str], may_seed: bool = True, if_alone: bool = False,
              no_copy: bool = True, loaded: Optional[str] = None, last_on: LastOn = NEVER_ON) -> tuple:
        """
        (Redis thread) The snapshot; a Redis that holds nothing is seeded
        first with C{plugs}, C{display} and C{last_on}, this node's copy, if
        C{may_seed}, or if C{if_alone} and no node that has loaded a state
        shows its presence (only such nodes do).  With C{no_copy} (this node
        holds no state anyone committed) the seed is an empty seed.  Without
        it, this node's copy takes the place of an empty seed (other than
        the one it loaded, C{loaded}) on which no change was committed, as
        it would seed an empty Redis.

        A Redis that restarted since its data was last checked is checked
        first: if it may have lost writes, every event gets a new epoch (an
        empty seed stays one, under a new incarnation).  Then the empty
        seed, if this node puts its copy in its place: the seed may change
        under it (another node renews it, or seeds Redis again), and it
        tries again on the new one, up to L{_REPLACE_TRIES} times, rather
        than load an empty seed over its copy.

        @return: C{(snapshot, how many plugs this node seeded Redis with, or
            None if it did not seed it, whether this node renewed the epochs
            because Redis restarted, whether its seed took the place of an
            empty seed, whether this node tried to seed Redis with its copy
            or to put it in place of an empty seed and another node's copy
            came first)}.
        """
        seeded = None
        renewed = False
        replaced = False
        tried = False
        # The empty seed this node last tried to replace (None: it tried to
        # seed an empty Redis).
        tried_on = None
        # For the deadlines of this node's changes (RedisState.deadline).
        self.state.measure_clock()
        snapshot = self.state.snapshot()
        if snapshot is None:
            if not may_seed and not (if_alone and not self.state.other_nodes(self.node_id)):
                raise _NothingToSeed(
                    "it holds no state, and this node has none to give it: waiting for a node that has one to seed "
                    f"it (start one, or restart this one while Redis is reachable); if none has after "
                    f"{REDIS_EMPTY_GRACE:g} s and no node that has loaded a state is on Redis, this node seeds it with an "
                    "empty state"
                )
            tried = True
            if self.state.initialise(secrets.token_urlsafe(12), plugs, display, *last_on_states(last_on), empty=no_copy):
                seeded = len(plugs)
            snapshot = self.state.snapshot()
            if snapshot is None:
                raise redis.RedisError("Redis lost its state again while it was being seeded")
        if snapshot.restarted:
            # Another node may check it at the same time: the scripts let
            # one of them do it, and the snapshot after it shows the result.
            # Checked before an empty seed is replaced: the nodes that
            # loaded it renew it, and would change it under the replace.
            if self.state.persists_every_write():
                self.state.checked(snapshot.incarnation)
            else:
                renewed = self.state.renew(snapshot.incarnation, secrets.token_urlsafe(12), secrets.token_urlsafe(6))
            snapshot = self.state.snapshot()
            if snapshot is None:
                raise redis.RedisError("Redis lost its state again while it was being checked")
        tries = 0
        while not no_copy and snapshot.empty_seed and snapshot.incarnation != loaded:
            # The script checks again that the seed is the one found, empty
            # and unchanged: of two nodes with a copy, one takes its place,
            # and the other loads that node's copy.
            if tries == _REPLACE_TRIES:
                raise _SeedChanging(f"the empty seed in it changed under each of {_REPLACE_TRIES} tries to put this "
                                    "node's copy in its place; trying again")
            tries += 1
            tried = True
            tried_on = snapshot.incarnation
            incarnation = secrets.token_urlsafe(12)
            notice = json.dumps({"kind": "replaced", "incarnation": incarnation, "replaced": snapshot.incarnation,
                                 "node": self.node_name, "origin": self.node_id}, separators=(",", ":"))
            if self.state.replace(snapshot.incarnation, incarnation, plugs, display, notice, *last_on_states(last_on)):
                seeded = len(plugs)
                replaced = True
            snapshot = self.state.snapshot()
            if snapshot is None:
                raise redis.RedisError("Redis lost its state again while it was being seeded")
        if snapshot.restarted:
            raise redis.RedisError("Redis restarted again while its state was being loaded")
        # Redis answers again: work queued behind this load may ask it.
        self._unanswered.clear()
        # Another node's copy came first: not an empty seed that a change
        # made a state like any other (its incarnation stays).
        beaten = (tried and not no_copy and seeded is None and not snapshot.empty_seed
                  and snapshot.incarnation != tried_on)
        return snapshot, seeded, renewed, replaced, beaten

    def _log_empty_seed(self) -> None:
        self._log.warn(
            "Redis at {where} held no state: seeded it with an empty state, as this node has no copy of its own; "
            "a node that has one puts its copy in place of it when it comes back, unless a change is made first",
            where=self.where,
        )

    def _log_restarted(self, dropped: int = 0) -> None:
        self._log.warn(
            "Redis at {where} restarted since its data was last checked and does not write every change to disk "
            "before it answers (appendonly yes, appendfsync always), so it may have lost its latest changes: "
            "pub/sub epochs change{dropped}",
            where=self.where, dropped=_dropped_text(dropped, "; "),
        )

    def _resync(self) -> None:
        self._mode = SYNCING
        self._buffer = []
        self._generation += 1
        generation = self._generation
        hub = self.hub
        if self._no_copy:
            # Nothing anyone committed: an empty seed, not a display set off.
            plugs, display, last_on = [], None, NEVER_ON
        else:
            plugs = [(p.id, p.value, p.updated_at, "http") for p in hub.plugs()]
            display = display_state(hub.display()) if hub.display_known else None
            last_on = hub.last_on() if hub.display_known else NEVER_ON
        # A node without a state of its own (it never loaded one, or only an
        # empty seed) seeds an empty Redis only once the nodes that hold one
        # had time to (SPEC 11: a fresh deployment, or a single node, whose
        # Redis came up after it, is not stuck).
        may_seed = hub.display_known and not self._no_copy
        if_alone = self._empty_since is not None and self._now() - self._empty_since >= REDIS_EMPTY_GRACE
        loaded = self._run(self._load, plugs, display, may_seed, if_alone, self._no_copy, self._incarnation, last_on)
        loaded.addCallbacks(self._synced, self._sync_failed, callbackArgs=(generation,), errbackArgs=(generation,))
        loaded.addErrback(lambda f: self._log.failure("applying the state loaded from Redis", f))

    def _sync_failed(self, failure, generation: int) -> None:
        if generation != self._generation:
            return
        if failure.check(_NothingToSeed):
            if self._empty_since is None:
                self._empty_since = self._now()
            if not self._told_nothing_to_seed:
                self._told_nothing_to_seed = True
                self._log.warn("Redis at {where} answers, but {why}", where=self.where, why=failure.getErrorMessage())
        elif failure.check(_SeedChanging):
            self._log.warn("Redis at {where} answers, but {why}", where=self.where, why=failure.getErrorMessage())
        else:
            # Away again: the nodes that hold the state get their time anew.
            self._empty_since = None
        # Redis answers in those two cases: said as such, not as unreachable.
        self._lost(_why(failure.value, self.where), answers=failure.check(_NothingToSeed, _SeedChanging) is not None)
        # The channel may still be up: try again rather than wait for it.
        self._retry_later()

    def _retry_sync(self, generation: int) -> None:
        if generation == self._generation and self._mode == DOWN and not self._stopping.is_set():
            self._resync()

    def _synced(self, loaded: tuple, generation: int) -> None:
        if generation != self._generation:
            # A newer load (the channel came back meanwhile) stands for this
            # one; what this one wrote to Redis is for it to say.
            self._superseded = _merged(self._superseded, loaded)
            return
        loaded, self._superseded = _merged(self._superseded, loaded), None
        snapshot, seeded, renewed, replaced, beaten = loaded
        lost = self._incarnation is not None and snapshot.incarnation != self._incarnation
        if not lost and snapshot.seq < self._applied:
            # Same data, fewer changes: Redis came back from a file that
            # missed its latest writes.  Offsets this node handed out may be
            # given again, so every epoch must change: renew, then load.
            self._log.warn(
                "Redis at {where} lost its latest changes (it is at change {seq}, this node saw {applied}): "
                "pub/sub epochs change",
                where=self.where, seq=snapshot.seq, applied=self._applied,
            )
            renewed = self._run(self.state.renew, snapshot.incarnation, secrets.token_urlsafe(12),
                                secrets.token_urlsafe(6))
            renewed.addErrback(lambda f: self._log.failure("renewing the epochs in Redis", f))
            renewed.addCallback(lambda _: self._resync() if generation == self._generation else None)
            return
        # New data: the plugs it does not hold go (_catch_up), so that every
        # node lists the same.
        dropped = _missing(self.hub.plugs(), snapshot) if lost else 0
        if seeded is not None and self._empty_since is not None:
            # It waited (it had no state of its own) for a node with a copy.
            self._log.warn(
                "Redis at {where} stayed empty for {seconds:.0f} s and no node that has loaded a state is on it: "
                "seeded it with an empty state (no plugs, display off); changes accepted",
                where=self.where, seconds=self._now() - self._empty_since,
            )
        elif replaced:
            self._log.warn(
                "Redis at {where} held an empty state seeded by a node without a copy, and no change since: "
                "replaced it with this node's copy ({count} plugs){epochs}",
                where=self.where, count=seeded, epochs="; pub/sub epochs change" if lost else "",
            )
        elif seeded is not None and self._no_copy:
            self._log_empty_seed()
        elif seeded is not None:
            self._log.warn(
                "Redis at {where} held no state: seeded it with this node's copy ({count} plugs){epochs}",
                where=self.where, count=seeded, epochs="; pub/sub epochs change" if lost else "",
            )
        elif renewed:
            self._log_restarted(dropped)
        elif lost and self._no_copy and not snapshot.empty_seed:
            self._log.warn(
                "Redis at {where} holds a node's copy now, in place of the empty state this node had loaded: "
                "loaded it ({count} plugs); pub/sub epochs change",
                where=self.where, count=len(snapshot.plugs),
            )
        elif lost and beaten:
            self._log.warn(
                "Redis at {where} holds another node's copy, which won over this node's: loaded it ({count} "
                "plugs){dropped}; pub/sub epochs change",
                where=self.where, count=len(snapshot.plugs), dropped=_dropped_text(dropped),
            )
        elif lost:
            self._log.warn(
                "Redis at {where} holds other data than this node had loaded (it lost that data, or may have lost "
                "its latest changes, since): loaded it ({count} plugs){dropped}; pub/sub epochs change",
                where=self.where, count=len(snapshot.plugs), dropped=_dropped_text(dropped),
            )
        if lost:
            # Changes made on the data Redis lost may still be on their
            # way: they come before the new data's, which stand for them.
            self._left.append(self._incarnation)
        self._incarnation = snapshot.incarnation
        self._no_copy = _holds_nothing(snapshot)
        self._empty_since = None
        # The node's first state (Redis was unreachable at its start).
        first = not self.hub.display_known
        self._catch_up(snapshot, lost)
        self._applied = snapshot.seq
        self._streams_read(snapshot)
        self._mode = UP
        self._retry_delay = 0.5
        self.link.went_up()
        self._share_bans_again(snapshot.bans)
        if self._away:
            self._away = False
            self.hub.store_back()
            self._log.info(
                "Redis at {where} answers: state loaded ({count} plugs), changes accepted" if first else
                "Redis at {where} is back: state loaded ({count} plugs), changes accepted again",
                where=self.where, count=len(snapshot.plugs),
            )
        # Changes committed under the old data came before the new data on
        # the channel; the snapshot stands for them.  A notice that the data
        # just loaded was replaced since still counts.
        buffered = [c for c in self._buffer
                    if c.get("incarnation") in (None, self._incarnation) or c.get("replaced") == self._incarnation]
        self._buffer = []
        for change in buffered:
            if self._mode == UP:
                self._take(change)
            else:
                self._buffer.append(change)

    def _catch_up(self, snapshot: Snapshot, lost: bool) -> None:
        """
        Apply what changed in Redis while this node was not listening, as if
        the changes had come one by one (apps, devices and subscribers are
        told).  After Redis lost its data, the pub/sub streams are Redis'
        alone: every other event gets a new epoch at its next publication;
        and its plugs too: the hub drops the others (L{Hub.keep_plugs}).
        A node's first load takes Redis' streams as they are: their
        publications came before anyone subscribed here (the recoveries
        asked meanwhile are answered once it is loaded).
        """
        hub = self.hub
        history = hub.pubsub.history
        if not hub.display_known:
            history.restore(snapshot.streams, replace=True)
        elif lost:
            # Every publication of the new data was made after another node
            # seeded it, so none reached this node's subscribers: they get
            # them now, where they are all still kept.
            history.restore([], replace=True)
            for event, epoch, latest, kept in snapshot.streams:
                if kept and kept[0][0] == 1 and kept[-1][0] == latest:
                    for number, data_json, created_at in kept:
                        hub.apply_publication(Publication(event, number, epoch, data_json, created_at),
                                              json.loads(data_json))
                else:
                    history.restore([(event, epoch, latest, kept)])
        else:
            for event, epoch, latest, kept in snapshot.streams:
                offset, mine = history.position(event)
                if mine == epoch and offset < latest and kept and kept[0][0] <= offset + 1:
                    for number, data_json, created_at in kept:
                        if number > offset:
                            hub.apply_publication(
                                Publication(event, number, epoch, data_json, created_at), json.loads(data_json)
                            )
                elif (offset, mine) != (latest, epoch):
                    # Too far behind (or another epoch): take Redis' copy;
                    # subscribers that resume learn it from the epoch.
                    history.restore([(event, epoch, latest, kept)])
        for plug_id, value, at, source in snapshot.plugs:
            mine = hub.plug(plug_id)
            if mine is None or (mine.value, mine.updated_at) != (value, at):
                hub.apply_report(plug_id, value, at, source, "Redis")
        if lost:
            # Other data (another node's copy won over this node's, or Redis
            # lost changes): its plugs, in its order, and no others, as on
            # every node.  A plug kept here would be listed on this node
            # alone, and seeded back at the next loss.
            hub.keep_plugs([plug[0] for plug in snapshot.plugs])
        display = self._display_of(snapshot)
        if display is not None and display != hub.display():
            hub.apply_display(display, "Redis")
        elif not hub.display_known:
            # Devices that connected before the first load were sent none:
            # they get it now (off, if no one ever set it).
            hub.apply_display(hub.display() if display is None else display, "Redis")
        # Changes missed meanwhile may have set them: Redis' copy, as a node
        # that starts now loads it, so that every node agrees.
        hub.remember(self._last_on_of(snapshot))
        hub.display_known = True
        self._share_bans(snapshot)

    def _display_of(self, snapshot: Snapshot) -> Optional[Display]:
        if snapshot.display is None:
            return None
        try:
            display = validate_display(snapshot.display)
        except InvalidDisplay:
            self._log.warn("the display state in Redis is not valid; ignored")
            return None
        return display if isinstance(display, Display) else None

    def _last_on_of(self, snapshot: Snapshot) -> LastOn:
        last_on, problems = remembered(snapshot.last_on, snapshot.last_colour)
        for why in problems:
            self._log.warn("Redis at {where}: {why}; ignored", where=self.where, why=why)
        return last_on

    def _share_bans(self, snapshot: Snapshot) -> None:
        now = self._clock.seconds()
        over = []
        for address, (until, _seconds) in snapshot.bans.items():
            if until > now:
                self.bans.banned_elsewhere(address, until - now)
            else:
                over.append(address)
        if over:
            self._run(self.state.lift_bans, over).addErrback(lambda f: None)

    def _share_bans_again(self, in_redis: dict) -> None:
        """
        Share again the bans this node holds that Redis (holding
        C{in_redis}, address -> C{(until, seconds)}) does not: made while
        it was away, or lost with its data.  Every node, and every node
        that starts later, has them then (SPEC 11).  Not on an empty seed
        that no change made a state yet: a ban would end it (the first
        change that does so calls this again).
        """
        if self._no_copy or self._mode != UP:
            return
        now = self._clock.seconds()
        for host, until in self.bans.held():
            # Redis may hold an older ban of the same address, ended or
            # about to (the nodes' ends of one ban differ by milliseconds).
            # A ban on its way was queued on the Redis thread after what
            # Redis was read for this: it comes after it.
            held = in_redis.get(host, (0, 0))[0] + _BAN_END_SLACK
            if until <= max(now, held) or host in self.bans.sharing:
                continue
            self._log.info(
                "Redis at {where} does not hold the ban on {peer} this node holds: shared it again ({seconds:.0f} s "
                "left)", where=self.where, peer=host, seconds=until - now,
            )
            self.bans.share(host, until, until - now)

    def _lost(self, why: str, answers: bool = False) -> None:
        """
        Changes cannot be committed: Redis does not answer, or (C{answers})
        answers but holds no state this node can load yet (the caller said
        so in the log).
        """
        self._generation += 1
        self._mode = DOWN
        self._unanswered.set()
        self._buffer = []
        self.link.went_down(why, answers=answers)
        if not self._away:
            self._away = True
            if not answers:
                self._log.warn(
                    "Redis at {where} unreachable ({why}): changes answer 503 until it answers again; "
                    "serving this node's last copy",
                    where=self.where, why=why,
                )
        state = "answers, but holds no state this node can load yet" if answers else "unreachable"
        self._fail_pending(f"Redis at {self.where} {state}", StoreAway)

    # -- presence ------------------------------------------------------------

    def _show_presence(self) -> None:
        """
        (Every interval) write this node's connections to Redis and take the
        other live nodes' into the info frame.
        """
        if self._mode == DOWN or self._showing:
            # Down, or the last write still waits for Redis: skip a turn.
            return
        try:
            listing = json.dumps(self.hub.pubsub.listing(), separators=(",", ":"))
        except Exception:
            self._log.failure("listing this node's connections")
            return
        ttl = self.presence_interval * REDIS_PRESENCE_TTL_FACTOR
        self._showing = True
        shown = self._run(self._answered(self.state.show_node), self.node_id, listing, ttl)
        shown.addBoth(self._shown)
        shown.addCallbacks(self.hub.pubsub.show_elsewhere, self._presence_failed)

    def _shown(self, result):
        self._showing = False
        return result

    def _presence_failed(self, failure) -> None:
        # Also how a Redis that hangs, with no change to commit, is noticed.
        if failure.check(redis.RedisError, OSError):
            self._unreachable_if_so(failure)
        else:
            self._log.failure("sharing this node's connections", failure)


def _missing(plugs: list, snapshot: Snapshot) -> int:
    """
    How many of C{plugs} C{snapshot} does not hold.
    """
    held = {plug[0] for plug in snapshot.plugs}
    return sum(1 for plug in plugs if plug.id not in held)


def _merged(earlier: Optional[tuple], later: tuple) -> tuple:
    """
    The outcome of a load (see L{RedisEngine._load}) C{later}, with what
    the overtaken load C{earlier} did if C{later} found the data it left:
    the seed it wrote or the epochs it renewed are this node's doing, not
    other data found.
    """
    if earlier is None or earlier[0].incarnation != later[0].incarnation:
        return later
    snapshot, seeded, renewed, replaced, beaten = later
    return (snapshot, earlier[1] if seeded is None else seeded, renewed or earlier[2], replaced or earlier[3],
            beaten or earlier[4])


def _dropped_text(dropped: int, joint: str = " and ") -> str:
    """
    What the log says of the plugs of this node's copy that the data it
    loads does not hold (nothing when there are none).
    """
    return f"{joint}dropped this node's {dropped} plugs that Redis does not hold" if dropped else ""


def _holds_nothing(snapshot: Snapshot) -> bool:
    """
    C{snapshot} is an empty seed that holds nothing at all (a node of an
    older version may have committed changes on it without clearing its
    mark): a node that loaded it has no copy of its own.
    """
    return snapshot.empty_seed and not (snapshot.plugs or snapshot.display is not None or snapshot.bans
                                        or snapshot.streams)


def _why(error: BaseException, where: str) -> str:
    """
    Why Redis at C{where} is taken as away, for the log: its own words,
    and what to check for a refused password (redis-py counts that as a
    connection error, and it is retried like one: the password may be set
    right in Redis while the node waits) or a TLS handshake that never
    ends (C{rediss://} to Redis' plain port), or a database number past
    the ones that Redis has.
    """
    if isinstance(error, redis.AuthenticationError):
        return f"it refuses the user name or password in REDIS_URL: {str(error).rstrip('.')}"
    if "DB index is out of range" in str(error):
        return (f"{error}: it has fewer databases (its 'databases' setting, 16 by default, numbered from 0) than the "
                "number that ends REDIS_URL")
    if isinstance(error, redis.TimeoutError) and where.startswith("rediss:") and str(error).startswith("Timeout connecting"):
        return f"{error}; rediss:// speaks TLS: is that Redis' TLS port?"
    return str(error)
