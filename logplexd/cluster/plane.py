"""The data plane across nodes (issue 11): channel history in Redis Streams, followed locally.

``DataPlane`` composes the parts, each in its own module:

- ``_stream``: the keys of a channel, the script appending to its stream, the entry codec;
- ``_link``: the Redis client, whether Redis answers (``Link``), round trips, the probe;
- ``_writer``: routed batches, buffered, written in one pipeline per round trip;
- ``_follow``: the streams local readers need, read into the channels' rings;
- ``_history``: reads of a stream's past (history for requests, a drain's catch-up).

The parts share one ``Connection`` and one ``Keys``; ``run`` runs their tasks. The rest
of the package (and the daemon) uses ``DataPlane`` only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from ..native import Batch
from ..router import Channel
from ..store import DEFAULT_PREFIX
from ._follow import Follow, Followers, LossCallback
from ._history import CatchUp, History
from ._link import CALL_TIMEOUT, Connection, describe, redis_errors
from ._pushback import ChannelPushback
from ._stream import KeptRange, Keys, Malformed, Script, ScriptCall, StreamId
from ._writer import Writer
from .buffer import OutboundBuffer

if TYPE_CHECKING:
    from ..store import RedisClient

log = logging.getLogger("logplexd.cluster")


class DataPlane:
    """Owns the data plane's Redis connection; ``run`` must be running (the daemon starts it)."""

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        keep_messages: int,
        buffer: OutboundBuffer | None = None,
        prefix: str = DEFAULT_PREFIX,
        wall_clock: Callable[[], float] = time.time,
        tcp_congestion: str = "",
    ) -> None:
        """``tcp_congestion``: the congestion control of the plane's own TCP connections
        to Redis ("": the system's; ``redis_tcp_congestion``)."""
        self.url = url
        self.node_id = node_id
        self.keep_messages = keep_messages
        self.buffer = buffer if buffer is not None else OutboundBuffer()
        self.keys = Keys(prefix)
        self.wall_clock = wall_clock
        self.connection = Connection(
            url, node_id=node_id, keys=self.keys, tcp_congestion=tcp_congestion
        )
        self.cluster = self.connection.cluster
        self.link = self.connection.link
        # Round trips to Redis by what they were for (``TRIP_KINDS``; ``Connection.trips``).
        self.trips = self.connection.trips
        self.malformed = Malformed()
        self.history = History(self.connection, self.keys, self.malformed)
        self.writer = Writer(
            self.connection,
            self.keys,
            self.buffer,
            node_id=node_id,
            keep_messages=keep_messages,
            wall_clock=wall_clock,
        )
        self.followers = Followers(
            self.connection,
            self.keys,
            self.history,
            self.malformed,
            wall_clock,
            report_step=keep_messages // 8,
            keep_messages=keep_messages,
        )
        self.pushback = ChannelPushback(
            keep_messages, self._behind, lambda: self.link.failure is None, self.buffer.filled
        )
        self.writer.on_flushed = self._flushed
        self.writer.on_taken = self.pushback.taken
        self.pushback.on_hold = self.writer.hurry
        self.writer.on_written = self.followers.own_written
        self.followers.writing = lambda name: name in self.writer.in_flight
        self.writer.read_through = self.followers.read_through
        self.writer.delivered_through = self.followers.delivered_through
        self.followers.on_applied = lambda follow: self.pushback.progressed((follow.name,))
        self.followers.exempt = self.pushback
        self._nursery: trio.Nursery | None = None
        # Awaited (shielded, CLOSE_GRACE at most) when ``run`` ends, before the connection
        # closes.
        self.before_close: list[Callable[[], Awaitable[None]]] = []

    def _flushed(self, channels: list[str]) -> None:
        self.pushback.progressed(channels)
        self.followers.flushed(channels)

    # -- state ------------------------------------------------------------------------------
    @property
    def failure(self) -> str | None:
        return self.link.failure

    @property
    def client(self) -> RedisClient:
        return self.connection.client

    @property
    def round_trips(self) -> int:
        return sum(self.trips.values())

    def count_trip(self, kind: str, servers: int = 1) -> None:
        self.connection.count_trip(kind, servers)

    async def call_scripts(
        self, calls: Sequence[ScriptCall], kind: str, channels: Sequence[str]
    ) -> list[Any]:
        """Run script calls in one pipeline by SHA1 (``Connection.call_scripts``)."""
        return await self.connection.call_scripts(calls, kind, channels)

    async def call_per_shard(
        self, script: Script, head: Sequence[Any], parts: dict[str, list[Any]], kind: str
    ) -> dict[str, Any]:
        """One call of ``script`` per shard for every channel of ``parts``
        (``Connection.call_per_shard``); the replies by channel."""
        return await self.connection.call_per_shard(script, head, parts, kind)

    # Counters (metrics read them by these names).
    @property
    def connections_opened(self) -> int:
        return self.connection.connections_opened

    def link_congestion(self) -> dict[str, int]:
        return self.connection.link_congestion()

    @property
    def entries_written(self) -> int:
        return self.writer.entries_written

    @property
    def messages_written(self) -> int:
        return self.writer.messages_written

    @property
    def bytes_written(self) -> int:
        return self.writer.bytes_written

    @property
    def entries_read(self) -> int:
        return self.followers.entries_read

    @property
    def messages_read(self) -> int:
        return self.followers.messages_read

    @property
    def messages_trimmed(self) -> int:
        return self.followers.messages_trimmed

    @property
    def malformed_entries(self) -> int:
        """Stream entries no logplexd wrote (skipped); one warning per channel."""
        return self.malformed.count

    # Set by the drain leases: messages of a channel that its drains must announce (L10),
    # and a channel whose stream started over (Redis lost data).
    @property
    def on_loss(self) -> LossCallback | None:
        return self.followers.on_loss

    @on_loss.setter
    def on_loss(self, callback: LossCallback | None) -> None:
        self.followers.on_loss = callback

    def note_delivered(self, follow: Follow, position: int) -> None:
        """How far the slowest drain of ``follow``'s channel running on this node has
        delivered (-1: none runs here any more): the writer passes it along with each
        write, the follower reports it for other nodes' writers, and none trims the
        stream past it, up to READER_SLACK x keep behind (``_stream.APPEND``)."""
        self.followers.note_delivered(follow, position)

    @property
    def on_rewind(self) -> Callable[[str], None] | None:
        return self.followers.on_rewind

    @on_rewind.setter
    def on_rewind(self, callback: Callable[[str], None] | None) -> None:
        self.followers.on_rewind = callback

    def _behind(self, channel: str) -> int:
        """Messages of ``channel`` this node routed and its local readers do not have yet:
        not written (buffered or in flight), or written and not read back by the follower
        (``ChannelPushback``)."""
        writer = self.writer
        pending = self.buffer.queued.get(channel, 0) + writer.in_flight.get(channel, 0)
        follow = self.followers.follow_of(channel)
        written = writer.written_seq.get(channel)
        if follow is None or not follow.resolved or written is None:
            return pending
        return pending + max(0, written - follow.last_seq)

    # -- ingestion side (synchronous, never waits) --------------------------------------------
    def enqueue(self, channel: str, frames: bytes, n: int, kept: KeptRange | None = None) -> None:
        """Buffer ``n`` routed messages of ``channel`` (octet-counted ``frames``) for the
        writer; ``kept``, where they lie, when this node follows the channel (appended from
        there once written, ``follows``)."""
        self.writer.enqueue(channel, frames, n, kept)

    def follows(self, channel: str) -> bool:
        """Whether this node reads ``channel``'s stream (a tail, a drain, a session)."""
        return channel in self.followers

    def lose(
        self, channel: str, n: int, since: float | None = None, after: StreamId | None = None
    ) -> None:
        self.writer.lose(channel, n, since, after)

    @property
    def entry_messages(self) -> int:
        """The most messages one stream entry (hence one routed piece) holds."""
        return self.writer.entry_messages

    def piece_limits(self) -> tuple[int, int]:
        """The most messages and payload bytes routing hands the writer at once: a stream
        entry's worth (``entry_messages``), and with their octet counts (at most 6 bytes a
        frame) no more than a quarter of the outbound buffer. Routing pushes a piece only
        while the buffer is under three quarters full, so a piece never makes it drop its
        oldest. Before, a buffer configured smaller than one entry (``redis_buffer_messages``
        under a quarter of ``channel_buffer_messages``, or ``redis_buffer_bytes`` under
        ~516 KB with the defaults) dropped every piece whole as it was pushed, and one
        under four entries could drop its oldest."""
        buffer = self.buffer
        quarter = max(1, buffer.max_bytes // 4)
        messages = min(self.writer.entry_messages, max(1, buffer.max_messages // 4))
        # Octet counts take at most half of the quarter; the payloads the rest.
        messages = min(messages, max(1, quarter // 12))
        return messages, max(1, quarter - 6 * messages)

    def wake_writer(self) -> None:
        """Routing left messages to be collected before the next flush."""
        self.writer.wake()

    def collect_with(self, collect: Callable[[], None], routed: Callable[[], int]) -> None:
        """Have the writer call ``collect`` before each flush (routing's unsent messages),
        and look at ``routed`` (messages routed so far) while it lingers."""
        self.writer.collect = collect
        self.writer.routed = routed

    def account_with(self, accounted: Callable[[str, int, StreamId], None]) -> None:
        """Have the writer call ``accounted`` with each channel, how many of its messages
        a write stored (written, or told lost by a marker) and the id of the write's last
        entry."""
        self.writer.on_accounted = accounted

    def forget(self, channel: str) -> None:
        """The channel was deleted: delete its stream and sequence, so that a channel made
        later under the same name starts empty (every node does it; DEL is idempotent)."""
        self.writer.forget(channel)
        if self._nursery is not None:
            self._nursery.start_soon(self._delete, self.keys.appended(channel))

    async def _delete(self, keys: list[str]) -> None:
        try:
            with trio.fail_after(CALL_TIMEOUT):
                # One command: a channel's keys share its hash tag (one slot on a cluster),
                # and none is seen gone before the others.
                await self.client.delete(keys)
                self.count_trip("other")
        except redis_errors() as exc:
            log.debug("data plane: could not delete %s: %s", keys, describe(exc))

    # -- following ------------------------------------------------------------------------------
    def follow_of(self, channel: str) -> Follow | None:
        return self.followers.follow_of(channel)

    def hold(self, channel: Channel, after: StreamId | None) -> Follow:
        """Follow ``channel``'s stream (from ``after`` unless already followed); release it
        with ``release``. ``after`` None: from whatever is newest once Redis answers."""
        return self.followers.hold(channel, after)

    def release(self, follow: Follow) -> None:
        self.followers.release(follow)

    # -- reads of history ---------------------------------------------------------------------
    async def top(self, channel: str) -> StreamId:
        """Id of the newest entry of the channel's stream ((0, 0) if it has none)."""
        return await self.history.top(channel)

    async def tops(self, channels: list[str]) -> list[StreamId]:
        """``top`` of each of ``channels``, in one round trip."""
        return await self.history.tops(channels)

    async def read_history(self, channel: str, messages: int) -> tuple[Batch, StreamId]:
        """The newest ``messages`` messages of the stream (oldest first) and the newest id."""
        return await self.history.read_history(channel, messages)

    async def read_range(self, channel: str, after: int, through: int) -> CatchUp:
        """The messages of sequence ``after`` + 1 to ``through`` (``History.read_range``)."""
        return await self.history.read_range(channel, after, through)

    # -- the tasks ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with self.connection.connected(), trio.open_nursery() as nursery:
                self._nursery = nursery
                self.followers.start(nursery)
                nursery.start_soon(self.writer.run)
                nursery.start_soon(self.connection.probe)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.followers.stop()
            if self.before_close:
                await self.connection.last_words(self.before_close)
