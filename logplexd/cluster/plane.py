"""The data plane across nodes (issue 11): channel history in Redis Streams, followed locally.

Keys (``P`` is the prefix, ``logplex`` by default). Every key of a channel carries the hash
tag ``{ch:<name>}``, so Redis Cluster keeps a channel's keys on one shard and the scripts
below (one channel's keys each) are legal there; nothing ever touches two channels' keys in
one command::

    P:{ch:<name>}:log                 stream  the channel's history, one entry per routed batch
    P:{ch:<name>}:seq                 string  messages ever appended (the message sequence)
    P:{ch:<name>}:drain:<id>:lease    string  node id of the drain's owner, with a TTL
    P:{ch:<name>}:drain:<id>:ckpt     string  sequence of the last message the owner delivered
                                              (expires CHECKPOINT_TTL_MS after it was stored)

Stream entries. An entry holds a whole routed batch of one channel: ``n`` (messages),
``f`` (the frames, octet-counted, as ``_native.wire.octet_frames`` writes them), ``node``.
Its id is ``S-k`` where ``S`` is the channel's message sequence number of the entry's last
message (``INCRBY seq n`` in the same script, so ids are dense in messages) and ``k`` is 0
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

Writing. Ingestion never waits on Redis: routed batches go to ``OutboundBuffer`` (bounded,
drops the oldest and counts) and one writer task sends everything buffered in one pipeline
per round trip (one script call per channel and entry, by its SHA1: ``EVALSHA``, so the
script's text is not sent each time). While a round trip is in flight, new batches
accumulate, so the number of round trips per message falls as load rises.

Following. A node reads a channel's stream only while something local needs it: a tail
session, a session or log read that asked for it, an owned drain (``hold``/``release``,
reference counted). What it reads is appended to the channel's ``ChannelRing`` (the one
the registry, sessions and drains already use), so every node's messages reach local
readers exactly once, in stream order. On one Redis all followed streams are read by one
blocking ``XREAD`` (a multi-key read is fine on one server). On Redis Cluster a command may
not name keys of two slots, so one blocking read would be needed per followed channel (one
connection and one round trip per channel and read: 1,900 round trips/s idle with 1,000
channels); instead one reader polls: a pipeline of non-blocking single-key ``XREAD``s, one
round trip per shard, again at once while a stream has more than one read takes, every
``POLL_BUSY`` while it finds entries and every ``POLL_IDLE`` when it found none (that is
the added latency of a cross-node read on a cluster). A follow
also keeps the map between ring positions and stream sequences that drain checkpoints are
written in.

Faults. Every failed Redis call marks the plane unreachable (``failure``; the health checks
answer 503) with one log line per change of state, and the tasks retry with capped
backoff. The buffer keeps accepting (and dropping the oldest, counted) meanwhile; reads of
history fall back to the local rings.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import logging
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ..native import Batch, ChannelRing, octet_frames, parse_body
from ..router import Channel
from ..store import DEFAULT_PREFIX, open_redis, parse_redis_url
from .buffer import OutboundBuffer

if TYPE_CHECKING:
    from ..store import RedisClient

log = logging.getLogger("logplexd.cluster")

# A blocking XREAD waits this long; a channel followed meanwhile joins the next read.
READ_BLOCK_MS = 250
# Entries taken per stream per read (each up to ENTRY_MAX_BYTES).
READ_COUNT = 64
# Redis Cluster: the reader polls every followed stream this often while it finds entries,
# and this often when the last poll found none (one round trip per shard each time).
POLL_BUSY = 0.02
POLL_IDLE = 0.1
CONNECT_TIMEOUT = 2.0
# Any call Redis has not answered within this (beyond its own blocking time) counts as lost.
CALL_TIMEOUT = 5.0
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 2.0
# Without traffic the link is still checked this often (health must notice a dead Redis),
# and a PING unanswered this long means Redis is unreachable (a silent partition too).
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 1.0
# Frames are at most 65000 bytes (MsgRec offsets are 16-bit), renamed ones included.
MAX_WIRE_FRAME = 65000
# A reader wanting the stream position a follower has not reached waits at most this long.
CATCH_UP_WAIT = 2.0
# The writer, woken by a small backlog, waits this long for more before sending it (at
# most 2 ms of added latency; under load the backlog of the round trip in flight is sent
# at once).
FLUSH_LINGER = 0.002
FLUSH_LINGER_MESSAGES = 1000
# How long the hooks run at shutdown may take (leases handed back) before the client closes.
CLOSE_GRACE = 1.0
# Entries per XREVRANGE page when reading history from a stream.
HISTORY_PAGE = 100
# A drain checkpoint key expires when no checkpoint was stored for this long (a deleted
# drain's key never outlives it; one that delivered nothing for a week has nothing newer
# than the stream's newest entry to resume from either, which is where a drain without a
# checkpoint starts). Every store renews it.
CHECKPOINT_TTL_MS = 7 * 24 * 3600 * 1000

StreamId = tuple[int, int]

# What round trips are counted under (``DataPlane.trips``, the metric
# ``logplexd_redis_round_trips_total{kind}``): stream writes, stream reads by followers,
# history reads for requests, drain leases, drain checkpoints, the health probe, and the
# rest (a stream's top when a follow starts, deletes, lease releases, script loads).
TRIP_KINDS = ("write", "follow", "history", "lease", "checkpoint", "probe", "other")

# KEYS: 1 stream, 2 sequence. ARGV: 1 messages (0: a loss marker), 2 frames, 3 keep,
# 4 node, 5 lost, 6 lost since. Returns the sequence of the last message.
_APPEND_LUA = """
local n = tonumber(ARGV[1])
local last = redis.call('INCRBY', KEYS[2], n)
local function add(seq)
  local minid = seq - tonumber(ARGV[3]) + 1
  if minid < 0 then minid = 0 end
  local id = string.format('%d-*', seq)
  if n > 0 then
    return redis.pcall('XADD', KEYS[1], 'MINID', string.format('%d', minid), id,
      'n', n, 'f', ARGV[2], 'node', ARGV[4])
  end
  return redis.pcall('XADD', KEYS[1], 'MINID', string.format('%d', minid), id,
    'n', 0, 'lost', ARGV[5], 'since', ARGV[6], 'node', ARGV[4])
end
local r = add(last)
if type(r) == 'table' and r.err then
  -- The counter is behind the stream (it was deleted alone): move it past the stream.
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #top == 0 then return redis.error_reply(r.err) end
  last = tonumber(string.match(top[1][1], '^(%d+)')) + n
  redis.call('SET', KEYS[2], string.format('%d', last))
  r = add(last)
  if type(r) == 'table' and r.err then return redis.error_reply(r.err) end
end
return last
"""


class Script:
    """A Lua script called by its SHA1 (``EVALSHA``); ``DataPlane.call_scripts`` loads it
    where a server does not know it yet."""

    __slots__ = ("text", "sha")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        SCRIPTS.append(self)


# Every script, loaded whenever the probe (re)gains Redis, so calls rarely meet NOSCRIPT.
SCRIPTS: list[Script] = []


APPEND = Script(_APPEND_LUA)
ScriptCall = tuple[Script, list[str], list[Any]]


@functools.lru_cache(maxsize=65536)
def _slot_of(tag: str) -> int:
    """The cluster slot of a channel's keys (never changes; the shard holding it may)."""
    from coredis._utils import hash_slot  # the slot function coredis itself routes by

    return int(hash_slot(tag.encode()))


@dataclass(slots=True)
class EntryBody:
    """One stream entry, decoded: ``n`` messages in ``batch`` (fewer if some frames were
    bad: ``n - len(batch)`` are then lost), or a loss marker (``n`` 0) of ``lost`` messages
    dropped since ``since``."""

    n: int
    batch: Batch
    lost: int = 0
    since: float | None = None


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
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(value: StreamId) -> str:
    return f"{value[0]}-{value[1]}"


def redis_errors() -> tuple[type[BaseException], ...]:
    import coredis.exceptions

    return (coredis.exceptions.RedisError, OSError, trio.TooSlowError)


def describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


class Keys:
    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def tag(self, channel: str) -> str:
        return f"{self.prefix}:{{ch:{channel}}}:"

    def stream(self, channel: str) -> str:
        return self.tag(channel) + "log"

    def sequence(self, channel: str) -> str:
        return self.tag(channel) + "seq"

    def lease(self, channel: str, drain_id: int) -> str:
        return f"{self.tag(channel)}drain:{drain_id}:lease"

    def checkpoint(self, channel: str, drain_id: int) -> str:
        return f"{self.tag(channel)}drain:{drain_id}:ckpt"


class Link:
    """Is Redis reachable? Failures are kept per source (the probe, the writer, each read
    lane, the leases), so on a Redis Cluster one shard down keeps the plane failing even
    while other shards answer the probe. One log line per change of the overall state.
    """

    START = "Redis not reached yet"

    def __init__(self, where: str) -> None:
        self.where = where
        self._failures: dict[str, str] = {"start": self.START}
        self.changes = 0
        # Set while the probe reaches Redis: tasks backing off retry at once when it does.
        self.reached = trio.Event()

    @property
    def failure(self) -> str | None:
        for reason in self._failures.values():
            return reason
        return None

    def ok(self, source: str) -> None:
        if source == "probe":
            self._failures.pop("start", None)
            if not self.reached.is_set():
                self.reached.set()
        if self._failures.pop(source, None) is not None and not self._failures:
            log.info("data plane: Redis %s reached; history and drains follow it", self.where)
            self.changes += 1

    def lost(self, exc: BaseException, source: str) -> None:
        reason = f"Redis {self.where} unreachable: {describe(exc)}"
        if source == "probe" and self.reached.is_set():
            self.reached = trio.Event()
        healthy = not self._failures or list(self._failures) == ["start"]
        self._failures[source] = reason
        if healthy:
            log.error(
                "data plane: %s; buffering ingested messages, history from local rings", reason
            )
            self.changes += 1


@dataclass(slots=True)
class Backoff:
    first: float = BACKOFF_FIRST
    cap: float = BACKOFF_CAP
    current: float = BACKOFF_FIRST

    def next(self) -> float:
        value = self.current
        self.current = min(self.current * 2, self.cap)
        return value

    def reset(self) -> None:
        self.current = self.first


class Follow:
    """One followed channel: where its stream was read up to, and ring <-> stream positions.

    ``heads[k]`` is the ring head after entry ``k`` was appended and ``seqs[k]`` the stream
    sequence of that entry's last message: a position inside an entry maps linearly.
    """

    __slots__ = (
        "name",
        "key",
        "channel",
        "refs",
        "last",
        "last_seq",
        "start_head",
        "start_seq",
        "heads",
        "seqs",
        "advanced",
        "resolved",
    )

    def __init__(self, name: str, key: str, channel: Channel, after: StreamId | None) -> None:
        self.name = name
        self.key = key
        self.channel = channel
        self.refs = 0
        # None: start at the present once Redis answers (held while it was unreachable).
        self.resolved = after is not None
        self.last: StreamId = after if after is not None else (0, 0)
        self.last_seq = self.last[0]
        self.start_head = channel.ring.head
        self.start_seq = self.last_seq
        # Machine integers (16 bytes an entry, not ~72 as Python ints in a list): up to one
        # per message the ring holds when every entry is a single message.
        self.heads = array("q")
        self.seqs = array("q")
        self.advanced = trio.Event()

    @property
    def ring(self) -> ChannelRing:
        return self.channel.ring

    def valid_messages(self) -> int:
        """Messages of the ring read since this follow began (older ones may have gaps)."""
        ring = self.ring
        return int(ring.head - max(ring.tail, self.start_head))

    def rewind(self) -> None:
        """Redis came back without this channel's stream: read the new one from its start."""
        self.last, self.last_seq = (0, 0), 0
        self.start_head, self.start_seq = int(self.ring.head), 0
        del self.heads[:], self.seqs[:]

    def append(self, entry_id: StreamId, batch: Batch) -> None:
        ring = self.ring
        if len(batch):
            ring.append_batch(batch)
            self.heads.append(int(ring.head))
            self.seqs.append(entry_id[0])
            self.last_seq = entry_id[0]
        self.last = entry_id
        # Forget positions the ring has evicted (amortised: in chunks).
        if len(self.heads) > 64 and self.heads[32] < ring.tail:
            cut = bisect.bisect_left(self.heads, int(ring.tail))
            self.start_head, self.start_seq = self.heads[cut - 1], self.seqs[cut - 1]
            del self.heads[:cut], self.seqs[:cut]

    def seq_at(self, position: int) -> int:
        """Stream sequence of the last message before ring ``position``."""
        k = bisect.bisect_left(self.heads, position)
        if k == len(self.heads):
            return self.last_seq if self.heads else self.start_seq
        if k == 0 and position <= self.start_head:
            return self.start_seq
        return self.seqs[k] - (self.heads[k] - position)

    def position_after(self, seq: int) -> tuple[int, int]:
        """Ring position of the first message after sequence ``seq``, and how many messages
        between ``seq`` and that position the ring never got (trimmed before reading)."""
        k = bisect.bisect_right(self.seqs, seq)
        if k == len(self.seqs):
            # Past every entry read; with none read yet, what lies before the follow's start
            # was never read here (counted, as the ring would count a lapped reader).
            return int(self.ring.head), 0 if self.seqs else max(0, self.start_seq - seq)
        entry_start = self.heads[k - 1] if k else self.start_head
        entry_first_seq = self.seqs[k] - (self.heads[k] - entry_start) + 1
        if seq + 1 >= entry_first_seq:
            return self.heads[k] - (self.seqs[k] - seq), 0
        return entry_start, entry_first_seq - seq - 1

    async def wait_reached(self, seq: int, timeout: float = CATCH_UP_WAIT) -> None:
        with trio.move_on_after(timeout):
            while self.last_seq < seq:
                await self.advanced.wait()


LossCallback = Callable[[str, int, float], None]


@dataclass(slots=True)
class CatchUp:
    """Messages read from a stream for one drain (``DataPlane.read_range``): the batch, the
    stream sequence of each of its messages, and how many of the range were gone."""

    batch: Batch
    seqs: list[int]
    lost: int


class DataPlane:
    """Owns the data plane's Redis connection; ``run`` must be running (the daemon starts it)."""

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        keep_messages: int,
        buffer: OutboundBuffer | None = None,
        prefix: str = DEFAULT_PREFIX,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self._target = parse_redis_url(url)
        self.cluster = self._target.cluster
        self.node_id = node_id
        self.keep_messages = keep_messages
        self.buffer = buffer if buffer is not None else OutboundBuffer()
        self.keys = Keys(prefix)
        self.wall_clock = wall_clock
        self.link = Link(self._target.describe())
        self._client: RedisClient | None = None
        self._nursery: trio.Nursery | None = None
        self._pending = trio.Event()
        self._follows: dict[str, Follow] = {}
        # Set when a follow is added: the cluster reader, idle, polls at once.
        self._followed = trio.Event()
        self._lanes: dict[str, trio.CancelScope] = {}
        # Set by the drain leases: messages of a channel that its drains must announce (L10).
        self.on_loss: LossCallback | None = None
        # Set by the drain leases: a channel's stream started over (Redis lost data).
        self.on_rewind: Callable[[str], None] | None = None
        # Awaited (shielded, CLOSE_GRACE at most) when ``run`` ends, before the connection
        # closes.
        self.before_close: list[Callable[[], Awaitable[None]]] = []
        # Round trips to Redis by what they were for (``TRIP_KINDS``): one request and its
        # reply, or one pipeline, per Redis server it went to. Metrics, tests and the
        # benchmark's round trips per 1,000 messages read them.
        self.trips: dict[str, int] = dict.fromkeys(TRIP_KINDS, 0)
        # Other counters.
        self.entries_written = 0
        self.messages_written = 0
        self.bytes_written = 0
        self.entries_read = 0
        self.messages_read = 0
        # Stream entries no logplexd wrote (skipped); one warning per channel.
        self.malformed_entries = 0
        self._malformed_warned: set[str] = set()

    # -- state ------------------------------------------------------------------------------
    @property
    def round_trips(self) -> int:
        return sum(self.trips.values())

    def count_trip(self, kind: str, servers: int = 1) -> None:
        self.trips[kind] += servers

    def servers_of(self, channels: Iterable[str]) -> int:
        """How many Redis servers a pipeline naming these channels' keys goes to."""
        if not self.cluster:
            return 1
        names = set()
        try:
            layout = self.client.connection_pool.cluster_layout  # type: ignore[union-attr]
            for channel in channels:
                names.add(layout.node_for_slot(_slot_of(self.keys.tag(channel))).name)
        except Exception:  # a slot map in flux: counting must never fail the call it counts
            return max(1, len(names))
        return max(1, len(names))

    async def call_scripts(
        self, calls: Sequence[ScriptCall], kind: str, channels: Sequence[str]
    ) -> list[Any]:
        """Run script calls in one pipeline by SHA1 and return their replies in order.

        ``channels[i]`` is the channel whose keys call ``i`` names (to count servers). A
        server that does not know a script (restarted, a new shard, ``SCRIPT FLUSH``)
        answers NOSCRIPT to those calls and nothing else happened for them: the scripts are
        loaded (``SCRIPT LOAD`` goes to every server) and just those calls are sent again,
        in their order. Any other error reply is raised (after the pipeline ran whole).
        """
        import coredis.exceptions

        results = await self._evalsha(calls, kind, channels)
        missing = [
            i for i, r in enumerate(results) if isinstance(r, coredis.exceptions.NoScriptError)
        ]
        if missing:
            for script in {calls[i][0].sha: calls[i][0] for i in missing}.values():
                await self.client.script_load(script.text)
                self.count_trip("other")
            again = await self._evalsha(
                [calls[i] for i in missing], kind, [channels[i] for i in missing]
            )
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def _evalsha(
        self, calls: Sequence[ScriptCall], kind: str, channels: Sequence[str]
    ) -> list[Any]:
        import coredis.exceptions

        async with self.client.pipeline(transaction=False, raise_on_error=False) as pipe:
            replies = [pipe.evalsha(s.sha, keys=keys, args=args) for s, keys, args in calls]
        self.count_trip(kind, self.servers_of(channels))
        results: list[Any] = []
        for reply in replies:
            try:
                results.append(await reply)
            except coredis.exceptions.RedisError as exc:
                results.append(exc)
        return results

    @property
    def failure(self) -> str | None:
        return self.link.failure

    @property
    def client(self) -> RedisClient:
        if self._client is None:
            raise trio.TooSlowError()  # not running: callers treat it as unreachable
        return self._client

    def follow_of(self, channel: str) -> Follow | None:
        return self._follows.get(channel)

    # -- ingestion side (synchronous, never waits) --------------------------------------------
    def enqueue(self, channel: str, batch: Batch) -> None:
        """Buffer one routed batch of ``channel`` for the writer."""
        n = len(batch)
        if n:
            self.buffer.push(channel, octet_frames(batch), n, self.wall_clock())
            self._pending.set()

    def lose(self, channel: str, n: int) -> None:
        self.buffer.lose(channel, n, self.wall_clock())
        self._pending.set()

    def forget(self, channel: str) -> None:
        """The channel was deleted: delete its stream and sequence, so that a channel made
        later under the same name starts empty (every node does it; DEL is idempotent)."""
        if self._nursery is not None:
            self._nursery.start_soon(
                self._delete, [self.keys.stream(channel), self.keys.sequence(channel)]
            )

    async def _delete(self, keys: list[str]) -> None:
        try:
            with trio.fail_after(CALL_TIMEOUT):
                for key in keys:  # one key per command: fine on a cluster whatever the tags
                    await self.client.delete([key])
                    self.count_trip("other")
        except redis_errors() as exc:
            log.debug("data plane: could not delete %s: %s", keys, describe(exc))

    # -- following ------------------------------------------------------------------------------
    def hold(self, channel: Channel, after: StreamId | None) -> Follow:
        """Follow ``channel``'s stream (from ``after`` unless already followed); release it
        with ``release``. ``after`` None: from whatever is newest once Redis answers."""
        follow = self._follows.get(channel.name)
        if follow is None or follow.channel is not channel:
            follow = Follow(channel.name, self.keys.stream(channel.name), channel, after)
            self._follows[channel.name] = follow
            self._followed.set()
            self._wake_lane(self._lane_of(channel.name))
        follow.refs += 1
        return follow

    def release(self, follow: Follow) -> None:
        follow.refs -= 1
        if follow.refs <= 0 and self._follows.get(follow.name) is follow:
            # Its lane stops reading it at its next read (and ends when it has nothing left).
            del self._follows[follow.name]

    def _lane_of(self, channel: str) -> str:
        # One reader for every followed stream (a blocking XREAD, or on a cluster a poll).
        return ""

    def _wake_lane(self, lane: str) -> None:
        # A running lane picks a new follow up at its next read (within READ_BLOCK_MS).
        if lane not in self._lanes and self._nursery is not None:
            try:
                self._nursery.start_soon(self._lane, lane)
            except RuntimeError:
                return  # shutting down: nothing more is read
            self._lanes[lane] = trio.CancelScope()

    def _malformed(self, channel: str, entry_id: StreamId) -> None:
        self.malformed_entries += 1
        if channel not in self._malformed_warned and len(self._malformed_warned) < 1024:
            self._malformed_warned.add(channel)
            log.warning(
                "data plane: entry %s of the stream of %s is not one logplexd wrote; skipped "
                "(further ones of this channel are skipped silently)",
                format_id(entry_id),
                channel,
            )

    # -- reads of history ---------------------------------------------------------------------
    async def top(self, channel: str) -> StreamId:
        """Id of the newest entry of the channel's stream ((0, 0) if it has none)."""
        with trio.fail_after(CALL_TIMEOUT):
            found = await self.client.xrevrange(self.keys.stream(channel), "+", "-", count=1)
        self.count_trip("other")
        return parse_id(found[0].identifier) if found else (0, 0)

    async def read_history(self, channel: str, messages: int) -> tuple[Batch, StreamId]:
        """The newest ``messages`` messages of the stream (oldest first) and the newest id."""
        key = self.keys.stream(channel)
        batches: list[Batch] = []
        top: StreamId | None = None
        got = 0
        end = "+"
        while got < messages:
            with trio.fail_after(CALL_TIMEOUT):
                entries = await self.client.xrevrange(key, end, "-", count=HISTORY_PAGE)
            self.count_trip("history")
            for entry in entries:
                entry_id = parse_id(entry.identifier)
                if top is None:
                    top = entry_id
                body = decode_entry(entry.field_values)
                if body is None:
                    self._malformed(channel, entry_id)
                elif len(body.batch):
                    batches.append(body.batch)
                    got += len(body.batch)
                    if got >= messages:
                        break
            if len(entries) < HISTORY_PAGE:
                break
            last = parse_id(entries[-1].identifier)
            if last == (0, 0):
                break
            end = "(" + format_id(last)
        # Oldest first, the newest ``messages`` of them (a ring of that size keeps just those).
        ring = ChannelRing(max(1, messages), 1 << 30)
        for batch in reversed(batches):
            ring.append_batch(batch)
        return ring.last(messages), top if top is not None else (0, 0)

    async def read_range(self, channel: str, after: int, through: int) -> CatchUp:
        """The messages of sequence ``after`` + 1 to ``through`` from the stream, oldest
        first, for a drain whose node follows the channel from later than its checkpoint.

        Bounded: the stream holds at most ``keep_messages``. What it no longer holds
        (trimmed, or announced by a loss marker) is counted in ``lost``. A rare path (a
        takeover), so the messages are copied one by one into a new batch.
        """
        key = self.keys.stream(channel)
        frames: list[bytes] = []
        seqs: list[int] = []
        lost = 0
        expected = after + 1
        start = f"{after + 1}-0"
        done = False
        while expected <= through and not done:
            with trio.fail_after(CALL_TIMEOUT):
                entries = await self.client.xrange(key, start, "+", count=HISTORY_PAGE)
            self.count_trip("history")
            for entry in entries:
                entry_id = parse_id(entry.identifier)
                body = decode_entry(entry.field_values)
                if body is None:
                    self._malformed(channel, entry_id)
                    continue
                n = body.n
                if n == 0:
                    if entry_id[0] <= through:
                        lost += body.lost
                    continue
                first = entry_id[0] - n + 1
                if first > through:
                    done = True
                    break
                if first > expected:
                    lost += first - expected
                batch = body.batch
                lost += n - len(batch)  # frames that would not parse
                # An entry may straddle either end of the range.
                for i in range(max(0, expected - first), min(len(batch), through - first + 1)):
                    frames.append(batch.frame(i))
                    seqs.append(first + i)
                expected = min(entry_id[0], through) + 1
            if len(entries) < HISTORY_PAGE:
                break
            start = "(" + format_id(parse_id(entries[-1].identifier))
        if expected <= through:
            lost += through - expected + 1
        joined = b"".join(b"%d %s" % (len(frame), frame) for frame in frames)
        return CatchUp(parse_body(joined, MAX_WIRE_FRAME), seqs, lost)

    # -- the tasks ------------------------------------------------------------------------------
    def _new_client(self) -> RedisClient:
        from coredis.retry import NoRetryPolicy

        return open_redis(
            self.url,
            connect_timeout=CONNECT_TIMEOUT,
            stream_timeout=READ_BLOCK_MS / 1000 + CALL_TIMEOUT,
            decode_responses=False,
            client_name=f"logplexd-data:{self.node_id}",
            retry_policy=NoRetryPolicy(),
            # Blocking reads hold a connection each (one per followed channel on a cluster).
            max_connections=1024,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        client = self._new_client()
        try:
            async with client:
                self._client = client
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for lane in {self._lane_of(name) for name in self._follows}:
                        self._wake_lane(lane)
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._probe)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            self._client = None
            if self.before_close:
                await self._last_words()

    async def _last_words(self) -> None:
        """Run the ``before_close`` hooks (last checkpoints, leases handed back), shielded
        and bounded by CLOSE_GRACE, over a new connection: coredis reads replies in tasks
        of its client, and those went down with the cancelled ones."""
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
            last = self._new_client()
            try:
                async with last:
                    self._client = last
                    for hook in self.before_close:
                        await hook()
            except Exception as exc:
                log.debug("data plane: last words not sent: %s", describe(exc))
            finally:
                self._client = None

    async def _probe(self) -> None:
        """Notice a lost or returned Redis even when nothing else is talking to it."""
        errors = redis_errors()
        while True:
            try:
                with trio.fail_after(PROBE_TIMEOUT):
                    await self.client.ping()
                self.count_trip("probe")
                if not self.link.reached.is_set():
                    with trio.fail_after(CALL_TIMEOUT):
                        await self._load_scripts()
            except errors as exc:
                self.link.lost(exc, "probe")
            else:
                self.link.ok("probe")
            await trio.sleep(PROBE_INTERVAL if self.link.failure is None else BACKOFF_FIRST * 4)

    async def _load_scripts(self) -> None:
        for script in SCRIPTS:
            await self.client.script_load(script.text)  # to every server of a cluster
            self.count_trip("other", len(self._primaries()) if self.cluster else 1)

    def _primaries(self) -> list[Any]:
        return list(self.client.connection_pool.cluster_layout.primaries)  # type: ignore[union-attr]

    async def _writer(self) -> None:
        errors = redis_errors()
        backoff = Backoff()
        while True:
            if not self.buffer:
                self._pending = trio.Event()
                await self._pending.wait()
                if self.buffer.messages < FLUSH_LINGER_MESSAGES:
                    # Light load: gather a little more, so a node sends at most
                    # 1 / FLUSH_LINGER round trips a second however its batches trickle in.
                    await trio.sleep(FLUSH_LINGER)
            flush = self.buffer.take()
            try:
                with trio.fail_after(CALL_TIMEOUT):
                    await self._write(flush)
            except errors as exc:
                self.buffer.restore(flush, self.wall_clock())
                self.link.lost(exc, "writer")
                await self._back_off(backoff)
                continue
            backoff.reset()
            self.link.ok("writer")

    async def _write(self, flush: Any) -> None:
        keep = self.keep_messages
        node = self.node_id
        calls: list[ScriptCall] = []
        channels: list[str] = []
        for channel, loss in flush.losses.items():
            keys = [self.keys.stream(channel), self.keys.sequence(channel)]
            calls.append((APPEND, keys, [0, b"", keep, node, loss.count, repr(loss.since)]))
            channels.append(channel)
        nbytes = entries = 0
        for channel, blobs in flush.entries.items():
            keys = [self.keys.stream(channel), self.keys.sequence(channel)]
            for blob, n in blobs:
                calls.append((APPEND, keys, [n, blob, keep, node, 0, 0]))
                channels.append(channel)
                nbytes += len(blob)
                entries += 1
        await self.call_scripts(calls, "write", channels)
        self.bytes_written += nbytes
        self.entries_written += entries
        self.messages_written += flush.messages

    async def _lane(self, lane: str) -> None:
        errors = redis_errors()
        backoff = Backoff()
        scope = self._lanes[lane]
        failed = False
        try:
            with scope:
                while True:
                    follows = [f for f in self._follows.values() if self._lane_of(f.name) == lane]
                    if not follows:
                        return
                    try:
                        if failed:
                            await self._check_lost_data(follows)
                            failed = False
                        if self.cluster:
                            await self._poll_once(follows, lane)
                        else:
                            await self._read_once(follows, lane)
                    except errors as exc:
                        self.link.lost(exc, "lane:" + lane)
                        failed = True
                        await self._back_off(backoff)
                        continue
                    backoff.reset()
        finally:
            self._lanes.pop(lane, None)
            self.link.ok("lane:" + lane)

    async def _check_lost_data(self, follows: list[Follow]) -> None:
        """After a lost connection: a channel whose sequence is now below what was read
        means Redis came back without its data (restarted without persistence, failed over
        to a stale replica). Its followers start over, or they would wait for ids the new
        stream reaches only much later."""
        with trio.fail_after(CALL_TIMEOUT):
            async with self.client.pipeline(transaction=False) as pipe:
                replies = [(f, pipe.get(self.keys.sequence(f.name))) for f in follows]
        self.count_trip("other", self.servers_of(f.name for f in follows))
        for follow, reply in replies:
            value = await reply
            if int(value or 0) < follow.last_seq:
                log.warning(
                    "data plane: the stream of %s went back from message %d to %d "
                    "(Redis lost data); following it from its start",
                    follow.name,
                    follow.last_seq,
                    int(value or 0),
                )
                follow.rewind()
                if self.on_rewind is not None:
                    self.on_rewind(follow.name)

    async def _back_off(self, backoff: Backoff) -> None:
        """Wait out the backoff; a probe that reaches Redis (again) ends it at once."""
        delay = backoff.next()
        if self.link.reached.is_set():
            await trio.sleep(delay)
            return
        with trio.move_on_after(delay):
            await self.link.reached.wait()

    async def _resolve(self, follows: list[Follow]) -> None:
        for follow in follows:
            if not follow.resolved:
                top = await self.top(follow.name)
                follow.last, follow.last_seq, follow.start_seq = top, top[0], top[0]
                follow.resolved = True

    async def _poll_once(self, follows: list[Follow], lane: str) -> None:
        """Redis Cluster: one non-blocking read of every followed stream, pipelined (one
        round trip per shard), then wait ``POLL_BUSY`` or ``POLL_IDLE``."""
        await self._resolve(follows)
        self._followed = trio.Event()
        with trio.fail_after(CALL_TIMEOUT):
            async with self.client.pipeline(transaction=False) as pipe:
                replies = [
                    (f, pipe.xread({f.key: format_id(f.last)}, count=READ_COUNT)) for f in follows
                ]
        self.count_trip("follow", self.servers_of(f.name for f in follows))
        self.link.ok("lane:" + lane)
        busy = full = False
        for follow, reply in replies:
            found = await reply
            if found and self._follows.get(follow.name) is follow:
                for entries in found.values():
                    self._apply(follow, entries)
                    busy = True
                    full = full or len(entries) >= READ_COUNT
        if full:
            # A stream had more than one read takes: no pause, or a busy channel would
            # fall behind its trimming.
            await trio.sleep(0)
        elif busy:
            await trio.sleep(POLL_BUSY)
        else:
            with trio.move_on_after(POLL_IDLE):
                await self._followed.wait()

    async def _read_once(self, follows: list[Follow], lane: str) -> None:
        await self._resolve(follows)
        streams = {f.key: format_id(f.last) for f in follows}
        with trio.fail_after(READ_BLOCK_MS / 1000 + CALL_TIMEOUT):
            found = await self.client.xread(streams, count=READ_COUNT, block=READ_BLOCK_MS)
        self.count_trip("follow")
        self.link.ok("lane:" + lane)
        if not found:
            return
        by_key = {f.key: f for f in follows}
        for key, entries in found.items():
            read = by_key.get(key.decode() if isinstance(key, bytes) else key)
            if read is None or self._follows.get(read.name) is not read:
                continue  # released (or replaced) while the read was out
            self._apply(read, entries)

    def _apply(self, follow: Follow, entries: Any) -> None:
        lost_total = 0
        since = self.wall_clock()
        appended = 0
        for entry in entries:
            entry_id = parse_id(entry.identifier)
            if entry_id <= follow.last:
                continue
            body = decode_entry(entry.field_values)
            if body is None:
                self._malformed(follow.name, entry_id)
                follow.append(entry_id, Batch())  # read past it
                continue
            if body.n:
                first = entry_id[0] - body.n + 1
                if first > follow.last_seq + 1:
                    # Trimmed before this node read it: the stream ids say exactly how many.
                    lost_total += first - follow.last_seq - 1
                lost_total += body.n - len(body.batch)  # frames that would not parse
                follow.append(entry_id, body.batch)
                appended += len(body.batch)
            else:
                if body.lost:
                    lost_total += body.lost
                    if body.since is not None:
                        since = min(since, body.since)
                follow.append(entry_id, Batch())
            self.entries_read += 1
        self.messages_read += appended
        if lost_total and self.on_loss is not None:
            self.on_loss(follow.name, lost_total, since)
        if appended:
            follow.channel.notify()
        event, follow.advanced = follow.advanced, trio.Event()
        event.set()


def stream_key_tag(channel: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The hash tag every key of ``channel`` carries (tests check the cluster slot with it)."""
    return Keys(prefix).tag(channel)
