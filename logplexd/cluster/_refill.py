"""A drain that its channel's ring lapped reads on from the channel's stream (Redis mode).

In Redis mode a node's ring of a channel is a cache of the stream: ``redis_ring_messages``
(2,048) deep at first, where the stream keeps ``channel_buffer_messages`` (16,384), and
bounded by ``channel_buffer_bytes`` as well. A drain the ring laps (its receiver refused
data, its channel drops instead of pushing back, or the ring moved on under a threaded
write of the drain pump) does not lose what the ring let go: ``StreamRefill`` reads it from
the stream, a bounded part at a time, and hands it to the drain's feed
(``DrainFeed.refill_from``) until the drain is back inside the ring. Only what the stream
no longer holds is lost, counted exactly and told by an L10, as the ring would have told it;
the writers keep up to READER_SLACK x keep for a drain behind (``Follow.delivered``).

Small rings are what let a node with 1,000 busy channels that has run for a while go
1.43x faster (its rings were ~3 GB, out of every cache; bench/RESULTS.md, "Session of
2026-12-07"); this keeps them from shrinking a slow drain's budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..drains import Refilled
from ..native import ChannelRing
from ._follow import Follow
from ._history import CatchUp
from ._link import describe, redis_errors

log = logging.getLogger("logplexd.drains")

# At most this many messages, and this many bytes of frames, per read of the stream: what a
# lapped drain holds in memory at once. Entries per XRANGE page: an entry is at most one
# flush's part of a channel (4,096 messages, ~4 MB).
REFILL_MESSAGES = 4096
REFILL_BYTES = 4 * 1024 * 1024
REFILL_PAGE = 8

# (read: an async function, its arguments) -> None: starts a task in the drains' nursery;
# False when there is none (stopping).
Spawn = Callable[..., bool]


class StreamRefill:
    """One drain's reads of its channel's stream while the ring has lapped it
    (``drains.RingRefill``). ``current`` is the batch read last, with each message's stream
    sequence (the drain's checkpoint while it delivers it)."""

    def __init__(
        self,
        read_range: Callable[..., Any],
        follow: Follow,
        spawn: Spawn,
        kick: Callable[[], None],
        drain_id: int,
    ) -> None:
        self._read_range = read_range
        self.follow = follow
        self._spawn = spawn
        self._kick = kick
        self.drain_id = drain_id
        self.reading = False
        self.waiting = False
        # While ``reading``: the stream sequence the drain has been given messages through.
        self.after = 0
        self.current: CatchUp | None = None
        self._ready: CatchUp | None = None
        self._lost = 0  # counted, not given to the feed yet
        self._failed = False
        self.reads = 0  # reads of the stream (metrics, tests)

    def take(self, cursor: int, ring: ChannelRing) -> Refilled | None:
        follow = self.follow
        if self._ready is not None:
            got, self._ready = self._ready, None
            if len(got.batch):
                self.current = got
                lost, self._lost = self._lost, 0
                return Refilled(got.batch, cursor, lost)
        if self.waiting:
            return None
        if not self.reading:
            if cursor < follow.start_head:
                # Older than the follow maps: lost, as the ring counts what it lapped.
                self._lost += follow.start_head - cursor
                cursor = follow.start_head
            self.after = follow.seq_at(cursor)
            self.reading = True
        position = follow.position_after(self.after)[0]
        if position >= ring.tail or self._failed:
            # Back inside the ring; or the stream could not be read, and the ring counts
            # what it let go from there (an L10, as without a stream). The last batch read
            # is delivered and settled by now (the feed asks only once it has none
            # pending): it is not kept (up to REFILL_BYTES per drain).
            self.reading = self._failed = False
            self.current = None
            lost, self._lost = self._lost, 0
            return Refilled(None, position, lost)
        through = min(follow.seq_at(int(ring.tail)), self.after + REFILL_MESSAGES)
        if through <= self.after or not self._spawn(self._read, self.after, position, through):
            self.reading = False
            self.current = None
            lost, self._lost = self._lost, 0
            return Refilled(None, position, lost)
        self.waiting = True
        self.reads += 1
        return None

    async def _read(self, after: int, position: int, through: int) -> None:
        """Read the stream past ``after`` (ring ``position``) up to ``through``. Losses are
        counted in ring positions, as the ring counts them: the messages this node's ring
        had between the two ends and the stream no longer holds. (Loss markers and what was
        trimmed before this node read it never reached the ring: the follower announced
        those when it read past them.)"""
        try:
            got = await self._read_range(
                self.follow.name, after, through, max_bytes=REFILL_BYTES, page=REFILL_PAGE
            )
        except redis_errors() as exc:
            log.warning(
                "drain %d: what its ring lapped not read from the stream: %s",
                self.drain_id,
                describe(exc),
            )
            self._failed = True
        else:
            end = self.follow.position_after(got.through)[0]
            self._lost += max(0, end - position - len(got.batch))
            self._ready = got
            self.after = got.through
        finally:
            self.waiting = False
            self._kick()
