"""``DrainHandle``: what a delivery adapter (``HttpDrain``, ``SyslogDrain``) uses of its drain.

An adapter delivers for one ``Drain`` (drain.py) until its target changes; it reads the
drain's feed, settings and target, and reports back through ``on`` (state events) and
``fail`` (an error, logged and counted once per failing streak). Adapters depend on this
protocol, not on ``Drain``, so the dependency runs one way: drain.py picks the adapter.
A new kind of drain is a new adapter written against this handle.
"""

from __future__ import annotations

import random
from typing import Protocol

from ..store import DrainTarget
from .feed import DrainFeed
from .pump import DrainPump
from .settings import DrainSettings
from .state import DrainEvent
from .transport import TlsContexts


class DrainHandle(Protocol):
    token: str
    target: DrainTarget
    feed: DrainFeed
    settings: DrainSettings
    tls: TlsContexts
    user_agent: str
    rng: random.Random
    # Writes for the drain while it is connected over plain TCP (None: the adapter writes).
    pump: DrainPump | None

    def on(self, event: DrainEvent) -> None:
        """Apply a state event (``DrainEvent``) to the drain."""

    def fail(self, error: BaseException | str, *, connecting: bool = False) -> None:
        """A delivery or connection (``connecting``) failure: counted, logged once a streak."""
