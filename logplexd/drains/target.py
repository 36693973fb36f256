"""Where a drain delivers: the store's parsed drain URL, refused when it cannot be delivered.

Parsing and validation are the store's (``logplexd.store.parse_drain_url``, one parser for
the API, the store and the drains); its ``DrainTarget`` holds all that delivery needs.
"""

from __future__ import annotations

from ..store import DrainTarget, InvalidDrainUrl, parse_drain_url

__all__ = ["delivery_target"]


def delivery_target(url: str) -> DrainTarget:
    """Raises ``InvalidDrainUrl`` for anything the control API would refuse, and for a URL
    it accepts that cannot be delivered to (``DrainTarget.undeliverable``)."""
    target = parse_drain_url(url)
    if target.undeliverable is not None:
        raise InvalidDrainUrl(target.undeliverable)
    return target
