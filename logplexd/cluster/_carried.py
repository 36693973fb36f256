"""Redis-mode disk backlogs carried over a restart of the node that owns them.

A drain whose receiver refuses data spills past what its channel's stream keeps to the disk
of the node that holds its lease (``BacklogStore(ephemeral=True)``, ``SpilledSeqs``). A node
stopped cleanly (``logplexd`` on SIGTERM: a deploy, a restart) while such a backlog holds
messages writes, once the drains' last checkpoints are stored, what the next process needs
to resume it (``carried.msgpack`` beside the backlogs): per drain the checkpoint it stored,
the stream sequences of each chunk on disk, and the loss its drain still owed a notice
for. The next process keeps those drains' files (``BacklogStore.open(keep=...)``) and resumes
each one it takes the lease of while its checkpoint is still the one stored: nobody
delivered past it meanwhile, so what the backlog holds is still owed, in order, and the
stream from the backlog's last message on comes after it. A checkpoint that moved (another
node ran the drain and delivered) voids the backlog: it is removed and the drain resumes
from the checkpoint, as without one. So does a lease tick that finds another node holding
the drain (``ClusterDrains._apply``): that node resumes it from the checkpoint.

The file is read once, at start, and removed then: a process killed later leaves none (a
``kill -9`` has no clean stop to write it in); its drains' journals say the same then
(``_journal``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from ..store import write_atomically

log = logging.getLogger("logplexd.cluster")

FILE_NAME = "carried.msgpack"
VERSION = 1

# One chunk on disk: backlog sequence of its first message, its count, the stream sequence
# of the message before it and of its last one (``SpilledSeqs``).
Chunk = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class CarriedBacklog:
    drain_id: int
    channel: str
    # The checkpoint the stopped process stored last (stream sequence delivered through).
    checkpoint: int
    chunks: tuple[Chunk, ...] = field(default=())
    # Messages its drain had counted lost and not yet announced (an L10 owed), since when.
    lost: int = 0
    since: float = 0.0
    # Also taken as unchanged (a kill -9's journal, ``_journal``: the checkpoint journaled
    # before the last one, should that last store not have landed); -1: none.
    earlier: int = -1

    def written_through(self, end: int) -> CarriedBacklog | None:
        """This backlog without the chunks a killed process noted and never wrote (from
        backlog sequence ``end`` on): their messages are read from the stream, after the
        last chunk on disk. None: no chunk is on disk."""
        chunks = tuple(c for c in self.chunks if c[0] + c[1] <= end)
        if len(chunks) == len(self.chunks):
            return self
        return dataclasses.replace(self, chunks=chunks) if chunks else None

    def resumable_from(self, checkpoint: int) -> bool:
        """Whether the drain's checkpoint in Redis is still where this backlog left it."""
        return checkpoint in (self.checkpoint, self.earlier)

    @property
    def resume_after(self) -> int:
        """The stream sequence of the backlog's last message: the stream is read on from
        the message after it."""
        return self.chunks[-1][3]


def save(directory: Path, backlogs: Iterable[CarriedBacklog]) -> int:
    """Write ``backlogs`` for the next process (replacing what was there); how many."""
    records = [
        [b.drain_id, b.channel, b.checkpoint, [list(c) for c in b.chunks], b.lost, b.since]
        for b in backlogs
        if b.chunks
    ]
    path = directory / FILE_NAME
    if not records:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(str(path), msgpack.packb([VERSION, records]))
    return len(records)


def take(directory: Path) -> dict[int, CarriedBacklog]:
    """What the last process carried over, per drain id; the file is removed (read once).
    An unreadable file carries nothing (said in the log): those backlogs are removed, and
    their drains resume from their checkpoints."""
    path = directory / FILE_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    path.unlink()
    try:
        version, records = msgpack.unpackb(raw)
        if version != VERSION:
            raise ValueError(f"version {version}")
        carried = {}
        for drain_id, channel, checkpoint, chunks, lost, since in records:
            backlog = CarriedBacklog(
                int(drain_id),
                str(channel),
                int(checkpoint),
                tuple((int(a), int(b), int(c), int(d)) for a, b, c, d in chunks),
                int(lost),
                float(since),
            )
            if backlog.chunks:
                carried[backlog.drain_id] = backlog
        return carried
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        log.warning("drains: %s unreadable (%s); the disk backlogs it named are dropped", path, exc)
        return {}
