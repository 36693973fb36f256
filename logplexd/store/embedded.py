"""The embedded store: in-memory state, a msgpack journal with group commit, snapshots.

Data dir layout:
    lock            flock()ed while a process has the store open
    snapshot.lps    the whole state as of the last compaction (replaced by rename only)
    journal.lpj     one framed record per committed transaction since that snapshot

Every journal record is a list of primitive operations that each set or delete one key.
Replaying a suffix of the journal on a state that already includes it changes nothing, so
a crash between writing a snapshot and resetting the journal is harmless.

A write applies its operations to memory at once (so concurrent requests validate against
each other without locks), then waits until a flush has written and fsynced its record.
Whoever flushes takes every pending record along (group commit), then publishes the
events of the whole batch in commit order.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import msgpack
import trio

from . import files
from ._state import Op, Plan, State, T
from .base import Store
from .dir_lock import DirLock
from .model import StoreCorrupt, StoreError, StoreEvent, StoreUnavailable

log = logging.getLogger("logplexd.store")

SNAPSHOT_FILE = "snapshot.lps"
JOURNAL_FILE = "journal.lpj"
LOCK_FILE = "lock"
# Compact when the journal has grown past this and past the size of the last snapshot.
DEFAULT_COMPACT_MIN_BYTES = 4 << 20
# After a failed journal write (disk full, read-only, I/O error), ``maintain`` tries to
# recover this often; writes are refused (503) until it succeeds.
RECOVERY_INTERVAL = 1.0
# Free space a recovery reserves (then gives back) to know that writes can succeed again.
RECOVERY_PROBE_BYTES = 64 << 10


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


class EmbeddedStore(Store):
    def __init__(
        self,
        data_dir: str,
        *,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock)
        self.data_dir = os.path.abspath(data_dir)
        self.compact_min_bytes = compact_min_bytes
        self._snapshot_path = os.path.join(self.data_dir, SNAPSHOT_FILE)
        self._journal_path = os.path.join(self.data_dir, JOURNAL_FILE)
        self._failure: str | None = None
        self._failed = trio.Event()  # set by _fail: wakes maintain() to recover
        self._lock = DirLock(self.data_dir, LOCK_FILE)
        self._journal_fd: int | None = None
        self._journal_bytes = 0
        self._snapshot_bytes = 0
        # Group commit: records applied to memory but not yet written, and their events.
        self._pending = bytearray()
        self._pending_events: list[StoreEvent] = []
        self._applied_seq = 0
        self._durable_seq = 0
        # (after, upto] ranges of commit seqs thrown away by recover(): never acknowledged.
        self._discarded: list[tuple[int, int]] = []
        self._commit_lock = trio.Lock()
        self._open()

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> None:
        self._lock.acquire()
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        started = time.monotonic()
        now = self._clock()
        for leftover in (self._snapshot_path + ".tmp", self._journal_path + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        try:
            snapshot = files.read_snapshot(self._snapshot_path)
            scan = files.read_journal(self._journal_path)
        except files.FormatError as exc:
            raise StoreCorrupt(str(exc)) from None
        if snapshot is not None:
            self._snapshot_bytes = len(snapshot)
            files.load_snapshot(self._state, snapshot, now)
            del snapshot
        if scan is None or scan.valid_length == 0:
            # No journal yet, or one whose header never made it to disk.
            files.write_atomically(self._journal_path, files.header(files.JOURNAL_MAGIC))
            valid_length = files.HEADER.size
        else:
            for payload in scan.records:
                for op in _unpack(payload):
                    self._state.apply(op, now)
            valid_length = scan.valid_length
            if scan.ignored_bytes:
                log.warning(
                    "store: ignoring %d bytes at the end of %s (%s): a write that was never "
                    "acknowledged, cut short by a crash",
                    scan.ignored_bytes,
                    self._journal_path,
                    scan.ignored_reason,
                )
        fd = os.open(self._journal_path, os.O_WRONLY)
        if scan is not None and scan.ignored_bytes and scan.valid_length:
            # Later appends must follow the last good record, not the torn one.
            os.ftruncate(fd, valid_length)
            os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_END)
        self._journal_fd = fd
        self._journal_bytes = valid_length
        log.info(
            "store: opened %s: %d channels, %d tokens, %d drains in %.3f s",
            self.data_dir,
            len(self._state.channels),
            len(self._state.tokens),
            len(self._state.drains),
            time.monotonic() - started,
        )
        if self._wants_compaction():
            self._compact_files(self._encode_snapshot())

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def journal_bytes(self) -> int:
        return self._journal_bytes

    # -- commit --------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._failure is not None:
            raise StoreUnavailable(self._failure)
        if self._journal_fd is None:
            raise StoreUnavailable("store is closed")

    async def _write(self, plan: Plan[T]) -> T:
        self._check_writable()
        ops, finish = plan()
        if ops:
            await self._commit(ops)
        return finish()

    async def _commit(self, ops: list[Op]) -> None:
        try:
            payload = _pack(ops)
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"value cannot be stored: {type(exc).__name__}") from None
        # Applied in the same trio step as planned: the next write's plan already sees it.
        self._pending_events.extend(self._state.apply_all(ops, self._clock()))
        self._pending += files.frame(payload)
        self._applied_seq += 1
        seq = self._applied_seq
        # Once applied in memory the record must reach the disk (or fail the store), even if
        # the request that made it is cancelled: otherwise memory and disk would disagree.
        with trio.CancelScope(shield=True):
            while self._durable_seq < seq or self._was_discarded(seq):
                if self._failure is not None or self._was_discarded(seq):
                    raise StoreUnavailable(self._failure or "store failed during the write")
                async with self._commit_lock:
                    if self._durable_seq < seq and self._failure is None:
                        await self._flush_locked()

    def _was_discarded(self, seq: int) -> bool:
        return any(lo < seq <= hi for lo, hi in self._discarded)

    async def _flush_locked(self) -> None:
        if not self._pending:
            return
        if self._failure is not None:
            # Never append after a failed write: it may have left a torn record behind.
            raise StoreUnavailable(self._failure)
        data = bytes(self._pending)
        events = self._pending_events
        upto = self._applied_seq
        self._pending = bytearray()
        self._pending_events = []
        fd = self._journal_fd
        try:
            if fd is None:
                raise OSError("journal is closed")
            await trio.to_thread.run_sync(_append_and_sync, fd, data)
        except OSError as exc:
            self._fail(f"journal write failed: {exc.strerror or exc}")
            raise StoreUnavailable(self._failure) from None
        self._durable_seq = upto
        self._journal_bytes += len(data)
        self._publish(events)

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            log.error("store: %s; refusing writes until it recovers", reason)
            self._failure = reason
            self._failed.set()

    async def recover(self) -> bool:
        """After a write failure: forget what was never acknowledged and accept writes again.

        A failed flush leaves memory ahead of the disk (writes apply to memory first) and
        maybe a torn record on disk. Recovery cuts the journal back to its last durable
        length, checks that there is room to write again, and reloads the state from disk,
        so only acknowledged changes remain. Returns False while the disk still fails.
        """
        if self._failure is None:
            return True
        if self._journal_fd is None:
            return False
        async with self._commit_lock:
            try:
                fd, state, length = await trio.to_thread.run_sync(self._reopen_from_disk)
            except (OSError, StoreCorrupt) as exc:
                log.warning("store: still failing (%s)", exc)
                return False
            old_fd, self._journal_fd = self._journal_fd, fd
            with contextlib.suppress(OSError):
                os.close(old_fd)
            self._state = state
            self._journal_bytes = length
            self._pending = bytearray()
            self._pending_events = []
            if self._applied_seq > self._durable_seq:
                self._discarded.append((self._durable_seq, self._applied_seq))
            self._durable_seq = self._applied_seq
            log.warning("store: recovered from %r; accepting writes again", self._failure)
            self._failure = None
            self._failed = trio.Event()
        return True

    def _reopen_from_disk(self) -> tuple[int, State, int]:
        """A new journal fd cut to the durable length, and the state on disk (in a thread)."""
        now = self._clock()
        fd = os.open(self._journal_path, os.O_WRONLY)
        try:
            size = os.fstat(fd).st_size
            durable = min(size, self._journal_bytes)
            os.ftruncate(fd, durable)
            try:
                os.posix_fallocate(fd, durable, RECOVERY_PROBE_BYTES)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            os.ftruncate(fd, durable)
            os.fsync(fd)
            state = State()
            try:
                snapshot = files.read_snapshot(self._snapshot_path)
                scan = files.read_journal(self._journal_path)
            except files.FormatError as exc:
                raise StoreCorrupt(str(exc)) from None
            if scan is None or scan.valid_length == 0:
                raise StoreCorrupt(f"{self._journal_path} has no header")
            if snapshot is not None:
                files.load_snapshot(state, snapshot, now)
            for payload in scan.records:
                for op in _unpack(payload):
                    state.apply(op, now)
            if scan.valid_length != durable:
                os.ftruncate(fd, scan.valid_length)
                os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)
            raise
        return fd, state, scan.valid_length

    # -- compaction and maintenance ----------------------------------------------------------------
    def _wants_compaction(self) -> bool:
        return self._journal_bytes > max(self.compact_min_bytes, self._snapshot_bytes)

    def _encode_snapshot(self) -> bytes:
        return files.encode_snapshot(self._state)

    def _compact_files(self, snapshot: bytes) -> None:
        """Write the snapshot, then start an empty journal. Runs with the commit lock held."""
        files.write_snapshot(self._snapshot_path, snapshot)
        # From here the snapshot holds everything; a crash before the journal is reset
        # just replays the old journal on top of it, which changes nothing.
        try:
            files.write_atomically(self._journal_path, files.header(files.JOURNAL_MAGIC))
            new_fd = os.open(self._journal_path, os.O_WRONLY)
            os.lseek(new_fd, 0, os.SEEK_END)
        except OSError as exc:
            self._fail(f"journal reset after compaction failed: {exc.strerror or exc}")
            raise
        old_fd, self._journal_fd = self._journal_fd, new_fd
        if old_fd is not None:
            os.close(old_fd)
        self._snapshot_bytes = len(snapshot)
        self._journal_bytes = files.HEADER.size

    async def refresh(self) -> None:
        """Nothing to catch up with: every write to this store goes through this process
        (``logplexd accounts`` too, through the daemon's accounts socket)."""

    async def compact(self) -> None:
        self._check_writable()
        async with self._commit_lock:
            await self._flush_locked()
            self.expire_sessions()
            # Encoded here, in the trio thread, so no request changes the state meanwhile.
            snapshot = self._encode_snapshot()
            started = time.monotonic()
            await trio.to_thread.run_sync(self._compact_files, snapshot)
            log.info(
                "store: compacted into a %d-byte snapshot in %.3f s",
                len(snapshot),
                time.monotonic() - started,
            )

    async def maintain(
        self, *, interval: float = 60.0, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run forever: expire sessions, compact once the journal has grown."""
        task_status.started()
        next_run = trio.current_time() + interval
        while True:
            with trio.move_on_at(next_run):
                await self._failed.wait()
            if self._failure is not None:
                # Not at once: a disk that just filled up stays full for a while.
                await trio.sleep(RECOVERY_INTERVAL)
                await self.recover()
                continue
            next_run = trio.current_time() + interval
            self.expire_sessions()
            if self._failure is None and self._wants_compaction():
                try:
                    await self.compact()
                except (OSError, StoreError) as exc:
                    log.error("store: compaction failed: %s", exc)

    def close(self) -> None:
        if self._journal_fd is not None:
            if self._pending and self._failure is None:
                # Records of writes that were cancelled before any flush: keep them.
                with contextlib.suppress(OSError):
                    _append_and_sync(self._journal_fd, bytes(self._pending))
                self._pending = bytearray()
            os.close(self._journal_fd)
            self._journal_fd = None
        self._lock.release()


def _append_and_sync(fd: int, data: bytes) -> None:
    files.write_all(fd, data)
    os.fdatasync(fd)


def open_store(data_dir: str, **options: Any) -> EmbeddedStore:
    """Open (creating if needed) the embedded store in ``data_dir``; replays it into memory.

    Raises StoreLocked if another process has it open, StoreCorrupt if it cannot be read.
    """
    return EmbeddedStore(data_dir, **options)
