"""``UnsentLedger``: what a Redis-mode node routed but Redis does not have, kept where a
``kill -9`` cannot take it.

A node routes each message into its channel's staging ring and writes it to the channel's
stream a flush later; a message dropped before it reached Redis (a full outbound buffer, a
staging ring that lapped) is told by a loss marker in the stream, from which every drain
sends an L10. A process that is killed between the two takes the messages it held with
it, and nothing would tell. So each staging ring mirrors its head (the messages routed
into it, ``ChannelRing.mirror_head``) into a slot of one file mapped into memory
(``MAP_SHARED``: a store is in the page cache at once, so it survives the process), and the
writer adds to the slot what Redis stored of the channel: its messages and the losses its
markers told (``account``). At the next start the difference, per channel, is exactly
what was only in memory: the node writes it to the channel's stream as a loss marker
(``DataPlane.lose``), and every drain of the channel, on any node, announces it with one
L10.

Nothing is forgotten before it is told: a channel's slot from the previous process stays
in the file until the channel's new staging ring takes it over, carrying the loss
(``carried``) until a marker told it; the slots of channels that no longer exist are let
go once the store has loaded every channel there is (``forget_unclaimed``). A node killed
again meanwhile, even before Redis came back, tells the same at its next start.

A write Redis stored whose reply the process never read (killed in between) is in the
stream although the slot does not count it. So the slot also keeps the id of the last
entry of the channel's last accounted write (``after``), and the next process, before it
tells the loss, looks at what follows that id in the stream (``UNANSWERED``): the entries
this node wrote there were stored, and are taken off the count (``Writer._look_past``). A slot
that never saw a write answered keeps no such id, and its count is told whole.

One file per data directory (``redis-unsent.bin``); sparse: untouched slots cost no disk
and no memory. A slot names its channel by a digest of its name.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import struct
import time
from pathlib import Path

from ..backlog import map_shared

FILE_NAME = "redis-unsent.bin"
# Slots are never moved under a live ring (a staging ring keeps a view of its slot's head),
# so the capacity is fixed when the file is created; the file is sparse.
DEFAULT_MAX_CHANNELS = 1 << 20
# routed (the staging ring's mirrored head, first: 8-byte aligned), accounted, carried,
# since (ms, wall clock), digest of the channel's name (zero: a free slot).
SLOT = struct.Struct("=QQQQ16s")
# magic, version, slots ever used; padded to 64 bytes so that every slot stays aligned.
HEADER = struct.Struct("=8sQQ")
HEADER_BYTES = 64
MAGIC = b"LPUNSENT"
VERSION = 1
_FREE = bytes(16)
# Per slot, after every slot: the id (sequence, k) of the last entry of the channel's last
# accounted write; zero: not known. Apart from the slots, so that a file an older version
# made keeps its layout (its slots simply know no id: their counts are told whole).
AFTER = struct.Struct("=QQ")
# accounted, carried, since: a slot's fields after routed (``UnsentSlot.account``).
_COUNTS = struct.Struct("=QQQ")

log = logging.getLogger("logplexd.cluster")


def digest(channel: str) -> bytes:
    return hashlib.blake2b(channel.encode(), digest_size=16).digest()


class UnsentSlot:
    """One channel's slot: its staging ring's head (``head``, for ``mirror_head``) and what
    Redis stored of it."""

    __slots__ = ("_map", "index", "_offset", "_after_at", "head", "accounted", "carried")

    def __init__(
        self,
        file: mmap.mmap,
        index: int,
        name: bytes,
        carried: int,
        since: float,
        after_at: int,
        after: tuple[int, int] | None,
    ) -> None:
        self._map = file
        self.index = index
        offset = self._offset = HEADER_BYTES + index * SLOT.size
        self._after_at = after_at
        self.head = memoryview(file)[offset : offset + 8]
        self.accounted = 0
        self.carried = carried
        AFTER.pack_into(file, after_at, *(after or (0, 0)))
        SLOT.pack_into(file, offset, 0, 0, carried, int(since * 1000), name)

    @property
    def after(self) -> tuple[int, int] | None:
        """The id of the last entry of the channel's last accounted write (None: none)."""
        after = AFTER.unpack_from(self._map, self._after_at)
        return after if after != (0, 0) else None

    def account(self, messages: int, now: float, through: tuple[int, int] | None = None) -> None:
        """Redis stored ``messages`` of the channel: written ones, and lost ones a marker
        told (those of an earlier run first, ``carried``); ``through``: the id of the last
        entry of the write that stored them (what a next process looks past)."""
        if through is not None:
            # First: killed between the two stores, the next process finds these entries
            # past the old id and takes them off (an L10 that counts them is the worse).
            AFTER.pack_into(self._map, self._after_at, *through)
        take = min(self.carried, messages)
        self.carried -= take
        self.accounted += messages - take
        since = int(now * 1000)
        _COUNTS.pack_into(self._map, self._offset + 8, self.accounted, self.carried, since)

    def free(self) -> None:
        self.head.release()
        self._map[self._offset : self._offset + SLOT.size] = bytes(SLOT.size)
        AFTER.pack_into(self._map, self._after_at, 0, 0)


class UnsentLedger:
    def __init__(self, directory: Path, *, max_channels: int = DEFAULT_MAX_CHANNELS) -> None:
        self.path = directory / FILE_NAME
        self.max_channels = max_channels
        self._map: mmap.mmap | None = None
        self._free: list[int] = []
        self._used = 0
        # From the previous process: per name digest, (its slot, messages lost, since when).
        self._prior: dict[bytes, tuple[int, int, float]] = {}
        self._afters = HEADER_BYTES + max_channels * SLOT.size
        self._full_logged = False

    def open(self) -> tuple[int, int]:
        """Map the file and find what the previous process left unwritten; (messages,
        channels) so found. Their slots stay as they are until taken over (``slot``) or
        let go (``forget_unclaimed``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._map = map_shared(self.path, self._afters + self.max_channels * AFTER.size)
        magic, version, used = HEADER.unpack_from(self._map, 0)
        if magic != MAGIC or version != VERSION:
            used = 0
        self._used = min(used, self.max_channels)
        for index in range(self._used):
            offset = HEADER_BYTES + index * SLOT.size
            routed, accounted, carried, since_ms, name = SLOT.unpack_from(self._map, offset)
            lost = carried + max(0, routed - accounted)
            # (A channel has one slot: a deleted one's is zeroed, a new staging ring takes
            # over its channel's.) One with nothing lost is kept as well, for its ``after``:
            # the new process's first write may be the one whose reply a kill takes.
            if name != _FREE:
                self._prior[name] = (index, lost, since_ms / 1000 if lost else 0.0)
                continue
            self._clear(index)
            self._free.append(index)
        self._free.reverse()  # the lowest first
        HEADER.pack_into(self._map, 0, MAGIC, VERSION, self._used)
        losses = [lost for _, lost, _ in self._prior.values() if lost]
        return sum(losses), len(losses)

    def slot(self, channel: str, now: float | None = None) -> tuple[UnsentSlot | None, int, float]:
        """A slot for ``channel``'s new staging ring, and what the previous process lost of
        it (messages, since when; 0: nothing), which the slot carries until a marker told
        it; the slot's ``after`` says past which entry the previous process's last write
        may lie in the stream. None: no slot left (the channel goes untracked; said once)."""
        assert self._map is not None, "open() first"
        name = digest(channel)
        index, lost, since = self._prior.pop(name, (-1, 0, 0.0))
        after = None
        if index < 0:
            index = self._take()
            if index < 0:
                return None, 0, 0.0
        else:
            after = AFTER.unpack_from(self._map, self._after_at(index))
        since = since or (time.time() if now is None else now)
        slot = UnsentSlot(self._map, index, name, lost, since, self._after_at(index), after)
        return slot, lost, since

    def _after_at(self, index: int) -> int:
        return self._afters + index * AFTER.size

    def _clear(self, index: int) -> None:
        assert self._map is not None
        offset = HEADER_BYTES + index * SLOT.size
        self._map[offset : offset + SLOT.size] = bytes(SLOT.size)
        AFTER.pack_into(self._map, self._after_at(index), 0, 0)

    def _take(self) -> int:
        assert self._map is not None
        if self._free:
            return self._free.pop()
        if self._used < self.max_channels:
            self._used += 1
            HEADER.pack_into(self._map, 0, MAGIC, VERSION, self._used)
            return self._used - 1
        if not self._full_logged:
            self._full_logged = True
            log.warning(
                "data plane: more than %d channels: a kill -9 loses the unwritten "
                "messages of the others without an L10",
                self.max_channels,
            )
        return -1

    def release(self, slot: UnsentSlot) -> None:
        """Its channel was deleted: what it had unwritten goes with it."""
        slot.free()
        self._free.append(slot.index)

    def forget_unclaimed(self) -> int:
        """Every channel there is has its staging ring: what the previous process left of
        channels that no longer exist goes (nobody to tell). How many channels had some."""
        assert self._map is not None
        gone = 0
        for index, lost, _ in self._prior.values():
            self._clear(index)
            self._free.append(index)
            gone += lost > 0
        self._prior = {}
        return gone
