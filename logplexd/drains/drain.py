"""One drain: its identity, target, feed, state and counters, and the task that delivers.

The delivery protocol (``SyslogDrain`` or ``HttpDrain``) is chosen per target and rebuilt
when the URL changes; the feed (cursor, unsettled batch, loss) outlives it, so a URL change
keeps every message the drain has not delivered yet. The adapters see a ``Drain`` only as
the ``DrainHandle`` of delivery.py, so they do not import this module.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import trio

from ..native import format_time, parse_frames
from ..router import Channel
from ..store import DrainTarget
from .feed import CHANNEL_POLL_SECONDS, DrainFeed, spill_share
from .http import HttpDrain
from .policy import (
    certificate_failure,
    connect_failure_reasons,
    l14_due,
    l14_frame,
    unresolved_name,
)
from .pump import DrainPump, pushback_for
from .settings import DrainSettings
from .state import DrainEvent, DrainState, next_state
from .syslog import SyslogDrain
from .transport import TlsContexts

log = logging.getLogger("logplexd.drains")

# After an unexpected error (a bug) the drain restarts its delivery after this long.
CRASH_RESTART_SECONDS = 5.0


@dataclass(frozen=True)
class DrainStats:
    drain_id: int
    channel: str
    token: str
    url: str  # userinfo redacted
    state: str
    delivered: int
    dropped: int
    retried: int
    lost: int
    # Messages waiting for this drain (in its channel's ring or taken from it), and of
    # those, the ones taken from the ring into the batch being delivered.
    buffered: int
    in_flight: int
    # Bytes of the ``buffered`` messages. Exact for a batch taken whole and for a drain the
    # whole ring waits for; otherwise the ring's (or batch's) average message size times
    # the count: the ring keeps no running sizes, and summing them would cost per message.
    buffered_bytes: int
    # The oldest buffered message's own RFC 5424 TIMESTAMP (the sender's clock, seconds
    # since the epoch) and its age when these stats were taken. None when nothing is
    # buffered or that message has no usable timestamp (the ring keeps no arrival times).
    oldest_at: float | None
    oldest_age: float | None
    # Messages the next L10 notice will announce.
    pending_loss: int
    last_error: str | None
    last_error_at: float | None
    # The drain reads from its disk backlog (it fell a share of its ring behind), and how
    # much that backlog holds (messages not yet delivered, bytes of its segment files).
    # Both are also counted in ``buffered`` / ``buffered_bytes``.
    spilling: bool = False
    spilled: int = 0
    spilled_bytes: int = 0
    # Times its receiver was judged slow (syslog drains: ``DrainCounters.judged_slow``).
    judged_slow: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def message_time(raw: bytes | None) -> float | None:
    """An RFC 5424 TIMESTAMP as seconds since the epoch (UTC when it has no offset); None
    for the NILVALUE ``-`` or anything that does not parse."""
    if not raw or raw == b"-":
        return None
    try:
        when = datetime.fromisoformat(raw.decode("ascii"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (UnicodeDecodeError, ValueError, OverflowError, OSError):
        return None


def describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, trio.TooSlowError):
        return "timed out"
    # trio wraps the useful error (an SSL verification failure, a reset) as the cause.
    cause = error.__cause__ or error.__context__
    if isinstance(error, trio.BrokenResourceError) and cause is not None:
        error = cause
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# A drain in these states has no receiver taking data (it failed and waits to retry, or
# is connecting): with ``SpillSettings.only_refused`` its backlog may spill.
REFUSING_STATES = frozenset({DrainState.BACKOFF, DrainState.CONNECTING})


class Drain:
    def __init__(
        self,
        *,
        drain_id: int,
        token: str,
        target: DrainTarget,
        feed: DrainFeed,
        settings: DrainSettings,
        tls: TlsContexts,
        user_agent: str,
        rng: random.Random,
        wall_clock: Callable[[], float] = time.time,
        pump: DrainPump | None = None,
    ) -> None:
        self.drain_id = drain_id
        self.token = token
        self.target = target
        self.feed = feed
        self.settings = settings
        self.tls = tls
        self.user_agent = user_agent
        self.rng = rng
        self.wall_clock = wall_clock
        # Writes for this drain while it is connected over plain TCP (None: the task writes).
        self.pump = pump
        self.state = DrainState.DISCONNECTED
        self.done = trio.Event()
        self._scope = trio.CancelScope()
        self._session: trio.CancelScope | None = None
        self._failing = False
        # When this failing streak last put an L14 notice into the channel (trio clock).
        self._l14_at: float | None = None
        self.l14_notices = 0
        # The last oldest-buffered-message lookup of ``stats``: (where it was, its time). A
        # drain that does not move (a receiver that is down) is not looked up again.
        self._oldest: tuple[tuple[object, ...], float | None] | None = None
        # What holds the channel's inputs while the copy to the disk backlog is behind.
        self._spill_hold = object()
        # Set when the receiver starts refusing data (``only_refused`` spills wait for it).
        self._refused = trio.Event()
        # What the spill task waits on while the receiver refuses (its mark reached), set
        # as well once the receiver takes data again (``_receiver_back``).
        self._refusal_wait: trio.Event | None = None
        feed.on_receiver_slow.append(self._receiver_refused)
        feed.on_receiver_caught_up.append(self._receiver_back)

    @property
    def channel_name(self) -> str:
        return self.feed.channel_name

    # -- state ----------------------------------------------------------------------------
    def on(self, event: DrainEvent) -> None:
        state = self.state = next_state(self.state, event)
        if state is DrainState.BACKOFF or state is DrainState.CONNECTING:  # REFUSING_STATES
            self._receiver_refused()
        elif self._refusal_wait is not None:
            self._receiver_back()
        if event is DrainEvent.SENT and self._failing:
            self._failing = False
            log.info("drain %d (%s) delivering again", self.drain_id, self.target.redacted)

    def fail(self, error: BaseException | str, *, connecting: bool = False) -> None:
        unresolved = unresolved_name(error)
        text = describe(error)
        if unresolved is not None:
            # Say which name: the resolver's own text ("Name or service not known") does not.
            text = f"{self.target.host} did not resolve ({unresolved})"
        elif (reasons := connect_failure_reasons(error)) is not None:
            text = f"{text}: {reasons}"
        self.feed.note_error(text)
        self.on(DrainEvent.FAILED)
        # One line when a drain starts failing, not one per retry of a dead endpoint.
        if not self._failing:
            self._failing = True
            self._l14_at = None
            log.warning(
                "drain %d (%s) %s: %s",
                self.drain_id,
                self.target.redacted,
                "cannot connect" if connecting else "delivery failed",
                text,
            )
        # Only a handshake (connecting) failure: as the original, which checks on connect.
        alert = certificate_failure(error) if connecting else None
        now = trio.current_time()
        if alert is not None and l14_due(self._l14_at, now, self.settings.l14_interval):
            self._l14_at = now
            self._announce_l14(alert)

    def _announce_l14(self, alert: str) -> None:
        """Put the L14 line into the drain's channel: its tails and history show it (as in
        the original), and so do its drains, which read the same ring."""
        channel = self.feed.registry.channel(self.channel_name)
        if channel is None:
            return
        line = l14_frame(self.token, alert, self.target.redacted, format_time(self.wall_clock()))
        channel.ring.append_batch(parse_frames([line]))
        channel.notify()
        self.l14_notices += 1

    # -- control (synchronous, from the manager) ------------------------------------------
    def retarget(self, target: DrainTarget) -> None:
        self.target = target
        self._failing = False
        if self._session is not None:
            self._session.cancel()
        self.feed.kick()

    def stop(self) -> None:
        self._scope.cancel()
        self.feed.kick()

    # -- the task -------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            with self._scope:
                if self.feed.disk is None:
                    await self._deliver()
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._spill_guard)
                    await self._deliver()
                    nursery.cancel_scope.cancel()
        finally:
            self.state = DrainState.STOPPED
            self.done.set()

    @property
    def refusing(self) -> bool:
        """The receiver takes nothing now: judged slow, or not connected."""
        return self.feed.receiver_slow or self.state in REFUSING_STATES

    def _receiver_refused(self) -> None:
        """Wake the spill task; with ``only_refused``, hold the channel a share past the
        drain at once: the receiver's own hold is released in the same step, and the ring
        should not lap the drain before the spill task runs (what it lapped must be read
        back from the stream first)."""
        self._refused.set()
        feed, disk = self.feed, self.feed.disk
        if disk is None or not disk.store.settings.only_refused or feed.spilling:
            return
        channel = feed.channel
        if channel is None or feed.refilling:
            return
        if self.pump is None or pushback_for(channel, self.pump.pushback):
            start = max(feed.cursor, channel.ring.tail)
            channel.hold_from(self._spill_hold, start + spill_share(channel))

    def _receiver_back(self) -> None:
        """The receiver takes data again (connected, or caught up): a spill task waiting
        for its mark while it refused looks again (``_spill_guard``)."""
        wait = self._refusal_wait
        if wait is not None and not self.refusing:
            self._refusal_wait = None  # (how the spill task tells this from its mark)
            wait.set()

    async def _spill_guard(self) -> None:
        """Copy the ring to the disk backlog once the drain is a share behind, and while the
        backlog is active, everything new (in chunks, at most ``flush_interval`` late)."""
        feed = self.feed
        disk = feed.disk
        assert disk is not None
        interval = disk.store.settings.flush_interval
        only_refused = disk.store.settings.only_refused
        # The channel this task's hold (pending or in effect) is on. It is moved to the next
        # mark with no await in between: between two marks the inputs are never unheld
        # (a checkpoint there let a whole read of every connection lap the drain).
        marked: Channel | None = None
        try:
            while True:
                channel = feed.current_channel()
                if channel is not marked and marked is not None:
                    marked.release(self._spill_hold)
                    marked = None
                if channel is None:
                    await trio.sleep(CHANNEL_POLL_SECONDS)
                    continue
                if only_refused and not feed.spilling and not self.refusing:
                    # Behind only while the receiver refuses (Redis mode: the stream keeps
                    # a drain's lag up to 4 x keep meanwhile).
                    channel.release(self._spill_hold)
                    marked = channel  # ``_receiver_refused`` may hold it
                    self._refused = trio.Event()
                    await self._refused.wait()
                    continue
                # Copying is logplexd's own work: should the inputs outrun this task, the
                # router holds them once the drain is a whole share behind (as for a drain
                # that takes every write), so the ring never laps what the disk would take.
                hold = self.pump is None or pushback_for(channel, self.pump.pushback)
                if only_refused and feed.refilling:
                    await self._spill_lapped(channel, hold, interval)
                    marked = channel
                    continue
                ring = channel.ring
                share = spill_share(channel)
                start = max(feed.cursor, ring.tail)
                reached = trio.Event()
                channel.release(self._spill_hold)
                marked = None
                if hold:
                    # The router wakes this task itself when the drain is a share behind
                    # (no wake-up shared with the channel's other waiters).
                    channel.hold_from(self._spill_hold, start + share, reached)
                    marked = channel
                if feed.spilling:
                    await channel.wait_head(start + 1)
                    with trio.move_on_after(interval):
                        await channel.wait_head(start + max(1, share // 4))
                elif hold and only_refused:
                    # Until the mark, or until the receiver takes data again: one that does
                    # must not hold the channel at half its ring. Woken by either, never by a
                    # timer: looking again every ``interval`` cost a node whose 1,000 drains'
                    # receivers were down 96 % of a core (bench/RESULTS.md, "thirteenth").
                    if not self.refusing:
                        continue
                    self._refusal_wait = reached
                    await reached.wait()
                    back, self._refusal_wait = self._refusal_wait is not reached, None
                    if back:
                        continue
                elif hold:
                    await reached.wait()
                else:
                    # In steps past the head (never a spin): the share is re-measured as
                    # the ring learns message sizes.
                    await channel.wait_head(min(start + share, ring.head + max(1, share // 4)))
                copied = feed.spill()
                if not copied and disk.store.recheck():
                    # The disk takes nothing now (budget, free space, a full queue): look
                    # again later; meanwhile the drain reads from its ring, and a flood
                    # laps it (L10). A stuck disk must not hold the producers.
                    channel.release(self._spill_hold)
                    marked = None
                    await trio.sleep(interval)
                else:
                    await trio.lowlevel.checkpoint()
        finally:
            if marked is not None:
                marked.release(self._spill_hold)

    async def _spill_lapped(self, channel: Channel, hold: bool, interval: float) -> None:
        """One step of a spill the ring lapped (Redis mode): what it let go is read from the
        stream to the disk, the channel held meanwhile (logplexd's own work)."""
        feed = self.feed
        if self.state in REFUSING_STATES:
            feed.drop_unsettled_write()  # no connection is writing it any more
        channel.release(self._spill_hold)
        if hold:
            channel.hold_from(self._spill_hold, channel.ring.head)
        if feed.spill(force=True):
            await trio.lowlevel.checkpoint()
        else:
            # A read of the stream is under way (its end kicks the feed), or the disk
            # takes nothing now.
            with trio.move_on_after(interval):
                await feed.wait_kicked()

    async def _deliver(self) -> None:
        while True:
            target = self.target
            with trio.CancelScope() as self._session:
                try:
                    if target.is_http:
                        await HttpDrain(self).run()
                    else:
                        await SyslogDrain(self).run()
                    return  # flushed at shutdown
                except Exception as exc:
                    # A bug must not take down the daemon or other drains.
                    log.exception("drain %d crashed; restarting", self.drain_id)
                    self.feed.note_error(describe(exc))
                    self.state = DrainState.BACKOFF
                    await trio.sleep(CRASH_RESTART_SECONDS)
            self._session = None
            # New URL (or restart after a crash): the old connection is gone.
            self.on(DrainEvent.CLOSED)

    def stats(self) -> DrainStats:
        """The drain's figures now; a few reads of the feed and the ring, nothing per message."""
        feed, counters = self.feed, self.feed.counters
        taken, backlog = feed.pending_messages, feed.backlog
        nbytes, oldest_at = self._buffered(taken, backlog)
        disk = feed.disk
        spilling, spilled, spilled_bytes = False, 0, 0
        if disk is not None and disk.active:
            spilling, spilled, spilled_bytes = True, disk.messages, disk.disk_bytes
            # Taken messages came from the disk: the disk's count already has them.
            backlog += spilled - (taken if feed.reading_disk else 0)
            nbytes += spilled_bytes + disk.queued_bytes
            # The backlog keeps arrival times, not the senders' timestamps.
            oldest_at = disk.oldest_written_at() or oldest_at
        return DrainStats(
            drain_id=self.drain_id,
            channel=self.channel_name,
            token=self.token,
            url=self.target.redacted,
            state=self.state.value,
            delivered=counters.delivered,
            dropped=counters.dropped,
            retried=counters.retried,
            # Losses show as they happen, not only when the drain next reads.
            lost=counters.lost + feed.lapped,
            buffered=taken + backlog,
            in_flight=taken,
            buffered_bytes=nbytes,
            oldest_at=oldest_at,
            oldest_age=None if oldest_at is None else max(0.0, self.wall_clock() - oldest_at),
            pending_loss=feed.loss.count + feed.lapped,
            last_error=counters.last_error,
            last_error_at=counters.last_error_at,
            spilling=spilling,
            spilled=spilled,
            spilled_bytes=spilled_bytes,
            judged_slow=counters.judged_slow,
        )

    def _buffered(self, taken: int, backlog: int) -> tuple[int, float | None]:
        """(bytes, timestamp of the oldest) of the ``taken`` messages of the batch being
        delivered and the ``backlog`` still in the ring, oldest first."""
        feed = self.feed
        batch, channel = feed.pending, feed.channel
        ring = None if channel is None else channel.ring
        nbytes = 0
        where: tuple[object, ...] | None = None
        if batch is not None and taken > 0:
            nbytes += batch.nbytes * taken // len(batch)
            # A batch is read from the ring and ends at the cursor, so the cursor (always
            # moving forward) tells one taken batch from the next without holding it.
            where = (ring, feed.cursor, len(batch), feed.pending_start)
        if ring is not None and backlog > 0:
            nbytes += ring.nbytes * backlog // len(ring)
            if where is None:
                where = (ring, ring.head - backlog)
        if where is None:
            return nbytes, None
        memo = self._oldest
        # The ring is compared by identity: a replaced channel has a new one.
        if memo is not None and memo[0][0] is where[0] and memo[0][1:] == where[1:]:
            return nbytes, memo[1]
        if len(where) == 4:
            assert batch is not None
            raw = batch.fields(feed.pending_start)["timestamp"]
        else:
            assert ring is not None
            first, _, _ = ring.read(ring.head - backlog, 1, 0)
            raw = first.fields(0)["timestamp"] if len(first) else None
        oldest_at = message_time(raw)
        self._oldest = (where, oldest_at)
        return nbytes, oldest_at
