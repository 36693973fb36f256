"""Where a drain's disk backlog stands in its channel's stream (Redis mode).

A drain behind by more than its channel's stream keeps for it (READER_SLACK x keep) would
lose what the writers trim; instead it spills to the disk of the node that owns its lease,
as on one node (``DrainFeed.spill``, ``BacklogStore(ephemeral=True)``). Its checkpoint is
still a stream sequence: ``SpilledSeqs`` notes, for each chunk copied from the ring to the
disk, the stream sequences it spans (the follow maps ring positions to them while they
are in its reach), and gives the sequence delivered through for a position in the
backlog. Bounded by the backlog: a chunk is let go once the drain has delivered past it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ._follow import Follow


@dataclass(slots=True, frozen=True)
class _Spilled:
    # Backlog sequence of the chunk's first message, and its count.
    first: int
    count: int
    # Stream sequence of the message before the chunk, and of its last message.
    before: int
    last: int

    @property
    def end(self) -> int:
        return self.first + self.count


class SpilledSeqs:
    """The stream sequences of one drain's disk backlog (``DrainFeed.on_spilled``)."""

    def __init__(self, follow: Follow) -> None:
        self.follow = follow
        self._chunks: deque[_Spilled] = deque()

    def __len__(self) -> int:
        return len(self._chunks)

    def spilled(self, ring_first: int, backlog_first: int, count: int) -> None:
        follow = self.follow
        self._chunks.append(
            _Spilled(
                backlog_first,
                count,
                follow.seq_at(ring_first),
                follow.seq_at(ring_first + count),
            )
        )

    def delivered_through(self, settled: int) -> int | None:
        """The stream sequence a drain has delivered through once every message of its
        backlog below ``settled`` is settled (None: no chunk says). Exact where a chunk
        spans a run of the stream without a gap (a loss marker); otherwise, inside such a
        chunk, the sequence before it (a new owner may send part of it again, never skip
        it)."""
        chunks = self._chunks
        while len(chunks) > 1 and chunks[0].end < settled:
            chunks.popleft()
        if not chunks:
            return None
        chunk = chunks[0]
        if settled <= chunk.first:
            return chunk.before
        if settled >= chunk.end:
            return chunk.last
        if chunk.last - chunk.before == chunk.count:
            return chunk.before + (settled - chunk.first)
        return chunk.before
