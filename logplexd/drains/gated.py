"""A ``DrainManager`` gated by the ``deny_drain_forwarding`` control rod."""

from __future__ import annotations

import logging
from typing import Any

from ..router import Registry
from .manager import DrainManager
from .target import delivery_target

log = logging.getLogger("logplexd.rods")


class GatedDrainManager(DrainManager):
    """A ``DrainManager`` that can stop all delivery (``deny_drain_forwarding``) and resume.

    While denied it remembers every drain the store adds, changes or removes without
    running any; lifting the rod starts them all at the channel's present.
    """

    def __init__(self, registry: Registry, **kwargs: Any) -> None:
        super().__init__(registry, **kwargs)
        self._specs: dict[int, tuple[str, str, str]] = {}
        self.forwarding_denied = False

    @property
    def configured(self) -> int:
        return len(self._specs)

    def add_drain(self, channel_name: str, drain_id: int, token: str, url: str) -> None:
        if self.forwarding_denied:
            delivery_target(url)  # the same InvalidDrainUrl as a running drain would raise
            self._specs[drain_id] = (channel_name, token, url)
            return
        super().add_drain(channel_name, drain_id, token, url)
        self._specs[drain_id] = (channel_name, token, url)

    def update_drain(self, drain_id: int, url: str) -> bool:
        spec = self._specs.get(drain_id)
        if spec is None:
            return False
        if self.forwarding_denied:
            delivery_target(url)
            self._specs[drain_id] = (spec[0], spec[1], url)
            return True
        updated = super().update_drain(drain_id, url)
        if updated:
            self._specs[drain_id] = (spec[0], spec[1], url)
        return updated

    def remove_drain(self, drain_id: int) -> bool:
        known = self._specs.pop(drain_id, None) is not None
        return super().remove_drain(drain_id) or known

    def remove_channel(self, channel_name: str) -> int:
        ids = [i for i, spec in self._specs.items() if spec[0] == channel_name]
        for drain_id in ids:
            self.remove_drain(drain_id)
        return len(ids)

    def set_forwarding_denied(self, denied: bool) -> None:
        if denied == self.forwarding_denied:
            return
        self.forwarding_denied = denied
        if denied:
            for drain_id in list(self._drains):
                self._stop_drain(drain_id)
            log.warning("control rod deny_drain_forwarding on: %d drains stopped", len(self._specs))
        else:
            for drain_id, (channel, token, url) in list(self._specs.items()):
                DrainManager.add_drain(self, channel, drain_id, token, url)
            log.warning(
                "control rod deny_drain_forwarding off: %d drains started", len(self._specs)
            )
