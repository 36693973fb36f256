"""Reads of history in Redis mode: from the stream, or the local ring when that is enough.

A session or a channel-log read on a channel this node follows, and has followed for at
least as many messages as asked, reads the local ring as on one node. Otherwise it reads
the newest entries of the channel's stream (``XREVRANGE``, pages of entries until enough
messages), and a tail then follows the stream from exactly the newest entry it read, so
nothing is shown twice or skipped between history and the live part. With Redis
unreachable, history comes from the local rings (what this node followed or ingested).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..native import Batch
from ..router import Channel
from ._follow import Follow
from ._link import redis_errors
from .plane import DataPlane
from .registry import ClusterRegistry


@dataclass(slots=True)
class ReadStart:
    """History to send, the ring position a tail continues from, the follow it holds."""

    history: Batch
    cursor: int
    follow: Follow | None


class ClusterReads:
    def __init__(self, plane: DataPlane, registry: ClusterRegistry) -> None:
        self.plane = plane
        self.registry = registry

    async def start(self, channel: Channel, want: int, tail: bool) -> ReadStart:
        """History of ``want`` messages (at most the history length) and, with ``tail``,
        a hold on the channel's stream; release it with ``release``."""
        plane, registry = self.plane, self.registry
        want = max(0, min(want, registry.history_messages))
        follow = plane.follow_of(channel.name)
        if plane.failure is not None:
            return self._local(channel, want, tail)
        if follow is not None and follow.channel is channel and follow.valid_messages() >= want:
            held = plane.hold(channel, None) if tail else None
            return ReadStart(registry.history(channel, want), int(channel.ring.head), held)
        try:
            history, top = await plane.read_history(channel.name, want)
        except redis_errors():
            # The probe and the other tasks report the outage; this read just degrades.
            return self._local(channel, want, tail)
        if not tail:
            return ReadStart(history, int(channel.ring.head), None)
        existing = plane.follow_of(channel.name)
        held = plane.hold(channel, top)
        if held is not existing:
            # A new follow starts right after ``top``: the ring's next message is the next one.
            return ReadStart(history, int(channel.ring.head), held)
        await held.wait_reached(top[0])
        cursor, _ = held.position_after(top[0])
        return ReadStart(history, cursor, held)

    def _local(self, channel: Channel, want: int, tail: bool) -> ReadStart:
        held = self.plane.hold(channel, None) if tail else None
        return ReadStart(self.registry.local_history(channel, want), int(channel.ring.head), held)

    def release(self, start: ReadStart) -> None:
        if start.follow is not None:
            self.plane.release(start.follow)
            start.follow = None
