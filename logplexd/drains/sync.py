"""Keep the running drains equal to the store: start what it holds, then follow changes.

The target is the ``DrainManager`` on one node, or (Redis mode) ``cluster.ClusterDrains``,
which takes the same calls and runs each drain only on the node owning its lease.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from ..store import (
    ChannelRemoved,
    DrainAdded,
    DrainRecord,
    DrainRemoved,
    DrainUpdated,
    InvalidDrainUrl,
    Store,
    StoreEvent,
    redact_url,
)

log = logging.getLogger("logplexd.drains")


class DrainRunner(Protocol):
    """What drain_sync drives: ``DrainManager`` and ``ClusterDrains`` both are one."""

    def add_drain(self, channel_name: str, drain_id: int, token: str, url: str) -> None: ...

    def update_drain(self, drain_id: int, url: str) -> bool: ...

    def remove_drain(self, drain_id: int) -> bool: ...

    def remove_channel(self, channel_name: str) -> int: ...


def _start(manager: DrainRunner, drain: DrainRecord) -> None:
    if drain.url is None:  # a reservation delivers nothing until it gets a URL
        return
    try:
        manager.add_drain(drain.channel, drain.id, drain.token, drain.url)
    except InvalidDrainUrl as exc:
        log.warning("drain %d: not started, %s (%s)", drain.id, exc, redact_url(drain.url))


def attach_drains(store: Store, manager: DrainRunner) -> Callable[[], None]:
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
