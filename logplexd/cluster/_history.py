"""Reads of a channel's past from its stream: the newest id, the newest messages, a range.

For requests (a session's or a channel log's history, ``reads.py``), for a follow starting
at the present, and for a drain catching up from its checkpoint after a takeover.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ..native import Batch, ChannelRing, octet_frames, octet_frames_upto, parse_body
from ._link import CALL_TIMEOUT, Connection
from ._stream import MAX_WIRE_FRAME, Keys, Malformed, StreamId, decode_entry, format_id, parse_id

# Entries per XREVRANGE page when reading history from a stream.
HISTORY_PAGE = 100


@dataclass(slots=True)
class CatchUp:
    """Messages read from a stream for one drain (``DataPlane.read_range``): the batch, the
    stream sequence of each of its messages, and how many of the range were gone."""

    batch: Batch
    seqs: list[int]
    lost: int
    # The last sequence the read covers: ``through``, or the last message taken when
    # ``max_bytes`` ended it sooner.
    through: int = 0


class History:
    def __init__(self, connection: Connection, keys: Keys, malformed: Malformed) -> None:
        self.connection = connection
        self.keys = keys
        self.malformed = malformed

    async def top(self, channel: str) -> StreamId:
        """Id of the newest entry of the channel's stream ((0, 0) if it has none)."""
        return (await self.tops([channel]))[0]

    async def tops(self, channels: list[str]) -> list[StreamId]:
        """``top`` of each of ``channels``, in one round trip (a pipeline)."""
        connection = self.connection
        with trio.fail_after(CALL_TIMEOUT):
            async with connection.client.pipeline(transaction=False) as pipe:
                pending = [
                    pipe.xrevrange(self.keys.stream(channel), "+", "-", count=1)
                    for channel in channels
                ]
            found = [await reply for reply in pending]
        connection.count_trip("other")
        return [parse_id(entries[0].identifier) if entries else (0, 0) for entries in found]

    async def read_history(self, channel: str, messages: int) -> tuple[Batch, StreamId]:
        """The newest ``messages`` messages of the stream (oldest first) and the newest id."""
        connection = self.connection
        key = self.keys.stream(channel)
        batches: list[Batch] = []
        top: StreamId | None = None
        got = 0
        end = "+"
        while got < messages:
            with trio.fail_after(CALL_TIMEOUT):
                entries = await connection.client.xrevrange(key, end, "-", count=HISTORY_PAGE)
            connection.count_trip("history")
            for entry in entries:
                entry_id = parse_id(entry.identifier)
                if top is None:
                    top = entry_id
                body = decode_entry(entry.field_values)
                if body is None:
                    self.malformed.skipped(channel, entry_id)
                elif len(body.batch):
                    batches.append(body.batch)
                    got += len(body.batch)
                    if got >= messages:
                        break
            if len(entries) < HISTORY_PAGE:
                break
            last = parse_id(entries[-1].identifier)
            if last == (0, 0):
                break
            end = "(" + format_id(last)
        # Oldest first, the newest ``messages`` of them (a ring of that size keeps just those).
        ring = ChannelRing(max(1, messages), 1 << 30)
        for batch in reversed(batches):
            ring.append_batch(batch)
        return ring.last(messages), top if top is not None else (0, 0)

    async def read_range(
        self,
        channel: str,
        after: int,
        through: int,
        *,
        max_bytes: int | None = None,
        page: int = HISTORY_PAGE,
    ) -> CatchUp:
        """The messages of sequence ``after`` + 1 to ``through`` from the stream, oldest
        first, for a drain whose node follows the channel from later than its checkpoint,
        or that its ring lapped (``StreamRefill``).

        Bounded: the stream holds at most ``keep_messages``, and with ``max_bytes`` the read
        ends after the message that reaches it (``CatchUp.through`` says where). What the
        stream no longer holds (trimmed, or announced by a loss marker) is counted in
        ``lost``. Each entry's part is encoded in one native call (``octet_frames``) and the
        read parsed once into its batch.
        """
        connection = self.connection
        key = self.keys.stream(channel)
        blobs: list[bytes] = []  # each entry's part, octet-counted
        seqs: list[int] = []
        lost = 0
        expected = after + 1
        start = f"{after + 1}-0"
        done = False
        taken = 0
        while expected <= through and not done:
            with trio.fail_after(CALL_TIMEOUT):
                entries = await connection.client.xrange(key, start, "+", count=page)
            connection.count_trip("history")
            for entry in entries:
                entry_id = parse_id(entry.identifier)
                body = decode_entry(entry.field_values)
                if body is None:
                    self.malformed.skipped(channel, entry_id)
                    continue
                n = body.n
                if n == 0:
                    if entry_id[0] <= through:
                        lost += body.lost
                    continue
                first = entry_id[0] - n + 1
                if first > through:
                    done = True
                    break
                if first > expected:
                    lost += first - expected
                batch = body.batch
                lost += n - len(batch)  # frames that would not parse
                # An entry may straddle either end of the range.
                low, high = max(0, expected - first), min(len(batch), through - first + 1)
                if low < high:
                    if max_bytes is None:
                        blob, count = octet_frames(batch, low, high), high - low
                    else:
                        blob, count, size = octet_frames_upto(batch, low, high, max_bytes - taken)
                        taken += size
                    blobs.append(blob)
                    last = first + low + count - 1
                    seqs.extend(range(first + low, last + 1))
                    if max_bytes is not None and taken >= max_bytes and last < through:
                        through = last  # the rest is for the next read
                        done = True
                expected = min(entry_id[0], through) + 1
                if done:
                    break
            if len(entries) < page:
                break
            start = "(" + format_id(parse_id(entries[-1].identifier))
        if expected <= through:
            lost += through - expected + 1
        return CatchUp(parse_body(b"".join(blobs), MAX_WIRE_FRAME), seqs, lost, through)
