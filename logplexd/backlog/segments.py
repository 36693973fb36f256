"""``SegmentLog``: one drain's append-only backlog on disk, as a directory of segment files.

Each segment is named after the sequence it starts at (``<20 digits>.seg``) and holds whole
records (``records.py``) in increasing sequence order; a record never spans two segments.
Sequences may have gaps (messages lost before they reached the disk), never go back.

Threads: ``append`` and ``sync`` come from one writer thread, ``read``, ``ack`` and the
properties from the event loop; one lock guards the metadata. The writer writes and fsyncs
outside the lock (a write stalled by dirty-page throttling must not stall the event loop),
and marks itself busy meanwhile so that ``ack`` leaves the segment it writes alone. Reads
happen outside the lock too, through the reader's own file descriptors: records are never
changed once written, and a segment deleted meanwhile stays readable through an open fd.

Disk budget: before a record is written, the oldest whole segments are deleted until the
log plus the record fit ``budget_bytes``; the segment being written is no exception when it
is the oldest, so the files never add up to more than the budget. (The reader keeps at most
one deleted segment open until its next read: the space on disk may stay taken for up to
one segment more.) A record larger than the whole budget is not written: its messages are
counted dropped.

Loss accounting (``dropped_total``, ``take_dropped``), for one reader reading in order:
messages deleted by the budget (or unreadable because of damage found on reading) count as
dropped unless they were acknowledged, or handed out by ``read`` and not given up since.
Handed-out messages that are deleted become dropped if the reader reads again from below
them (it gave them up: it rewinds to re-read them and finds a gap), and are forgotten when
``ack`` covers them (the reader delivered what it held). So each message is either acked,
or counted exactly once, whatever the order in which the writer and the reader run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from .records import HEADER_SIZE, Damage, RecordInfo, ScanResult, parse_header, record_header, scan

DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024
DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024
SEGMENT_SUFFIX = ".seg"
_SEGMENT_NAME = re.compile(r"(\d{20})\.seg")
# Recovery reads segments in windows this large (a record's header chain costs one pread
# per window, not per record).
_WINDOW_BYTES = 1024 * 1024


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


@dataclass(frozen=True, slots=True)
class Recovery:
    """What ``open`` cut off: bytes of damaged tails and of removed segments, how many
    segment files it removed (empty or without one good record), and the worst damage
    seen ("corrupt" over "torn"; None when nothing but empty files was removed)."""

    cut_bytes: int
    cut_segments: int
    damage: Damage | None


@dataclass(frozen=True, slots=True)
class Chunk:
    """One record read back: messages ``first_seq .. first_seq + count - 1``."""

    first_seq: int
    count: int
    payload: bytes
    written_at: float

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.count


class _Segment:
    """A segment's index, built as records are written or scanned: one entry per record.
    A record found damaged on reading keeps its entry with a count of 0 (nothing to read,
    nothing more to count)."""

    __slots__ = (
        "base_seq",
        "counts",
        "dirty",
        "end_seq",
        "file_bytes",
        "messages",
        "offsets",
        "path",
        "reusable",
        "seqs",
        "size",
        "written_at",
    )

    def __init__(self, base_seq: int, path: Path) -> None:
        self.base_seq = base_seq
        self.path = path
        self.offsets: array[int] = array("Q")
        self.seqs: array[int] = array("Q")
        self.counts: array[int] = array("I")
        self.written_at: array[float] = array("d")
        self.size = 0  # end of the last good record
        self.file_bytes = 0  # what the file takes: more than size after a failed write
        self.messages = 0
        self.end_seq = base_seq
        # Written since its last fsync.
        self.dirty = False
        # Only the last segment found by ``open`` may be appended to again: every other one
        # was closed because it was full or its tail could not be repaired.
        self.reusable = False

    def add(self, offset: int, first_seq: int, count: int, written_at: float, length: int) -> None:
        self.offsets.append(offset)
        self.seqs.append(first_seq)
        self.counts.append(count)
        self.written_at.append(written_at)
        self.size = offset + length
        self.messages += count
        self.end_seq = first_seq + count

    def record_end(self, index: int) -> int:
        following = index + 1
        return self.offsets[following] if following < len(self.offsets) else self.size

    def messages_from(self, seq: int) -> int:
        """Messages of this segment at or above ``seq``."""
        if not self.seqs or seq <= self.seqs[0]:
            return self.messages
        if seq >= self.end_seq:
            return 0
        index = bisect_right(self.seqs, seq) - 1
        partial = max(0, self.seqs[index] + self.counts[index] - seq)
        return partial + sum(self.counts[index + 1 :])


@dataclass(slots=True)
class _Planned:
    """A record ``read`` will fetch, located while the lock was held."""

    segment: _Segment
    index: int
    offset: int
    length: int
    first_seq: int
    count: int


def _segment_end(segment: _Segment) -> int:
    return segment.end_seq


def _worse(a: Damage | None, b: Damage | None) -> Damage | None:
    if a == "corrupt" or b == "corrupt":
        return "corrupt"
    return a or b


def _walk(fd: int, file_bytes: int, *, check_crc: bool) -> ScanResult:
    """The records of a segment file, read in windows so that neither a huge file nor a huge
    length field makes us allocate more than one window or one legal record."""
    records: list[RecordInfo] = []
    window = b""
    window_start = 0
    position = 0

    def have(start: int, length: int) -> memoryview:
        nonlocal window, window_start
        if not (window_start <= start and start + length <= window_start + len(window)):
            window = os.pread(fd, max(length, _WINDOW_BYTES), start)
            window_start = start
        relative = start - window_start
        return memoryview(window)[relative : relative + length]

    while position < file_bytes:
        head = have(position, min(HEADER_SIZE, file_bytes - position))
        info = parse_header(head)
        if isinstance(info, str):
            return ScanResult(records, position, info)
        length = HEADER_SIZE + info.payload_len
        if position + length > file_bytes:
            return ScanResult(records, position, "torn")
        if check_crc:
            whole = have(position, length)
            if len(whole) < length:  # the file shrank under us: treat as torn
                return ScanResult(records, position, "torn")
            if scan(whole).damage is not None:
                return ScanResult(records, position, "corrupt")
        records.append(
            RecordInfo(
                position,
                info.first_seq,
                info.count,
                info.written_at,
                position + HEADER_SIZE,
                info.payload_len,
            )
        )
        position += length
    return ScanResult(records, position, None)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentLog:
    def __init__(
        self,
        directory: Path,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
    ) -> None:
        if segment_bytes < 1 or budget_bytes < 1:
            raise ValueError("segment_bytes and budget_bytes must be positive")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        # Held by ``read`` around its whole run: the read fds are the reader's alone. Always
        # taken before ``_lock``, never inside it.
        self._read_lock = threading.Lock()
        self._opened = False
        self._closed = False
        self._segments: list[_Segment] = []
        self._current: _Segment | None = None
        self._write_fd: int | None = None
        self._writer_busy = False
        self._unsynced: set[_Segment] = set()  # closed for writing, not yet fsynced
        self._dir_dirty = False
        self._size = 0
        self._end_seq = 0
        self._acked_seq = 0
        # Where the reader's last read ended: what lies between the ack and here was handed
        # out and is the reader's to deliver or give up.
        self._read_end = 0
        # Messages deleted while handed out, as [lo, hi) sequence ranges (bounded by what
        # the reader holds): settled by ``ack`` (delivered) or a rewinding ``read`` (lost).
        self._in_flight_deleted: list[tuple[int, int]] = []
        self._dropped_total = 0
        self._dropped_reported = 0
        self._read_fds: dict[_Segment, int] = {}

    # -- opening and closing -------------------------------------------------------------
    def open(self) -> Recovery:
        """Load the segments a previous run left, cutting damaged tails off (never raises on
        bad content; OS errors such as a permission denied propagate)."""
        with self._read_lock, self._lock:
            if self._opened:
                raise RuntimeError("SegmentLog.open() was already called")
            self.directory.mkdir(parents=True, exist_ok=True)
            found = sorted(
                (int(match.group(1)), entry.name)
                for entry in os.scandir(self.directory)
                if (match := _SEGMENT_NAME.fullmatch(entry.name)) and entry.is_file()
            )
            cut_bytes = cut_segments = 0
            damage: Damage | None = None
            previous_end = 0
            for position, (base_seq, name) in enumerate(found):
                path = self.directory / name
                is_last = position == len(found) - 1
                segment, cut, seen = self._recover_segment(path, base_seq, previous_end, is_last)
                cut_bytes += cut
                damage = _worse(damage, seen)
                if segment is None:
                    cut_segments += 1
                    continue
                self._segments.append(segment)
                self._size += segment.file_bytes
                previous_end = segment.end_seq
            if self._segments:
                self._segments[-1].reusable = True
            self._end_seq = previous_end
            self._opened = True
            return Recovery(cut_bytes, cut_segments, damage)

    def _recover_segment(
        self, path: Path, base_seq: int, previous_end: int, is_last: bool
    ) -> tuple[_Segment | None, int, Damage | None]:
        # Only the last segment can have been torn by a process crash, so only it has its
        # payloads checked here; the others' crcs are checked as they are read back.
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            file_bytes = os.fstat(fd).st_size
            result = _walk(fd, file_bytes, check_crc=is_last)
            records, valid_end, damage = result.records, result.valid_end, result.damage
            for index, record in enumerate(records):
                if record.first_seq < previous_end:  # out of order: not ours to trust
                    records, valid_end, damage = records[:index], record.offset, "corrupt"
                    break
                previous_end = record.end_seq
            if not records:
                os.close(fd)
                fd = -1
                os.unlink(path)
                self._dir_dirty = True
                return None, file_bytes, damage
            if valid_end < file_bytes:
                os.ftruncate(fd, valid_end)
                os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)
        segment = _Segment(base_seq, path)
        for record in records:
            segment.add(
                record.offset,
                record.first_seq,
                record.count,
                record.written_at,
                record.end_offset - record.offset,
            )
        segment.file_bytes = segment.size
        return segment, file_bytes - valid_end, damage

    def close(self) -> None:
        """Close every fd (the writer thread must have stopped)."""
        with self._read_lock, self._lock:
            self._closed = True
            if self._write_fd is not None:
                os.close(self._write_fd)
                self._write_fd = None
            self._current = None
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()

    def destroy(self) -> None:
        """Close and remove the directory with everything in it (the drain was deleted)."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.directory)

    def _require_open(self) -> None:
        if not self._opened or self._closed:
            raise RuntimeError("SegmentLog is not open")

    # -- writing (writer thread) -----------------------------------------------------------
    def append(self, first_seq: int, count: int, payload: bytes, written_at: float) -> int:
        """Append one record of ``count`` messages; returns the bytes written (0 when the
        record alone is larger than the budget: its messages are counted dropped).

        ``first_seq`` may skip ahead of ``end_seq`` (messages lost before the disk) but not
        go back (ValueError). No fsync: see ``sync``.
        """
        header = record_header(first_seq, count, payload, written_at)
        length = HEADER_SIZE + len(payload)
        with self._lock:
            self._require_open()
            if self._writer_busy:
                raise RuntimeError("append and sync must come from one writer thread")
            if first_seq < self._end_seq:
                raise ValueError(f"sequence {first_seq} is below the log's end {self._end_seq}")
            if length > self.budget_bytes:
                self._end_seq = first_seq + count
                self._add_dropped(first_seq + count - max(first_seq, self._acked_seq))
                return 0
            self._delete_acked_locked()
            current = self._current
            if current is not None and current.size and current.size + length > self.segment_bytes:
                self._seal_locked()
            while self._segments and self._size + length > self.budget_bytes:
                self._evict_locked(self._segments[0])
            if self._current is None:
                self._start_segment_locked(first_seq, length)
            segment, fd = self._current, self._write_fd
            assert segment is not None and fd is not None
            self._writer_busy = True
        written = 0
        try:
            written = os.writev(fd, (header, payload))
            if written < length:  # a short write: the rest in order
                rest = memoryview(header + payload)
                while written < length:
                    written += os.write(fd, rest[written:])
        except BaseException:
            with self._lock:
                self._writer_busy = False
                self._undo_write_locked(segment, fd, written)
            raise
        with self._lock:
            self._writer_busy = False
            segment.add(segment.size, first_seq, count, written_at, length)
            segment.file_bytes += length
            segment.dirty = True
            self._size += length
            self._end_seq = first_seq + count
        return length

    def _start_segment_locked(self, first_seq: int, length: int) -> None:
        last = self._segments[-1] if self._segments else None
        if last is not None and last.reusable and last.size + length <= self.segment_bytes:
            # Carry on in the segment a previous run was writing rather than leave a small
            # one behind at every restart.
            self._write_fd = os.open(last.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._current = last
            return
        segment = _Segment(first_seq, self.directory / segment_name(first_seq))
        # O_TRUNC: a file of that name can only be an empty leftover of a failed first write.
        self._write_fd = os.open(
            segment.path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
            0o600,
        )
        self._segments.append(segment)
        self._current = segment
        self._dir_dirty = True

    def _undo_write_locked(self, segment: _Segment, fd: int, written: int) -> None:
        """After a failed write (disk full, I/O error): cut what part of the record made it,
        so that the next record follows a good one."""
        if written:
            try:
                os.ftruncate(fd, segment.size)
            except OSError:
                # The tail stays garbage: write no more there (readers never look past the
                # index; the next ``open`` cuts it) and count it against the budget.
                segment.file_bytes += written
                self._size += written
                if self._current is segment:
                    self._seal_locked()
        if not segment.seqs and segment in self._segments:
            # A segment created for this record: it must not stay empty in the index.
            with contextlib.suppress(OSError):
                self._remove_locked(segment)

    def _seal_locked(self) -> None:
        """The current segment takes no more records."""
        segment, fd = self._current, self._write_fd
        self._current = None
        self._write_fd = None
        if fd is not None:
            os.close(fd)
        if segment is not None:
            segment.reusable = False
            if segment.dirty:
                self._unsynced.add(segment)

    def sync(self) -> None:
        """fsync what was written since the last sync: the current segment, segments closed
        since, and the directory when files were created or removed (writer thread)."""
        with self._lock:
            self._require_open()
            if self._writer_busy:
                raise RuntimeError("append and sync must come from one writer thread")
            current = self._current if self._current is not None and self._current.dirty else None
            fd = self._write_fd if current is not None else None
            if current is not None:
                current.dirty = False
            sealed = list(self._unsynced)
            self._unsynced.clear()
            for segment in sealed:
                segment.dirty = False
            dir_dirty, self._dir_dirty = self._dir_dirty, False
            self._writer_busy = True
        try:
            if fd is not None:
                os.fsync(fd)
            for segment in sealed:
                try:
                    sealed_fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue  # deleted meanwhile: nothing left to make durable
                try:
                    os.fsync(sealed_fd)
                finally:
                    os.close(sealed_fd)
            if dir_dirty:
                _fsync_dir(self.directory)
        except BaseException:
            with self._lock:
                # Try again at the next sync.
                if current is not None:
                    current.dirty = True
                for segment in sealed:
                    if segment in self._segments:
                        segment.dirty = True
                        if segment is not self._current:
                            self._unsynced.add(segment)
                self._dir_dirty = self._dir_dirty or dir_dirty
            raise
        finally:
            with self._lock:
                self._writer_busy = False

    # -- deleting --------------------------------------------------------------------------
    def _remove_locked(self, segment: _Segment) -> None:
        # Unlink first: if that fails nothing changed, and nothing was counted twice.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.path)
        if segment is self._current:
            self._seal_locked()
        self._segments.remove(segment)
        self._unsynced.discard(segment)
        self._size -= segment.file_bytes
        self._dir_dirty = True

    def _delete_acked_locked(self) -> None:
        while self._segments and self._segments[0].end_seq <= self._acked_seq:
            segment = self._segments[0]
            if segment is self._current and self._writer_busy:
                break  # the writer is adding a record to it: it will not be all acked
            self._remove_locked(segment)

    def _evict_locked(self, segment: _Segment) -> None:
        """Delete an undelivered segment for the budget, accounting for its messages."""
        self._remove_locked(segment)
        acked = self._acked_seq
        handed_out = max(acked, self._read_end)
        if segment.end_seq <= acked:
            return
        if segment.seqs and segment.seqs[0] >= handed_out:
            self._add_dropped(segment.messages)
            return
        for first, count in zip(segment.seqs, segment.counts, strict=True):
            low, high = max(first, acked), first + count
            if low >= high:
                continue
            if low < handed_out:
                self._add_in_flight_deleted(low, min(high, handed_out))
            if high > handed_out:
                self._add_dropped(high - max(low, handed_out))

    # -- loss accounting -------------------------------------------------------------------
    def _add_dropped(self, messages: int) -> None:
        if messages > 0:
            self._dropped_total += messages

    def _add_in_flight_deleted(self, low: int, high: int) -> None:
        ranges = self._in_flight_deleted
        if ranges and ranges[-1][1] == low:
            ranges[-1] = (ranges[-1][0], high)
        else:
            ranges.append((low, high))

    def _lose_in_flight_locked(self, low: int, high: int | None = None) -> None:
        """Handed-out messages in [low, high) that were deleted are now lost: count them."""
        kept: list[tuple[int, int]] = []
        for start, end in self._in_flight_deleted:
            lost_start = max(start, low)
            lost_end = end if high is None else min(end, high)
            if lost_start >= lost_end:
                kept.append((start, end))
                continue
            self._add_dropped(lost_end - lost_start)
            if start < lost_start:
                kept.append((start, lost_start))
            if lost_end < end:
                kept.append((lost_end, end))
        self._in_flight_deleted = kept

    def _rewind_locked(self, seq: int) -> None:
        """The reader now holds what lies below ``seq`` and nothing above it."""
        self._lose_in_flight_locked(seq)
        self._read_end = seq

    def take_dropped(self) -> int:
        """Messages dropped since the last call (for the drain's L10)."""
        with self._lock:
            new = self._dropped_total - self._dropped_reported
            self._dropped_reported = self._dropped_total
            return new

    # -- reading (event loop) --------------------------------------------------------------
    def read(self, from_seq: int, max_bytes: int) -> list[Chunk]:
        """Whole records from the one holding ``from_seq`` (or the first one after it, or
        the oldest on disk when ``from_seq`` was dropped), with consecutive sequences, until
        their payloads would pass ``max_bytes`` (at least one record); [] when nothing lies
        at or after ``from_seq``.

        The chunks never have a gap between them: a gap (dropped by the budget, lost before
        the disk, or a record found damaged, which is skipped and counted dropped) only ever
        shows between ``from_seq`` and the first chunk, and the next read shows the next.
        One reader: reading from below the end of the previous read gives up what that read
        handed out.
        """
        with self._read_lock:
            position = from_seq
            while True:
                with self._lock:
                    self._require_open()
                    self._rewind_locked(position)
                    plan = self._plan_locked(position, max_bytes)
                    if not plan:
                        self._keep_read_fds(None)
                        return []
                    # While we read outside the lock the budget may delete these: they count
                    # as handed out, to be settled once we know what we returned.
                    self._read_end = plan[-1].first_seq + plan[-1].count
                    for planned in plan:
                        if planned.segment not in self._read_fds:
                            self._read_fds[planned.segment] = os.open(
                                planned.segment.path, os.O_RDONLY | os.O_CLOEXEC
                            )
                chunks, damaged = self._fetch(plan)
                with self._lock:
                    self._keep_read_fds(plan[-1].segment)
                    if damaged is not None:
                        self._mark_damaged_locked(damaged, position)
                    if chunks:
                        self._rewind_locked(chunks[-1].end_seq)
                        return chunks
                    assert damaged is not None
                    position = damaged.first_seq + damaged.count

    def _plan_locked(self, position: int, max_bytes: int) -> list[_Planned]:
        segments = self._segments
        at = bisect_right(segments, position, key=_segment_end)
        if at == len(segments):
            return []
        segment = segments[at]
        index = max(0, bisect_right(segment.seqs, position) - 1)
        if index < len(segment.seqs) and segment.seqs[index] + segment.counts[index] <= position:
            index += 1
        plan: list[_Planned] = []
        payload_bytes = 0
        while True:
            if index >= len(segment.seqs):
                at += 1
                if at == len(segments):
                    return plan
                segment, index = segments[at], 0
                continue
            first, count = segment.seqs[index], segment.counts[index]
            if count == 0:  # damaged: a gap
                if plan:
                    return plan
                index += 1
                continue
            if plan and first != plan[-1].first_seq + plan[-1].count:
                return plan
            offset = segment.offsets[index]
            length = segment.record_end(index) - offset
            payload_bytes += length - HEADER_SIZE
            if plan and payload_bytes > max_bytes:
                return plan
            plan.append(_Planned(segment, index, offset, length, first, count))
            index += 1

    def _fetch(self, plan: list[_Planned]) -> tuple[list[Chunk], _Planned | None]:
        """Read the planned records (outside the lock): the chunks up to the first record
        that does not read back as written, and that record."""
        chunks: list[Chunk] = []
        position = 0
        while position < len(plan):
            # One pread for each run of planned records in the same segment.
            segment = plan[position].segment
            end = position
            while end < len(plan) and plan[end].segment is segment:
                end += 1
            start_offset = plan[position].offset
            stop_offset = plan[end - 1].offset + plan[end - 1].length
            data = memoryview(
                os.pread(self._read_fds[segment], stop_offset - start_offset, start_offset)
            )
            for planned in plan[position:end]:
                relative = planned.offset - start_offset
                record = data[relative : relative + planned.length]
                result = scan(record)
                info = result.records[0] if result.records else None
                if (
                    result.damage is not None
                    or info is None
                    or info.first_seq != planned.first_seq
                    or info.count != planned.count
                ):
                    return chunks, planned
                payload = bytes(record[info.payload_offset : info.end_offset])
                chunks.append(Chunk(info.first_seq, info.count, payload, info.written_at))
            position = end
        return chunks, None

    def _mark_damaged_locked(self, damaged: _Planned, read_from: int) -> None:
        """A record that does not read back is skipped for good and its messages count as
        dropped, but for those below ``read_from`` the reader may already hold."""
        segment, index = damaged.segment, damaged.index
        if segment in self._segments and segment.counts[index]:
            segment.counts[index] = 0
            segment.messages -= damaged.count
            low = max(damaged.first_seq, self._acked_seq)
            high = damaged.first_seq + damaged.count
            if low < high:
                # Like a deletion while handed out, then given up from ``read_from`` on.
                self._add_in_flight_deleted(low, high)
        # If the budget deleted its segment meanwhile, the messages are in flight already.
        self._lose_in_flight_locked(read_from, damaged.first_seq + damaged.count)

    def _keep_read_fds(self, keep: _Segment | None) -> None:
        # Keep the fd the next sequential read will want; close the others so that deleted
        # segments free their space.
        for segment in [s for s in self._read_fds if s is not keep]:
            os.close(self._read_fds.pop(segment))

    # -- acknowledging (event loop) --------------------------------------------------------
    def ack(self, seq: int) -> None:
        """Every message below ``seq`` is delivered: segments entirely below go."""
        with self._lock:
            self._require_open()
            if seq <= self._acked_seq:
                return
            self._acked_seq = seq
            self._in_flight_deleted = [
                (max(low, seq), high) for low, high in self._in_flight_deleted if high > seq
            ]
            self._delete_acked_locked()

    # -- figures ---------------------------------------------------------------------------
    @property
    def first_seq(self) -> int:
        """The oldest sequence still on disk (acknowledged or not); ``end_seq`` when empty."""
        with self._lock:
            for segment in self._segments:
                if segment.seqs:
                    return segment.seqs[0]
            return self._end_seq

    @property
    def end_seq(self) -> int:
        """The sequence after the last appended record: the next append starts at or above."""
        with self._lock:
            return self._end_seq

    @property
    def acked_seq(self) -> int:
        with self._lock:
            return self._acked_seq

    @property
    def size_bytes(self) -> int:
        """What the segment files take on disk."""
        with self._lock:
            return self._size

    @property
    def messages(self) -> int:
        """Messages on disk at or above ``acked_seq`` (readable, not yet acknowledged)."""
        with self._lock:
            acked = self._acked_seq
            return sum(s.messages_from(acked) for s in self._segments if s.end_seq > acked)

    @property
    def oldest_written_at(self) -> float | None:
        """When the oldest unacknowledged record on disk was written, or None."""
        with self._lock:
            acked = self._acked_seq
            for segment in self._segments:
                if segment.end_seq <= acked:
                    continue
                index = max(0, bisect_right(segment.seqs, acked) - 1)
                for position in range(index, len(segment.seqs)):
                    count = segment.counts[position]
                    if count and segment.seqs[position] + count > acked:
                        return segment.written_at[position]
            return None

    @property
    def dropped_total(self) -> int:
        """Every message counted dropped since ``open`` (reported or not)."""
        with self._lock:
            return self._dropped_total
