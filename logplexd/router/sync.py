"""Keep the data plane's Registry equal to the store: load everything, then follow changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..store import (
    ChannelAdded,
    ChannelRecord,
    ChannelRemoved,
    ChannelUpdated,
    Store,
    StoreEvent,
    TokenAdded,
    TokenRemoved,
)
from .registry import Channel


class RegistryLike(Protocol):
    """The part of ``logplexd.router.registry.Registry`` the store drives."""

    # The live channel, whose stored settings (``overflow``) are carried onto it; a
    # registry that keeps no ``Channel`` objects returns None.
    def ensure_channel(self, name: str) -> Channel | None: ...

    def drop_channel(self, name: str) -> object: ...

    def add_token(self, channel_name: str, token: str, name: str) -> None: ...

    def remove_token(self, token: str) -> None: ...


def _put_channel(registry: RegistryLike, record: ChannelRecord) -> None:
    """Make the live channel of ``record`` and carry its stored settings onto it."""
    live = registry.ensure_channel(record.name)
    if live is not None:
        live.overflow = record.overflow


def load_registry(store: Store, registry: RegistryLike) -> None:
    for channel in store.channels():
        _put_channel(registry, channel)
    for token in store.tokens():
        registry.add_token(token.channel, token.id, token.name)


def attach_registry(store: Store, registry: RegistryLike) -> Callable[[], None]:
    """Load ``registry`` from ``store`` and apply every later change; returns a detach."""
    load_registry(store, registry)

    def follow(event: StoreEvent) -> None:
        if isinstance(event, (ChannelAdded, ChannelUpdated)):
            _put_channel(registry, event.channel)
        elif isinstance(event, ChannelRemoved):
            registry.drop_channel(event.channel)
        elif isinstance(event, TokenAdded):
            registry.add_token(event.token.channel, event.token.id, event.token.name)
        elif isinstance(event, TokenRemoved):
            registry.remove_token(event.token.id)

    return store.subscribe(follow)
