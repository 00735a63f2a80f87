"""
The shared state in Redis (SPEC 11): key names, the Lua scripts that commit
one change atomically, the snapshot a node loads, and the presence lists.

Every commit is one Lua script, so Redis runs it whole or not at all and in
one order for all nodes: it checks that Redis still holds the data this node
loaded (the I{incarnation}) and that Redis has not restarted since the data
was last checked (the I{run}), takes the next number of the global sequence,
writes the state and history, and publishes the change, numbered, on
L{CHANNEL}.  Every node (the one that committed too) applies the changes in
the order of that channel.

Blocking calls: everything here runs on the Redis engine's own thread
(L{redis_engine.RedisEngine}), never on the reactor thread.  It knows nothing
of Twisted.

Keys (all under C{smartplug:}; one Redis database, not Redis Cluster):

    incarnation        random id made when the data was first written; a
                       Redis that lost its data has none (or a new one)
    run                the run_id (INFO server) of the Redis process the
                       data was last checked under: another one means
                       Redis restarted since, and may have come back from
                       a file that misses the latest writes (SPEC 3.6)
    seq                the number of the last change
    plugs              hash: plug id -> JSON [value, at, source]
    plug-order         sorted set: plug id by the sequence number of its
                       first report (GET /plugs lists plugs in that order)
    history:<plug id>  list of JSON [value, at, source], newest first
    display            JSON of the display state
    bans               hash: address -> JSON [until, seconds]
    node:<id>          one node's connections (JSON), expiring
    nodes              set of node ids that wrote a node:<id> key
    events             set of pub/sub events that have a stream
    event:<E>          hash: epoch, offset (the newest) of event E
    stream:<E>         stream of E's kept publications, id "<offset>-1",
                       fields d (the data as JSON) and t (created at);
                       at most PUBSUB_HISTORY entries, expiring after
                       PUBSUB_HISTORY_SECONDS without a publication
"""

import dataclasses
import json
from typing import Optional

import redis

from ..core.journal import HistoryEntry

PREFIX = "smartplug:"
CHANNEL = PREFIX + "changes"
INCARNATION = PREFIX + "incarnation"
RUN = PREFIX + "run"
SEQ = PREFIX + "seq"
PLUGS = PREFIX + "plugs"
PLUG_ORDER = PREFIX + "plug-order"
DISPLAY = PREFIX + "display"
BANS = PREFIX + "bans"
NODES = PREFIX + "nodes"
EVENTS = PREFIX + "events"


def history_key(plug_id: str) -> str:
    return PREFIX + "history:" + plug_id


def node_key(node_id: str) -> str:
    return PREFIX + "node:" + node_id


def event_key(event: str) -> str:
    return PREFIX + "event:" + event


def stream_key(event: str) -> str:
    return PREFIX + "stream:" + event


class Stale(Exception):
    """
    Redis no longer holds the data this node loaded (it lost it, or another
    node re-created it): nothing was written; the node must load again.
    """


# The run_id of this Redis process: it changes at every start of Redis.
_RUN_ID = """
local function run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end
"""

# KEYS[1] incarnation, KEYS[2] seq, KEYS[#KEYS] run; ARGV[1] the incarnation
# this node loaded, ARGV[2] the channel, ARGV[3] the change as a JSON object,
# which the message gets with "seq" put first.  A Redis that restarted since
# the data was last checked takes no change until a node has loaded it again
# (and renewed the epochs if Redis may have lost writes): offsets handed out
# before may be given again.
_PRELUDE = _RUN_ID + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('STALE Redis holds other data than this node loaded')
end
if redis.call('GET', KEYS[#KEYS]) ~= run_id() then
  return redis.error_reply('STALE Redis restarted since its data was last loaded')
end
local seq = redis.call('INCR', KEYS[2])
local function announce(extra)
  redis.call('PUBLISH', ARGV[2], '{"seq":' .. seq .. ',' .. extra .. string.sub(ARGV[3], 2))
end
"""

# KEYS[3] plugs, KEYS[4] plug-order, KEYS[5] history:<id>;
# ARGV[4] plug id, ARGV[5] JSON [value, at, source], ARGV[6] history entry
# (the same), ARGV[7] keep
_REPORT = _PRELUDE + """
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[4], 'NX', seq, ARGV[4])
redis.call('LPUSH', KEYS[5], ARGV[6])
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[7]) - 1)
announce('')
return seq
"""

# KEYS[3] display; ARGV[4] the state
_DISPLAY = _PRELUDE + """
redis.call('SET', KEYS[3], ARGV[4])
announce('')
return seq
"""

# Nothing to keep: a one-off display command.
_ANNOUNCE = _PRELUDE + """
announce('')
return seq
"""

# KEYS[3] bans; ARGV[4] address, ARGV[5] JSON [until, seconds]
_BAN = _PRELUDE + """
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
announce('')
return seq
"""

# Numbers one publication: its event's epoch (C{epoch} if it has none yet)
# and next offset; keeps it in the event's stream when C{keep} > 0, for
# C{ttl} milliseconds.  Returns the offset and the epoch.
_NUMBER = """
local function number(meta, stream, events, event, epoch, data, created, keep, ttl)
  local current = redis.call('HGET', meta, 'epoch')
  if not current then
    current = epoch
    redis.call('HSET', meta, 'epoch', current)
  end
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  redis.call('SADD', events, event)
  if tonumber(keep) > 0 then
    redis.call('XADD', stream, 'MAXLEN', keep, offset .. '-1', 'd', data, 't', created)
    redis.call('PEXPIRE', stream, ttl)
  end
  return offset, current
end
local function numbered(offset, epoch)
  return '"offset":' .. offset .. ',"epoch":' .. cjson.encode(epoch) .. ','
end
"""

# KEYS[3] event:<E>, KEYS[4] stream:<E>, KEYS[5] events; ARGV[4] the event,
# ARGV[5] an epoch for an event that has none yet, ARGV[6] the data as JSON,
# ARGV[7] created at, ARGV[8] publications kept (0: none), ARGV[9] for how
# many milliseconds.  The offset and epoch go into the message before the
# change's own fields.
_PUBLICATION = _PRELUDE + _NUMBER + """
local offset, epoch = number(KEYS[3], KEYS[4], KEYS[5], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
announce(numbered(offset, epoch))
return {seq, offset, epoch}
"""

# A report and its publication (event smartplug) in one commit: the keys and
# arguments of _REPORT, then KEYS[6..8] and ARGV[8..13] as _PUBLICATION's.
_REPORT_PUBLISHED = _PRELUDE + _NUMBER + """
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[4], 'NX', seq, ARGV[4])
redis.call('LPUSH', KEYS[5], ARGV[6])
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[7]) - 1)
local offset, epoch = number(KEYS[6], KEYS[7], KEYS[8], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13])
announce(numbered(offset, epoch))
return {seq, offset, epoch}
"""

# Every event's epoch, newest offset and kept publications; the events set
# is KEYS[7], the key prefix ARGV[1] (the event keys are built here, so this
# is one Redis, not Redis Cluster).
_STREAMS = """
local streams = {}
for _, event in ipairs(redis.call('SMEMBERS', KEYS[7])) do
  local meta = redis.call('HMGET', ARGV[1] .. 'event:' .. event, 'epoch', 'offset')
  if meta[1] then
    table.insert(streams, {event, meta[1], meta[2] or '0', redis.call('XRANGE', ARGV[1] .. 'stream:' .. event, '-', '+')})
  end
end
"""

# KEYS[3] bans; ARGV[4] address
_LIFT = _PRELUDE + """
redis.call('HDEL', KEYS[3], ARGV[4])
announce('')
return seq
"""

# KEYS: incarnation, seq, plugs, plug-order, display, bans, events, run;
# ARGV[1] the key prefix.  One script, so the state, the streams and the
# sequence number they reach are read at one instant.  The last item is 1
# when Redis restarted since the data was last checked.
_SNAPSHOT = _RUN_ID + """
local incarnation = redis.call('GET', KEYS[1])
if not incarnation then return false end
""" + _STREAMS + """
local restarted = 0
if redis.call('GET', KEYS[8]) ~= run_id() then restarted = 1 end
return {incarnation, redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[3]),
        redis.call('ZRANGE', KEYS[4], 0, -1), redis.call('GET', KEYS[5]) or '',
        redis.call('HGETALL', KEYS[6]), streams, restarted}
"""

# KEYS: incarnation, plugs, plug-order, display, run; ARGV[1] the new
# incarnation, ARGV[2] JSON [[id, "JSON [value, at, source]"], ...] (the
# states as strings: cjson would round the times to 14 digits), ARGV[3] the
# display state or ''.  Seeds an empty Redis with a node's copy, once.
_INITIALISE = _RUN_ID + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[5], run_id())
for i, plug in ipairs(cjson.decode(ARGV[2])) do
  redis.call('HSET', KEYS[2], plug[1], plug[2])
  redis.call('ZADD', KEYS[3], i, plug[1])
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[4], ARGV[3]) end
return 1
"""


# KEYS: incarnation, events, run; ARGV[1] the incarnation the node loaded,
# ARGV[2] a new one, ARGV[3] a new epoch's prefix, ARGV[4] the key prefix.
# For a Redis that lost its latest changes but not all (an append-only file
# synced every second, a snapshot file), or may have: new epochs for every
# event, its kept publications dropped (their offsets may be given again),
# once; the data is checked under this Redis process from then on.
_RENEW = _RUN_ID + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[3], run_id())
for i, event in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('HSET', ARGV[4] .. 'event:' .. event, 'epoch', ARGV[3] .. i)
  redis.call('DEL', ARGV[4] .. 'stream:' .. event)
end
return 1
"""

# KEYS: incarnation, run; ARGV[1] the incarnation the node loaded.  A Redis
# that restarted without losing a write (it persists every one): the data
# is checked under this Redis process from then on, epochs unchanged.
_CHECKED = _RUN_ID + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], run_id())
return 1
"""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """
    Everything a node loads from Redis, read atomically.

    @ivar seq: the number of the last change it includes.
    @ivar plugs: C{[(id, value, at, source)]} in first-report order.
    @ivar display: the display state as JSON (C{validate_display} reads it),
        or C{None} if never set.
    @ivar bans: C{{address: (until, seconds)}}.
    @ivar streams: the pub/sub streams, C{[(event, epoch, newest offset,
        [(offset, data_json, created_at), ...] oldest first)]}, as
        C{History.restore} takes them.
    @ivar restarted: Redis restarted since the data was last checked (see
        L{RedisState.checked} and L{RedisState.renew}): it may have lost
        its latest writes.
    """

    incarnation: str
    seq: int
    plugs: list
    display: Optional[dict]
    bans: dict
    streams: list
    restarted: bool = False


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _stream(event, epoch, offset, entries) -> tuple:
    kept = []
    for entry_id, fields in entries:
        values = _pairs(fields)
        kept.append((int(_text(entry_id).split("-")[0]), values["d"], float(values["t"])))
    return _text(event), _text(epoch), int(offset), kept


def _pairs(flat: list) -> dict:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


class RedisState:
    """
    The blocking operations on the shared state, on one C{redis.Redis}
    client (thread-safe; its pool holds the connections).
    """

    def __init__(self, client) -> None:
        self.client = client
        self._report = client.register_script(_REPORT)
        self._display = client.register_script(_DISPLAY)
        self._announce = client.register_script(_ANNOUNCE)
        self._ban = client.register_script(_BAN)
        self._lift = client.register_script(_LIFT)
        self._publication = client.register_script(_PUBLICATION)
        self._report_published = client.register_script(_REPORT_PUBLISHED)
        self._snapshot = client.register_script(_SNAPSHOT)
        self._initialise = client.register_script(_INITIALISE)
        self._renew = client.register_script(_RENEW)
        self._checked = client.register_script(_CHECKED)

    def _commit(self, script, keys: list, incarnation: str, change: str, *args):
        try:
            return script(keys=[INCARNATION, SEQ, *keys, RUN], args=[incarnation, CHANNEL, change, *args])
        except redis.ResponseError as e:
            if str(e).startswith("STALE"):
                raise Stale(str(e)) from None
            raise

    def commit_report(self, incarnation: str, change: str, plug_id: str, value: int, at: float,
                      source: str, keep: int, publication: Optional[tuple] = None):
        """
        Write a plug's new state and history entry and publish C{change};
        with C{publication}, C{(event, epoch, data_json, created_at, keep,
        seconds)} as L{commit_publication} takes them, number and keep the
        report's publication in the same commit.

        @return: the change's sequence number; with C{publication},
            C{(seq, offset, epoch)}.
        @raise Stale: Redis no longer holds this node's incarnation.
        """
        state = json.dumps([value, at, source])
        keys = [PLUGS, PLUG_ORDER, history_key(plug_id)]
        args = [plug_id, state, state, keep]
        if publication is None:
            return int(self._commit(self._report, keys, incarnation, change, *args))
        event, epoch, data_json, created_at, kept, seconds = publication
        seq, offset, epoch = self._commit(
            self._report_published, keys + [event_key(event), stream_key(event), EVENTS], incarnation, change,
            *args, event, epoch, data_json, repr(created_at), kept, max(1, int(seconds * 1000)),
        )
        return int(seq), int(offset), _text(epoch)

    def commit_display(self, incarnation: str, change: str, state: str) -> int:
        """
        Write the display state (JSON) and publish C{change}.
        """
        return int(self._commit(self._display, [DISPLAY], incarnation, change, state))

    def commit_announcement(self, incarnation: str, change: str) -> int:
        """
        Publish C{change}, which changes no state (a display command).
        """
        return int(self._commit(self._announce, [], incarnation, change))

    def commit_ban(self, incarnation: str, change: str, address: str, until: float, seconds: float) -> int:
        """
        Record a ban of C{address} until C{until} and publish C{change}.
        """
        return int(self._commit(self._ban, [BANS], incarnation, change, address, json.dumps([until, seconds])))

    def commit_publication(self, incarnation: str, change: str, event: str, epoch: str, data_json: str,
                           created_at: float, keep: int, seconds: float) -> tuple:
        """
        Number a publication of C{event} (its epoch is C{epoch} if the event
        has none yet), keep it (the newest C{keep}, for C{seconds}) and
        publish C{change} with its offset and epoch.

        @return: C{(seq, offset, epoch)}.
        """
        seq, offset, epoch = self._commit(
            self._publication, [event_key(event), stream_key(event), EVENTS], incarnation, change,
            event, epoch, data_json, repr(created_at), keep, max(1, int(seconds * 1000)),
        )
        return int(seq), int(offset), _text(epoch)

    def commit_lift(self, incarnation: str, change: str, address: str) -> int:
        """
        Forget the ban of C{address} (lifted by hand) and publish C{change}.
        """
        return int(self._commit(self._lift, [BANS], incarnation, change, address))

    def snapshot(self) -> Optional[Snapshot]:
        """
        The whole shared state, or C{None} when Redis holds none (empty, or
        it lost its data).
        """
        found = self._snapshot(keys=[INCARNATION, SEQ, PLUGS, PLUG_ORDER, DISPLAY, BANS, EVENTS, RUN], args=[PREFIX])
        if found is None:
            return None
        incarnation, seq, states, order, display, bans, streams, restarted = found
        states = _pairs(states)
        plugs = []
        for plug_id in map(_text, order):
            state = states.get(plug_id)
            if state is not None:
                plugs.append((plug_id, *json.loads(state)))
        display = _text(display)
        return Snapshot(
            _text(incarnation), int(seq), plugs, json.loads(display) if display else None,
            {address: tuple(json.loads(ban)) for address, ban in _pairs(bans).items()},
            [_stream(*found) for found in streams], bool(restarted),
        )

    def initialise(self, incarnation: str, plugs: list, display: Optional[str]) -> bool:
        """
        Seed a Redis that holds no state with C{incarnation}, C{plugs}
        (C{[(id, value, at, source)]}) and the C{display} state (JSON), unless
        another node did first.

        @return: True when this call seeded it.
        """
        seed = json.dumps([[plug[0], json.dumps(list(plug[1:]))] for plug in plugs])
        return bool(self._initialise(keys=[INCARNATION, PLUGS, PLUG_ORDER, DISPLAY, RUN],
                                     args=[incarnation, seed, display or ""]))

    def renew(self, incarnation: str, new_incarnation: str, epoch_prefix: str) -> bool:
        """
        Give every event a new epoch (and drop its kept publications) under
        a new incarnation, unless another node did already; the data counts
        as checked under the running Redis process.

        @return: True when this call did.
        """
        return bool(self._renew(keys=[INCARNATION, EVENTS, RUN],
                                args=[incarnation, new_incarnation, epoch_prefix, PREFIX]))

    def checked(self, incarnation: str) -> bool:
        """
        Count the data of C{incarnation} as checked under the running Redis
        process, epochs unchanged (it restarted without losing a write),
        unless Redis holds other data by now.

        @return: True when this call did.
        """
        return bool(self._checked(keys=[INCARNATION, RUN], args=[incarnation]))

    def persists_every_write(self) -> bool:
        """
        True when Redis writes every change to its append-only file before
        it answers (C{appendonly yes}, C{appendfsync always}), so that a
        restart loses nothing it took; False when it does not, or when it
        cannot be told (C{CONFIG} refused, as some hosted Redis do).
        """
        try:
            if self.client.info("persistence").get("aof_enabled") != 1:
                return False
            return _text(self.client.config_get("appendfsync").get("appendfsync", "")) == "always"
        except redis.ResponseError:
            return False

    def history(self, plug_id: str, limit: int) -> list:
        """
        At most C{limit} L{HistoryEntry}s of the plug, newest first.
        """
        return [HistoryEntry(*json.loads(e)) for e in self.client.lrange(history_key(plug_id), 0, limit - 1)]

    def lift_bans(self, addresses: list) -> None:
        """
        Forget bans that have run out.
        """
        if addresses:
            self.client.hdel(BANS, *addresses)

    def show_node(self, node_id: str, listing: str, ttl: float) -> list:
        """
        Publish this node's connections (C{listing}, JSON) for C{ttl}
        seconds, and read the other live nodes'.

        @return: the other nodes' listings, decoded.
        """
        with self.client.pipeline(transaction=False) as pipe:
            pipe.set(node_key(node_id), listing, px=max(1, int(ttl * 1000)))
            pipe.sadd(NODES, node_id)
            pipe.smembers(NODES)
            members = pipe.execute()[2]
        others = sorted(_text(m) for m in members if _text(m) != node_id)
        if not others:
            return []
        listings = self.client.mget([node_key(n) for n in others])
        gone = [n for n, listing in zip(others, listings, strict=True) if listing is None]
        if gone:
            # Expired: the node stopped refreshing (it died).
            self.client.srem(NODES, *gone)
        return [json.loads(listing) for listing in listings if listing is not None]

    def other_nodes(self, node_id: str) -> list:
        """
        The ids of the other nodes whose presence has not expired.
        """
        others = sorted(_text(m) for m in self.client.smembers(NODES) if _text(m) != node_id)
        if not others:
            return []
        listings = self.client.mget([node_key(n) for n in others])
        return [n for n, listing in zip(others, listings, strict=True) if listing is not None]

    def hide_node(self, node_id: str) -> None:
        """
        Remove this node's listing at once (a clean stop).
        """
        with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(node_key(node_id))
            pipe.srem(NODES, node_id)
            pipe.execute()
