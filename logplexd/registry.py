"""The in-memory index the data plane routes with: channels, their rings and their tokens.

The durable store (control API) is the source of truth; it calls these methods when it
loads and after every change it has made durable, so a change is visible to ingestion at
once. Lookups on the hot path go through the native ``TokenTable`` (a C hash table), never
through these dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from .native import ChannelRing, TokenTable, dispatch, dispatch_to

DEFAULT_HISTORY_MESSAGES = 1500
DEFAULT_HISTORY_BYTES = 4 * 1024 * 1024


@dataclass(eq=False)
class Channel:
    name: str
    ring: ChannelRing
    tokens: dict[str, str] = field(default_factory=dict)  # token id -> token name
    # Tails and drains wait on this; it is replaced after every wake-up.
    _appended: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        event, self._appended = self._appended, trio.Event()
        event.set()

    async def wait_appended(self) -> None:
        await self._appended.wait()


@dataclass
class RouteCounts:
    routed: int = 0
    unknown_token: int = 0


class Registry:
    def __init__(
        self,
        history_messages: int = DEFAULT_HISTORY_MESSAGES,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> None:
        self.history_messages = history_messages
        self.history_bytes = history_bytes
        self.table = TokenTable()
        self.channels: dict[str, Channel] = {}
        self._channel_of_token: dict[str, Channel] = {}
        self._by_ring: dict[int, Channel] = {}
        self.totals = RouteCounts()

    # -- changes (called by the store after they are durable) --------------------------
    def ensure_channel(self, name: str) -> Channel:
        channel = self.channels.get(name)
        if channel is None:
            ring = ChannelRing(self.history_messages, self.history_bytes)
            channel = Channel(name, ring)
            self.channels[name] = channel
            self._by_ring[id(ring)] = channel
        return channel

    def drop_channel(self, name: str) -> Channel | None:
        channel = self.channels.pop(name, None)
        if channel is None:
            return None
        for token in list(channel.tokens):
            self.remove_token(token)
        del self._by_ring[id(channel.ring)]
        channel.notify()
        return channel

    def add_token(self, channel_name: str, token: str, name: str) -> None:
        channel = self.ensure_channel(channel_name)
        old = self._channel_of_token.get(token)
        if old is not None and old is not channel:
            old.tokens.pop(token, None)
        channel.tokens[token] = name
        self._channel_of_token[token] = channel
        self.table.add(token.encode(), channel.ring, name.encode())

    def remove_token(self, token: str) -> None:
        channel = self._channel_of_token.pop(token, None)
        if channel is not None:
            channel.tokens.pop(token, None)
        self.table.remove(token.encode())

    # -- lookups ------------------------------------------------------------------------
    def channel(self, name: str) -> Channel | None:
        return self.channels.get(name)

    def channel_of_token(self, token: str) -> Channel | None:
        return self._channel_of_token.get(token)

    # -- the hot path: one call per batch ------------------------------------------------
    def route(self, batch: object) -> RouteCounts:
        """Route every frame of ``batch`` by the token in its APP-NAME."""
        routed, unknown, touched = dispatch(batch, self.table)
        self._wake(touched)
        self.totals.routed += routed
        self.totals.unknown_token += unknown
        return RouteCounts(routed, unknown)

    def route_to(self, batch: object, channel: Channel) -> int:
        """Token auth: every frame goes to ``channel``; sibling tokens are renamed."""
        routed = dispatch_to(batch, self.table, channel.ring)
        if routed:
            channel.notify()
        self.totals.routed += routed
        return routed

    def _wake(self, rings: list[ChannelRing]) -> None:
        for ring in rings:
            channel = self._by_ring.get(id(ring))
            if channel is not None:
                channel.notify()
