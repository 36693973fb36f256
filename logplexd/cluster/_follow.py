"""Following channels' streams into the local rings.

A node reads a channel's stream only while something local needs it: a tail session, a
session or log read that asked for it, an owned drain (``hold``/``release``, reference
counted). What it reads is appended to the channel's ``ChannelRing`` (the one the registry,
sessions and drains already use), so every node's messages reach local readers exactly
once, in stream order. On one Redis all followed streams are read by one blocking ``XREAD``
(a multi-key read is fine on one server). On Redis Cluster a command may not name keys of
two slots, so one blocking read would be needed per followed channel (one connection and
one round trip per channel and read: 1,900 round trips/s idle with 1,000 channels);
instead one reader polls: a pipeline of non-blocking single-key ``XREAD``s, one round trip
per shard, again at once while a stream has more than one read takes, every ``POLL_BUSY``
while it finds entries and every ``POLL_IDLE`` when it found none (that is the added
latency of a cross-node read on a cluster). A follow also keeps the map between ring
positions and stream sequences that drain checkpoints are written in.
"""

from __future__ import annotations

import bisect
import logging
from array import array
from collections.abc import Callable
from typing import Any

import trio

from ..native import Batch, ChannelRing
from ..router import Channel
from ._history import History
from ._link import CALL_TIMEOUT, READ_BLOCK_MS, Backoff, Connection, redis_errors
from ._stream import Keys, Malformed, StreamId, decode_entry, format_id, parse_id

log = logging.getLogger("logplexd.cluster")

# Entries taken per stream per read (each up to ENTRY_MAX_BYTES).
READ_COUNT = 64
# Entries taken per read across every stream it names: the per-stream count shrinks as more
# streams are followed. With 1,000 busy streams at 64 each one reply was ~800,000 messages
# (~100 MB), and parsing it held the event loop (and every follower) for 6.5 s
# (bench/e2e c8-ch1000-d1-120 in Redis mode).
READ_ENTRIES = 512


def read_count(streams: int) -> int:
    """Entries per stream for one read of ``streams`` streams (``READ_ENTRIES`` in all)."""
    return max(1, min(READ_COUNT, READ_ENTRIES // max(1, streams)))
# Redis Cluster: the reader polls every followed stream this often while it finds entries,
# and this often when the last poll found none (one round trip per shard each time).
POLL_BUSY = 0.02
POLL_IDLE = 0.1
# A reader wanting the stream position a follower has not reached waits at most this long.
CATCH_UP_WAIT = 2.0
# While a followed channel is held (its drains would take more than they have been given
# yet, see ``Channel.hold``), the others are read with this short a block, so that the held
# one is read again soon after it is released.
HELD_BLOCK_MS = 10

LossCallback = Callable[[str, int, float], None]


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

    # A bounded, best-effort wait (the reader then serves what is there), not a deadline a
    # caller would want to raise on: the bound is the follower's, hence the parameter.
    async def wait_reached(self, seq: int, timeout: float = CATCH_UP_WAIT) -> None:  # noqa: ASYNC109
        with trio.move_on_after(timeout):
            while self.last_seq < seq:
                await self.advanced.wait()


class Followers:
    """The followed channels and the task (a lane) reading their streams."""

    def __init__(
        self,
        connection: Connection,
        keys: Keys,
        history: History,
        malformed: Malformed,
        wall_clock: Callable[[], float],
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.history = history
        self.malformed = malformed
        self.wall_clock = wall_clock
        self._nursery: trio.Nursery | None = None
        self._follows: dict[str, Follow] = {}
        # Set when a follow is added: the cluster reader, idle, polls at once.
        self._followed = trio.Event()
        self._lanes: dict[str, trio.CancelScope] = {}
        # Set by the drain leases: messages of a channel that its drains must announce (L10).
        self.on_loss: LossCallback | None = None
        # Set by the drain leases: a channel's stream started over (Redis lost data).
        self.on_rewind: Callable[[str], None] | None = None
        # Set by the data plane: a follow read further (its channel's pushback looks again).
        self.on_applied: Callable[[Follow], None] | None = None
        # A holder whose holds do not pause the follower (the data plane's pushback).
        self.exempt: object | None = None
        self.entries_read = 0
        self.messages_read = 0

    def follow_of(self, channel: str) -> Follow | None:
        return self._follows.get(channel)

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

    # -- the lanes ------------------------------------------------------------------------------
    def start(self, nursery: trio.Nursery) -> None:
        """Read in ``nursery`` from now on (the data plane's ``run``), what is held already
        too."""
        self._nursery = nursery
        for lane in {self._lane_of(name) for name in self._follows}:
            self._wake_lane(lane)

    def stop(self) -> None:
        self._nursery = None

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

    async def _lane(self, lane: str) -> None:
        connection = self.connection
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
                        if connection.cluster:
                            await self._poll_once(follows, lane)
                        else:
                            await self._read_once(follows, lane)
                    except errors as exc:
                        connection.link.lost(exc, "lane:" + lane)
                        failed = True
                        await connection.back_off(backoff)
                        continue
                    backoff.reset()
        finally:
            self._lanes.pop(lane, None)
            connection.link.ok("lane:" + lane)

    async def _check_lost_data(self, follows: list[Follow]) -> None:
        """After a lost connection: a channel whose sequence is now below what was read
        means Redis came back without its data (restarted without persistence, failed over
        to a stale replica). Its followers start over, or they would wait for ids the new
        stream reaches only much later."""
        connection = self.connection
        with trio.fail_after(CALL_TIMEOUT):
            async with connection.client.pipeline(transaction=False) as pipe:
                replies = [(f, pipe.get(self.keys.sequence(f.name))) for f in follows]
        connection.count_trip("other", connection.servers_of(f.name for f in follows))
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

    async def _resolve(self, follows: list[Follow]) -> None:
        for follow in follows:
            if not follow.resolved:
                top = await self.history.top(follow.name)
                follow.last, follow.last_seq, follow.start_seq = top, top[0], top[0]
                follow.resolved = True

    async def _poll_once(self, follows: list[Follow], lane: str) -> None:
        """Redis Cluster: one non-blocking read of every followed stream, pipelined (one
        round trip per shard), then wait ``POLL_BUSY`` or ``POLL_IDLE``."""
        connection = self.connection
        await self._resolve(follows)
        self._followed = trio.Event()
        held = [f for f in follows if self._paused(f)]
        if held:
            follows = [f for f in follows if not self._paused(f)]
            if not follows:
                await self._wait_released(held)
                return
        count = read_count(len(follows))
        with trio.fail_after(CALL_TIMEOUT):
            async with connection.client.pipeline(transaction=False) as pipe:
                replies = [
                    (f, pipe.xread({f.key: format_id(f.last)}, count=count)) for f in follows
                ]
        connection.count_trip("follow", connection.servers_of(f.name for f in follows))
        connection.link.ok("lane:" + lane)
        busy = full = False
        for follow, reply in replies:
            found = await reply
            if found and self._follows.get(follow.name) is follow:
                for entries in found.values():
                    self._apply(follow, entries)
                    busy = True
                    full = full or len(entries) >= count
        if full:
            # A stream had more than one read takes: no pause, or a busy channel would
            # fall behind its trimming.
            await trio.lowlevel.checkpoint()
        elif busy:
            await trio.sleep(POLL_BUSY)
        else:
            with trio.move_on_after(POLL_IDLE):
                await self._followed.wait()

    def _paused(self, follow: Follow) -> bool:
        """Whether a consumer of the follow's ring holds its channel: the follower reads it
        no further until released. (The data plane's own hold, ``exempt``, is for the
        inputs: it asks the follower to read on.)"""
        return follow.channel.held_apart_from(self.exempt)

    async def _wait_released(self, held: list[Follow]) -> None:
        """Until one of ``held`` is no longer paused or a follow is added."""
        async with trio.open_nursery() as nursery:

            async def released(follow: Follow) -> None:
                await follow.channel.wait_released_apart_from(self.exempt)
                nursery.cancel_scope.cancel()

            async def followed() -> None:
                await self._followed.wait()
                nursery.cancel_scope.cancel()

            for follow in held:
                nursery.start_soon(released, follow)
            nursery.start_soon(followed)

    async def _read_once(self, follows: list[Follow], lane: str) -> None:
        connection = self.connection
        await self._resolve(follows)
        held = [f for f in follows if self._paused(f)]
        if held:
            follows = [f for f in follows if not self._paused(f)]
            if not follows:
                self._followed = trio.Event()
                await self._wait_released(held)
                return
        block = HELD_BLOCK_MS if held else READ_BLOCK_MS
        streams = {f.key: format_id(f.last) for f in follows}
        with trio.fail_after(READ_BLOCK_MS / 1000 + CALL_TIMEOUT):
            found = await connection.client.xread(
                streams, count=read_count(len(streams)), block=block
            )
        connection.count_trip("follow")
        connection.link.ok("lane:" + lane)
        if not found:
            return
        by_key = {f.key: f for f in follows}
        for key, entries in found.items():
            read = by_key.get(key.decode() if isinstance(key, bytes) else key)
            if read is None or self._follows.get(read.name) is not read:
                continue  # released (or replaced) while the read was out
            self._apply(read, entries)

    def _apply(self, follow: Follow, entries: Any) -> None:
        """Append ``entries`` to the follow's ring, in order, until its channel is held: a
        consumer then has more than it takes at once, and what is left is read again from
        the stream once it is released (the pushback rule of one node, issue 18: the stream
        keeps what a consumer would take instead of the ring lapping it)."""
        lost_total = 0
        since = self.wall_clock()
        appended = 0
        channel = follow.channel
        for entry in entries:
            if self._paused(follow):
                break
            entry_id = parse_id(entry.identifier)
            if entry_id <= follow.last:
                continue
            body = decode_entry(entry.field_values)
            if body is None:
                self.malformed.skipped(follow.name, entry_id)
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
                if len(body.batch):
                    # Its consumers look at their backlog now (and may hold the channel).
                    channel.notify()
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
        if self.on_applied is not None:
            self.on_applied(follow)
        event, follow.advanced = follow.advanced, trio.Event()
        event.set()
