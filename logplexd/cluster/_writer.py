"""Writing routed batches to the channels' streams.

Ingestion never waits on an unreachable Redis: routed batches go to ``OutboundBuffer``
(bounded, drops the oldest and counts; ``ChannelPushback`` holds a channel's inputs instead
while Redis answers but this node is behind on it) and one writer task sends everything
buffered in one pipeline per round trip (one script call per channel and entry, by its
SHA1: ``EVALSHA``, so the script's text is not sent each time). While a round trip is in
flight, new batches accumulate, so the number of round trips per message falls as load
rises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from ..native import Batch, octet_frames
from ._link import CALL_TIMEOUT, Backoff, Connection, redis_errors
from ._stream import APPEND, Keys, ScriptCall
from .buffer import OutboundBuffer

# The writer, woken by a small backlog, waits this long for more before sending it (at
# most 2 ms of added latency; under load the backlog of the round trip in flight is sent
# at once).
FLUSH_LINGER = 0.002
FLUSH_LINGER_MESSAGES = 1000


def entry_messages(keep: int) -> int:
    """The most messages one stream entry holds: a quarter of what the stream keeps."""
    return max(1, keep // 4)


class Writer:
    def __init__(
        self,
        connection: Connection,
        keys: Keys,
        buffer: OutboundBuffer,
        *,
        node_id: str,
        keep_messages: int,
        wall_clock: Callable[[], float],
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.buffer = buffer
        self.node_id = node_id
        self.keep_messages = keep_messages
        # Messages one stream entry holds at most: a follower appends an entry whole, so
        # an entry must fit in a ring (as deep as ``keep``) beside a held consumer's eighth.
        self.entry_messages = entry_messages(keep_messages)
        self.wall_clock = wall_clock
        self._pending = trio.Event()
        # Per channel: messages of the flush in flight, and the stream sequence of the last
        # message this node wrote (what the channel's pushback compares the follower with).
        self.in_flight: dict[str, int] = {}
        self.written_seq: dict[str, int] = {}
        # Called with the channels of each flush once it was written (or given back).
        self.on_flushed: Callable[[list[str]], None] | None = None
        # Called before each flush is taken: buffers what routing left to be collected
        # (``ClusterRegistry`` collects quiet channels once per flush, not once per batch).
        self.collect: Callable[[], None] | None = None
        self.entries_written = 0
        self.messages_written = 0
        self.bytes_written = 0

    # -- ingestion side (synchronous, never waits) --------------------------------------------
    def enqueue(self, channel: str, batch: Batch) -> None:
        """Buffer one routed batch of ``channel`` for the writer."""
        n = len(batch)
        if n:
            self.buffer.push(channel, octet_frames(batch), n, self.wall_clock())
            self._pending.set()

    def lose(self, channel: str, n: int) -> None:
        self.buffer.lose(channel, n, self.wall_clock())
        self._pending.set()

    def wake(self) -> None:
        """Something waits to be collected (``collect``)."""
        self._pending.set()

    # -- the task ---------------------------------------------------------------------------------
    async def run(self) -> None:
        connection = self.connection
        errors = redis_errors()
        backoff = Backoff()
        while True:
            if self.collect is not None:
                self.collect()
            if not self.buffer:
                self._pending = trio.Event()
                await self._pending.wait()
                if self.buffer.messages < FLUSH_LINGER_MESSAGES:
                    # Light load: gather a little more, so a node sends at most
                    # 1 / FLUSH_LINGER round trips a second however its batches trickle in.
                    await trio.sleep(FLUSH_LINGER)
                if self.collect is not None:
                    self.collect()
                if not self.buffer:
                    continue
            flush = self.buffer.take(entry_max_messages=self.entry_messages)
            in_flight = self.in_flight
            for entry in flush.taken:
                in_flight[entry.channel] = in_flight.get(entry.channel, 0) + entry.messages
            try:
                with trio.fail_after(CALL_TIMEOUT):
                    await self._write(flush)
            except errors as exc:
                self.buffer.restore(flush, self.wall_clock())
                connection.link.lost(exc, "writer")
                self._landed(flush)
                await connection.back_off(backoff)
                continue
            backoff.reset()
            connection.link.ok("writer")
            self._landed(flush)

    def _landed(self, flush: Any) -> None:
        self.in_flight.clear()
        if self.on_flushed is not None:
            self.on_flushed(list(flush.entries))

    async def _write(self, flush: Any) -> None:
        keep = self.keep_messages
        node = self.node_id
        calls: list[ScriptCall] = []
        channels: list[str] = []
        for channel, loss in flush.losses.items():
            keys = [self.keys.stream(channel), self.keys.sequence(channel)]
            calls.append((APPEND, keys, [0, b"", keep, node, loss.count, repr(loss.since)]))
            channels.append(channel)
        nbytes = entries = 0
        for channel, blobs in flush.entries.items():
            keys = [self.keys.stream(channel), self.keys.sequence(channel)]
            for blob, n in blobs:
                calls.append((APPEND, keys, [n, blob, keep, node, 0, 0]))
                channels.append(channel)
                nbytes += len(blob)
                entries += 1
        results = await self.connection.call_scripts(calls, "write", channels)
        written = self.written_seq
        for channel, last in zip(channels, results, strict=True):
            written[channel] = int(last)  # in order: a channel's later entries come later
        self.bytes_written += nbytes
        self.entries_written += entries
        self.messages_written += flush.messages
