"""``DrainPump``: one task that writes for every connected plain-TCP syslog drain.

With a task per drain, each write costs a wake-up, a linger timer, a cancel scope for the
send timeout and a trip through trio's socket wrapper: about 10 µs of Python per write, so
a thousand drains of quiet channels spent most of a core being scheduled (py-spy, 1,000
channels x 1 drain: ``Deadlines.expire``, ``CancelScope`` and ``_nonblocking_helper`` were
over half of the samples). Here a connected drain parks its task and *attaches* its socket;
channels with attached drains mark themselves dirty when the router appends to them, and the
pump, once per linger interval (at once for a channel that gathered ``linger_messages``),
reads each dirty drain's messages, encodes them and writes them with one non-blocking
``os.write``. A write the kernel takes whole costs no task switch at all.

A round that writes for many drains (``THREAD_MIN_WRITES``) is encoded by the loop, then
written from a worker thread, one ``os.write`` per drain: the loop goes on reading and
routing on the other core meanwhile (1,000 channels: the loop's thread was on the CPU 95 %
of the time, the machine idle 17 %). Until its write is settled a drain's task may not take
its feed back (``park`` waits), and the worker writes to a duplicate of the drain's socket
(``worker_fd``), so a drain cancelled meanwhile cannot have its descriptor's number reused
under the write.

Anything that is not that fast path goes back to the drain's own task, which does what it
always did: a partial write (the receiver is slow: the task finishes it under the send
timeout), an error (the task reconnects; the unsettled messages are written again whole on
the next connection), a flush, a URL change, a removed channel.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..router import NEVER, PumpRounds, high_water, linger_limit, pushback_for
from .feed import (
    LINGER_ONLY_BELOW_BYTES,
    DrainFeed,
    Encoder,
    LossNotice,
    Payload,
    RingEncoder,
)
from .state import DrainEvent

if TYPE_CHECKING:
    from ..router import Channel

log = logging.getLogger("logplexd.drains")

# Payloads one drain may write in one pump round before the others get their turn.
MAX_WRITES_PER_ROUND = 4

# A round that writes for at least this many drains writes from a worker thread: the
# loop goes on reading and routing meanwhile, on the other core (measured in
# bench/RESULTS.md, 2026-12-05 (fifth)). Fewer are written by the loop itself, where a
# thread's hand-over would cost more than it frees.
THREAD_MIN_WRITES = 8
# The most payload bytes one threaded round gathers before it writes them (the drains
# past it are written in the next round): what a round holds in memory at once.
THREAD_MAX_BYTES = 32 * 1024 * 1024

# The longest a drain lingers however costly a round is (the bound on the added latency;
# 1,000 busy channels: ~11 ms a round, ~55 ms linger, measured 1.28 M vs 0.98 M msgs/s at
# 60 vs 20 ms in bench/e2e c8-ch1000-d1-120).
MAX_LINGER = 0.1

log = logging.getLogger("logplexd.drains")


class AttachedWriter:
    """A parked drain's connection, written by the pump until it hands the drain back."""

    __slots__ = (
        "feed",
        "fd",
        "encode",
        "encode_ring",
        "loss_notice",
        "on_event",
        "max_messages",
        "max_bytes",
        "channel",
        "wake",
        "partial",
        "error",
        "slow",
        "in_flight",
        "settled",
        "worker_fd",
    )

    def __init__(
        self,
        feed: DrainFeed,
        fd: int,
        encode: Encoder,
        loss_notice: LossNotice,
        on_event: Callable[[DrainEvent], None],
        *,
        max_messages: int,
        max_bytes: int,
        encode_ring: RingEncoder | None = None,
    ) -> None:
        self.feed = feed
        self.fd = fd
        self.encode = encode
        # Encodes where the messages lie in the ring: a payload the pump writes whole is
        # never copied out of the ring first.
        self.encode_ring = encode_ring
        self.loss_notice = loss_notice
        self.on_event = on_event
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.channel: Channel | None = None
        self.wake = trio.Event()
        # Set when handed back: the payload and how many of its bytes were written.
        self.partial: tuple[Payload, int] | None = None
        self.error: OSError | None = None
        # Set when the receiver left a write unfinished for ``slow_write_after``: a slow
        # consumer holds nothing until it has caught up again.
        self.slow = False
        feed.note_receiver_slow(False)  # a new connection: judged anew
        # The payload a worker thread is writing for it (a threaded round), and what its
        # task waits on should it be kicked meanwhile: until that write is settled, nothing
        # else may touch its feed or its socket.
        self.in_flight: Payload | None = None
        self.settled: trio.Event | None = None
        # The duplicate of ``fd`` the worker thread writes to (-1: none yet), closed once
        # detached with nothing in flight: a drain whose task left meanwhile closes its own
        # socket, and its number could then be another connection's.
        self.worker_fd = -1

    def judge(self, slow: bool) -> None:
        """Judge the receiver slow, or caught up (``slow`` is read on every round: a plain
        attribute); the feed hears of it: its disk backlog may take what it refuses."""
        if slow is not self.slow:
            self.slow = slow
            self.feed.note_receiver_slow(slow)


def check_hold(writer: AttachedWriter, channel: Channel, high: int, default: bool) -> None:
    """Hold ``channel`` for ``writer`` (a drain that takes what it is given) once it is
    ``high`` messages behind; release it once it is back under half of that. A channel
    that does not push back (``pushback_for``; ``default`` is the daemon's setting) is
    released instead, whatever the backlog."""
    if not pushback_for(channel, default):
        channel.release(writer)
        return
    ring = channel.ring
    cursor = max(ring.tail, writer.feed.cursor)
    backlog = ring.head - cursor
    if backlog <= high // 2:
        if writer.slow:
            writer.judge(False)  # caught up: it may hold again
        channel.release(writer)
    elif backlog >= high and not writer.slow:
        channel.hold(writer)
    if not writer.slow and not channel.held_by(writer):
        # The router stops each input at the very message that puts this drain ``high``
        # behind (``dispatch_until_held``), not a read later.
        channel.hold_from(writer, cursor + high)


class DrainPump:
    """Writes for every attached drain; also the router's ``ChannelConsumer`` for them.

    With ``pushback`` (the daemon's default; a channel's own overflow mode wins, see
    ``pushback_for``), a channel whose attached drains fall a
    ``high_water`` behind while every write of theirs is taken whole is *held*: the router
    is the bottleneck, not the receivers, so the inputs feeding that channel wait (see
    ``Channel.hold``) until the drains are back under half of that. A drain whose socket
    refuses a write is handed back to its own task and never holds anything.
    """

    def __init__(
        self,
        *,
        linger: float,
        linger_messages: int,
        pushback: bool = True,
        write_all: Callable[[list[tuple[int, bytes]]], list[int | OSError]] | None = None,
    ) -> None:
        self.rounds = PumpRounds(linger, MAX_LINGER)
        self.linger_messages = max(1, linger_messages)
        self.pushback = pushback
        # In a threaded round: the payloads gathered so far.
        self._gathered: list[tuple[AttachedWriter, Payload]] | None = None
        self._gathered_bytes = 0
        self._limiter = trio.CapacityLimiter(1)
        # Set once the threaded round in flight is settled (None: no round in flight).
        self._round_settled: trio.Event | None = None
        # What the worker thread runs (tests hold it to see a round in flight).
        self._write_all = write_all or write_payloads
        self.threaded_rounds = 0
        # The attached writers of each channel (the pump watches these channels).
        self._writers: dict[Channel, list[AttachedWriter]] = {}
        # The ring head each channel had when the pump last wrote for it.
        self._marks: dict[Channel, int] = {}
        # Channels whose last write was large: busy, so they never linger (as in feed.py).
        self._busy: set[Channel] = set()
        # Per channel, the head at which its drains' backlog must be looked at again.
        self._looks: dict[Channel, int] = {}
        self.writes = 0
        self.handed_back = 0
        # Rounds in which building a drain's write raised (a bug): that drain handed back.
        self.errors = 0

    @property
    def current_linger(self) -> float:
        return self.rounds.current_linger

    @property
    def attached(self) -> int:
        """Drains the pump writes for now."""
        return sum(len(writers) for writers in self._writers.values())

    def writers(self, channel: Channel) -> list[AttachedWriter]:
        """The drains attached on ``channel`` (a copy)."""
        return list(self._writers.get(channel, ()))

    # -- the drain side ---------------------------------------------------------------------
    async def park(self, writer: AttachedWriter, channel: Channel) -> None:
        """Let the pump write for this drain until it hands the drain back (or we are cancelled).

        On return, ``writer.partial`` / ``writer.error`` say why; neither set means the
        drain should look at its feed again (a flush, a kick, the channel went away).
        """
        writer.channel = channel
        self._writers.setdefault(channel, []).append(writer)
        # From the drain's own cursor, so a drain that comes back with a backlog is urgent.
        base = self._marks.get(channel)
        cursor = max(writer.feed.cursor, channel.ring.tail)
        self._marks[channel] = cursor if base is None else min(base, cursor)
        if writer.feed.last_payload_bytes >= LINGER_ONLY_BELOW_BYTES:
            self._busy.add(channel)
        # Whatever it held for itself while its own task wrote (drains/syslog.py) is looked
        # at again now, not when the channel next passes a mark.
        check_hold(writer, channel, high_water(channel.ring), self.pushback)
        try:
            self.mark(channel)
            channel.rearm()
            await writer.feed.wait_for(writer.wake)
            if writer.in_flight is not None:
                # Kicked (a flush, a URL change) while a worker thread writes for it.
                writer.settled = trio.Event()
                await writer.settled.wait()
        finally:
            writer.settled = None
            self._detach(writer)

    def _detach(self, writer: AttachedWriter) -> None:
        channel = writer.channel
        if channel is None:
            return
        writer.channel = None
        if writer.in_flight is None:
            _close_worker_fd(writer)  # else once the worker's write is settled
        if writer.partial is None:
            # Handed back for a partial write, the drain's task finishes it and keeps (or
            # gives up, if the receiver stalls) the hold; for anything else it is over.
            channel.release(writer)
        writers = self._writers.get(channel)
        if writers is not None:
            if writer in writers:
                writers.remove(writer)
            if not writers:
                del self._writers[channel]
                channel.unwatch(self)
                self._marks.pop(channel, None)
                self._looks.pop(channel, None)
                self.rounds.discard(channel)
                self._busy.discard(channel)
            else:
                self._looks[channel] = self._check_hold(channel)

    # -- pushback -------------------------------------------------------------------------------
    def _check_hold(self, channel: Channel) -> int:
        """Hold or release ``channel`` for each attached drain by its backlog; returns the
        head at which the router should call ``mark`` again to look (NEVER: no need)."""
        writers = self._writers.get(channel)
        if not writers:
            return NEVER
        if not pushback_for(channel, self.pushback):
            if channel.held:  # its mode became "drop" while its drains held it
                for writer in writers:
                    channel.release(writer)
            return NEVER
        ring = channel.ring
        high = high_water(ring)
        look = NEVER
        head = ring.head
        for writer in writers:
            cursor = max(writer.feed.cursor, ring.tail)
            check_hold(writer, channel, high, self.pushback)
            # Looked at again half way to its hold mark: the mark then moves up with the
            # cursor before the inputs can reach where it stood (a mark left behind by
            # the writes would hold them early). Past half way already, it is looked at
            # the hold mark itself: nothing changes before the drain writes or the inputs
            # reach the mark (the router stops them there, reports the channel, and this
            # look moves the mark up if the drain has written meanwhile). Looked at half
            # way, the router reported the channel on every append until then: with a
            # small ring, most of the time (1,000 channels of 1,024 messages: a report
            # every 3 messages routed, 2.8 CPU s per million messages).
            half = cursor + high // 2
            look = min(look, half if half > head else cursor + high)
        return look

    # -- the router side (from Channel.notify: the pump is the router's ChannelConsumer) ------
    def mark(self, channel: Channel) -> None:
        """New messages in a channel with attached drains (called by ``Channel.notify``).

        Watches the channel so the router calls again only when it matters: at the
        first new message, then once the channel has enough to be written at once.
        """
        head = channel.ring.head
        base = self._marks.get(channel, head)
        removed = channel.ring.owner is None
        look = self._looks.get(channel, 0)
        if channel.held or head >= look:
            look = self._looks[channel] = self._check_hold(channel)
        if head <= base and not removed:
            channel.watch(self, min(head + 1, look))
            return
        enough = linger_limit(channel.ring, self.linger_messages)
        if removed or channel.held or channel in self._busy or head - base >= enough:
            channel.watch(self, look)  # until it is written (or falls behind)
            self.rounds.urgent(channel)
        else:
            channel.watch(self, min(base + enough, look))
            self.rounds.dirty(channel)

    async def wait_settled(self) -> None:
        """Until no threaded round is in flight. At shutdown, a drain whose task was stopped
        while the worker wrote for it is settled only then: its feed and its ledger slot must
        not be closed before (the writes are non-blocking, so this is soon)."""
        while self._round_settled is not None:
            await self._round_settled.wait()

    # -- the task -----------------------------------------------------------------------------
    async def run(self) -> None:
        await self.rounds.run(
            self._write_channel, started=self._round_started, finish=self._finish_round
        )

    def _round_started(self, channels: int) -> None:
        self._gathered = [] if channels >= THREAD_MIN_WRITES else None
        self._gathered_bytes = 0

    async def _finish_round(self) -> None:
        """Write what the round gathered: from a worker thread when there is enough of it."""
        jobs, self._gathered = self._gathered, None
        if not jobs:
            return
        data = [(writer.worker_fd, payload.data) for writer, payload in jobs]
        if len(jobs) < THREAD_MIN_WRITES:
            self._settle_round(jobs, write_payloads(data))
            return
        settled = self._round_settled = trio.Event()
        try:
            try:
                # Not abandoned on cancel: the writes are non-blocking, so this returns
                # soon, and the loop must settle them before it can be cancelled.
                results = await trio.to_thread.run_sync(
                    self._write_all, data, limiter=self._limiter
                )
            except BaseException:
                # Cancelled before the thread ran: nothing was written.
                for writer, payload in jobs:
                    self._settle(writer, payload, OSError("not written: the pump stopped"))
                raise
            self.threaded_rounds += 1
            self._settle_round(jobs, results)
        finally:
            self._round_settled = None
            settled.set()

    def _settle_round(
        self, jobs: list[tuple[AttachedWriter, Payload]], results: list[int | OSError]
    ) -> None:
        for (writer, payload), written in zip(jobs, results, strict=True):
            self._settle(writer, payload, written)

    def _write_channel(self, channel: Channel) -> None:
        writers = self._writers.get(channel)
        if not writers:
            return
        self._marks[channel] = channel.ring.head
        if channel.ring.owner is None:
            # Removed: the drain's own task follows the registry (and drains the backlog).
            for writer in list(writers):
                self._hand_back(writer)
            return
        busy = False
        for writer in list(writers):
            try:
                self._write(writer)
            except Exception:
                # A bug in one drain must not stop the pump, and with it every drain and
                # the daemon: its own task takes it back (and restarts it if it fails too).
                log.exception("drain pump: a write for channel %s failed", channel.name)
                self.errors += 1
                self._hand_back(writer)
                continue
            busy = busy or writer.feed.last_payload_bytes >= LINGER_ONLY_BELOW_BYTES
        if busy:
            self._busy.add(channel)
        else:
            self._busy.discard(channel)
        if channel.held:
            self._looks[channel] = self._check_hold(channel)
        look = self._looks.get(channel, 0)
        if channel in self._writers and not self.rounds.is_urgent(channel):
            channel.watch(self, min(channel.ring.head + 1, look))
            channel.rearm()

    def _write(self, writer: AttachedWriter) -> None:
        feed = writer.feed
        for _ in range(MAX_WRITES_PER_ROUND):
            if feed.channel is not writer.channel:
                self._hand_back(writer)
                return
            gathered = self._gathered
            if gathered is not None and self._gathered_bytes >= THREAD_MAX_BYTES:
                if writer.channel is not None:
                    self.rounds.urgent(writer.channel)  # the next round writes for it
                return
            payload = feed.build_payload(
                writer.encode,
                writer.loss_notice,
                max_messages=writer.max_messages,
                max_bytes=writer.max_bytes,
                encode_ring=writer.encode_ring,
            )
            if payload is None:
                if writer.slow:
                    writer.judge(False)  # caught up: it may hold again
                return
            writer.on_event(DrainEvent.SEND)
            if gathered is not None:
                if writer.worker_fd < 0:
                    try:
                        writer.worker_fd = os.dup(writer.fd)
                    except OSError as exc:
                        self._settle(writer, payload, exc)
                        return
                gathered.append((writer, payload))
                self._gathered_bytes += len(payload.data)
                writer.in_flight = payload
                return  # settled at the round's end; one payload a round
            written = write_payload(writer.fd, payload.data)
            if not self._settle(writer, payload, written):
                return
        # Still more: come back for it in the next round rather than starve the others.
        channel = writer.channel
        if channel is not None:
            self.rounds.urgent(channel)

    def _settle(self, writer: AttachedWriter, payload: Payload, written: int | OSError) -> bool:
        """Account for a write of ``payload`` that took ``written`` bytes (or failed): True
        when it was taken whole and the drain has more to write."""
        threaded = writer.in_flight is payload
        writer.in_flight = None
        try:
            return self._settle_write(writer, payload, written, threaded)
        finally:
            if writer.channel is None:
                _close_worker_fd(writer)  # detached meanwhile: its task may close its own
            if threaded and writer.settled is not None:
                writer.settled.set()

    def _settle_write(
        self, writer: AttachedWriter, payload: Payload, written: int | OSError, threaded: bool
    ) -> bool:
        feed = writer.feed
        attached = writer.channel is not None
        if isinstance(written, int):
            self.writes += 1
            if written == len(payload.data):
                feed.delivered(payload)
                if not attached:
                    return False  # its task was cancelled meanwhile (a removed drain)
                writer.on_event(DrainEvent.SENT)
                if not feed.has_data():
                    if writer.slow:
                        writer.judge(False)  # caught up: it may hold again
                    return False
                if threaded and writer.channel is not None:
                    self.rounds.urgent(writer.channel)
                return True
        # A threaded write is settled after the loop routed on: the ring may have lapped
        # it meanwhile (a channel that drops). Those messages are counted lost (the next
        # L10 tells them), and the connection is given up so that the rest of the payload
        # is sent again whole, not finished with messages the count already says are lost.
        lapped = feed.keep_unsettled(payload, lapped_ok=threaded)
        if lapped and isinstance(written, int):
            written = OSError(f"{lapped} messages of a partial write were lapped meanwhile")
        if not attached:
            return False
        if isinstance(written, OSError):
            writer.error = written
            self._hand_back(writer)
            return False
        writer.partial = (payload, written)
        channel = writer.channel
        if channel is not None and not writer.slow and pushback_for(channel, self.pushback):
            # Until the drain's task has finished this write (or judged the receiver
            # slow), nothing else writes for it: the inputs must wait meanwhile.
            channel.hold(writer)
        self._hand_back(writer)
        return False

    def _hand_back(self, writer: AttachedWriter) -> None:
        self.handed_back += 1
        self._detach(writer)
        writer.wake.set()


def write_payload(fd: int, data: bytes) -> int | OSError:
    """One non-blocking write: the bytes it took, or the error."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        return exc


def write_payloads(jobs: list[tuple[int, bytes]]) -> list[int | OSError]:
    """``write_payload`` for each (fd, data); runs in the pump's worker thread. (One native
    call that let the GIL go for all of them made the daemon slower: bench/RESULTS.md.)"""
    return [write_payload(fd, data) for fd, data in jobs]


def _close_worker_fd(writer: AttachedWriter) -> None:
    fd, writer.worker_fd = writer.worker_fd, -1
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
