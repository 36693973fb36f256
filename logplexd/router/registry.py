"""The in-memory index the data plane routes with: channels, their rings and their tokens.

The durable store (control API) is the source of truth; it calls these methods when it
loads and after every change it has made durable, so a change is visible to ingestion at
once. Lookups on the hot path go through the native ``TokenTable`` (a C hash table), never
through these dicts.

The firehose (Logplex's ``FIREHOSE_CHANNEL_IDS`` and ``FIREHOSE_FILTER_TOKENS``,
``set_firehose``): a token whose name is filtered, on a channel that is not itself a
firehose channel, is flagged in the token table, and the same native ``dispatch`` call
appends each of its frames raw (APP-NAME as sent) to the next firehose channel that exists,
in turn. Frames of other tokens cost one flag test; no Python runs per message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from ..native import (
    Batch,
    ChannelRing,
    Firehose,
    TokenTable,
    dispatch,
    dispatch_to,
    dispatch_to_until_held,
    dispatch_until_held,
)

DEFAULT_HISTORY_MESSAGES = 1500
DEFAULT_HISTORY_BYTES = 4 * 1024 * 1024


NEVER = 2**64 - 1


class ChannelConsumer(Protocol):
    """What a channel wakes, besides its waiters, when the router appends to it.

    The drain pump and the tail pump are two (``logplexd.drains``, ``logplexd.tails``):
    each ``watch``es the channels it serves at the head it next wants to hear about, and
    ``Channel.notify`` calls its ``mark`` once the ring's head reaches that (and on every
    append while the channel is held, and when it is removed). The router knows nothing
    else of its consumers.
    """

    def mark(self, channel: Channel) -> None: ...


class Releasable(Protocol):
    """What an input that routed into a held channel waits on: the ``Channel`` itself, or
    whatever else a registry holds inputs with (``RouteCounts.held``, ``Registry.waits_for``;
    in Redis mode the node's full outbound buffer, ``cluster.OutboundGate``)."""

    async def wait_released(self) -> None: ...


class Channel:
    """A channel as the data plane sees it: its ring, its token ids, and its waiters.

    The ring's ``wake_at`` is kept at the lowest head any waiter needs, so the router only
    calls ``notify`` for channels someone is waiting on (most channels have no reader).
    """

    __slots__ = (
        "name",
        "ring",
        "tokens",
        "overflow",
        "_consumers",
        "_appended",
        "_deep",
        "_deep_at",
        "held",
        "_holders",
        "_released",
        "_pending_holds",
        "_reached",
        "_on_held",
    )

    def __init__(
        self,
        name: str,
        ring: ChannelRing,
        on_held: Callable[[Channel], None] | None = None,
    ) -> None:
        self.name = name
        self.ring = ring
        # Called whenever ``held`` changes (the registry that made the channel: in Redis
        # mode its inputs route to another ring, which must then report every append).
        self._on_held = on_held
        self.tokens: set[str] = set()
        # The stored channel's overflow mode ("pushback" or "drop", set by ``sync``); None:
        # the daemon's ``drain_overflow``. Its consumers read it; the router does not.
        self.overflow: str | None = None
        # Created by the first waiter only: most channels never have a tail or a drain.
        self._appended: trio.Event | None = None
        # Waiters that only care once the ring's head reaches _deep_at (lingering drains).
        self._deep: trio.Event | None = None
        self._deep_at = 0
        # The consumers this channel wakes (the pumps), each with the head at which it
        # wants to hear about this channel (``watch``).
        self._consumers: dict[ChannelConsumer, int] | None = None
        # Consumers that would take this channel's messages faster than they are written to
        # them (the router is the bottleneck, not they): while any holds the channel, inputs
        # that feed it wait instead of letting the ring lap them (see ``hold``).
        self.held = False
        self._holders: set[object] | None = None
        self._released: trio.Event | None = None
        # Holds that take effect once the head reaches a mark (``hold_from``).
        self._pending_holds: dict[object, int] | None = None
        # Events ``hold_from`` sets when a pending hold takes effect.
        self._reached: dict[object, trio.Event] | None = None
        ring.wake_at = NEVER

    def notify(self) -> None:
        event, self._appended = self._appended, None
        if event is not None:
            event.set()
        if self._deep is not None and self.ring.head >= self._deep_at:
            deep, self._deep = self._deep, None
            deep.set()
        consumers = self._consumers
        if consumers is not None:
            head = self.ring.head
            always = self.held or self.ring.owner is None
            for consumer, at in list(consumers.items()):
                if always or head >= at:
                    consumer.mark(self)
        pending = self._pending_holds
        if pending is not None:
            head = self.ring.head
            for holder, at in list(pending.items()):
                if head >= at:
                    del pending[holder]
                    self.hold(holder)
                    self._hold_reached(holder)
            if not pending:
                self._pending_holds = None
        self.rearm()

    def rearm(self) -> None:
        """Set the ring's ``wake_at`` to what the remaining waiters need."""
        # A held channel is reported on every append: the inputs that fed it must learn it.
        wake_at = NEVER if self._appended is None and self._holders is None else 0
        if self._deep is not None:
            wake_at = min(wake_at, self._deep_at)
        if self._consumers is not None:
            wake_at = min(wake_at, *self._consumers.values())
        hold_at = NEVER
        if self._holders is not None:
            hold_at = 0
        elif self._pending_holds is not None:
            hold_at = min(self._pending_holds.values())
            wake_at = min(wake_at, hold_at)
        self.ring.wake_at = wake_at
        self.ring.hold_at = hold_at

    # -- consumers ----------------------------------------------------------------------
    def watch(self, consumer: ChannelConsumer, head: int) -> None:
        """Call ``consumer.mark(self)`` once the ring's head reaches ``head`` (NEVER: only
        while held or when removed); replaces what ``consumer`` asked before."""
        consumers = self._consumers
        if consumers is None:
            consumers = self._consumers = {}
        consumers[consumer] = head
        if head < self.ring.wake_at:
            self.ring.wake_at = head
        # A raised mark leaves wake_at low until the next notify rearms: one spare call.

    def unwatch(self, consumer: ChannelConsumer) -> None:
        consumers = self._consumers
        if consumers is not None and consumers.pop(consumer, None) is not None:
            if not consumers:
                self._consumers = None
            self.rearm()

    def watched_by(self, consumer: ChannelConsumer) -> bool:
        consumers = self._consumers
        return consumers is not None and consumer in consumers

    # -- pushback ------------------------------------------------------------------------
    def hold(self, consumer: object) -> None:
        """``consumer`` is behind but takes what it is given: inputs feeding this channel
        should stop reading (TCP flow control reaches the producer) until it ``release``s.

        Only a consumer that would take more (its last write was taken whole) may hold; one
        that refuses data is slow, and is lapped by the ring and told with an L10 instead.
        """
        self.ring.wake_at = 0
        self.ring.hold_at = 0  # the inputs route nothing more to it (dispatch_until_held)
        if self._holders is None:
            self._holders = {consumer}
            self.held = True
            if self._on_held is not None:
                self._on_held(self)
        else:
            self._holders.add(consumer)

    def hold_from(self, consumer: object, head: int, reached: trio.Event | None = None) -> None:
        """``hold(consumer)`` once the ring's head reaches ``head`` (at once if it has): for
        a consumer about to take data (a drain connecting) that costs nothing unless a
        flood arrives meanwhile. ``reached`` is set when the hold takes effect (the
        consumer then has work to do). ``release`` cancels it."""
        if reached is not None:
            if self._reached is None:
                self._reached = {}
            self._reached[consumer] = reached
        if self.ring.head >= head:
            self.hold(consumer)
            self._hold_reached(consumer)
            return
        pending = self._pending_holds
        if pending is None:
            pending = self._pending_holds = {}
        previous = pending.get(consumer)
        pending[consumer] = head
        if previous is not None and previous < head:
            # A consumer moving its mark up as it reads (every pump round): recompute, so
            # the router neither stops nor wakes at the old mark.
            self.rearm()
        else:
            self.ring.wake_at = min(self.ring.wake_at, head)
            self.ring.hold_at = min(self.ring.hold_at, head)

    def _hold_reached(self, consumer: object) -> None:
        reached = self._reached
        if reached is not None:
            event = reached.pop(consumer, None)
            if event is not None:
                event.set()
            if not reached:
                self._reached = None

    def release(self, consumer: object) -> None:
        if self._reached is not None:
            self._reached.pop(consumer, None)
            if not self._reached:
                self._reached = None
        pending = self._pending_holds
        if pending is not None and pending.pop(consumer, None) is not None:
            if not pending:
                self._pending_holds = None
            self.rearm()
        holders = self._holders
        if holders is None or consumer not in holders:
            return
        holders.discard(consumer)
        # Every release wakes the waiters: each looks again at the holders it cares about.
        released, self._released = self._released, None
        if released is not None:
            released.set()
        if not holders:
            self._holders = None
            self.held = False
            self.rearm()
            if self._on_held is not None:
                self._on_held(self)

    async def wait_released(self) -> None:
        """Return once no consumer holds this channel (at once when none does)."""
        while self._holders is not None:
            if self._released is None:
                self._released = trio.Event()
            await self._released.wait()

    def held_by(self, consumer: object) -> bool:
        """Whether ``consumer``'s hold is in effect (not only pending)."""
        holders = self._holders
        return holders is not None and consumer in holders

    def held_apart_from(self, consumer: object | None) -> bool:
        """Whether a consumer other than ``consumer`` holds this channel."""
        holders = self._holders
        return holders is not None and any(h is not consumer for h in holders)

    async def wait_released_apart_from(self, consumer: object | None) -> None:
        """Return once no consumer other than ``consumer`` holds this channel."""
        while self.held_apart_from(consumer):
            if self._released is None:
                self._released = trio.Event()
            await self._released.wait()

    async def wait_head(self, target: int) -> None:
        """Return once the ring's head is at least ``target`` (woken no earlier)."""
        while self.ring.head < target:
            if self._deep is None:
                self._deep, self._deep_at = trio.Event(), target
            else:
                self._deep_at = min(self._deep_at, target)
            self.ring.wake_at = min(self.ring.wake_at, self._deep_at)
            await self._deep.wait()

    async def wait_appended(self) -> None:
        if self._appended is None:
            self._appended = trio.Event()
        self.ring.wake_at = 0
        await self._appended.wait()


# -- the pushback rule every consumer shares (drains, tails) --------------------------
def high_water(ring: ChannelRing) -> int:
    """Backlog (messages) at which a consumer that takes all it is given (a drain, a tail)
    holds its channel:
    a quarter of the ring, in messages or (at the ring's mean message size) in bytes,
    whichever comes first. An input stops at the message that reaches a consumer's mark
    (``hold_from`` and ``dispatch_until_held``); what it had read past it waits. The other
    three quarters are slack for what does not stop at a message: the rest of a
    ``POST /logs`` body whose bounded wait ran out, a stream entry a Redis-mode follower
    appends whole (at most a quarter of the ring), firehose copies. It was an eighth while
    inputs stopped only after the read they were in; with a small ring
    (``channel_buffer_messages`` 1,500) that made every channel stop and go: 1,000
    channels 0.75 M messages/s, one channel 1.05 M, against 1.31 M and 1.74 M now
    (bench/RESULTS.md, 2026-12-05)."""
    high = ring.max_messages // 4
    held = ring.head - ring.tail
    if held > 0:
        mean = max(1, ring.nbytes // held)
        high = min(high, ring.max_bytes // 4 // mean)
    return max(1, high)


def linger_limit(ring: ChannelRing, linger_messages: int) -> int:
    """The backlog at which a consumer that gathers messages before a write (a lingering
    drain) writes at once: ``linger_messages``, but at most half its hold mark
    (``high_water``). A consumer that waited for more than its mark would never get it
    while pushing back (the router holds the inputs at the mark, so each linger ran out
    with the channel held: stop and go), and, dropping, a small ring could lap it while it
    waits."""
    return max(1, min(linger_messages, high_water(ring) // 2))


def pushback_for(channel: Channel, default: bool) -> bool:
    """Whether consumers may hold ``channel``: by the channel's own overflow mode when the
    operator set one (``"pushback"`` or ``"drop"``), else by the daemon's ``drain_overflow``
    (``default``: True for pushback). Every hold decision asks this first."""
    mode = channel.overflow
    if mode == "pushback":
        return True
    if mode == "drop":
        return False
    return default


@dataclass
class RouteCounts:
    routed: int = 0
    unknown_token: int = 0
    # Channels this batch fed that a consumer holds (or whatever else holds the inputs,
    # ``Releasable``): the input should wait for them.
    held: tuple[Releasable, ...] = ()
    # Index of the first frame not routed because its channel is held (route the batch on
    # from there once ``held`` is released); None: every frame was routed.
    rest: int | None = None


class Registry:
    def __init__(
        self,
        history_messages: int = DEFAULT_HISTORY_MESSAGES,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        buffer_messages: int | None = None,
        buffer_bytes: int | None = None,
        on_held: Callable[[Channel], None] | None = None,
    ) -> None:
        self.history_messages = history_messages
        # Given to every channel (``Channel``): told when it is held or released.
        self._on_held = on_held
        self.history_bytes = history_bytes
        # The ring is deeper than the history: drains and tails catch up from it.
        self.buffer_messages = max(buffer_messages or history_messages, history_messages)
        self.buffer_bytes = max(buffer_bytes or history_bytes, history_bytes)
        self.table = TokenTable()
        self.channels: dict[str, Channel] = {}
        self._channel_of_token: dict[str, Channel] = {}
        self._names: dict[str, bytes] = {}  # token names are few: share their bytes
        self.totals = RouteCounts()
        # The firehose (``set_firehose``): the configured channel names, in order, and the
        # token names whose messages it copies; the native Firehose over the rings of those
        # channels that exist (None: nothing to copy, or nowhere to), the channels it has,
        # and what Firehoses replaced since (channels come and go) had posted, by channel.
        self.firehose_channels: tuple[str, ...] = ()
        self.firehose_tokens: frozenset[str] = frozenset()
        self.firehose: Firehose | None = None
        self._firehose_set: frozenset[str] = frozenset()
        self._firehose_live: tuple[Channel, ...] = ()
        self._firehose_posted: dict[str, int] = {}

    def _new_ring(self) -> ChannelRing:
        """A new channel's ring (a subclass may size it otherwise: ``ClusterRegistry``)."""
        return ChannelRing(self.buffer_messages, self.buffer_bytes)

    # -- changes (called by the store after they are durable) --------------------------
    def ensure_channel(self, name: str) -> Channel:
        channel = self.channels.get(name)
        if channel is None:
            ring = self._new_ring()
            channel = Channel(name, ring, self._on_held)
            ring.owner = channel
            self.channels[name] = channel
            if name in self._firehose_set:
                self._rebuild_firehose()
        return channel

    def drop_channel(self, name: str) -> Channel | None:
        channel = self.channels.pop(name, None)
        if channel is None:
            return None
        for token in list(channel.tokens):
            self.remove_token(token)
        if name in self._firehose_set:
            self._rebuild_firehose()
        channel.ring.owner = None
        channel.notify()
        return channel

    def add_token(self, channel_name: str, token: str, name: str) -> None:
        channel = self.ensure_channel(channel_name)
        old = self._channel_of_token.get(token)
        if old is not None and old is not channel:
            old.tokens.discard(token)
        channel.tokens.add(token)
        self._channel_of_token[token] = channel
        encoded = self._names.get(name)
        if encoded is None:
            encoded = self._names[name] = name.encode()
        self.table.add(token.encode(), channel.ring, encoded, self._firehosed(channel_name, name))

    def remove_token(self, token: str) -> None:
        channel = self._channel_of_token.pop(token, None)
        if channel is not None:
            channel.tokens.discard(token)
        self.table.remove(token.encode())

    # -- the firehose ---------------------------------------------------------------------
    def set_firehose(self, channels: Iterable[str], token_names: Iterable[str]) -> None:
        """Copy every message of a token named one of ``token_names`` (on a channel not in
        ``channels``) raw to one of ``channels``, each in turn; nothing when either is
        empty. A channel named here that does not exist (yet) gets nothing; one created
        later joins at once. May be called again at any time (SIGHUP)."""
        self.firehose_channels = tuple(dict.fromkeys(channels))
        self.firehose_tokens = frozenset(token_names)
        self._firehose_set = frozenset(self.firehose_channels)
        self._rebuild_firehose()
        for token, channel in list(self._channel_of_token.items()):
            found = self.table.lookup(token.encode())
            if found is not None:
                self.add_token(channel.name, token, found[1].decode())

    def firehose_posted(self) -> dict[str, int]:
        """Messages copied to each firehose channel since start (configured ones: 0 if
        none)."""
        posted = dict.fromkeys(self.firehose_channels, 0)
        for name, count in self._firehose_posted.items():
            posted[name] = posted.get(name, 0) + count
        if self.firehose is not None:
            for channel, count in zip(self._firehose_live, self.firehose.posted(), strict=True):
                posted[channel.name] += count
        return posted

    def _firehosed(self, channel_name: str, token_name: str) -> bool:
        """Whether a token's messages are copied: a filtered name, and never a firehose
        channel's own (a copy is never copied again)."""
        return (
            token_name in self.firehose_tokens
            and bool(self._firehose_set)
            and channel_name not in self._firehose_set
        )

    def _firehose_ring(self, channel: Channel) -> ChannelRing:
        """The ring the router writes a firehose channel's copies to."""
        return channel.ring

    def _rebuild_firehose(self) -> None:
        old = self.firehose
        if old is not None:
            for channel, count in zip(self._firehose_live, old.posted(), strict=True):
                if count:
                    self._firehose_posted[channel.name] = (
                        self._firehose_posted.get(channel.name, 0) + count
                    )
        live: tuple[Channel, ...] = ()
        if self.firehose_tokens:
            found = (self.channels.get(name) for name in self.firehose_channels)
            live = tuple(channel for channel in found if channel is not None)
        self._firehose_live = live
        self.firehose = Firehose([self._firehose_ring(c) for c in live]) if live else None

    def _token_firehosed(self, token: str | None) -> bool:
        return (
            token is not None and self.firehose is not None and self.table.firehosed(token.encode())
        )

    def _wake_firehose(self) -> None:
        """After ``dispatch_to`` copied frames: wake the firehose channels' readers."""
        for channel in self._firehose_live:
            if channel.ring.head >= channel.ring.wake_at:
                channel.notify()

    # -- lookups ------------------------------------------------------------------------
    def history(self, channel: Channel, n: int | None = None) -> Batch:
        """The newest ``n`` lines of history (at most ``history_messages``), oldest first."""
        limit = self.history_messages if n is None else min(n, self.history_messages)
        return channel.ring.last(limit, self.history_bytes)

    def channel(self, name: str) -> Channel | None:
        return self.channels.get(name)

    def channel_of_token(self, token: str) -> Channel | None:
        return self._channel_of_token.get(token)

    def waits_for(self, channel: Channel) -> tuple[Releasable, ...]:
        """What an input about to route into ``channel`` would wait on now: the channel
        while a consumer holds it."""
        return (channel,) if channel.held else ()

    # -- the hot path: one call per batch ------------------------------------------------
    def route(self, batch: Batch, start: int = 0, *, until_held: bool = True) -> RouteCounts:
        """Route the frames of ``batch`` from ``start`` on by the token in its APP-NAME (and
        copy the firehose tokens' frames), up to the first frame whose channel is held:
        ``rest`` says where to go on once ``held`` is released (issue 18: an input stops
        at the message that reaches a consumer's mark, not a whole read past it). With
        ``until_held`` false every frame is routed, held channel or not."""
        if not until_held:
            return self._route_whole(batch, start)
        routed = unknown = 0
        while True:
            r, u, touched, stop = dispatch_until_held(batch, self.table, self.firehose, start)
            routed += r
            unknown += u
            held = self._wake(touched)
            if stop < 0 or held:
                break
            if stop == start:
                # A mark no consumer holds at (notify re-armed nothing): never spin.
                self.totals.routed += routed
                self.totals.unknown_token += unknown
                rest = self._route_whole(batch, start)
                return RouteCounts(routed + rest.routed, unknown + rest.unknown_token, rest.held)
            start = stop
        self.totals.routed += routed
        self.totals.unknown_token += unknown
        return RouteCounts(routed, unknown, held, None if stop < 0 else stop)

    def _route_whole(self, batch: Batch, start: int) -> RouteCounts:
        routed, unknown, touched = dispatch(batch, self.table, self.firehose, start)
        self.totals.routed += routed
        self.totals.unknown_token += unknown
        return RouteCounts(routed, unknown, self._wake(touched))

    def route_to(
        self,
        batch: Batch,
        channel: Channel,
        token: str | None = None,
        start: int = 0,
        *,
        until_held: bool = True,
    ) -> RouteCounts:
        """Token auth: every frame from ``start`` on goes to ``channel``; sibling tokens are
        renamed. A frame is copied to the firehose as its sibling token's, else as
        ``token``'s (the one that authenticated). As ``route``: up to the frame that
        reaches a consumer's mark on the channel's ring while that consumer holds it
        (``rest``: where to go on once released), every frame with ``until_held`` false;
        ``held`` says whether the channel is held."""
        routed = 0
        while True:
            r, stop = self._dispatch_to(batch, channel, token, start, until_held)
            routed += r
            if r or stop >= 0:
                channel.notify()  # the consumer whose mark it reached looks (and holds)
            if stop < 0:
                break
            if channel.held:
                self.totals.routed += routed
                return RouteCounts(routed, 0, (channel,), stop)
            if stop == start:
                # A mark no consumer holds at (notify re-armed nothing): never spin.
                r, _ = self._dispatch_to(batch, channel, token, start, False)
                routed += r
                if r:
                    channel.notify()
                break
            start = stop
        self.totals.routed += routed
        return RouteCounts(routed, 0, (channel,) if channel.held else ())

    def _dispatch_to(
        self, batch: Batch, channel: Channel, token: str | None, start: int, until_held: bool
    ) -> tuple[int, int]:
        firehose = self.firehose
        tapped = self._token_firehosed(token)
        before = firehose.total if firehose is not None else 0
        if until_held:
            routed, stop = dispatch_to_until_held(
                batch, self.table, channel.ring, firehose, tapped, start
            )
        else:
            routed, stop = dispatch_to(batch, self.table, channel.ring, firehose, tapped, start), -1
        if firehose is not None and firehose.total != before:
            self._wake_firehose()
        return routed, stop

    @staticmethod
    def _wake(rings: list[ChannelRing]) -> tuple[Channel, ...]:
        held: list[Channel] | None = None
        for ring in rings:
            channel = ring.owner
            if channel is not None:
                channel.notify()
                if channel.held:
                    if held is None:
                        held = []
                    held.append(channel)
        return () if held is None else tuple(held)
