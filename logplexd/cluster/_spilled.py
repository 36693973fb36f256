"""Where a drain's disk backlog stands in its channel's stream (Redis mode).

A drain whose receiver refuses data for longer than its channel's stream keeps for it
(READER_SLACK x keep) would lose what the writers trim; instead it spills to the disk of
the node that owns its lease, as on one node (``DrainFeed.spill``,
``BacklogStore(ephemeral=True)``). Its checkpoint is still a stream sequence:
``SpilledSeqs`` notes, for each chunk copied to the disk, the stream sequences it spans
(from the ring: the follow maps ring positions to them while they are in its reach; from
what the ring let go, read from the stream: their own), and gives the sequence delivered
through for a position in the backlog. Bounded by the backlog: a chunk is let go once the
drain has delivered past it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ._follow import Follow
from ._journal import CheckpointState, SpillJournal
from ._refill import StreamRefill


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

    def __init__(
        self,
        follow: Follow,
        refill: StreamRefill | None = None,
        journal: SpillJournal | None = None,
    ) -> None:
        self.follow = follow
        self.refill = refill
        self._chunks: deque[_Spilled] = deque()
        # Where each chunk is noted for a start after a kill -9 (``_journal``).
        self.journal = journal

    def __len__(self) -> int:
        return len(self._chunks)

    def chunks(self) -> list[tuple[int, int, int, int]]:
        """Every chunk still noted: (backlog first, count, stream sequence before, last)."""
        return [(c.first, c.count, c.before, c.last) for c in self._chunks]

    def restore(self, chunks: Iterable[tuple[int, int, int, int]], state: CheckpointState) -> None:
        """The chunks a previous process noted of the backlog it carried over, resumed from
        the checkpoint of ``state`` (journaled again from here)."""
        self._chunks.extend(_Spilled(*chunk) for chunk in chunks)
        if self.journal is not None and self._chunks:
            self.journal.restore(self.chunks(), state)

    def note_checkpoint(self, state: CheckpointState, holds_messages: bool) -> None:
        """The drain's checkpoint is about to be stored (``state``: it, the loss owed and
        since when). A backlog that holds nothing any more needs no journal (a kill now
        resumes from the checkpoint); the next chunk starts one again."""
        journal = self.journal
        if journal is None:
            return
        if holds_messages:
            journal.checkpoint(state, self.chunks())
        else:
            journal.remove()

    def _journal(self, chunk: _Spilled) -> None:
        self._chunks.append(chunk)
        if self.journal is not None:
            self.journal.chunk((chunk.first, chunk.count, chunk.before, chunk.last), self.chunks)

    def spilled(self, ring_first: int, backlog_first: int, count: int) -> None:
        follow = self.follow
        self._journal(
            _Spilled(
                backlog_first,
                count,
                follow.seq_at(ring_first),
                follow.seq_at(ring_first + count),
            )
        )

    def spilled_refill(self, start: int, backlog_first: int, count: int) -> None:
        """A chunk copied from the batch the refill gave last (``DrainFeed.on_spilled_refill``):
        messages ``start`` to ``start + count`` of it, with their own stream sequences."""
        current = self.refill.current if self.refill is not None else None
        if current is None:
            return  # (never: the feed copies the batch it was just given)
        seqs = current.seqs
        before = seqs[start - 1] if start else seqs[start] - 1
        self._journal(_Spilled(backlog_first, count, before, seqs[start + count - 1]))

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
