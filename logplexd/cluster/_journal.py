"""Redis-mode disk backlogs carried over a ``kill -9`` of the node that owns them.

A clean stop writes what the next process needs to resume a spilled drain
(``_carried``); a process killed (``kill -9``, the OOM killer, a crash) writes nothing, and
its next start removed the backlogs: what the stream had trimmed meanwhile was lost, told
by an exact L10, although the files still held it. So each drain whose backlog holds
messages keeps a journal beside the backlogs (``redis-backlog/journal/<drain id>``), one
fixed-size record appended per event, from the event loop, with no fsync (a kill -9 loses
nothing the kernel took; a machine crash may lose the tail of both):

- a chunk noted (``SpilledSeqs``), before the disk writer has it: its backlog sequences and
  the stream sequences it spans. Every chunk on disk is named, so the stream is resumed
  after the last one on disk (those the writer never wrote are left out,
  ``CarriedBacklog.written_through``: the stream has their messages) and nothing is read
  twice;
- a checkpoint about to be stored in Redis, with the loss the drain still owes an L10 for.
  The next process resumes the backlog only if Redis holds one of the last two it journaled
  (the last store either landed or did not): then no other node delivered past this one;
- the loss owed, whenever it changes between checkpoints (``owed``): a drain whose receiver
  refuses stores no checkpoint (its delivery does not move), and a loss noted meanwhile
  (the stream trimmed past it, a writer's buffer dropped) would otherwise go untold after
  a kill. The last record of either kind says what the next process announces.

The next start of a killed node reads the journals once (``take``) when no clean stop
left ``carried.msgpack``, and resumes them as a clean stop's (``ClusterDrains._start``):
the backlog from where delivery stood (its ledger), then the stream after the last chunk.
A journal is rewritten with the chunks still undelivered once it holds more than twice as
many records (``SpilledSeqs.note_checkpoint``), and removed with its drain.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

from ..store import write_atomically
from ._carried import CarriedBacklog

log = logging.getLogger("logplexd.cluster")

DIR_NAME = "journal"
MAGIC = b"LPJ1"
_HEADER = struct.Struct("<4sH")  # magic, channel name length (then the name)
# kind, then four integers and a float: a chunk (backlog first, count, stream sequence
# before, last; 0.0), a checkpoint (sequence, loss owed, 0, 0; since) or the loss owed
# (count, 0, 0, 0; since).
_RECORD = struct.Struct("<Bqqqqd")
_CHUNK = 1
_CHECKPOINT = 2
_OWED = 3
# A journal is rewritten once it holds more records than this plus twice its live chunks.
REWRITE_SLACK = 64

Chunk = tuple[int, int, int, int]
# What a checkpoint record says: the sequence, the loss owed and since when.
CheckpointState = tuple[int, int, float]


def journal_dir(backlogs: Path) -> Path:
    return backlogs / DIR_NAME


class SpillJournal:
    """One drain's journal. Created on its first chunk, with the checkpoint the drain has in
    Redis then (``state``); written as it goes. A write that fails gives it up (logged
    once): the drain is then not resumed after a kill, as before."""

    def __init__(
        self,
        directory: Path,
        drain_id: int,
        channel: str,
        state: Callable[[], CheckpointState | None],
    ) -> None:
        self.path = directory / str(drain_id)
        self.drain_id = drain_id
        self.channel = channel
        self._state = state
        self._fd = -1
        self.records = 0
        self.failed = False
        # The last two checkpoints journaled (the newest last), and the loss owed as last
        # journaled (count, since).
        self._checkpoints: list[CheckpointState] = []
        self._owed: tuple[int, float] = (0, 0.0)

    @property
    def active(self) -> bool:
        """Whether the journal is being written (a chunk was noted since the backlog was
        last empty)."""
        return self._fd >= 0

    def chunk(self, chunk: Chunk, live: Callable[[], list[Chunk]]) -> None:
        if self._fd < 0 and not self.failed:
            state = self._state()
            if state is None:
                return  # no checkpoint in Redis yet: resumed from the stream, as before
            self._checkpoints = [state]
            self._owed = (state[1], state[2])
            self._rewrite(live())  # (``live`` holds this chunk already)
            return
        self._append(_RECORD.pack(_CHUNK, *chunk, 0.0))

    def checkpoint(self, state: CheckpointState, live: list[Chunk]) -> None:
        if self._fd < 0:
            return
        self._checkpoints = [*self._checkpoints[-1:], state]
        seq, lost, since = state
        self._owed = (lost, since)
        if self.records > REWRITE_SLACK + 2 * len(live):
            self._rewrite(live)
        else:
            self._append(_RECORD.pack(_CHECKPOINT, seq, lost, 0, 0, since))

    def owed(self, count: int, since: float) -> None:
        """The drain owes an L10 for ``count`` messages lost since ``since`` (0: none):
        journaled when it changed (``DrainFeed.on_owed`` calls this often)."""
        if self._fd < 0 or (count, since) == self._owed:
            return
        self._owed = (count, since)
        self._append(_RECORD.pack(_OWED, count, 0, 0, 0, since))

    def restore(self, chunks: list[Chunk], state: CheckpointState) -> None:
        """A backlog resumed from the last process: journaled again from here."""
        self._checkpoints = [state]
        self._owed = (state[1], state[2])
        self._rewrite(chunks)

    def _rewrite(self, chunks: Iterable[Chunk]) -> None:
        name = self.channel.encode()
        records = [_RECORD.pack(_CHUNK, *chunk, 0.0) for chunk in chunks]
        records += [
            _RECORD.pack(_CHECKPOINT, seq, lost, 0, 0, since)
            for seq, lost, since in self._checkpoints
        ]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # No fsync (see the module's docstring): two of them on the event loop could
            # hold it for long.
            write_atomically(
                str(self.path),
                _HEADER.pack(MAGIC, len(name)) + name + b"".join(records),
                sync=False,
            )
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._fail(exc)
            return
        self._close_fd()
        self._fd = fd
        self.records = len(records)

    def _append(self, record: bytes) -> None:
        if self._fd < 0:
            return
        try:
            os.write(self._fd, record)
        except OSError as exc:
            self._fail(exc)
            return
        self.records += 1

    def _fail(self, exc: OSError) -> None:
        self.failed = True
        self.remove()
        log.warning(
            "drain %d: disk backlog journal %s not written (%s): it is not resumed after a kill",
            self.drain_id,
            self.path,
            exc,
        )

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def remove(self) -> None:
        """The drain stopped here (or its backlog is resumed elsewhere): the journal goes."""
        self._close_fd()
        with contextlib.suppress(OSError):
            self.path.unlink()


def parse(raw: bytes, drain_id: int) -> CarriedBacklog | None:
    """What a journal says (None: nothing to resume). A torn last record is left out."""
    if len(raw) < _HEADER.size:
        return None
    magic, length = _HEADER.unpack_from(raw)
    if magic != MAGIC or len(raw) < _HEADER.size + length:
        return None
    channel = raw[_HEADER.size : _HEADER.size + length].decode(errors="replace")
    chunks: list[Chunk] = []
    checkpoints: list[CheckpointState] = []
    owed = (0, 0.0)
    offset = _HEADER.size + length
    while offset + _RECORD.size <= len(raw):
        kind, a, b, c, d, since = _RECORD.unpack_from(raw, offset)
        offset += _RECORD.size
        if kind == _CHUNK:
            chunks.append((a, b, c, d))
        elif kind == _CHECKPOINT:
            checkpoints.append((a, b, since))
            owed = (b, since)
        elif kind == _OWED:
            owed = (a, since)
        else:
            break  # not a record this version wrote: what follows is not trusted either
    if not chunks or not checkpoints:
        return None
    seq = checkpoints[-1][0]
    earlier = checkpoints[-2][0] if len(checkpoints) > 1 else seq
    lost, since = max(0, owed[0]), owed[1]  # a damaged record never makes a count negative
    return CarriedBacklog(drain_id, channel, seq, tuple(chunks), lost, since, earlier)


def take(backlogs: Path) -> dict[int, CarriedBacklog]:
    """What the journals of a killed process say, per drain id; they are removed (read once)."""
    directory = journal_dir(backlogs)
    carried: dict[int, CarriedBacklog] = {}
    try:
        paths = list(directory.iterdir())
    except OSError:
        return carried
    for path in paths:
        if path.suffix == ".tmp":
            continue  # a rewrite the kill cut short: the journal it was to replace stands
        try:
            drain_id = int(path.name)
            backlog = parse(path.read_bytes(), drain_id)
        except (ValueError, OSError, struct.error) as exc:
            log.warning("drains: disk backlog journal %s unreadable (%s): dropped", path, exc)
            continue
        if backlog is not None:
            carried[drain_id] = backlog
    remove_all(backlogs)
    return carried


def remove_all(backlogs: Path) -> None:
    shutil.rmtree(journal_dir(backlogs), ignore_errors=True)
