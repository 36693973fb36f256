"""Writing routed batches to the channels' streams.

Ingestion never waits on an unreachable Redis: routed batches go to ``OutboundBuffer``
(bounded, drops the oldest and counts; ``ChannelPushback`` holds a channel's inputs instead
while Redis answers but this node is behind on it) and one writer task sends everything
buffered in one round trip, whatever the number of channels: on one Redis one request of
MULTIs of a few MB each (``_transact``), each settled as soon as its EXEC is read; on a
cluster one script call (``APPEND``, by its SHA1) per shard. While a round trip is in
flight, new batches accumulate, so the number of round trips per message falls as load
rises.

What was written is handed to ``on_written`` with each channel's entry ids and the id of
the entry before them: the node's own followers append it from here when they had read
exactly up to that entry, instead of reading it back from Redis (``Followers.own_written``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, cast

import trio

from ..router import adaptive_linger, idle_over, look_interval
from ._link import CALL_TIMEOUT, Backoff, Connection, error_replies, redis_errors
from ._stream import (
    APPEND,
    PROPOSE,
    SETTLE,
    UNANSWERED,
    UNANSWERED_ENTRIES,
    KeptRange,
    Keys,
    Outgoing,
    StreamId,
    format_id,
    parse_id,
)
from .buffer import Entry, Flush, Loss, OutboundBuffer

log = logging.getLogger("logplexd.cluster")

# The writer, woken by a small backlog, waits this long for more before sending it (at
# most 2 ms of added latency; under load the backlog of the round trip in flight is sent
# at once).
FLUSH_LINGER = 0.002
FLUSH_LINGER_MESSAGES = 1000
# A flush costs some Python per channel it writes (its keys, its reply, appending it to the
# node's own follow), however few messages each has: with 1,000 busy channels a flush right
# after the last one carried a few messages per channel and took most of the core. The
# writer then waits before taking the next flush, so that its own work is at most
# ``ROUND_SHARE`` of the time (``adaptive_linger``), never longer than this, and not while
# the buffer is a quarter full (pushback would start at half). That linger is there for
# ingestion to fill the next flush: it ends at a look (every twentieth of it,
# ``look_interval``) that finds nothing routed and the node idle. A flood's last flushes
# otherwise waited out the whole linger on an idle node: e2e c8-ch1000 on Redis spent
# 0.15 s of a 3 s run so. It also ends when the pushback holds a channel (``hurry``).
MAX_FLUSH_LINGER = 0.05
# Nor does the writer take a flush sooner than this after the last one it took (it
# lingers for the rest, ``flush_linger``). Without it, a node below its limit flushed as
# soon as each reply came back: one busy channel at 1.5 M msgs/s paced sent ~1,700 flushes
# a second of ~900 messages each, and each costs the same writer, follower and drain
# wake-ups whatever it carries. With it, 0.74-0.78x the node's CPU and half Redis's at
# that load, 0.86-0.88x at 2.2 M msgs/s; flat out, one connection 1.03x the rate at
# 0.97-0.98x the CPU, the other workloads within noise (bench/RESULTS.md, "Session of
# 2026-12-06 (fifteenth)"). 8 ms against 5, flat out, three invocations: one connection
# 1.02x, 1.04x and 1.04x the rate at 0.94-0.95x the CPU; 8 connections on one channel
# 1.02x, 1.03x and 0.96x, 1,000 channels 1.01x and 0.98x (within the spread); 12 ms was
# 0.90x with one connection (its flushes come near the pushback's mark), 10 ms slower with
# 8 (bench/RESULTS.md, "Session of 2026-12-07 (third)"). A flush of one busy channel is
# then about ``keep`` (16,000-22,000 messages): with ``keep`` as its budget, a drain judged
# slow had little of it left when one landed (seen twice under py-spy, told with an exact
# L10; same file); its budget is READER_SLACK x keep since (``_stream.APPEND``,
# docs/SCALING.md "Durable drain backlogs"). At most this much latency is added, and only
# under load: a linger ends early when the node goes quiet (two looks, ``linger``) and at
# once when the pushback holds a channel.
FLUSH_INTERVAL = 0.008
# A channel a follower is behind on (``APPEND`` answered 'behind') is tried again after this.
BEHIND_PAUSE = 0.02
# A channel another node wrote since this node's last write of it (``PROPOSE`` answered
# 'moved', or ``APPEND``'s entries did not follow this node's last one) is written with
# ``APPEND`` for this long: while two nodes take turns on a channel, a proposal would be
# refused every other flush, and its entries sent twice (bench_nodes redis-2 with 1 s:
# 5 % more bytes to Redis than without proposals).
SHARED_FOR = 10.0
# On one Redis a flush is written as MULTIs of about this many bytes of frames each, sent
# in one request: Redis frees a group's arguments before it reads the next instead of
# holding the whole flush until one EXEC, and the node settles each group's reply
# (appending its entries to its own follows, waking their drains) as soon as it is read.
# (Replies are read once the request is written: reading them while writing, so that the
# settles overlap Redis's work, was 0.83x the rate at 1.13x the CPU, bench/RESULTS.md.)
GROUP_BYTES = 4 * 1024 * 1024


# One entry as written: its id and what it holds.
Written = tuple[StreamId, Outgoing]


def unsettled(flush: Flush, settled: set[str]) -> Flush:
    """What of ``flush`` belongs to channels not in ``settled``: the part to send again
    when a write failed after some of its groups were answered."""
    if not settled:
        return flush
    rest = Flush(losses={c: loss for c, loss in flush.losses.items() if c not in settled})
    for entry in flush.taken:
        if entry.channel not in settled:
            rest.taken.append(entry)
            rest.messages += entry.messages
            rest.nbytes += entry.size
    return rest


def flush_linger(work: float, since_taken: float) -> float:
    """How long the writer lingers after a flush it took ``since_taken`` seconds ago and
    whose own work took ``work`` seconds: long enough that its work is at most
    ``ROUND_SHARE`` of its time (``adaptive_linger``, at most MAX_FLUSH_LINGER), and at
    least the rest of FLUSH_INTERVAL."""
    return max(adaptive_linger(0.0, work, MAX_FLUSH_LINGER), FLUSH_INTERVAL - since_taken)


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
        # an entry must fit in a ring (deepened up to ``keep`` for it) beside a held
        # consumer's quarter.
        self.entry_messages = entry_messages(keep_messages)
        self.wall_clock = wall_clock
        self._pending = trio.Event()
        # Per channel: messages of the flush in flight, and the stream sequence of the last
        # message this node wrote (what the channel's pushback compares the follower with).
        self.in_flight: dict[str, int] = {}
        self.written_seq: dict[str, int] = {}
        # Called with the channels of each flush once it was written (or given back).
        self.on_flushed: Callable[[list[str]], None] | None = None
        # Called once a flush was taken out of the buffer, before it is sent (the outbound
        # gate may open: ``ChannelPushback.taken``).
        self.on_taken: Callable[[], None] | None = None
        # Called before each flush is taken: buffers what routing left to be collected
        # (``ClusterRegistry`` collects quiet channels once per flush, not once per batch).
        self.collect: Callable[[], None] | None = None
        # Messages routed so far (None: a linger is not cut short, ``linger``).
        self.routed: Callable[[], int] | None = None
        # Called per channel with how many of its messages Redis stored in a write: those
        # written, and those its loss markers told (``UnsentLedger``).
        self.on_accounted: Callable[[str, int, StreamId], None] | None = None
        # Called per channel with what was written: the id of the entry before (None when
        # not known for sure) and the entries, in order.
        self.on_written: Callable[[str, StreamId | None, list[Written]], None] | None = None
        # How far this node's own follow of a channel has read (None: not followed, or not
        # yet known): the stream is never trimmed past it, without waiting for a report.
        self.read_through: Callable[[str], int | None] = lambda channel: None
        # How far this node's slowest drain of a channel has delivered (None: it runs
        # none): the stream is not trimmed past it either, up to READER_SLACK x keep behind.
        self.delivered_through: Callable[[str], int | None] = lambda channel: None
        # Channels whose entries Redis refused lately: the pause before the next try.
        self._refusals: dict[str, Backoff] = {}
        # One Redis: per channel, the id of the last entry this node wrote; the channels
        # whose last two writes by this node followed each other in the stream, proposed
        # for (``PROPOSE``: from ``written_seq``); and until when a channel goes by
        # ``APPEND`` because another node wrote it too (``_note_shared``).
        self._last_id: dict[str, StreamId] = {}
        self._solo: set[str] = set()
        self._shared_until: dict[str, float] = {}
        # Entries written by PROPOSE + XADD (the frames outside Lua), and channels refused
        # by PROPOSE because another node had written them since (or the stream was gone).
        self.entries_proposed = 0
        self.proposals_moved = 0
        # Entries PROPOSE found written by a transaction whose reply was lost (APPEND
        # answers such entries as it writes them, uncounted here).
        self.entries_landed = 0
        # Messages a previous process counted as never stored (a kill before the reply)
        # that its last write had stored after all (``_look_past``): not told as lost.
        self.prior_stored = 0
        # This task's own time (not waiting for Redis) since its last flush landed.
        self._work_seconds = 0.0
        # Flushes taken before their linger was out: the node had gone quiet (``linger``),
        # by the event loop thread's CPU clock (tests give one that does not depend on the
        # machine's load).
        self.quiet_flushes = 0
        self.cpu_clock: Callable[[], float] = time.thread_time
        # The linger in progress (``hurry`` cancels it).
        self._linger_scope: trio.CancelScope | None = None
        self.entries_written = 0
        self.messages_written = 0
        # Flushes Redis answered, and how long their round trips took in all (from sending
        # a flush to having read its reply, less the time spent settling the groups
        # answered before its last: what Redis took, the transfer both ways, and on a busy
        # node the wait for the event loop to come back to this task).
        self.flushes = 0
        self.flush_wait_seconds = 0.0
        # Times a channel waited because a follower of it was behind (APPEND: "behind").
        self.deferred = 0
        self.bytes_written = 0
        # Channels of the flush in flight whose replies were handled (``_settle``), and
        # what of theirs Redis did not take.
        self._settled: set[str] = set()
        self._given_back = Flush()
        # Frames per MULTI of a flush on one Redis (``_transact``; tests make it small).
        self.group_bytes = GROUP_BYTES

    # -- ingestion side (synchronous, never waits) --------------------------------------------
    def enqueue(self, channel: str, frames: bytes, n: int, kept: KeptRange | None = None) -> None:
        """Buffer ``n`` routed messages of ``channel``, octet-counted in ``frames``, for the
        writer (``kept``: where they lie, for this node's follow of the channel,
        ``on_written``)."""
        if n:
            self.buffer.push(channel, frames, n, self.wall_clock(), kept)
            self._pending.set()

    def lose(
        self, channel: str, n: int, since: float | None = None, after: StreamId | None = None
    ) -> None:
        """``n`` messages of ``channel`` are lost (since ``since``; None: now): the next
        flush writes a loss marker for them. With ``after``, a previous process's, whose
        last write may lie past that entry: what of them the stream has is not told
        (``_look_past``)."""
        self.buffer.lose(channel, n, self.wall_clock() if since is None else since, after)
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
            if not self.buffer.ready(trio.current_time()):
                self._pending = trio.Event()
                due = self.buffer.next_due()
                with trio.move_on_at(due if due is not None else float("inf")):
                    await self._pending.wait()
                if self.buffer.messages < FLUSH_LINGER_MESSAGES:
                    # Light load: gather a little more, so a node sends at most
                    # 1 / FLUSH_LINGER round trips a second however its batches trickle in.
                    await trio.sleep(FLUSH_LINGER)
                if self.collect is not None:
                    self.collect()
                if not self.buffer.ready(trio.current_time()):
                    continue
            started = time.perf_counter()
            taken_at = trio.current_time()
            flush = self.buffer.take(entry_max_messages=self.entry_messages, now=taken_at)
            if self.on_taken is not None:
                self.on_taken()
            self._work_seconds += time.perf_counter() - started
            in_flight = self.in_flight
            for entry in flush.taken:
                in_flight[entry.channel] = in_flight.get(entry.channel, 0) + entry.messages
            self._settled = set()
            try:
                with trio.fail_after(CALL_TIMEOUT):
                    await self._write(flush)
            except errors as exc:
                # Grouped into the same entries when sent again: if this flush did run
                # (its reply lost), PROPOSE and APPEND recognise its entries (``LANDED``).
                # Channels whose group's reply came back were settled: not sent again.
                self.buffer.restore(
                    unsettled(flush, self._settled), self.wall_clock(), regroup=False
                )
                # What the groups answered before the failure gave back waits as well.
                self._give_back_answered()
                connection.link.lost(exc, "writer")
                self._landed(flush)
                await connection.back_off(backoff)
                continue
            connection.link.ok("writer")
            self._landed(flush)
            work, self._work_seconds = self._work_seconds, 0.0
            backoff.reset()
            linger = flush_linger(work, trio.current_time() - taken_at)
            if linger > 0.001 and self.buffer.filled() < 0.25:
                await self.linger(linger)

    def hurry(self) -> None:
        """End the linger now: inputs wait for what this writer has (the pushback held
        a channel), so lingering for more only idles them."""
        scope = self._linger_scope
        if scope is not None and not scope.cancel_called:
            scope.cancel()

    async def linger(self, seconds: float) -> None:
        """Wait ``seconds`` for ingestion to fill the next flush, until ``hurry``, or until
        a look finds the node quiet: nothing routed (``routed``), and the event loop's
        thread next to idle (``idle_over``: a long step of another task, a drain's round, is
        not quiet). The CPU clock is a system call: read only over a look that follows one
        that found nothing routed."""
        with trio.CancelScope() as scope:
            self._linger_scope = scope
            try:
                await self._linger(seconds)
            finally:
                self._linger_scope = None

    async def _linger(self, seconds: float) -> None:
        routed = self.routed
        if routed is None:
            await trio.sleep(seconds)
            return
        deadline = trio.current_time() + seconds
        look = look_interval(seconds)
        clock = self.cpu_clock
        before = routed()
        used: tuple[float, float] | None = None
        while True:
            left = deadline - trio.current_time()
            if left <= 0:
                return
            await trio.sleep(min(look, left))
            now = routed()
            if now != before:
                before, used = now, None
                continue
            cpu, wall = clock(), time.perf_counter()
            if used is not None and idle_over(cpu - used[0], wall - used[1]):
                self.quiet_flushes += 1
                return
            used = (cpu, wall)

    def _landed(self, flush: Any) -> None:
        self.in_flight.clear()
        if self.on_flushed is not None:
            self.on_flushed(list(flush.entries))

    async def _write(self, flush: Flush) -> None:
        """Write ``flush``. A channel whose entries Redis refused (a slot that moved, its
        keys of the wrong type, out of memory) gets them back in the buffer, deferred for a
        pause that grows while it is refused; the others go on meanwhile."""
        if any(loss.prior for loss in flush.losses.values()):
            await self._look_past(flush)
            if not flush:
                return
        started = time.perf_counter()
        keep = self.keep_messages
        node = self.node_id
        outgoing: dict[str, list[Outgoing]] = {}
        for channel, loss in flush.losses.items():
            outgoing[channel] = [Outgoing(0, b"", loss.count, loss.since, None)]
        for channel, blobs in flush.entries.items():
            mine = outgoing.setdefault(channel, [])
            for blob, n, kept in blobs:
                # The buffer holds what routing kept as it is (``KeptRange``s).
                mine.append(Outgoing(n, blob, 0, 0.0, cast("list[KeptRange] | None", kept)))
        proposed = self._proposable(outgoing)
        parts: dict[str, list[Any]] = {}
        for channel, sent in outgoing.items():
            if channel in proposed:
                continue
            read = self.read_through(channel)
            delivered = self.delivered_through(channel)
            part = parts[channel] = [
                *self.keys.appended(channel),
                -1 if read is None else read,
                -1 if delivered is None else delivered,
                self.written_seq.get(channel, -1),
                len(sent),
            ]
            for entry in sent:
                part.extend((entry.n, entry.frames, entry.lost, repr(entry.since)))
        self._work_seconds += time.perf_counter() - started
        self._given_back = Flush()
        if proposed:
            await self._transact(parts, proposed, outgoing)
        else:
            started = time.perf_counter()
            replies = await self.connection.call_per_shard(
                APPEND, (keep, node), parts, "write", beacon=True
            )
            self.flush_wait_seconds += time.perf_counter() - started
            started = time.perf_counter()
            self._settle(replies, outgoing, proposed)
            self._work_seconds += time.perf_counter() - started
        self.flushes += 1
        self._give_back_answered()

    async def _look_past(self, flush: Flush) -> None:
        """Before telling what a previous process routed and Redis never acknowledged
        (``Loss.prior``), find what its last write stored after all (``UNANSWERED``): those
        messages are taken off the marker, and accounted as stored. Before any entry of
        this process: a channel's loss goes first in the first flush that has the
        channel, so this node's entries past ``after`` are the previous process's."""
        losses = flush.losses
        parts = {
            channel: [self.keys.stream(channel), format_id(loss.after)]
            for channel, loss in losses.items()
            if loss.prior and loss.after is not None
        }
        replies: dict[str, Any] = {}
        if parts:
            try:
                replies = await self.connection.call_per_shard(
                    UNANSWERED, (self.node_id, UNANSWERED_ENTRIES), parts, "write"
                )
            except error_replies() as exc:
                # An error reply, not a lost connection: sent again it would fail again and
                # hold every write. Told whole instead (more than were lost, never fewer).
                log.warning(
                    "data plane: what the last process wrote was not looked for (%s); its "
                    "count is told whole",
                    exc,
                )
        for channel, loss in list(losses.items()):
            if not loss.prior:
                continue
            reply = replies.get(channel)
            loss.prior, prior, loss.after = 0, loss.prior, None
            if not (isinstance(reply, list) and len(reply) == 2 and reply[1]):
                continue
            stored, last = min(int(reply[0]), prior), parse_id(reply[1])
            if not stored:
                continue
            self.prior_stored += stored
            log.info(
                "data plane: %d messages of %s the last process wrote without hearing so "
                "are in Redis; not told as lost",
                stored,
                channel,
            )
            if self.on_accounted is not None:
                self.on_accounted(channel, stored, last)
            loss.count -= stored
            if loss.count <= 0:
                del losses[channel]

    def _give_back_answered(self) -> None:
        """Redis answered: what it did not take waits, and the inputs with it (a reader
        behind, a refusal), up to a flush over the buffer's bound before the oldest is
        dropped (given back whole, a refused 'behind' lost the oldest routed)."""
        back, self._given_back = self._given_back, Flush()
        if back:
            self.buffer.restore(back, self.wall_clock(), slack=2)

    def _settle(
        self,
        replies: dict[str, list[Any]],
        outgoing: dict[str, list[Outgoing]],
        proposed: set[str],
    ) -> None:
        """Act on Redis's reply for each channel of ``replies`` (``APPEND``'s form):
        hand what was written to ``on_written``; what was not waits in ``_given_back``
        (``_give_back_answered``)."""
        back = self._given_back
        written_seq = self.written_seq
        solo = self._solo
        for channel, reply in replies.items():
            self._settled.add(channel)
            sent = outgoing[channel]
            status, prev = reply[0], reply[1]
            done: list[Written] = []
            for k in range(2, len(reply) - 1, 2):
                done.append((parse_id(reply[k + 1]), sent[len(done)]))
            prev_id = None
            if done:
                written_seq[channel] = int(reply[len(done) * 2])
                prev_id = parse_id(prev) if prev else None
            if len(reply) % 2:
                # APPEND found the first of these entries in the stream already.
                self._count_landed(channel, int(reply[-1]))
            if done:
                self._note_shared(channel, prev_id, done[-1][0])
            undone = len(sent) - len(done)
            if undone and status in (b"moved", b"missing"):
                # Another node wrote the channel since this node last did (or its stream is
                # gone): ``APPEND`` numbers these entries in the next flush.
                self._give_back(back, channel, sent[len(done) :])
                solo.discard(channel)
                self._shared_until[channel] = trio.current_time() + SHARED_FOR
                self.proposals_moved += 1
            elif undone and status == b"behind" and channel in proposed:
                # PROPOSE takes a channel's part whole or not at all: APPEND, in the next
                # flush, writes what fits before the follower that is behind (and makes it
                # "solo" again, ``_note_shared``).
                self._give_back(back, channel, sent[len(done) :])
                solo.discard(channel)
            elif undone and status == b"behind":
                # A follower of the channel is 4 x keep behind: the rest waits here (and
                # the inputs with it, ``ChannelPushback``) until it has read on.
                self._give_back(back, channel, sent[len(done) :])
                self.deferred += 1
                self.buffer.defer(channel, trio.current_time() + BEHIND_PAUSE)
            elif undone:
                solo.discard(channel)
                log.debug(
                    "data plane: %d entries of %s not written (%s); sent again",
                    undone,
                    channel,
                    status.decode(errors="replace") if isinstance(status, bytes) else status,
                )
                self._give_back(back, channel, sent[len(done) :])
                self.connection.refused(channel)
                refusals = self._refusals.setdefault(channel, Backoff())
                self.buffer.defer(channel, trio.current_time() + refusals.next())
            else:
                self.connection.accepted(channel)
                self._refusals.pop(channel, None)
            if not done:
                continue
            stored = written_bytes = messages = entries = 0
            for _, entry in done:
                written_bytes += len(entry.frames)
                messages += entry.n
                stored += entry.n or entry.lost
                entries += entry.n > 0
            self.bytes_written += written_bytes
            self.messages_written += messages
            self.entries_written += entries
            if stored and self.on_accounted is not None:
                self.on_accounted(channel, stored, done[-1][0])
            if self.on_written is not None:
                self.on_written(channel, prev_id, done)

    def _note_shared(self, channel: str, prev: StreamId | None, last: StreamId) -> None:
        """After a write of ``channel`` whose first entry came after ``prev`` (the top
        before it; None: not known) and whose last is ``last``. A channel is proposed for
        only once two of this node's writes followed each other in its stream (no guess
        that comes back refused for every channel another node writes too); when ``prev``
        is not this node's own last entry, another node wrote in between, and the channel
        goes by ``APPEND`` for ``SHARED_FOR`` more."""
        mine = self._last_id.get(channel)
        self._last_id[channel] = last
        if mine is None:
            return
        if prev == mine:
            self._solo.add(channel)
        else:
            self._solo.discard(channel)
            self._shared_until[channel] = trio.current_time() + SHARED_FOR

    def forget(self, channel: str) -> None:
        """The channel was deleted: what this writer knew of its stream is void."""
        self._last_id.pop(channel, None)
        self._solo.discard(channel)
        self.written_seq.pop(channel, None)
        self._shared_until.pop(channel, None)

    def _proposable(self, outgoing: dict[str, list[Outgoing]]) -> set[str]:
        """The channels of a flush whose entries go by ``PROPOSE`` (the frames outside
        Lua), numbered from where this node's last write of them ended: on one Redis, the
        "solo" ones, unless another node wrote them lately; never a loss marker (its id is
        ``S-*``)."""
        if not self.connection.transactions or not self._solo:
            return set()
        now = trio.current_time()
        shared = self._shared_until
        proposed: set[str] = set()
        for channel, sent in outgoing.items():
            if channel not in self._solo or channel not in self.written_seq:
                continue
            if not all(entry.n for entry in sent):
                continue
            until = shared.get(channel)
            if until is not None:
                if until > now:
                    continue
                del shared[channel]
            proposed.add(channel)
        return proposed

    async def _transact(
        self,
        parts: dict[str, list[Any]],
        channels: set[str],
        outgoing: dict[str, list[Outgoing]],
    ) -> None:
        """One Redis: write a flush in one request of MULTIs, each of a group of channels
        (``_groups``): ``APPEND`` for its channels of ``parts``, then for its ``channels``
        ``PROPOSE``, a plain XADD per entry and ``SETTLE`` (see ``_stream.PROPOSE``); the
        scripts by EVAL (a MULTI must not meet NOSCRIPT: the XADDs would run without their
        check). Each group is settled (``_settle``) as soon as its EXEC is read."""
        groups = self._groups(parts, channels, outgoing)
        built = [self._group_commands(appended, group, outgoing) for appended, group in groups]
        settling = 0.0

        def settle(index: int, results: list[Any]) -> None:
            nonlocal settling
            started = time.perf_counter()
            replies = self._group_replies(results, groups[index][0], built[index][1])
            self._settle(replies, outgoing, channels)
            settling += time.perf_counter() - started

        started = time.perf_counter()
        await self.connection.transaction_groups([c for c, _ in built], "write", settle)
        self.flush_wait_seconds += time.perf_counter() - started - settling
        self._work_seconds += settling

    def _groups(
        self, parts: dict[str, list[Any]], channels: set[str], outgoing: dict[str, list[Outgoing]]
    ) -> list[tuple[dict[str, list[Any]], list[str]]]:
        """The channels of a flush in groups of about ``group_bytes`` of frames, in the
        flush's order (each channel whole in one group): per group, its parts for ``APPEND``
        and its channels for ``PROPOSE``."""
        groups: list[tuple[dict[str, list[Any]], list[str]]] = []
        group_parts: dict[str, list[Any]] = {}
        group: list[str] = []
        size = 0
        for channel, sent in outgoing.items():
            if channel in channels:
                group.append(channel)
            else:
                group_parts[channel] = parts[channel]
            size += sum(len(entry.frames) for entry in sent)
            if size >= self.group_bytes:
                groups.append((group_parts, group))
                group_parts, group, size = {}, [], 0
        if group_parts or group:
            groups.append((group_parts, group))
        return groups

    def _group_commands(
        self, parts: dict[str, list[Any]], channels: list[str], outgoing: dict[str, list[Outgoing]]
    ) -> tuple[list[list[Any]], list[tuple[str, list[int]]]]:
        """One group's commands, and per channel of ``channels`` the sequence each of its
        entries ends at (what its XADD must answer)."""
        keys = self.keys
        node = self.node_id
        commands: list[list[Any]] = []
        if parts:
            appended: list[Any] = ["EVAL", APPEND.text, 0, self.keep_messages, node, "", len(parts)]
            for part in parts.values():
                appended += part
            commands.append(appended)
        plan: list[tuple[str, list[int]]] = []
        if not channels:
            return commands, plan
        args: list[Any] = [self.keep_messages, node, keys.fenced(node), len(channels)]
        xadds: list[list[Any]] = []
        for channel in channels:
            sent = outgoing[channel]
            stream = keys.stream(channel)
            read = self.read_through(channel)
            delivered = self.delivered_through(channel)
            seq = self.written_seq[channel]
            args += [
                *keys.appended(channel),
                keys.fence(channel),
                -1 if read is None else read,
                -1 if delivered is None else delivered,
                seq,
                len(sent),
            ]
            lasts: list[int] = []
            for entry in sent:
                args.append(entry.n)
                seq += entry.n
                lasts.append(seq)
                xadds.append(
                    ["XADD", stream, "NOMKSTREAM", f"{seq}-0", "n", entry.n, "f", entry.frames,
                     "node", node]
                )  # fmt: skip
            plan.append((channel, lasts))
        commands += [["EVAL", PROPOSE.text, 0, *args], *xadds]
        commands.append(["EVAL", SETTLE.text, 0, keys.fenced(node)])
        return commands, plan

    def _group_replies(
        self, results: list[Any], parts: dict[str, list[Any]], plan: list[tuple[str, list[int]]]
    ) -> dict[str, list[Any]]:
        """Each channel's reply in a group's EXEC ``results``, as ``APPEND`` gives it:
        {status, prev, last_1, id_1, ...}. The transaction ran whole: from here nothing
        raises, or the group would be given back and what it wrote written twice."""
        replies: dict[str, list[Any]] = {}
        if parts:
            appended = results[0]
            results = results[1:]
            if isinstance(appended, BaseException):
                replies.update((channel, [str(appended).encode(), b""]) for channel in parts)
            else:
                replies.update(zip(parts, appended, strict=True))
        if not plan:
            return replies
        checks = results[0]
        unchecked = isinstance(checks, BaseException)
        if unchecked:
            # Never seen (the script cannot raise): the XADDs ran unchecked. What they
            # added counts as written; the next write of these channels goes by APPEND,
            # whose numbering mends the sequence from the stream.
            log.error("data plane: PROPOSE failed (%s); its XADDs ran unchecked", checks)
        k = 1
        for i, (channel, lasts) in enumerate(plan):
            reply = [str(checks).encode(), b""] if unchecked else list(checks[i])
            added = results[k : k + len(lasts)]
            k += len(lasts)
            if reply[0] != b"ok" and not unchecked:
                replies[channel] = reply
                continue
            # Entries a MULTI had written whose reply was lost: reported by PROPOSE, their
            # XADDs refused (not above the top); the others are checked as added.
            landed = (len(reply) - 2) // 2
            if landed:
                self._count_landed(channel, landed)
            for last, added_id in zip(lasts[landed:], added[landed:], strict=True):
                if added_id != f"{last}-0".encode():
                    if not unchecked:
                        # Accepted, yet not added: never seen; said, and the rest goes
                        # back (APPEND writes it after whatever is there).
                        log.warning(
                            "data plane: an entry of %s was accepted but not added (%r)",
                            channel,
                            added_id,
                        )
                        reply[0] = b"not added"
                    break
                reply += [last, added_id]
                self.entries_proposed += 1
            if unchecked:
                self._solo.discard(channel)
                self._shared_until[channel] = trio.current_time() + SHARED_FOR
            replies[channel] = reply
        return replies

    def _count_landed(self, channel: str, landed: int) -> None:
        self.entries_landed += landed
        log.warning(
            "data plane: %d entries of %s were written by a call whose reply was lost; "
            "not written again",
            landed,
            channel,
        )

    @staticmethod
    def _give_back(back: Flush, channel: str, unsent: list[Outgoing]) -> None:
        for entry in unsent:
            if entry.n:
                back.taken.append(Entry(channel, entry.frames, entry.n))
                back.messages += entry.n
                back.nbytes += len(entry.frames)
            else:
                back.losses[channel] = Loss(entry.lost, entry.since)
