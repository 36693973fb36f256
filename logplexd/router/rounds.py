"""``PumpRounds``: when a pump (one task writing for many consumers) writes which channel.

A pump serves many channels' consumers from one task (the drain pump, the tail pump): a
channel with new messages is *dirty* and lingers, so one write carries many messages; once
the oldest dirty channel has lingered ``current_linger``, every dirty channel is written in
one round. A channel that must not wait (enough gathered, held, removed, more left after a
round) is *urgent* and is written in the next round at once. Between rounds the pump's task
passes a checkpoint, so inputs and other tasks run even when every write succeeds.

With many quiet channels a round costs about a syscall and some Python per channel whatever
the message rate, so the linger grows with the cost of a round (``adaptive_linger``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from .registry import Channel

# A lingering round may take at most this share of the time between two such rounds.
ROUND_SHARE = 0.2


def adaptive_linger(base: float, round_seconds: float, max_linger: float) -> float:
    """How long a pump lingers after a round that took ``round_seconds``: ``base`` (the
    configured linger) unless the round would then take more than ``ROUND_SHARE`` of the
    time, never past ``max_linger`` (nor below ``base``)."""
    return min(max(base, round_seconds / ROUND_SHARE), max(base, max_linger))


class PumpRounds:
    """The dirty and urgent channels of one pump, and its loop (``run``)."""

    def __init__(self, linger: float, max_linger: float) -> None:
        self.linger = linger
        self.max_linger = max_linger
        # The linger in force: ``linger``, longer while rounds are costly.
        self.current_linger = linger
        # Insertion order: the oldest dirty channel first.
        self._dirty: dict[Channel, None] = {}
        self._urgent: dict[Channel, None] = {}
        self._dirty_since = 0.0
        self._work = trio.Event()
        self._urgent_event = trio.Event()
        self.rounds = 0

    def dirty(self, channel: Channel) -> None:
        """``channel`` has new messages: write it with the next lingering round."""
        if channel not in self._dirty:
            if not self._dirty:
                self._dirty_since = trio.current_time()
            self._dirty[channel] = None
        self._work.set()

    def urgent(self, channel: Channel) -> None:
        """Write ``channel`` in the next round, without lingering."""
        self._urgent[channel] = None
        self._urgent_event.set()
        self._work.set()

    def is_urgent(self, channel: Channel) -> bool:
        return channel in self._urgent

    def discard(self, channel: Channel) -> None:
        self._dirty.pop(channel, None)
        self._urgent.pop(channel, None)

    async def run(self, write: Callable[[Channel], None]) -> None:
        """Call ``write(channel)`` for the channels of each round, forever."""
        while True:
            if not self._dirty and not self._urgent:
                await self._work.wait()
                self._work = trio.Event()
                continue
            if not self._urgent and self._dirty:
                with trio.move_on_at(self._dirty_since + self.current_linger):
                    await self._urgent_event.wait()
            self._urgent_event = trio.Event()
            self._work = trio.Event()
            lingered = bool(self._dirty) and (
                trio.current_time() >= self._dirty_since + self.current_linger
            )
            if lingered:
                channels = list(self._dirty)
                channels.extend(c for c in self._urgent if c not in self._dirty)
                self._dirty.clear()
            else:
                channels = list(self._urgent)
            self._urgent.clear()
            started = time.perf_counter()
            for channel in channels:
                self._dirty.pop(channel, None)
                write(channel)
            self.rounds += 1
            if lingered:
                self.current_linger = adaptive_linger(
                    self.linger, time.perf_counter() - started, self.max_linger
                )
            await trio.lowlevel.checkpoint()
