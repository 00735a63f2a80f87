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
    empty-seed         the incarnation, while it is an I{empty seed}: made
                       by a node without a copy of its own (no plugs, no
                       display), and no change to the state committed on
                       it since (the first one deletes this key; a display
                       command or an authentication failure, which change
                       no state, do not).  A node that holds a copy puts
                       it in place of such a seed (L{RedisState.replace})
                       instead of loading it.
    seq                the number of the last change
    plugs              hash: plug id -> JSON [value, at, source]
    plug-order         sorted set: plug id by the sequence number of its
                       first report (GET /plugs lists plugs in that order);
                       the plugs of a seed by 0 and below, in its order
    history:<plug id>  list of JSON [value, at, source], newest first
    display            JSON of the display state
    last-on            JSON of the last display state that was not off
                       (SPEC 12: a bare ON restores it), written with it
    last-colour        JSON of the last colour state (mode 2), whose pulse
                       a new colour keeps, written with it
    bans               hash: address -> JSON [until, seconds]
    node:<id>          one node's connections (JSON), expiring
    nodes              set of node ids that wrote a node:<id> key
    events             set of pub/sub events that have a stream
    event:<E>          hash: epoch, offset (the newest) of event E, and
                       bytes: the data bytes its stream holds
    stream:<E>         stream of E's kept publications, id "<offset>-1",
                       fields d (the data as JSON) and t (created at);
                       at most PUBSUB_HISTORY entries, expiring after
                       PUBSUB_HISTORY_SECONDS without a publication
    kept-bytes         the data bytes of every stream together: at most
                       PUBSUB_HISTORY_BYTES, as on a single node
    holding            sorted set: the events whose stream holds (or
                       held) publications, by the sequence number of
                       their newest one: the least recently published
                       lose their oldest first when kept-bytes is over
    published          sorted set: the events published since this
                       version, by the sequence number of their newest
                       publication; past PUBSUB_STREAMS the least
                       recently published is forgotten (numbering,
                       epoch, stream), as on a single node
    seen               a Bloom filter (2**20 bits) of every event ever
                       numbered: one forgotten and published again gets a
                       new epoch, never one it may have had (a false
                       positive only gives a new event a new epoch too)

A node loads the streams in pieces (L{RedisState.snapshot}), not in one
script: a script's reply is built while Redis serves no one else.
"""

import dataclasses
import json
import time
from typing import Optional

import redis

from ..core.journal import HistoryEntry
from ..core.limits import PUBSUB_HISTORY_BYTES, PUBSUB_STREAMS, REDIS_COMMAND_TIMEOUT

PREFIX = "smartplug:"
CHANNEL = PREFIX + "changes"
INCARNATION = PREFIX + "incarnation"
RUN = PREFIX + "run"
EMPTY_SEED = PREFIX + "empty-seed"
SEQ = PREFIX + "seq"
PLUGS = PREFIX + "plugs"
PLUG_ORDER = PREFIX + "plug-order"
DISPLAY = PREFIX + "display"
LAST_ON = PREFIX + "last-on"
LAST_COLOUR = PREFIX + "last-colour"
BANS = PREFIX + "bans"
NODES = PREFIX + "nodes"
EVENTS = PREFIX + "events"
KEPT_BYTES = PREFIX + "kept-bytes"
HOLDING = PREFIX + "holding"
PUBLISHED = PREFIX + "published"
SEEN = PREFIX + "seen"

# Loading the streams: events asked for per script call, and the data
# (bytes) after which a call stops taking further events (an event's
# stream is never split: at most PUBSUB_HISTORY publications of at most
# 64 KiB).  Each call is a short one for Redis.
STREAMS_PIECE_EVENTS = 100
STREAMS_PIECE_BYTES = 1024 * 1024
# Steps one publication may take to bring kept-bytes under the cap (each
# lets go of a whole stream, or drops up to _BOUND_BATCH of its oldest
# publications: enough for what is over, by their mean size), so that no
# script runs long; likewise the events one publication may forget (it adds
# at most one).
_BOUND_STEPS = 64
_BOUND_BATCH = 1000
_FORGET_STEPS = 16


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


class Late(redis.RedisError):
    """
    A change reached Redis after its deadline (L{RedisState.deadline}):
    nothing was written.
    """


# Seconds a change's deadline comes before the moment its node gives up on
# it: room for the error of the measured clock and for the answer's way
# back.
_DEADLINE_MARGIN = 0.5


# The run_id of this Redis process: it changes at every start of Redis.
# Every script asks for it before its first write: a Redis user that may not
# run INFO (it is in ACL's @dangerous), or a server whose INFO has no
# run_id, fails the script before it has changed anything.
_RUN_ID = """
local function run_id()
  local id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  if not id then error('INFO server gives no run_id') end
  return id
end
"""

# KEYS[1] incarnation, KEYS[2] seq, KEYS[#KEYS - 1] empty-seed, KEYS[#KEYS]
# run; ARGV[1] the incarnation this node loaded, ARGV[2] the channel,
# ARGV[3] the change as a JSON object, which the message gets with "seq"
# put first.  A Redis that restarted since the data was last checked takes
# no change until a node has loaded it again (and renewed the epochs if
# Redis may have lost writes): offsets handed out before may be given
# again.  A change whose object starts with {"before": T (T in Redis' own
# clock, as seconds) is refused past T: its node has answered 503 by then
# (Redis hung, or the network held the command back, and it went on).
_PRELUDE = _RUN_ID + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('STALE Redis no longer holds the data this node loaded')
end
if redis.call('GET', KEYS[#KEYS]) ~= run_id() then
  return redis.error_reply('STALE Redis restarted since its data was last loaded')
end
local before = tonumber(string.match(ARGV[3], '^{"before":([0-9.]+),'))
if before then
  local now = redis.call('TIME')
  local late = tonumber(now[1]) + tonumber(now[2]) / 1000000 - before
  if late > 0 then
    return redis.error_reply('LATE ' .. string.format('%.3f', late))
  end
end
local seq = redis.call('INCR', KEYS[2])
local function announce(extra)
  redis.call('PUBLISH', ARGV[2], '{"seq":' .. seq .. ',' .. extra .. string.sub(ARGV[3], 2))
end
"""

# A change to the state: in the same script, an empty seed stops being one
# (Redis' state is the one that counts from now on, as for any other).
_CHANGE = _PRELUDE + """
redis.call('DEL', KEYS[#KEYS - 1])
"""

# KEYS[3] plugs, KEYS[4] plug-order, KEYS[5] history:<id>;
# ARGV[4] plug id, ARGV[5] JSON [value, at, source], ARGV[6] history entry
# (the same), ARGV[7] keep
_REPORT = _CHANGE + """
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[4], 'NX', seq, ARGV[4])
redis.call('LPUSH', KEYS[5], ARGV[6])
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[7]) - 1)
announce('')
return seq
"""

# KEYS[3] display, KEYS[4] last-on, KEYS[5] last-colour; ARGV[4] the
# state, ARGV[5] and ARGV[6] what it is as the last state on and the last
# colour ('' when it is not one).  The state it replaces, if on, is written
# as the last state on (and a colour as the last colour) first: the same
# as already there when every node writes them, and what every node took
# as such from data written before they were kept (Hub.remember) or from a
# node of an older version, which does not write them.
_DISPLAY = _CHANGE + """
local old = redis.call('GET', KEYS[3])
if old then
  local ok, decoded = pcall(cjson.decode, old)
  local mode = ok and type(decoded) == 'table' and decoded.mode
  if mode == 1 or mode == 2 then redis.call('SET', KEYS[4], old) end
  if mode == 2 then redis.call('SET', KEYS[5], old) end
end
redis.call('SET', KEYS[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('SET', KEYS[4], ARGV[5]) end
if ARGV[6] ~= '' then redis.call('SET', KEYS[5], ARGV[6]) end
announce('')
return seq
"""

# Nothing to keep: a one-off display command, or an authentication failure
# counted.  No change to the state, so an empty seed stays one.
_ANNOUNCE = _PRELUDE + """
announce('')
return seq
"""

# KEYS[3] bans; ARGV[4] address, ARGV[5] JSON [until, seconds]
_BAN = _CHANGE + """
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
announce('')
return seq
"""

# Numbers one publication: its event's epoch (C{epoch} if it has none yet)
# and next offset; keeps it in the event's stream when C{keep} > 0, for
# C{ttl} milliseconds, and then drops the oldest publications of the least
# recently published events while all streams together hold more than
# C{max_bytes} of data (as History does on a single node).  Event and
# stream keys of other events are built from C{prefix} (one Redis, not
# Redis Cluster).  Returns the offset and the epoch.  Counts written before
# the counting began (an older version) are taken as 0, never below.
_NUMBER = """
local function release(meta, kept, freed)
  freed = math.min(freed, tonumber(redis.call('HGET', meta, 'bytes') or '0'))
  if freed <= 0 then return end
  redis.call('HINCRBY', meta, 'bytes', -freed)
  if redis.call('DECRBY', kept, freed) < 0 then redis.call('SET', kept, 0) end
end
local function drop_oldest(meta, stream, kept, count)
  -- Publications kept before the counting began (an older version: below
  -- the event's first counted offset, 'cfrom') were never counted, and
  -- take nothing off the counts when dropped.
  local counted_from = tonumber(redis.call('HGET', meta, 'cfrom') or '') or math.huge
  local freed = 0
  for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', count)) do
    if tonumber(string.match(entry[1], '^(%d+)')) >= counted_from then
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'd' then freed = freed + #fields[i + 1] end
      end
    end
    redis.call('XDEL', stream, entry[1])
  end
  release(meta, kept, freed)
end
local function let_go(meta, stream, kept, holding, event)
  -- An emptied or expired stream: whatever it was counted for goes.
  release(meta, kept, tonumber(redis.call('HGET', meta, 'bytes') or '0'))
  redis.call('HDEL', meta, 'bytes')
  redis.call('ZREM', holding, event)
  redis.call('DEL', stream)
end
local function bound(kept, holding, max_bytes, prefix)
  -- Each step frees what is over, not one publication: the oldest
  -- publications may be far smaller than the newest (plug reports beside a
  -- 60 KB one).  A stream holding no more than what is over goes whole;
  -- of a larger one, as many of its oldest as its mean size says are
  -- needed (at most _BOUND_BATCH a step).
  for _ = 1, """ + str(_BOUND_STEPS) + """ do
    local over = tonumber(redis.call('GET', kept) or '0') - max_bytes
    if over <= 0 then return end
    local oldest = redis.call('ZRANGE', holding, 0, 0)[1]
    if not oldest then
      redis.call('SET', kept, 0)
      return
    end
    local meta, stream = prefix .. 'event:' .. oldest, prefix .. 'stream:' .. oldest
    local length = redis.call('XLEN', stream)
    local bytes = tonumber(redis.call('HGET', meta, 'bytes') or '0')
    if length > 0 and bytes > over then
      local count = math.min(math.max(math.ceil(over * length / bytes), 1), """ + str(_BOUND_BATCH) + """)
      drop_oldest(meta, stream, kept, count)
      length = redis.call('XLEN', stream)
    end
    if length == 0 or bytes <= over then let_go(meta, stream, kept, holding, oldest) end
  end
end
local function seen_bits(event)
  local h = redis.sha1hex(event)
  return {tonumber(string.sub(h, 1, 5), 16), tonumber(string.sub(h, 6, 10), 16), tonumber(string.sub(h, 11, 15), 16)}
end
local function was_seen(seen, event)
  for _, bit in ipairs(seen_bits(event)) do
    if redis.call('GETBIT', seen, bit) == 0 then return false end
  end
  return true
end
local function forget(event, events, kept, holding, published, prefix)
  local meta = prefix .. 'event:' .. event
  release(meta, kept, tonumber(redis.call('HGET', meta, 'bytes') or '0'))
  redis.call('DEL', meta, prefix .. 'stream:' .. event)
  redis.call('SREM', events, event)
  redis.call('ZREM', holding, event)
  redis.call('ZREM', published, event)
end
-- KEYS[k..k+6]: event:<E>, stream:<E>, events, kept-bytes, holding,
-- published, seen; ARGV[a..a+8]: the event, an epoch for it if it has
-- none, the data, created at, publications kept, for how many ms, bytes
-- kept over all events, the key prefix, events kept.
local function number(k, a)
  local meta, stream, events, kept, holding, published, seen =
    KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]
  local event, data, prefix = ARGV[a], ARGV[a + 2], ARGV[a + 7]
  local current = redis.call('HGET', meta, 'epoch')
  if not current then
    current = ARGV[a + 1]
    if was_seen(seen, event) then
      -- Numbered before, then forgotten: its offsets start over, under
      -- an epoch it cannot have had.
      current = string.sub(redis.sha1hex(seq .. ':' .. event), 1, 8)
    end
    redis.call('HSET', meta, 'epoch', current)
  end
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  redis.call('SADD', events, event)
  if redis.call('ZADD', published, seq, event) == 1 then
    for _, bit in ipairs(seen_bits(event)) do redis.call('SETBIT', seen, bit, 1) end
    for _ = 1, """ + str(_FORGET_STEPS) + """ do
      if redis.call('ZCARD', published) <= tonumber(ARGV[a + 8]) then break end
      forget(redis.call('ZRANGE', published, 0, 0)[1], events, kept, holding, published, prefix)
    end
  end
  local keep = tonumber(ARGV[a + 4])
  if keep > 0 then
    if redis.call('EXISTS', stream) == 0 then
      -- Expired since: what it was counted for is gone.
      release(meta, kept, tonumber(redis.call('HGET', meta, 'bytes') or '0'))
    end
    redis.call('XADD', stream, offset .. '-1', 'd', data, 't', ARGV[a + 3])
    redis.call('HSETNX', meta, 'cfrom', offset)
    redis.call('HINCRBY', meta, 'bytes', #data)
    redis.call('INCRBY', kept, #data)
    local over = redis.call('XLEN', stream) - keep
    if over > 0 then drop_oldest(meta, stream, kept, over) end
    redis.call('PEXPIRE', stream, ARGV[a + 5])
    redis.call('ZADD', holding, seq, event)
    bound(kept, holding, tonumber(ARGV[a + 6]), prefix)
  end
  return offset, current
end
local function numbered(offset, epoch)
  return '"offset":' .. offset .. ',"epoch":' .. cjson.encode(epoch) .. ','
end
"""

# KEYS[3] event:<E>, KEYS[4] stream:<E>, KEYS[5] events, KEYS[6]
# kept-bytes, KEYS[7] holding, KEYS[8] published, KEYS[9] seen; ARGV[4] the
# event, ARGV[5] an epoch for an event that has none yet, ARGV[6] the data
# as JSON, ARGV[7] created at, ARGV[8] publications kept (0: none), ARGV[9]
# for how many milliseconds, ARGV[10] the data bytes kept over all events,
# ARGV[11] the key prefix, ARGV[12] the events kept.  The offset and epoch
# go into the message before the change's own fields.
_PUBLICATION = _CHANGE + _NUMBER + """
local offset, epoch = number(3, 4)
announce(numbered(offset, epoch))
return {seq, offset, epoch}
"""

# A report and its publication (event smartplug) in one commit: the keys and
# arguments of _REPORT, then KEYS[6..12] and ARGV[8..16] as _PUBLICATION's.
_REPORT_PUBLISHED = _CHANGE + _NUMBER + """
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[4], 'NX', seq, ARGV[4])
redis.call('LPUSH', KEYS[5], ARGV[6])
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[7]) - 1)
local offset, epoch = number(6, 8)
announce(numbered(offset, epoch))
return {seq, offset, epoch}
"""

# One piece of the streams: KEYS incarnation, seq; ARGV[1] the key prefix
# (the event keys are built here, so this is one Redis, not Redis Cluster),
# ARGV[2] the data bytes after which no further event is taken, ARGV[3..]
# events.  Returns the incarnation and sequence number it was read at, how
# many of the events it went through, and for those that have a stream
# their epoch, newest offset and kept publications.
_STREAMS = """
local streams = {}
local size = 0
local done = 0
for i = 3, #ARGV do
  local event = ARGV[i]
  done = done + 1
  local meta = redis.call('HMGET', ARGV[1] .. 'event:' .. event, 'epoch', 'offset')
  if meta[1] then
    local entries = redis.call('XRANGE', ARGV[1] .. 'stream:' .. event, '-', '+')
    table.insert(streams, {event, meta[1], meta[2] or '0', entries})
    for _, entry in ipairs(entries) do
      for _, field in ipairs(entry[2]) do size = size + #field end
    end
    if size >= tonumber(ARGV[2]) then break end
  end
end
return {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or '0', done, streams}
"""

# KEYS[3] bans; ARGV[4] address
_LIFT = _CHANGE + """
redis.call('HDEL', KEYS[3], ARGV[4])
announce('')
return seq
"""

# KEYS: incarnation, seq, plugs, plug-order, display, bans, run,
# empty-seed, last-on, last-colour.  One script, so the state and the
# sequence number it reaches are read at one instant (the streams are read
# in pieces before it: see RedisState.snapshot).  The seventh and eighth
# items are 1 when Redis restarted since the data was last checked, and
# when the data is an empty seed.
_SNAPSHOT = _RUN_ID + """
local incarnation = redis.call('GET', KEYS[1])
if not incarnation then return false end
local restarted = 0
if redis.call('GET', KEYS[7]) ~= run_id() then restarted = 1 end
local empty_seed = 0
if redis.call('GET', KEYS[8]) == incarnation then empty_seed = 1 end
return {incarnation, redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[3]),
        redis.call('ZRANGE', KEYS[4], 0, -1), redis.call('GET', KEYS[5]) or '',
        redis.call('HGETALL', KEYS[6]), restarted, empty_seed, redis.call('GET', KEYS[9]) or '',
        redis.call('GET', KEYS[10]) or ''}
"""

# KEYS: incarnation, plugs, plug-order, display, run, empty-seed, last-on,
# last-colour; ARGV[1] the new incarnation, ARGV[2] JSON [[id, "JSON
# [value, at, source]"], ...] (the states as strings: cjson would round the
# times to 14 digits), ARGV[3] the display state or '', ARGV[4] '1' for an
# empty seed (the node has no copy of its own), ARGV[5] and ARGV[6] the
# last state on and the last colour or ''.  Writes a seed, under the run_id
# C{run}.  The seeded plugs keep their order with scores up to 0: a plug
# whose first report comes later is ranked by that change's number, at
# least 1 (seq may be small: it goes on from an empty seed's), and so is
# listed after them, as it first reported after them.
_SEED = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[5], run)
local seeded = cjson.decode(ARGV[2])
for i, plug in ipairs(seeded) do
  redis.call('HSET', KEYS[2], plug[1], plug[2])
  redis.call('ZADD', KEYS[3], i - #seeded, plug[1])
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[4], ARGV[3]) end
if ARGV[4] == '1' then redis.call('SET', KEYS[6], ARGV[1]) else redis.call('DEL', KEYS[6]) end
if ARGV[5] ~= '' then redis.call('SET', KEYS[7], ARGV[5]) else redis.call('DEL', KEYS[7]) end
if ARGV[6] ~= '' then redis.call('SET', KEYS[8], ARGV[6]) else redis.call('DEL', KEYS[8]) end
"""

# The keys and arguments of _SEED.  Seeds an empty Redis with a node's copy,
# once.
_INITIALISE = _RUN_ID + """
local run = run_id()
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
""" + _SEED + """
return 1
"""

# The keys and arguments of _SEED, then KEYS[9] bans, KEYS[10] events,
# KEYS[11] seq; ARGV[7] the incarnation of the empty seed this node found,
# ARGV[8] the channel, ARGV[9] the notice (a JSON object) for the other
# nodes.  Puts a node's copy in place of that empty seed, once: nothing is
# lost, since no change was committed on it.  Its state is checked empty
# too: a node of an older version clears no marker when it commits.  The
# notice (with "seq" put first, the last change's number) tells the nodes
# that loaded the empty seed to load the copy.
_REPLACE = _RUN_ID + """
local run = run_id()
if redis.call('GET', KEYS[1]) ~= ARGV[7] or redis.call('GET', KEYS[6]) ~= ARGV[7] then return 0 end
if redis.call('HLEN', KEYS[2]) > 0 or redis.call('EXISTS', KEYS[4]) == 1 or redis.call('HLEN', KEYS[9]) > 0
   or redis.call('SCARD', KEYS[10]) > 0 then
  return 0
end
""" + _SEED + """
redis.call('PUBLISH', ARGV[8], '{"seq":' .. (redis.call('GET', KEYS[11]) or '0') .. ',' .. string.sub(ARGV[9], 2))
return 1
"""


# KEYS: incarnation, events, run, empty-seed; ARGV[1] the incarnation the
# node loaded, ARGV[2] a new one, ARGV[3] a new epoch's prefix, ARGV[4] the
# key prefix.  For a Redis that lost its latest changes but not all (an
# append-only file synced every second, a snapshot file), or may have: new
# epochs for every event, its kept publications dropped (their offsets may
# be given again), once; the data is checked under this Redis process from
# then on.  An empty seed stays one under its new incarnation.
_RENEW = _RUN_ID + """
local run = run_id()
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[3], run)
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('SET', KEYS[4], ARGV[2]) end
for i, event in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  -- An event of an older version, never ranked: from now on it can be
  -- forgotten like the others (the oldest first), so the set drains.
  redis.call('ZADD', ARGV[4] .. 'published', 'NX', 0, event)
  redis.call('HSET', ARGV[4] .. 'event:' .. event, 'epoch', ARGV[3] .. i)
  redis.call('HDEL', ARGV[4] .. 'event:' .. event, 'bytes')
  redis.call('DEL', ARGV[4] .. 'stream:' .. event)
end
redis.call('DEL', ARGV[4] .. 'kept-bytes', ARGV[4] .. 'holding')
-- (seen stays: an event forgotten before must not get its old epoch.)
return 1
"""

# KEYS: incarnation, run; ARGV[1] the incarnation the node loaded.  A Redis
# that restarted without losing a write (it persists every one): the data
# is checked under this Redis process from then on, epochs unchanged.
_CHECKED = _RUN_ID + """
local run = run_id()
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], run)
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
    @ivar last_on: the last display state that was not off, likewise, or
        C{None} if never on (or not known: data from before it was kept).
    @ivar last_colour: the last colour state, likewise.
    @ivar bans: C{{address: (until, seconds)}}.
    @ivar streams: the pub/sub streams, C{[(event, epoch, newest offset,
        [(offset, data_json, created_at), ...] oldest first)]}, as
        C{History.restore} takes them.
    @ivar restarted: Redis restarted since the data was last checked (see
        L{RedisState.checked} and L{RedisState.renew}): it may have lost
        its latest writes.
    @ivar loaded_at: C{{event: seq}}: the streams are read in pieces
        before the rest, so each is as it was at change C{seq} (at most
        C{seq} of the snapshot): its publications of later changes up to
        C{seq} come on the change channel, and must be taken from there.
    @ivar streams_from: the change the reading of the streams began at: an
        event not in C{streams} has no publication up to it.
    @ivar empty_seed: the data was seeded by a node without a copy of its
        own, and no change to the state was committed on it since.
    """

    incarnation: str
    seq: int
    plugs: list
    display: Optional[dict]
    bans: dict
    streams: list
    restarted: bool = False
    loaded_at: dict = dataclasses.field(default_factory=dict)
    streams_from: int = 0
    empty_seed: bool = False
    last_on: Optional[dict] = None
    last_colour: Optional[dict] = None


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _stream(event, epoch, offset, entries) -> tuple:
    kept = []
    for entry_id, fields in entries:
        values = _pairs(fields)
        kept.append((int(_text(entry_id).split("-")[0]), values["d"], float(values["t"])))
    return _text(event), _text(epoch), int(offset), kept


def _json_or_none(value) -> Optional[dict]:
    text = _text(value)
    return json.loads(text) if text else None


def _remembered(value):
    """
    A last state on or last colour as kept: its JSON, or the text itself
    when that is not JSON (the node checks it, and ignores what is not a
    display state: it is only remembered, not the state).
    """
    try:
        return _json_or_none(value)
    except ValueError:
        return _text(value)


def _pairs(flat: list) -> dict:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _bans(held: dict) -> dict:
    # The bans hash as read: address -> (until, seconds).
    return {address: tuple(json.loads(ban)) for address, ban in held.items()}


class RedisState:
    """
    The blocking operations on the shared state, on one C{redis.Redis}
    client (thread-safe; its pool holds the connections).

    @param max_bytes: the data bytes of the publications kept, over all
        events (C{PUBSUB_HISTORY_BYTES}, as the node's own History).
    @param max_streams: the events whose numbering is kept
        (C{PUBSUB_STREAMS}, as the node's own History).
    """

    def __init__(self, client, max_bytes: int = PUBSUB_HISTORY_BYTES, max_streams: int = PUBSUB_STREAMS) -> None:
        self.client = client
        self.max_bytes = max_bytes
        self.max_streams = max_streams
        # Redis' clock less this machine's monotonic clock, in seconds
        # (measured at each load and presence write): the deadlines of
        # changes are given in Redis' clock.
        self.clock_offset = 0.0
        self._report = client.register_script(_REPORT)
        self._display = client.register_script(_DISPLAY)
        self._announce = client.register_script(_ANNOUNCE)
        self._ban = client.register_script(_BAN)
        self._lift = client.register_script(_LIFT)
        self._publication = client.register_script(_PUBLICATION)
        self._report_published = client.register_script(_REPORT_PUBLISHED)
        self._snapshot = client.register_script(_SNAPSHOT)
        self._initialise = client.register_script(_INITIALISE)
        self._replace = client.register_script(_REPLACE)
        self._renew = client.register_script(_RENEW)
        self._checked = client.register_script(_CHECKED)
        self._streams = client.register_script(_STREAMS)

    def _commit(self, script, keys: list, incarnation: str, change: str, *args):
        try:
            return script(keys=[INCARNATION, SEQ, *keys, EMPTY_SEED, RUN], args=[incarnation, CHANNEL, change, *args])
        except redis.ResponseError as e:
            if str(e).startswith("STALE"):
                raise Stale(str(e)) from None
            if str(e).startswith("LATE "):
                raise Late(f"it took the change {str(e).removeprefix('LATE ')} s past its deadline "
                           "(in Redis' clock)") from None
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
            self._report_published, keys + [event_key(event), stream_key(event), *self._pubsub_keys],
            incarnation, change, *args, event, epoch, data_json, repr(created_at), kept,
            max(1, int(seconds * 1000)), self.max_bytes, PREFIX, self.max_streams,
        )
        return int(seq), int(offset), _text(epoch)

    _pubsub_keys = (EVENTS, KEPT_BYTES, HOLDING, PUBLISHED, SEEN)

    def commit_display(self, incarnation: str, change: str, state: str, last_on: str = "",
                       last_colour: str = "") -> int:
        """
        Write the display state (JSON) and publish C{change}; with
        C{last_on} and C{last_colour} (JSON, or '' to keep what is there),
        write them too, in the same commit.
        """
        return int(self._commit(self._display, [DISPLAY, LAST_ON, LAST_COLOUR], incarnation, change, state,
                                last_on, last_colour))

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
            self._publication, [event_key(event), stream_key(event), *self._pubsub_keys], incarnation,
            change, event, epoch, data_json, repr(created_at), keep, max(1, int(seconds * 1000)), self.max_bytes,
            PREFIX, self.max_streams,
        )
        return int(seq), int(offset), _text(epoch)

    def commit_lift(self, incarnation: str, change: str, address: str) -> int:
        """
        Forget the ban of C{address} (lifted by hand) and publish C{change}.
        """
        return int(self._commit(self._lift, [BANS], incarnation, change, address))

    def measure_clock(self) -> None:
        """
        Set L{clock_offset} from Redis' clock (TIME).
        """
        sent = time.monotonic()
        seconds, micros = self.client.time()
        self._clock_read(seconds, micros, sent)

    def _clock_read(self, seconds: int, micros: int, sent: float) -> None:
        # Taken halfway through the round trip that began at sent.
        self.clock_offset = seconds + micros / 1e6 - (sent + time.monotonic()) / 2

    def deadline(self, gives_up: float) -> str:
        """
        The start of a change's JSON object that gives its deadline, in
        Redis' clock: some time before its node gives up on it, at
        C{gives_up} (this machine's monotonic clock) or when the command
        sent now times out, whichever comes first.  The scripts refuse the
        change past it (a Redis that hung, or a network that held the
        command back, then went on), so a change its node answered 503 is
        never applied.
        """
        before = min(time.monotonic() + REDIS_COMMAND_TIMEOUT, gives_up) - _DEADLINE_MARGIN + self.clock_offset
        return '{"before":%.3f,' % before

    def snapshot(self, tries: int = 3) -> Optional[Snapshot]:
        """
        The whole shared state, or C{None} when Redis holds none (empty, or
        it lost its data).

        The streams are read first, in pieces (L{STREAMS_PIECE_EVENTS}
        events, at most about L{STREAMS_PIECE_BYTES} of data, per script),
        then the rest at one instant; see L{Snapshot.loaded_at} for the
        publications made in between.  Beyond C{max_bytes} of data in all
        (written before Redis kept to that cap), further streams are
        loaded without their publications.

        @raise redis.RedisError: Redis' data changed under every try (it
            was seeded again or renewed meanwhile, each time).
        """
        for _ in range(tries):
            begun = int(self.client.get(SEQ) or 0)
            streams, loaded_at, incarnations = self._read_streams()
            found = self._snapshot(keys=[INCARNATION, SEQ, PLUGS, PLUG_ORDER, DISPLAY, BANS, RUN, EMPTY_SEED, LAST_ON,
                                         LAST_COLOUR])
            if found is None:
                return None
            if incarnations <= {_text(found[0])}:
                return self._snapshot_of(found, streams, loaded_at, begun)
        raise redis.RedisError("Redis' data changed under every try to load it")

    def _read_streams(self) -> tuple:
        streams: list = []
        loaded_at: dict = {}
        incarnations: set = set()
        kept_bytes = 0
        cursor = 0
        while True:
            cursor, names = self.client.sscan(EVENTS, cursor, count=STREAMS_PIECE_EVENTS)
            # SSCAN may give an event twice.
            names = [n for n in dict.fromkeys(map(_text, names)) if n not in loaded_at]
            while names:
                incarnation, seq, done, found = self._streams(keys=[INCARNATION, SEQ],
                                                              args=[PREFIX, STREAMS_PIECE_BYTES, *names])
                incarnations.add(_text(incarnation))
                for name in names[:done]:
                    loaded_at[name] = int(seq)
                names = names[done:]
                for found_stream in found:
                    stream = _stream(*found_stream)
                    size = sum(len(p[1]) for p in stream[3])
                    if kept_bytes + size > self.max_bytes:
                        stream = stream[:3] + ([],)
                    else:
                        kept_bytes += size
                    streams.append(stream)
            if int(cursor) == 0:
                return streams, loaded_at, incarnations

    def _snapshot_of(self, found: list, streams: list, loaded_at: dict, begun: int) -> Snapshot:
        incarnation, seq, states, order, display, bans, restarted, empty_seed, last_on, last_colour = found
        states = _pairs(states)
        plugs = []
        for plug_id in map(_text, order):
            state = states.get(plug_id)
            if state is not None:
                plugs.append((plug_id, *json.loads(state)))
        return Snapshot(
            _text(incarnation), int(seq), plugs, _json_or_none(display),
            _bans(_pairs(bans)),
            streams, bool(restarted), loaded_at, begun, bool(empty_seed), _remembered(last_on),
            _remembered(last_colour),
        )

    def initialise(self, incarnation: str, plugs: list, display: Optional[str], last_on: str = "",
                   last_colour: str = "", empty: bool = False) -> bool:
        """
        Seed a Redis that holds no state with C{incarnation}, C{plugs}
        (C{[(id, value, at, source)]}), the C{display} state (JSON), and the
        last state on and last colour (JSON, or '' for none), unless another
        node did first.

        @param empty: this node has no copy of its own (it never loaded a
            state, or only an empty seed no change was made on): the seed
            is an empty seed (see L{Snapshot.empty_seed}).
        @return: True when this call seeded it.
        """
        return bool(self._initialise(keys=self._seed_keys,
                                     args=self._seed_args(incarnation, plugs, display, empty, last_on, last_colour)))

    _seed_keys = (INCARNATION, PLUGS, PLUG_ORDER, DISPLAY, RUN, EMPTY_SEED, LAST_ON, LAST_COLOUR)

    @staticmethod
    def _seed_args(incarnation: str, plugs: list, display: Optional[str], empty: bool, last_on: str,
                   last_colour: str) -> list:
        seed = json.dumps([[plug[0], json.dumps(list(plug[1:]))] for plug in plugs])
        return [incarnation, seed, display or "", "1" if empty else "", last_on, last_colour]

    def replace(self, empty_seed: str, incarnation: str, plugs: list, display: Optional[str], notice: str,
                last_on: str = "", last_colour: str = "") -> bool:
        """
        Put this node's copy (as L{initialise} takes it) in place of the
        empty seed C{empty_seed}, under the new C{incarnation}, and publish
        C{notice} (a JSON object; "seq" is put first) on the change channel;
        unless Redis holds other data by now, or a change was committed on
        the seed (another node's copy took its place first, say).

        @return: True when this call replaced it.
        """
        return bool(self._replace(keys=[*self._seed_keys, BANS, EVENTS, SEQ],
                                  args=[*self._seed_args(incarnation, plugs, display, False, last_on, last_colour),
                                        empty_seed, CHANNEL, notice]))

    def renew(self, incarnation: str, new_incarnation: str, epoch_prefix: str) -> bool:
        """
        Give every event a new epoch (and drop its kept publications) under
        a new incarnation, unless another node did already; the data counts
        as checked under the running Redis process.

        @return: True when this call did.
        """
        return bool(self._renew(keys=[INCARNATION, EVENTS, RUN, EMPTY_SEED],
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

    def bans(self) -> dict:
        """
        The bans Redis holds: address -> C{(until, seconds)}.
        """
        return _bans({_text(address): _text(ban) for address, ban in self.client.hgetall(BANS).items()})

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
        sent = time.monotonic()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.set(node_key(node_id), listing, px=max(1, int(ttl * 1000)))
            pipe.sadd(NODES, node_id)
            pipe.smembers(NODES)
            # Redis' clock, read again every few seconds: a step of either
            # machine's clock moves the changes' deadlines with it.
            pipe.time()
            _, _, members, (seconds, micros) = pipe.execute()
        self._clock_read(seconds, micros, sent)
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
