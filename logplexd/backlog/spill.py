"""Drain backlogs on disk: ``BacklogStore`` (one per daemon) and ``DrainBacklog`` (one per drain).

A drain whose undelivered messages pass its in-memory share of the channel's ring copies
them, in order, into its ``DrainBacklog`` (``enqueue``: octet-counted frames, one chunk per
ring read). The store's writer task hands every queued chunk to a worker thread, which
appends them to the drains' segment logs, so the event loop never waits for the disk. The
drain then reads its messages back from disk (``read``) until it has caught up, and
acknowledges what it delivered (``ack``), which deletes whole delivered segments.

Positions are backlog sequence numbers: each drain numbers the messages it spills from 0,
for good (they survive restarts). A gap in them is a loss: the per-drain budget dropped the
oldest segments, the total budget or a full disk refused a chunk, or the process died with
chunks still queued. ``read`` reports every gap exactly, so the drain's next delivery
carries an L10 with the count.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .ledger import DrainEntry, Ledger, PriorRun
from .segments import SegmentLog

log = logging.getLogger("logplexd.backlog")

FSYNC_POLICIES = ("interval", "always", "never")


@dataclass(frozen=True)
class SpillSettings:
    """Disk backlogs of drains. Sizes in bytes, times in seconds."""

    enabled: bool = True
    # Each drain may keep this much on disk; past it its oldest segments are dropped (L10).
    # 256 MiB is a receiver down for about four minutes at 1 MB/s.
    drain_budget_bytes: int = 256 * 1024 * 1024
    # All drains together; past it, and when the disk's free space falls under
    # ``min_free_bytes``, new chunks are refused (counted, L10) until space is freed.
    total_budget_bytes: int = 8 * 1024 * 1024 * 1024
    min_free_bytes: int = 256 * 1024 * 1024
    segment_bytes: int = 8 * 1024 * 1024
    # "interval": fsync each written log at most every ``fsync_interval``; "always": after
    # every write round; "never": leave it to the kernel. A kill -9 loses nothing written
    # whatever the policy; only a machine crash can lose the unsynced part.
    fsync: str = "interval"
    fsync_interval: float = 1.0
    # Spill only a drain whose receiver refuses data (judged slow, or not connected), not
    # any drain half its ring behind: Redis mode, whose rings are a small cache of a
    # stream that keeps 4 x keep for a drain behind (a drain of a busy channel is half its
    # ring behind at full speed with a fast receiver).
    only_refused: bool = False
    # Copied messages wait at most this long for the writer (it also writes at once when
    # ``queue_bytes`` / 4 are waiting).
    flush_interval: float = 0.05
    # Messages copied from rings and not yet written, all drains together. When full, a
    # drain stops copying; its ring may then lap it (L10), so this only bites if the disk
    # cannot keep up with ingestion.
    queue_bytes: int = 64 * 1024 * 1024
    # The largest chunk a drain copies at once (one ring read): the writer's queue takes
    # no more copies once it has less room than this.
    chunk_bytes: int = 1024 * 1024


@dataclass(slots=True, eq=False)
class _Chunk:
    first_seq: int
    count: int
    payload: bytes
    written_at: float


@dataclass(eq=False)
class DrainBacklog:
    """One drain's disk backlog: its segment log, its ledger slot and its queued chunks."""

    drain_id: int
    log: SegmentLog
    entry: DrainEntry
    store: BacklogStore
    # Messages the previous process had only in memory (announced once, see feed.py).
    prior_lost: int = 0
    # Next backlog sequence to read back, and the end of everything handed to the writer.
    read_seq: int = 0
    queued_end: int = 0
    queued: deque[_Chunk] = field(default_factory=deque)
    queued_bytes: int = 0
    # Called (from the event loop) after the writer wrote some of this drain's chunks.
    on_written: Callable[[], None] | None = None
    closed: bool = False
    # True while anything is on disk or queued that the drain has not acknowledged: the
    # drain then reads from here, not from its channel's ring. An attribute, kept by every
    # change of the three (``_recheck``): a drain's hot path asks several times a write.
    active: bool = False

    def _recheck(self) -> None:
        self.active = bool(self.queued) or self.entry.spill_acked < self.queued_end

    @property
    def readable(self) -> bool:
        """Something can be read now: written past ``read_seq``, or a gap to report."""
        if self.log.end_seq > self.read_seq:
            return True
        return not self.queued and self.queued_end > self.read_seq

    @property
    def messages(self) -> int:
        """Messages in the backlog the drain has not acknowledged (disk and queue)."""
        return max(0, self.queued_end - self.entry.spill_acked)

    @property
    def disk_bytes(self) -> int:
        return int(self.log.size_bytes)

    def oldest_written_at(self) -> float | None:
        oldest = self.log.oldest_written_at
        if oldest is None and self.queued:
            return self.queued[0].written_at
        return oldest

    def enqueue(self, count: int, payload: bytes, now: float) -> bool:
        """Queue ``count`` messages for the disk; False (nothing queued) when the writer's
        queue is full."""
        if not self.store.reserve(len(payload)):
            return False
        self.queued.append(_Chunk(self.queued_end, count, payload, now))
        self.queued_bytes += len(payload)
        self.queued_end += count
        self.active = True
        self.entry.spill_queued_end = self.queued_end
        self.entry.store()
        self.store.wake(self)
        return True

    def read(self, max_bytes: int) -> tuple[list[bytes], int, int, int]:
        """(payloads, first_seq, count, lost) from ``read_seq`` on.

        ``lost`` counts the messages between ``read_seq`` and what could be read that are
        gone (dropped by a budget, refused, or lost with a previous process); ``first_seq``
        is the sequence of the first message of ``payloads`` (which may start before
        ``read_seq``: the caller skips what it already delivered).
        """
        chunks = self.log.read(self.read_seq, max_bytes)
        if not chunks:
            lost = 0
            if not self.queued and self.queued_end > self.read_seq:
                # Nothing more will be written below queued_end: the rest was lost.
                lost = self.queued_end - max(self.read_seq, self.log.end_seq)
                self.read_seq = self.queued_end
            return [], self.read_seq, 0, max(0, lost)
        first = chunks[0].first_seq
        lost = max(0, first - self.read_seq)
        end = chunks[-1].first_seq + chunks[-1].count
        count = end - first
        self.read_seq = max(self.read_seq, first)
        payloads = [chunk.payload for chunk in chunks]
        self.read_seq = end
        return payloads, first, count, lost

    def ack(self, seq: int) -> None:
        """Every message below ``seq`` was delivered (or given up and counted)."""
        if seq <= self.entry.spill_acked:
            return
        self.entry.spill_acked = seq
        self._recheck()
        self.entry.store()
        self.log.ack(seq)


class BacklogStore:
    """Every drain's disk backlog under ``directory``, one writer task and its thread."""

    def __init__(
        self,
        directory: Path,
        settings: SpillSettings | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        ephemeral: bool = False,
    ) -> None:
        self.directory = directory
        # Redis mode: a backlog lives as long as this process's lease on its drain. The
        # drain's position survives in its checkpoint (a new owner, or this node restarted,
        # resumes from there, from the channel's stream), so what a previous process left
        # is removed at ``open``, a stopped drain's files go at once, and the channels'
        # rings mirror no head into the ledger (no kill -9 count to keep here).
        self.ephemeral = ephemeral
        self.settings = settings or SpillSettings()
        self.wall_clock = wall_clock
        self.ledger = Ledger(directory)
        self._prior: dict[int, PriorRun] = {}
        self._backlogs: dict[int, DrainBacklog] = {}
        self._waiting: dict[int, DrainBacklog] = {}
        self._queued_bytes = 0
        self._wake = trio.Event()
        self._urgent = trio.Event()
        # Written since the last fsync (the "interval" policy syncs it within the interval).
        self._unsynced = False
        self._writing = trio.Lock()
        self._last_fsync = 0.0
        self._refusal_logged = False
        # Figures for /metrics and drain status.
        self.written_bytes = 0
        self.written_messages = 0
        self.refused_messages = 0
        self.cut_bytes = 0
        self.opened = False
        # ``close`` ran to its end: every chunk queued then was written.
        self.closed_cleanly = False
        # The last write round refused chunks (budget or free space): drains stop copying
        # until space is back, and fall back to their rings (as without a backlog).
        self.refusing = False

    # -- lifecycle ----------------------------------------------------------------------
    def open(self, keep: Collection[int] = ()) -> None:
        """Create the directory and read what a previous process left (before any drain;
        ``ephemeral``: remove it, but the backlogs of the drains in ``keep``, which a clean
        stop carried over to this process)."""
        if self.ephemeral and not keep:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prior = self.ledger.open()
        if self.ephemeral and keep:
            self.prune(set(keep))
        self.opened = True

    def _drain_dir(self, drain_id: int) -> Path:
        return self.directory / "drains" / str(drain_id)

    def attach(self, drain_id: int, channel: str) -> DrainBacklog:
        """The drain's backlog: segments a previous process left are kept, a torn tail cut
        (and counted as lost), and what it had only in memory becomes ``prior_lost``."""
        assert self.opened, "open() first"
        old = self._backlogs.pop(drain_id, None)
        if old is not None:
            self._close(old)
        prior = self._prior.pop(drain_id, None)
        entry = self.ledger.attach_drain(drain_id, channel)
        segments = SegmentLog(
            self._drain_dir(drain_id),
            segment_bytes=self.settings.segment_bytes,
            budget_bytes=self.settings.drain_budget_bytes,
        )
        recovery = segments.open()
        if recovery.cut_bytes:
            self.cut_bytes += recovery.cut_bytes
            log.warning(
                "drain %d: cut %d damaged bytes (%s) off its disk backlog",
                drain_id,
                recovery.cut_bytes,
                recovery.damage,
            )
        end = segments.end_seq
        queued_end = max(end, prior.spill_queued_end if prior is not None else 0)
        # Without a ledger entry (a first start, or a lost ledger) what is on disk is read
        # from its start; with one, from where delivery stopped, so that segments a budget
        # dropped meanwhile show as a gap and are announced.
        acked = prior.spill_acked if prior is not None else segments.first_seq
        acked = min(acked, queued_end)
        if acked:
            segments.ack(acked)
        backlog = DrainBacklog(drain_id, segments, entry, self)
        backlog.queued_end = queued_end
        backlog.read_seq = acked
        entry.spill_acked = acked
        entry.spill_queued_end = backlog.queued_end
        backlog._recheck()
        if prior is not None:
            # Lost with the process: what it held only in memory, its unannounced losses.
            # Chunks it queued but never wrote show as the gap up to queued_end (``read``).
            backlog.prior_lost = prior.ring_lost + prior.unannounced
        entry.store()
        self._backlogs[drain_id] = backlog
        return backlog

    def _close(self, backlog: DrainBacklog) -> None:
        backlog.closed = True
        self._waiting.pop(backlog.drain_id, None)
        self._queued_bytes -= backlog.queued_bytes
        backlog.queued.clear()
        backlog._recheck()
        backlog.queued_bytes = 0
        backlog.log.close()
        self.ledger.detach_drain(backlog.drain_id)

    def detach(self, backlog: DrainBacklog) -> None:
        """The drain stops (it keeps its files and positions: it may be back). Chunks
        still queued are not written: the drain finds them as a gap, counted as lost."""
        if self._backlogs.get(backlog.drain_id) is backlog:
            del self._backlogs[backlog.drain_id]
        if not backlog.closed:
            self._prior[backlog.drain_id] = PriorRun(
                ring_lost=0,
                spill_queued_end=backlog.queued_end,
                spill_acked=backlog.entry.spill_acked,
                unannounced=0,
            )
            self._close(backlog)

    def destroy(self, backlog: DrainBacklog) -> None:
        """The drain was deleted: its files go too."""
        self.detach(backlog)
        self._prior.pop(backlog.drain_id, None)
        backlog.log.destroy()

    def written_end(self, drain_id: int) -> int:
        """The backlog sequence past the last message a previous process wrote for
        ``drain_id`` (before it is attached; a torn tail is cut, as ``attach`` would).
        What it queued past that and never wrote is not counted lost when attached: the
        caller reads those messages from elsewhere (Redis mode: the channel's stream)."""
        segments = SegmentLog(
            self._drain_dir(drain_id),
            segment_bytes=self.settings.segment_bytes,
            budget_bytes=self.settings.drain_budget_bytes,
        )
        segments.open()
        end = int(segments.end_seq)
        segments.close()
        prior = self._prior.get(drain_id)
        if prior is not None and prior.spill_queued_end > end:
            self._prior[drain_id] = dataclasses.replace(prior, spill_queued_end=end)
        return end

    def discard(self, drain_id: int) -> None:
        """Remove what a previous process left of ``drain_id`` (not attached here)."""
        if drain_id in self._backlogs:
            return
        self._prior.pop(drain_id, None)
        shutil.rmtree(self._drain_dir(drain_id), ignore_errors=True)

    def prune(self, keep: set[int]) -> int:
        """Remove the backlogs of drains that no longer exist; returns how many."""
        root = self.directory / "drains"
        removed = 0
        if not root.is_dir():
            return 0
        for path in root.iterdir():
            try:
                drain_id = int(path.name)
            except ValueError:
                continue
            if drain_id in keep or drain_id in self._backlogs:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        for drain_id in list(self._prior):
            if drain_id not in keep:
                del self._prior[drain_id]
        return removed

    # -- the writer's queue ---------------------------------------------------------------
    def reserve(self, nbytes: int) -> bool:
        if self._queued_bytes + nbytes > self.settings.queue_bytes and self._queued_bytes:
            return False
        self._queued_bytes += nbytes
        return True

    def wake(self, backlog: DrainBacklog) -> None:
        self._waiting[backlog.drain_id] = backlog
        self._wake.set()
        if self._queued_bytes >= self.settings.queue_bytes // 4:
            self._urgent.set()

    def recheck(self) -> bool:
        """Look whether the disk takes data again (budget, free space); True if blocked."""
        if self.refusing:
            self.refusing = not self._fits(self.disk_bytes, self.settings.segment_bytes)
        return self.blocked

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def blocked(self) -> bool:
        """Nothing can be copied now: the disk refuses, or the writer's queue is full."""
        # A chunk is up to ``chunk_bytes``: with less room than that, copying would fail.
        return (
            self.refusing
            or self._queued_bytes + self.settings.chunk_bytes > self.settings.queue_bytes
        )

    @property
    def disk_bytes(self) -> int:
        return sum(b.disk_bytes for b in self._backlogs.values())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued chunks at most ``flush_interval`` after they were queued (at once
        when many wait), until cancelled; ``close`` writes what is left. Idle, it sleeps
        without a timer (an idle daemon wakes for nothing), except to fsync what it wrote
        last (``fsync_interval``)."""
        task_status.started()
        while True:
            if self._unsynced and self.settings.fsync == "interval":
                with trio.move_on_after(self.settings.fsync_interval):
                    await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake = trio.Event()
            with trio.move_on_after(self.settings.flush_interval):
                await self._urgent.wait()
            self._urgent = trio.Event()
            try:
                await self.write_round()
            except Exception:
                # A bug here must not take the drains (or the daemon) down: what stays
                # queued is written at the next round, or counted as a gap.
                log.exception("disk backlog writer failed; retrying")
                await trio.sleep(self.settings.fsync_interval)
            if self._waiting:
                self._wake.set()

    async def write_round(self, *, sync: bool = False) -> None:
        """Write everything queued now (in a worker thread), then wake the drains."""
        # One round at a time: a chunk is written once, and in its drain's order.
        async with self._writing:
            await self._write_round(sync)

    async def _write_round(self, sync: bool) -> None:
        waiting, self._waiting = self._waiting, {}
        work: list[tuple[DrainBacklog, list[_Chunk]]] = []
        for backlog in waiting.values():
            if backlog.closed or not backlog.queued:
                continue
            chunks = list(backlog.queued)
            work.append((backlog, chunks))
        now = trio.current_time()
        fsync = (
            sync
            or self.settings.fsync == "always"
            or (
                self.settings.fsync == "interval"
                and (work or self._unsynced)
                and now - self._last_fsync >= self.settings.fsync_interval
            )
        )
        if work or fsync:
            results = await trio.to_thread.run_sync(self._write, work, fsync, self.disk_bytes)
            if fsync:
                self._last_fsync = now
                self._unsynced = False
            elif work:
                self._unsynced = True
            refused_any = False
            for (backlog, chunks), (written, refused) in zip(work, results, strict=True):
                self._settle_written(backlog, chunks, written, refused)
                refused_any = refused_any or refused > 0
            self.refusing = refused_any
        elif self.refusing:
            self.refusing = not self._fits(self.disk_bytes, self.settings.segment_bytes)

    def _settle_written(
        self, backlog: DrainBacklog, chunks: list[_Chunk], written: int, refused: int
    ) -> None:
        if backlog.closed:
            return  # detached meanwhile: its queue was dropped with it (``_close``)
        done = written + refused
        for _ in range(done):
            chunk = backlog.queued.popleft()
            backlog.queued_bytes -= len(chunk.payload)
            self._queued_bytes -= len(chunk.payload)
        backlog._recheck()
        if backlog.on_written is not None and done:
            backlog.on_written()

    def _fits(self, disk_bytes: int, nbytes: int) -> bool:
        if disk_bytes + nbytes > self.settings.total_budget_bytes:
            return False
        try:
            stats = os.statvfs(self.directory)
        except OSError:
            return True
        return stats.f_bavail * stats.f_frsize - nbytes >= self.settings.min_free_bytes

    def _write(
        self, work: list[tuple[DrainBacklog, list[_Chunk]]], fsync: bool, disk_bytes: int
    ) -> list[tuple[int, int]]:
        """Worker thread: append each chunk; returns (written, refused) chunk counts per
        drain. A refused chunk leaves a gap in the drain's sequence: its reader counts it."""
        results: list[tuple[int, int]] = []
        for backlog, chunks in work:
            written = refused = 0
            for chunk in chunks:
                if backlog.closed:
                    refused += 1
                    continue
                try:
                    if not self._fits(disk_bytes, len(chunk.payload) + 64):
                        raise OSError(28, "disk backlog budget or free space exhausted")
                    before = backlog.log.size_bytes
                    backlog.log.append(
                        chunk.first_seq, chunk.count, chunk.payload, chunk.written_at
                    )
                    disk_bytes += backlog.log.size_bytes - before
                    self.written_bytes += len(chunk.payload)
                    self.written_messages += chunk.count
                    written += 1
                except (OSError, ValueError) as exc:
                    refused += 1
                    self.refused_messages += chunk.count
                    if not self._refusal_logged:
                        self._refusal_logged = True
                        log.error(
                            "disk backlog of drain %d: %s; messages are dropped and "
                            "announced with L10 until space is freed",
                            backlog.drain_id,
                            exc,
                        )
                else:
                    self._refusal_logged = False
            if fsync and written:
                try:
                    backlog.log.sync()
                except OSError as exc:
                    log.error("disk backlog of drain %d: fsync failed: %s", backlog.drain_id, exc)
            results.append((written, refused))
        if fsync:
            self.ledger.sync()
        return results

    async def close(self) -> None:
        """Write what is queued, sync, and close (the caller shields this)."""
        for backlog in self._backlogs.values():
            if backlog.queued:
                self._waiting[backlog.drain_id] = backlog
        await self.write_round(sync=True)
        # The drains keep their ledger slots: the next process reads their positions.
        for backlog in self._backlogs.values():
            backlog.closed = True
            backlog.log.close()
        self._backlogs.clear()
        self.ledger.sync()
        self.ledger.close()
        self.closed_cleanly = True
