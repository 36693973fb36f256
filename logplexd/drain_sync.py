"""Keep the running drains equal to the store: start what it holds, then follow changes."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .drains import DrainManager, InvalidDrainUrl
from .store.base import Store
from .store.drain_url import redact_url
from .store.model import ChannelRemoved, Drain, DrainAdded, DrainRemoved, DrainUpdated, StoreEvent

log = logging.getLogger("logplexd.drains")


def _start(manager: DrainManager, drain: Drain) -> None:
    if drain.url is None:  # a reservation delivers nothing until it gets a URL
        return
    try:
        manager.add_drain(drain.channel, drain.id, drain.token, drain.url)
    except InvalidDrainUrl as exc:
        log.warning("drain %d: not started, %s (%s)", drain.id, exc, redact_url(drain.url))


def attach_drains(store: Store, manager: DrainManager) -> Callable[[], None]:
    """Start every stored drain and apply each later change at once; returns a detach."""
    for drain in store.drains():
        _start(manager, drain)

    def follow(event: StoreEvent) -> None:
        if isinstance(event, DrainAdded):
            _start(manager, event.drain)
        elif isinstance(event, DrainUpdated):
            url = event.drain.url
            if url is None:
                manager.remove_drain(event.drain.id)
            elif event.previous.url is None or not manager.update_drain(event.drain.id, url):
                _start(manager, event.drain)
        elif isinstance(event, DrainRemoved):
            manager.remove_drain(event.drain.id)
        elif isinstance(event, ChannelRemoved):
            manager.remove_channel(event.channel)

    return store.subscribe(follow)
