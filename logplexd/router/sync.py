"""Keep the data plane's Registry equal to the store: load everything, then follow changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..store import (
    ChannelAdded,
    ChannelRemoved,
    Store,
    StoreEvent,
    TokenAdded,
    TokenRemoved,
)


class RegistryLike(Protocol):
    """The part of ``logplexd.router.registry.Registry`` the store drives."""

    def ensure_channel(self, name: str) -> object: ...

    def drop_channel(self, name: str) -> object: ...

    def add_token(self, channel_name: str, token: str, name: str) -> None: ...

    def remove_token(self, token: str) -> None: ...


def load_registry(store: Store, registry: RegistryLike) -> None:
    for channel in store.channels():
        registry.ensure_channel(channel.name)
    for token in store.tokens():
        registry.add_token(token.channel, token.id, token.name)


def attach_registry(store: Store, registry: RegistryLike) -> Callable[[], None]:
    """Load ``registry`` from ``store`` and apply every later change; returns a detach."""
    load_registry(store, registry)

    def follow(event: StoreEvent) -> None:
        if isinstance(event, ChannelAdded):
            registry.ensure_channel(event.channel.name)
        elif isinstance(event, ChannelRemoved):
            registry.drop_channel(event.channel)
        elif isinstance(event, TokenAdded):
            registry.add_token(event.token.channel, event.token.id, event.token.name)
        elif isinstance(event, TokenRemoved):
            registry.remove_token(event.token.id)

    return store.subscribe(follow)
