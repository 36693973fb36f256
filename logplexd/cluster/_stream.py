"""A channel's history in Redis: its keys, the script that appends to its stream, its entries.

Keys (``P`` is the prefix, ``logplex`` by default). Every key of a channel carries the hash
tag ``{ch:<name>}``, so Redis Cluster keeps a channel's keys on one shard and the scripts
(one channel's keys each) are legal there; nothing ever touches two channels' keys in one
command::

    P:{ch:<name>}:log                 stream  the channel's history, one entry per routed batch
    P:{ch:<name>}:seq                 string  messages ever appended (the message sequence)
    P:{ch:<name>}:top                 string  id of the newest entry (what the writer's own
                                              entries follow: ``Followers.own_written``)
    P:{ch:<name>}:fence               stream  the stream, moved aside for the rest of a MULTI
                                              whose ``PROPOSE`` refused the channel (never
                                              seen outside one)
    P:{ch:<name>}:drain:<id>:lease    string  node id of the drain's owner, with a TTL
    P:{ch:<name>}:drain:<id>:ckpt     string  sequence of the last message the owner delivered
                                              (expires CHECKPOINT_TTL_MS after it was stored)

Stream entries. An entry holds a whole routed batch of one channel: ``n`` (messages),
``f`` (the frames, octet-counted, as ``_native.wire.octet_frames`` writes them), ``node``.
Its id is ``S-k`` where ``S`` is the channel's message sequence number of the entry's last
message (the sequence moves by ``n`` with the XADD, atomically: in one script, ``APPEND``,
or one MULTI, ``PROPOSE``; so ids are dense in messages) and ``k`` is 0
for messages. A loss marker (``n`` 0, ``lost``, ``since``) announces messages a node had to
drop before they reached Redis; it takes id ``S-*`` (the sequence does not move).

Ids we control make loss exact: a reader that last saw message ``C`` and next finds an
entry ``S`` of ``n`` messages has missed ``S - n + 1 - (C + 1)`` messages, trimmed before
it read them. (XLEN/XINFO arithmetic could not do that: entries are batches.)

Trimming is *exact* ``MINID`` by message sequence, in the same XADD: keep every entry whose
last message is among the newest ``keep`` messages (``keep`` = ``channel_buffer_messages``,
what a drain may still catch up from after a takeover). ``MAXLEN ~`` counts entries, and
entries are batches of any size, so it could not bound history in messages at all; and
since an entry is a whole batch, an exact trim removes whole batches only, which is the
cheap case of exact trimming (no radix-tree node is split per message).
"""

from __future__ import annotations

import binascii
import contextlib
import functools
import hashlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..native import Batch, ChannelRing, parse_body
from ..store import DEFAULT_PREFIX

log = logging.getLogger("logplexd.cluster")

# Frames are at most 65000 bytes (MsgRec offsets are 16-bit), renamed ones included.
MAX_WIRE_FRAME = 65000
# A drain checkpoint key expires when no checkpoint was stored for this long (a deleted
# drain's key never outlives it; one that delivered nothing for a week has nothing newer
# than the stream's newest entry to resume from either, which is where a drain without a
# checkpoint starts). Every store renews it.
CHECKPOINT_TTL_MS = 7 * 24 * 3600 * 1000

StreamId = tuple[int, int]


class Keys:
    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def tag(self, channel: str) -> str:
        return f"{self.prefix}:{{ch:{channel}}}:"

    def stream(self, channel: str) -> str:
        return self.tag(channel) + "log"

    def sequence(self, channel: str) -> str:
        return self.tag(channel) + "seq"

    def top(self, channel: str) -> str:
        return self.tag(channel) + "top"

    def readers(self, channel: str) -> str:
        """Where each node following ``channel`` reports how far it has read (``REPORT``)."""
        return self.tag(channel) + "readers"

    def appended(self, channel: str) -> list[str]:
        """The keys ``APPEND`` uses for ``channel``: stream, sequence, top, readers."""
        tag = self.tag(channel)
        return [tag + "log", tag + "seq", tag + "top", tag + "readers"]

    def fence(self, channel: str) -> str:
        """Where ``PROPOSE`` moves a channel's stream for the rest of a MULTI it refused."""
        return self.tag(channel) + "fence"

    def fenced(self, node: str) -> str:
        """The streams a node's ``PROPOSE`` fenced, for its ``SETTLE`` (within one MULTI)."""
        return f"{self.prefix}:fenced:{node}"

    def lease(self, channel: str, drain_id: int) -> str:
        return f"{self.tag(channel)}drain:{drain_id}:lease"

    def checkpoint(self, channel: str, drain_id: int) -> str:
        return f"{self.tag(channel)}drain:{drain_id}:ckpt"

    def beacon(self, slot: int) -> str:
        """A cluster shard's change counter: a key in ``slot`` (the lowest slot the shard
        serves), which ``APPEND`` increments with every call that wrote an entry there."""
        return f"{self.prefix}:{{{tag_for_slot(slot)}}}:beacon"

    def alive(self, holder: str) -> str:
        """A node incarnation's liveness key (``lease.Liveness``): its leases hold while
        it exists."""
        return f"{self.prefix}:alive:{holder}"


CLUSTER_SLOTS = 16384


@functools.lru_cache(maxsize=65536)
def slot_of(tag: str) -> int:
    """The cluster slot of a channel's keys (never changes; the shard holding it may).

    Redis Cluster's rule: CRC16/XMODEM of the key's hash tag (the bytes between the first
    ``{`` and the next ``}``, when not empty), else of the whole key, modulo 16384.
    """
    key = tag.encode()
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % CLUSTER_SLOTS


@functools.lru_cache(maxsize=1024)
def tag_for_slot(slot: int) -> str:
    """A short hash tag whose keys lie in ``slot`` (the first of ``b0``, ``b1``, ... that
    does: ~16,000 CRCs, a few ms, once per slot)."""
    if not 0 <= slot < CLUSTER_SLOTS:
        raise ValueError(f"no cluster slot {slot}")
    for i in itertools.count():
        tag = f"b{i}"
        if binascii.crc_hqx(tag.encode(), 0) % CLUSTER_SLOTS == slot:
            return tag
    raise AssertionError("unreachable")


class Script:
    """A Lua script called by its SHA1 (``EVALSHA``); ``Connection.call_scripts`` loads it
    where a server does not know it yet."""

    __slots__ = ("text", "sha")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        SCRIPTS.append(self)


# Every script, loaded whenever the probe (re)gains Redis, so calls rarely meet NOSCRIPT.
SCRIPTS: list[Script] = []

ScriptCall = tuple[Script, list[str], list[Any]]

# Appends the entries of one or more channels: one call per flush on one Redis, one per
# shard on a cluster (``allow-cross-slot-keys``: keys of several slots of one shard; KEYS[1]
# only routes the call to that shard, every channel's keys come in ARGV).
# ARGV: 1 keep, 2 node, 3 the shard's beacon key ('' none: one Redis, or not known), 4
# channels; then per channel: stream, sequence, top and readers
# keys, how far the calling node has read the stream (-1: it does not follow it), how far
# its slowest drain of the channel has delivered (-1: it runs none), the sequence its own
# last write of the channel ended at (-1: not known), and its entries e;
# then per entry: messages n (0: a loss marker), frames, lost, lost since. Entries found
# in the stream already right after that sequence, written by this node with the ids they
# would get (a call that ran, its reply lost: the writer sends them again grouped the
# same), are answered as written and not added again (``landed``). The
# stream keeps the newest ``keep`` messages, and never trims what a node following the
# channel has not read yet (the calling node's own position, and every node's reported one,
# ``REPORT``, while at most READER_STALE_MS old by Redis's clock) as long as that reader is
# less than READER_SLACK x keep behind; nor what a drain has not delivered yet (the calling
# node's own drains, and those other nodes report), up to READER_SLACK x keep behind
# (``min_id``). Returns per channel {status, prev, last_1, id_1,
# last_2, id_2, ...}: status 'ok', 'behind' (one more entry would put a reader READER_SLACK x keep
# behind: the writer keeps the rest, and the inputs wait, ``ChannelPushback``) or the error
# that stopped this channel (its entries from there on were not written: the writer gives
# them back); prev the id of the entry before the first one written ('0-0' before a
# stream's first entry; '' when not known for sure: no top key, or one the sequence does
# not agree with); last_k the sequence of entry
# k's last message and id_k its id; then, when some entries had landed already, how many
# (the reply's length is odd only then). A call that wrote an entry increments the beacon (a
# cluster's followers poll the beacons, one per shard, instead of every stream's top key;
# a beacon that is not on this shard, after a resharding, is left alone). Per channel the
# script makes four calls whatever it writes: one MGET of the top and sequence keys, one
# HGETALL of the readers, an XADD per entry, one MSET of the sequence and top after them
# (it numbers the entries itself). Every byte of the frames becomes a Lua string here,
# which Redis 7 hashes byte by byte: on one Redis a channel whose sequence the writer knows
# goes by ``PROPOSE`` instead, the frames outside Lua.
_APPEND_LUA = """local function add(stream, seq, n, frames, lost, since, low, held)
  local minid = min_id(seq, low, held)
  local id = string.format('%d-*', seq)
  if n > 0 then
    return redis.pcall('XADD', stream, 'MINID', string.format('%d', minid), id,
      'n', n, 'f', frames, 'node', node)
  end
  return redis.pcall('XADD', stream, 'MINID', string.format('%d', minid), id,
    'n', 0, 'lost', lost, 'since', since, 'node', node)
end
local out = {}
local wrote = false
local i = 5
for c = 1, tonumber(ARGV[4]) do
  local stream, seqkey, topkey, readers = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local mine = tonumber(ARGV[i + 4])
  local kept = tonumber(ARGV[i + 5])
  local expected = tonumber(ARGV[i + 6])
  local count = tonumber(ARGV[i + 7])
  i = i + 8
  local res = {'ok', ''}
  local state = redis.pcall('MGET', topkey, seqkey)
  local current = nil
  if not failed(state) then current = tonumber(state[2] or '0') end
  if current == nil then
    res[1] = failed(state) or 'ERR the sequence key holds no integer'
    i = i + 4 * count
    count = 0
  elseif state[1] then
    local s = string.match(state[1], '^(%d+)-')
    if s and tonumber(s) == current then res[2] = state[1] end
  elseif current == 0 and redis.pcall('XLEN', stream) == 0 then
    res[2] = '0-0'
  end
  local done = 0
  if current and expected >= 0 and current > expected and count > 0 then
    done = landed(stream, expected, current, i, 4, count)
    if done > 0 then
      res[2] = string.format('%d-0', expected)
      local s = expected
      for e = 1, done do
        s = s + tonumber(ARGV[i])
        i = i + 4
        res[#res + 1] = s
        res[#res + 1] = string.format('%d-0', s)
      end
      count = count - done
    end
  end
  local low, held = nil, nil
  if count > 0 then low, held = floor(readers, node, mine, kept) end
  local newest = nil
  for e = 1, count do
    local n, frames = tonumber(ARGV[i]), ARGV[i + 1]
    local lost, since = ARGV[i + 2], ARGV[i + 3]
    i = i + 4
    if low and n > 0 and current + n - low > limit then
      res[1] = 'behind'; i = i + 4 * (count - e); break
    end
    local last = current + n
    local r = add(stream, last, n, frames, lost, since, low, held)
    if failed(r) then
      -- The counter is behind the stream (it was deleted alone): move it past the stream.
      res[2] = ''
      local newest_entry = redis.pcall('XREVRANGE', stream, '+', '-', 'COUNT', 1)
      if failed(newest_entry) or #newest_entry == 0 then
        res[1] = r.err; i = i + 4 * (count - e); break
      end
      last = tonumber(string.match(newest_entry[1][1], '^(%d+)')) + n
      r = add(stream, last, n, frames, lost, since, low, held)
      if failed(r) then res[1] = r.err; i = i + 4 * (count - e); break end
    end
    res[#res + 1] = last
    res[#res + 1] = r
    newest = r
    current = last
  end
  if newest then
    redis.pcall('MSET', seqkey, string.format('%d', current), topkey, newest)
    wrote = true
  end
  if done > 0 then res[#res + 1] = done end
  out[c] = res
end
if wrote and ARGV[3] ~= '' then redis.pcall('INCR', ARGV[3]) end
return out
"""

# A follower's reported position counts this long (ms, Redis's clock): a node that stopped
# reporting (it died, or stopped following) keeps nothing in the stream for longer.
READER_STALE_MS = 2000
# A drain's reported position (``<node>/drains``) counts this long. A node reports it when
# it moves, and again every REPORT_HEARTBEAT while the drain is behind; one caught up on a
# quiet channel is not reported again (10,000 idle channels cost nothing), so it must still
# count when the next burst comes: the burst's first report lands a REPORT_INTERVAL after
# that node reads it, and another node's writes meanwhile would be trimmed at ``keep``
# alone. A dead node's report keeps at most READER_SLACK x keep for this long.
DRAIN_STALE_MS = 60000
# How far behind (in multiples of ``keep``) a reader may fall before writers wait for it:
# the stream then holds at most this many times ``keep`` messages for it. Its reports lag
# by up to REPORT_INTERVAL (plus a round trip), so this must exceed what the writers write
# meanwhile (16,384 x 4 at 1 M msgs/s: 65 ms).
READER_SLACK = 4

# Lua: ``now``, Redis's clock in ms (the time both REPORT stamps and APPEND compares with).
_REDIS_NOW_MS = """local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)"""

# Lua: ``floor(key, node, mine, kept)``, two positions from a readers key: the lowest
# among those nodes reported reading within READER_STALE_MS and the calling node's own,
# ``mine`` (-1: it does not follow the channel; nil: no reader); and the lowest among the
# drains' delivered positions reported within DRAIN_STALE_MS (field ``<node>/drains``,
# value ``d<seq>:<ms>``: a node of an older version, which parses ``<seq>:<ms>`` only,
# passes it over) and the calling node's own, ``kept`` (-1: none; nil: no drain). The
# calling node's own reports are older than what it passes along: taken instead, its
# reader's held the node back on itself (a writer 'behind' its own follower's report of
# 20 ms ago). A drain's position never makes a writer wait (a receiver that refuses data
# must not stall producers): it only keeps the stream from being trimmed past it, by at
# most READER_SLACK x keep (``min_id``). And ``failed(r)``, the error of a ``redis.pcall``.
_READER_FLOOR = """local function failed(r) return type(r) == 'table' and r.err end
local function floor(key, node, mine, kept)
  local rd = redis.pcall('HGETALL', key)
  local low, held = nil, nil
  if mine >= 0 then low = mine end
  if kept >= 0 then held = kept end
  if failed(rd) then return low, held end
  local drains = node .. '/drains'
  for j = 2, #rd, 2 do
    local s, t = string.match(rd[j], '^(%d+):(%d+)$')
    if s then
      if now - tonumber(t) <= READER_STALE_MS and (mine < 0 or rd[j - 1] ~= node) then
        s = tonumber(s)
        if not low or s < low then low = s end
      end
    else
      s, t = string.match(rd[j], '^d(%d+):(%d+)$')
      if s and now - tonumber(t) <= DRAIN_STALE_MS and rd[j - 1] ~= drains then
        s = tonumber(s)
        if not held or s < held then held = s end
      end
    end
  end
  return low, held
end
local function min_id(last, low, held)
  local minid = last - keep + 1
  if low and low + 1 < minid then minid = low + 1 end
  if held then
    local h = held + 1
    if h < last - limit + 1 then h = last - limit + 1 end
    if h < minid then minid = h end
  end
  if minid < 0 then minid = 0 end
  return minid
end"""

_LANDED = """local function landed(stream, expected, current, first, stride, count)
  -- How many of the entries a call was given (entry j's message count at
  -- ARGV[first + stride * (j - 1)]) are in the stream already, right after the sequence
  -- ``expected``, each with the id it would get and written by this node (a call that ran,
  -- its reply lost, sent again grouped the same): exactly those, up to ``current``, or none.
  -- The counts first: a stream another node wrote since rarely ends where a prefix of
  -- these entries would, and only then are the entries read (frames and all).
  local s, j = expected, 0
  while s < current and j < count do
    local n = tonumber(ARGV[first + stride * j])
    if n == 0 then return 0 end
    s = s + n
    j = j + 1
  end
  if s ~= current then return 0 end
  local got = redis.call('XRANGE', stream, string.format('%d-1', expected),
    string.format('%d-0', current), 'COUNT', j + 1)
  if #got ~= j then return 0 end
  s = expected
  for k = 1, j do
    s = s + tonumber(ARGV[first + stride * (k - 1)])
    local by = nil
    for f = 1, #got[k][2], 2 do
      if got[k][2][f] == 'node' then by = got[k][2][f + 1] end
    end
    if got[k][1] ~= string.format('%d-0', s) or by ~= node then return 0 end
  end
  return j
end"""


def _writer_script(body: str) -> Script:
    """A script that writes streams (``APPEND``, ``PROPOSE``): ``body`` after what both
    start with (ARGV 1 keep and 2 node, Redis's clock, ``floor`` and ``landed``)."""
    prologue = (
        "#!lua flags=allow-cross-slot-keys\n"
        "local keep = tonumber(ARGV[1])\n"
        "local node = ARGV[2]\n"
        "local limit = keep * READER_SLACK\n"
        "REDIS_NOW_MS\nREADER_FLOOR\nLANDED\n"
    )
    return Script(
        (prologue + body)
        .replace("READER_FLOOR", _READER_FLOOR)
        .replace("LANDED", _LANDED)
        .replace("READER_STALE_MS", str(READER_STALE_MS))
        .replace("DRAIN_STALE_MS", str(DRAIN_STALE_MS))
        .replace("READER_SLACK", str(READER_SLACK))
        .replace("REDIS_NOW_MS", _REDIS_NOW_MS)
    )


APPEND = _writer_script(_APPEND_LUA)

# Reports how far this node has read the streams it follows (``APPEND`` never trims past
# the slowest, and keeps writers from getting READER_SLACK x keep ahead of it), and how far
# its slowest drain of each has delivered (never trimmed past either, up to READER_SLACK x
# keep behind; writers do not wait for it). ARGV: 1 node, 2 channels; per channel its
# readers key, the sequence read through (-1: its field is deleted) and the one delivered
# through (a drain's report is never deleted: it goes stale, ``DRAIN_STALE_MS``); either
# -2: left as it is.
REPORT = Script(
    """#!lua flags=allow-cross-slot-keys
REDIS_NOW_MS
local out = {}
local i = 3
local drains = ARGV[1] .. '/drains'
local function put(key, field, value, prefix)
  if value == '-2' then return 1 end
  if value == '-1' then return redis.pcall('HDEL', key, field) end
  return redis.pcall('HSET', key, field, prefix .. value .. ':' .. now)
end
for c = 1, tonumber(ARGV[2]) do
  local key = ARGV[i]
  local r = put(key, ARGV[1], ARGV[i + 1], '')
  local d = put(key, drains, ARGV[i + 2], 'd')
  i = i + 3
  if (type(r) == 'table' and r.err) or (type(d) == 'table' and d.err) then
    out[c] = -1
  else
    out[c] = 1
  end
end
return out
""".replace("REDIS_NOW_MS", _REDIS_NOW_MS)
)

# The newest entry id of each named stream (its top key; nil: none written by a node that
# keeps one), for a cluster's poll (one call per shard, ``call_per_shard``): only the
# streams whose top moved are read then, so an idle poll is one call per shard however many
# channels are followed. (One GET per key inside: Redis refuses a multi-key MGET across
# slots even in a script allowed to touch several.) ARGV: 1 channels; then per channel its
# top key. A refused GET (a slot that moved) gives -1.
TOPS = Script(
    """#!lua flags=allow-cross-slot-keys
local out = {}
for k = 1, tonumber(ARGV[1]) do
  local r = redis.pcall('GET', ARGV[k + 1])
  if type(r) == 'table' and r.err then out[k] = -1 else out[k] = r end
end
return out
"""
)


# How many entries ``UNANSWERED`` looks at per channel: a process's last write of a channel
# is one call's entries (at most a flush's, FLUSH_MAX_BYTES / FLUSH_SHARE in entries of up
# to ENTRY_MAX_BYTES: 32), after those other nodes wrote in the flush's time.
UNANSWERED_ENTRIES = 64

# What a process killed with a write in flight had written after all: its staging ring's
# slot (``UnsentLedger``) counts the write's messages as never stored, since no reply said
# otherwise; the next process looks before it tells them lost. ARGV: 1 node, 2 the most
# entries looked at per channel, 3 channels; per channel its stream key and the id of the
# last entry of its last answered write (``after``). A call writes a channel's entries one
# after the other, and a writer has one call in flight: this node's entries past ``after``
# are that one call's, in one run. Returns per channel {messages, id}: the messages those
# entries hold (a loss marker: those it told) and the id of the run's last ('': none found,
# or the stream is not there). Trimmed ones are not found: those are told as lost (more
# than were, never fewer). Read-only; one XRANGE per entry looked at (the frames come with
# it): once per channel after a kill.
UNANSWERED = Script(
    """#!lua flags=allow-cross-slot-keys
local node = ARGV[1]
local budget = tonumber(ARGV[2])
local out = {}
local i = 4
for c = 1, tonumber(ARGV[3]) do
  local stream, cursor = ARGV[i], '(' .. ARGV[i + 1]
  i = i + 2
  local stored, last = 0, ''
  for _ = 1, budget do
    local got = redis.pcall('XRANGE', stream, cursor, '+', 'COUNT', 1)
    if type(got) ~= 'table' or got.err or #got == 0 then break end
    local id, fields = got[1][1], got[1][2]
    cursor = '(' .. id
    local by, n, lost = nil, 0, 0
    for f = 1, #fields, 2 do
      local name = fields[f]
      if name == 'node' then by = fields[f + 1]
      elseif name == 'n' then n = tonumber(fields[f + 1]) or 0
      elseif name == 'lost' then lost = tonumber(fields[f + 1]) or 0 end
    end
    if by == node then
      if n > 0 then stored = stored + n else stored = stored + lost end
      last = id
    elseif last ~= '' then
      break
    end
  end
  out[c] = {stored, last}
end
return out
"""
)

# The frames of a flush outside Lua (one Redis, not a cluster): Redis 7 hashes every Lua
# string it makes over all its bytes (redis/redis#9449), so ``APPEND``, which gets the
# frames in ARGV, cost Redis 0.21 s per million messages more than the XADDs alone
# (``python bench/redis_lua_args.py``: 4.2x their CPU for one busy channel's entries, 3.4x
# for 1,000 channels'). The writer sends, in one MULTI/EXEC (nothing of another client runs
# in between):
#
#   EVAL PROPOSE    checks each channel's part, numbers its entries, trims, sets seq and top
#   XADD stream NOMKSTREAM <S-0> n <n> f <frames> node <node>     per entry, plain
#   EVAL SETTLE     puts back the streams PROPOSE fenced
#
# The writer proposes the ids from the sequence its last write of the channel ended at
# (``Writer``). PROPOSE accepts a channel only when its stream exists, its sequence is that
# one and its top agrees (nobody else wrote since), and no reader would fall READER_SLACK x
# keep behind; else it *fences* the channel: it renames the stream to the fence key, so that
# the channel's XADDs (NOMKSTREAM) find no stream and add nothing, and SETTLE renames it
# back. A channel refused so is sent again with ``APPEND``. PROPOSE never raises: an error
# in a channel's part fences that channel.
#
# PROPOSE ARGV: 1 keep, 2 node, 3 the fenced list key (SETTLE's), 4 channels; per channel: stream,
# sequence, top, readers and fence keys, how far the calling node has read it (-1: not
# followed), how far its slowest drain of it has delivered (-1: none), the sequence
# proposed to follow, entries e, then each entry's messages.
# Returns per channel {status, prev}: 'ok' and the top before, or why not: 'moved' (the
# sequence or the top is not what was proposed), 'missing' (no stream), 'behind', an error.
# A proposal whose first entries are in the stream already, right after the sequence
# proposed and written by this node (a MULTI that ran but whose reply never came back: the
# writer sends those entries again, grouped the same, ``OutboundBuffer.restore``), is
# not a move: the reply then says so, {status, prev, last_1, id_1, ...} for those
# entries, their XADDs fail (ids not above the top) and the rest go on as proposed.
PROPOSE = _writer_script(
    """local function check(stream, seqkey, topkey, readers, fencekey, mine, kept, expected, first,
    count)
  if redis.call('EXISTS', stream) == 0 then
    if redis.call('EXISTS', fencekey) == 0 then return {'missing', ''} end
    redis.call('RENAME', fencekey, stream)  -- fenced by a call that never settled
  end
  local state = redis.call('MGET', topkey, seqkey)
  local current = tonumber(state[2] or '')
  local top = state[1]
  if not current or not top then return {'moved', ''} end
  local s = string.match(top, '^(%d+)-')
  if not s or tonumber(s) ~= current then return {'moved', ''} end
  local out = {'ok', top}
  local done = 0
  if current ~= expected then
    done = current > expected and landed(stream, expected, current, first, 1, count) or 0
    if done == 0 then return {'moved', ''} end
    out[2] = string.format('%d-0', expected)
  end
  local low, held = floor(readers, node, mine, kept)
  local last = expected
  for e = first, first + count - 1 do
    local n = tonumber(ARGV[e])
    if e >= first + done and low and last + n - low > limit then
      out[1] = 'behind'
      return out
    end
    last = last + n
    if e < first + done then
      out[#out + 1] = last
      out[#out + 1] = string.format('%d-0', last)
    end
  end
  local minid = min_id(last, low, held)
  if minid > 0 then redis.call('XTRIM', stream, 'MINID', string.format('%d', minid)) end
  redis.call('MSET', seqkey, string.format('%d', last), topkey, string.format('%d-0', last))
  return out
end
local out = {}
local i = 5
for c = 1, tonumber(ARGV[4]) do
  local stream, fencekey = ARGV[i], ARGV[i + 4]
  local count = tonumber(ARGV[i + 8])
  local ok, res = pcall(check, stream, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], fencekey,
    tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7]), i + 9, count)
  i = i + 9 + count
  if not ok then
    res = {type(res) == 'table' and res.err or tostring(res), ''}
  end
  if res[1] ~= 'ok' and redis.pcall('EXISTS', stream) == 1 then
    redis.pcall('RENAME', stream, fencekey)
    redis.pcall('RPUSH', ARGV[3], fencekey, stream)
  end
  out[c] = res
end
return out
"""
)

# Puts back the streams PROPOSE fenced (ARGV: 1 the fenced list key); returns how many.
SETTLE = Script(
    """#!lua flags=allow-cross-slot-keys
local fenced = redis.call('LRANGE', ARGV[1], 0, -1)
for k = 1, #fenced, 2 do redis.pcall('RENAME', fenced[k], fenced[k + 1]) end
if #fenced > 0 then redis.call('DEL', ARGV[1]) end
return #fenced / 2
"""
)


class KeptRange(Protocol):
    """Routed messages an entry was encoded from, still where routing put them (the
    channel's staging ring, ``ClusterRegistry``), so that this node's follow appends them
    from there once written, without parsing the entry's frames again."""

    def held(self) -> bool:
        """Whether they are all still there."""
        ...

    def append_to(self, ring: ChannelRing) -> int:
        """Append them to ``ring`` and let them go (``release``); how many (all of them,
        when ``held``)."""
        ...

    def release(self) -> None:
        """They are not needed any more (appended, or read back from the stream), nor is
        anything routed before them."""
        ...


class Outgoing(NamedTuple):
    """One entry as this node's writer sends it: ``n`` messages (0: a loss marker of
    ``lost`` messages dropped since ``since``) in ``frames``, and the routed ranges it
    joins when they were kept for a follow of this node (``kept``), else None. An entry
    waiting to be appended from ``kept`` drops its ``frames`` and keeps their ``size``."""

    n: int
    frames: bytes
    lost: int
    since: float
    kept: list[KeptRange] | None
    size: int = -1

    @property
    def nbytes(self) -> int:
        """Its frames' size, whether they are still held or not."""
        return self.size if self.size >= 0 else len(self.frames)


class StreamEntry(NamedTuple):
    """A stream entry as read: its id and its fields (what coredis's reads give too)."""

    identifier: bytes
    field_values: dict[bytes, bytes]


@dataclass(slots=True)
class EntryBody:
    """One stream entry, decoded: ``n`` messages in ``batch`` (fewer if some frames were
    bad: ``n - len(batch)`` are then lost), or a loss marker (``n`` 0) of ``lost`` messages
    dropped since ``since``. An entry this node wrote may come as the routed ranges it
    joined instead (``parts``, in order; ``batch`` is then empty)."""

    n: int
    batch: Batch
    lost: int = 0
    since: float | None = None
    parts: list[KeptRange] | None = None


def decode_entry(fields: Any) -> EntryBody | None:
    """Decode an entry's fields; None for one no logplexd wrote (not to be trusted blindly:
    the stream is shared by every node and anyone with access to Redis)."""
    try:
        n = int(fields.get(b"n", b"0"))
        if n < 0:
            return None
        if n == 0:
            lost = max(0, int(fields.get(b"lost", b"0")))
            since: float | None = None
            with contextlib.suppress(ValueError):
                since = float(fields.get(b"since", b"0"))
            return EntryBody(0, Batch(), lost, since)
        blob = fields[b"f"]
    except (KeyError, ValueError, TypeError):
        return None
    if not isinstance(blob, bytes):
        return None
    batch = parse_body(blob, MAX_WIRE_FRAME)
    if len(batch) > n:
        return None
    return EntryBody(n, batch)


def parse_id(value: bytes | str) -> StreamId:
    # int() takes the ASCII digits of bytes as they are: no decode per id (a flush's
    # reply holds one per entry written).
    if isinstance(value, bytes):
        ms, _, seq = value.partition(b"-")
        return int(ms), int(seq or 0)
    ms_text, _, seq_text = value.partition("-")
    return int(ms_text), int(seq_text or 0)


def format_id(value: StreamId) -> str:
    return f"{value[0]}-{value[1]}"


class Malformed:
    """Stream entries no logplexd wrote, met by the followers or a history read: skipped,
    counted, one warning per channel (at most 1,024 channels remembered)."""

    __slots__ = ("count", "_warned")

    def __init__(self) -> None:
        self.count = 0
        self._warned: set[str] = set()

    def skipped(self, channel: str, entry_id: StreamId) -> None:
        self.count += 1
        if channel not in self._warned and len(self._warned) < 1024:
            self._warned.add(channel)
            log.warning(
                "data plane: entry %s of the stream of %s is not one logplexd wrote; skipped "
                "(further ones of this channel are skipped silently)",
                format_id(entry_id),
                channel,
            )
