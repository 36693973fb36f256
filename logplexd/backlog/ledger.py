"""``Ledger``: what each drain had settled, kept where a ``kill -9`` cannot take it.

Two fixed-size files mapped into memory (``MAP_SHARED``): ``heads.bin`` holds one u64 slot
per channel that has a drain, which the channel's ring writes its head into after every
append (``ChannelRing.mirror_head``); ``drains.bin`` holds one slot per drain: its id, its
channel's slot, the ring position up to which it has delivered (or handed to its disk
backlog) and its backlog positions. A store into a shared mapping is in the page cache at
once, so the values survive the process being killed: only a machine crash can lose what
was not yet synced. A slot names its drain and its channel's slot itself, so there is no
index to write: a drain created a moment before a kill is accounted for like any other.

At the next start, ``open`` compares each drain's settled position with its channel's last
head: the difference is exactly what was only in memory when the process died, which the
drain then announces with one L10.

The files are sparse: untouched slots cost no disk and no memory.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

# Slots are never resized under a live ring (a ring keeps a view of its slot), so the
# capacity is fixed when the files are created; both are sparse.
DEFAULT_MAX_CHANNELS = 1 << 20
DEFAULT_MAX_DRAINS = 1 << 20
HEAD_SLOT = 8
# drain id + 1 (0: free), channel slot, ring_settled, spill_queued_end, spill_acked,
# unannounced (u64 each)
DRAIN_SLOT = struct.Struct("=QQQQQQ")
# drains.bin starts with a header: magic, version, slots ever used (the high-water mark).
HEADER = struct.Struct("=8sQQ")
MAGIC = b"LPLEDGER"
VERSION = 2


def map_shared(path: Path, size: int) -> mmap.mmap:
    """``path`` (made if missing, mode 0600, sized to ``size``: sparse) mapped ``MAP_SHARED``
    read-write: what is stored into it is in the page cache at once, so a ``kill -9`` of
    the process does not take it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


class LedgerFull(RuntimeError):
    """More drains or channels than the ledger has slots for (``max_drains``)."""


@dataclass(frozen=True)
class PriorRun:
    """A drain's figures as the previous process left them."""

    # Messages of its channel it had not delivered nor handed to its backlog when the
    # process ended: they were only in memory.
    ring_lost: int
    # Backlog sequence up to which messages had been queued for the disk writer (those
    # past the backlog's end on disk were lost with the process).
    spill_queued_end: int
    # Backlog sequence up to which messages had been delivered.
    spill_acked: int
    # Losses counted but not yet announced by an L10 when the process ended.
    unannounced: int


class DrainEntry:
    """One drain's slot: written on every settle, read back by the next process."""

    __slots__ = (
        "_view",
        "_tag",
        "channel_slot",
        "ring_settled",
        "spill_queued_end",
        "spill_acked",
        "unannounced",
    )

    def __init__(
        self, view: memoryview, drain_id: int, channel_slot: int, prior: PriorRun | None
    ) -> None:
        self._view = view
        self._tag = drain_id + 1
        self.channel_slot = channel_slot
        self.ring_settled = 0
        self.spill_queued_end = prior.spill_queued_end if prior is not None else 0
        self.spill_acked = prior.spill_acked if prior is not None else 0
        self.unannounced = 0
        self.store()

    def store(self) -> None:
        DRAIN_SLOT.pack_into(
            self._view,
            0,
            self._tag,
            self.channel_slot,
            self.ring_settled,
            self.spill_queued_end,
            self.spill_acked,
            self.unannounced,
        )

    def free(self) -> None:
        """The slot is free again (its drain was removed or moved)."""
        self._view[:8] = bytes(8)
        self._view.release()

    def release(self) -> None:
        self._view.release()


class Ledger:
    def __init__(
        self,
        directory: Path,
        *,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        max_drains: int = DEFAULT_MAX_DRAINS,
    ) -> None:
        self.directory = directory
        self.max_channels = max_channels
        self.max_drains = max_drains
        self._heads: mmap.mmap | None = None
        self._drains: mmap.mmap | None = None
        self._channel_slots: dict[str, int] = {}
        self._channel_refs: dict[str, int] = {}
        self._drain_slots: dict[int, int] = {}
        self._entries: dict[int, DrainEntry] = {}
        self._prior: dict[int, PriorRun] = {}
        self._free_channels: list[int] = []
        self._free_drains: list[int] = []
        self._next_channel = 0
        self._next_drain = 0

    # -- files --------------------------------------------------------------------------
    def _map(self, name: str, size: int) -> mmap.mmap:
        return map_shared(self.directory / name, size)

    def _slot_offset(self, slot: int) -> int:
        return HEADER.size + slot * DRAIN_SLOT.size

    def open(self) -> dict[int, PriorRun]:
        """Map the files and read what the previous process left; returns it per drain id.

        Every slot is then free again: ring sequences start at 0 in this process, and a
        drain that attaches takes a fresh slot carrying over its backlog positions.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        heads = self._heads = self._map("heads.bin", self.max_channels * HEAD_SLOT)
        drains = self._drains = self._map(
            "drains.bin", HEADER.size + self.max_drains * DRAIN_SLOT.size
        )
        magic, version, used = HEADER.unpack_from(drains, 0)
        prior: dict[int, PriorRun] = {}
        if magic == MAGIC and version == VERSION:
            for slot in range(min(used, self.max_drains)):
                tag, channel_slot, settled, queued, acked, unannounced = DRAIN_SLOT.unpack_from(
                    drains, self._slot_offset(slot)
                )
                if tag == 0:
                    continue
                head = 0
                if channel_slot < self.max_channels:
                    (head,) = struct.unpack_from("=Q", heads, channel_slot * HEAD_SLOT)
                prior[tag - 1] = PriorRun(
                    ring_lost=max(0, head - settled),
                    spill_queued_end=queued,
                    spill_acked=acked,
                    unannounced=unannounced,
                )
            # Clear the used part: slots are handed out from 0 again.
            end = self._slot_offset(min(used, self.max_drains))
            drains[HEADER.size : end] = bytes(end - HEADER.size)
        HEADER.pack_into(drains, 0, MAGIC, VERSION, 0)
        self._prior = prior
        return dict(prior)

    # -- slots --------------------------------------------------------------------------
    @staticmethod
    def _take_slot(free: list[int], used: int, limit: int, what: str) -> int:
        if free:
            return free.pop()
        if used >= limit:
            raise LedgerFull(f"the backlog ledger has no free {what} slot (limit {limit})")
        return used

    def channel_head(self, channel: str) -> memoryview:
        """The 8 bytes the channel's ring mirrors its head into (refcounted per drain)."""
        assert self._heads is not None, "open() first"
        slot = self._channel_slot(channel)
        self._channel_refs[channel] = self._channel_refs.get(channel, 0) + 1
        return memoryview(self._heads)[slot * HEAD_SLOT : (slot + 1) * HEAD_SLOT]

    def _channel_slot(self, channel: str) -> int:
        assert self._heads is not None, "open() first"
        slot = self._channel_slots.get(channel)
        if slot is None:
            slot = self._take_slot(
                self._free_channels, self._next_channel, self.max_channels, "channel"
            )
            self._next_channel = max(self._next_channel, slot + 1)
            self._channel_slots[channel] = slot
            self._heads[slot * HEAD_SLOT : (slot + 1) * HEAD_SLOT] = bytes(HEAD_SLOT)
        return slot

    def release_channel(self, channel: str) -> bool:
        """One drain less mirrors the channel; True once none does (stop the mirror)."""
        refs = self._channel_refs.get(channel, 0) - 1
        if refs > 0:
            self._channel_refs[channel] = refs
            return False
        self._channel_refs.pop(channel, None)
        slot = self._channel_slots.pop(channel, None)
        if slot is not None:
            self._free_channels.append(slot)
        return True

    def attach_drain(self, drain_id: int, channel: str) -> DrainEntry:
        """The drain's slot, carrying over its backlog positions from the previous run."""
        drains = self._drains
        assert drains is not None, "open() first"
        self.detach_drain(drain_id)
        slot = self._take_slot(self._free_drains, self._next_drain, self.max_drains, "drain")
        if slot >= self._next_drain:
            self._next_drain = slot + 1
            HEADER.pack_into(drains, 0, MAGIC, VERSION, self._next_drain)
        self._drain_slots[drain_id] = slot
        offset = self._slot_offset(slot)
        view = memoryview(drains)[offset : offset + DRAIN_SLOT.size]
        entry = DrainEntry(
            view, drain_id, self._channel_slot(channel), self._prior.pop(drain_id, None)
        )
        self._entries[drain_id] = entry
        return entry

    def detach_drain(self, drain_id: int) -> None:
        entry = self._entries.pop(drain_id, None)
        if entry is not None:
            entry.free()
        slot = self._drain_slots.pop(drain_id, None)
        if slot is not None:
            self._free_drains.append(slot)

    # -- durability ---------------------------------------------------------------------
    def sync(self) -> None:
        """Push the slots to the disk (a machine crash, not a kill, needs this)."""
        for mapped in (self._heads, self._drains):
            if mapped is not None:
                mapped.flush()

    def close(self) -> None:
        for entry in self._entries.values():
            entry.release()
        self._entries.clear()
        for mapped in (self._heads, self._drains):
            if mapped is not None:
                # A ring may still mirror into it (the daemon is ending anyway).
                with contextlib.suppress(BufferError):
                    mapped.close()
        self._heads = self._drains = None
