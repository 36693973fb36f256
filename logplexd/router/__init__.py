"""The router: the in-memory routing index (token -> channel -> ring) and its sync.

- ``Registry`` and ``Channel`` (``registry.py``): channels, their ``ChannelRing`` and their
  tokens; ``route``/``route_to`` dispatch a whole batch with one native call and wake the
  channels' consumers through the ``ChannelConsumer`` protocol; ``high_water``,
  ``linger_limit`` and ``pushback_for`` are the pushback rule every consumer that holds a
  channel shares.
- ``PumpRounds`` (``rounds.py``): the linger-and-round schedule of the pumps that write for
  many channels' consumers from one task (drains, tails).
- ``attach_registry``/``load_registry`` (``sync.py``): keep a registry in step with the
  durable store's events.
"""

from .registry import (
    DEFAULT_HISTORY_BYTES,
    DEFAULT_HISTORY_MESSAGES,
    NEVER,
    Channel,
    ChannelConsumer,
    Registry,
    Releasable,
    RouteCounts,
    high_water,
    linger_limit,
    pushback_for,
)
from .rounds import ROUND_SHARE, PumpRounds, adaptive_linger, flood_ended, idle_over, look_interval
from .sync import RegistryLike, attach_registry, load_registry

__all__ = [
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_MESSAGES",
    "NEVER",
    "ROUND_SHARE",
    "PumpRounds",
    "Channel",
    "ChannelConsumer",
    "Registry",
    "RegistryLike",
    "Releasable",
    "RouteCounts",
    "adaptive_linger",
    "flood_ended",
    "idle_over",
    "look_interval",
    "attach_registry",
    "high_water",
    "linger_limit",
    "load_registry",
    "pushback_for",
]
