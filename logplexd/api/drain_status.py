"""``GET /v3/channels/{channel}/drains/status``: how each drain of a channel is doing.

For operators: every stored drain of the channel with its connection state, last error,
counters and backlog (messages, bytes, age of the oldest), as this node's drains report
them. The figures come from whoever runs the drains, through the ``health`` callback (the
daemon passes ``DrainManager.channel_stats``): the API does not know the drains package.
A stored drain with no figures here is ``not_running`` on this node (``deny_drain_forwarding``
is on, it could not start, or in Redis mode another node holds its lease) and its figures
are null. Drain URLs are redacted as in the logs (no userinfo), and so is any copy of their
credentials in an error text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..store import Store, redact_url
from ..web import AddRoute, Params, Request, Response
from .control import DrainFigures

NOT_RUNNING = "not_running"

# Figures of a running drain, in the order the JSON shows them.
HEALTH_KEYS = (
    "state",
    "last_error",
    "last_error_at",
    "delivered",
    "dropped",
    "retried",
    "lost",
    "pending_loss",
    "buffered",
    "buffered_bytes",
    "in_flight",
    "oldest_at",
    "oldest_age",
    "spilling",
    "spilled",
    "spilled_bytes",
    "judged_slow",
)


class DrainHealth(DrainFigures, Protocol):
    """What the status route shows of a running drain (``drains.DrainStats`` has it)."""

    @property
    def in_flight(self) -> int: ...
    @property
    def pending_loss(self) -> int: ...
    @property
    def buffered_bytes(self) -> int: ...
    @property
    def oldest_at(self) -> float | None: ...
    @property
    def oldest_age(self) -> float | None: ...
    @property
    def spilling(self) -> bool: ...
    @property
    def spilled(self) -> int: ...
    @property
    def spilled_bytes(self) -> int: ...
    @property
    def judged_slow(self) -> int: ...


ChannelHealth = Callable[[str], Iterable[DrainHealth]]


class DrainStatusRoutes:
    """The route; ``health(channel)`` gives the figures of the channel's running drains."""

    def __init__(self, store: Store, health: ChannelHealth) -> None:
        self.store = store
        self.health = health

    def mount(self, add: AddRoute) -> None:
        add("GET", "/v3/channels/{channel}/drains/status", self.status, name="v3.drain.status")

    async def status(self, request: Request, params: Params) -> Response:
        name = params["channel"]
        if self.store.channel(name) is None:
            return Response.error(404, "channel not found")
        live = {figures.drain_id: figures for figures in self.health(name)}
        drains = []
        for record in sorted(self.store.drains_of(name), key=lambda d: d.id):
            if record.url is None:  # reserved, no destination yet: nothing to run
                continue
            entry: dict[str, Any] = {
                "id": record.id,
                "token": record.token,
                "url": redact_url(record.url),
            }
            figures = live.get(record.id)
            if figures is None:
                entry.update(dict.fromkeys(HEALTH_KEYS))
                entry["state"] = NOT_RUNNING
            else:
                entry.update({key: getattr(figures, key) for key in HEALTH_KEYS})
                if entry["last_error"] is not None:
                    entry["last_error"] = hide_credentials(entry["last_error"], record.url)
            drains.append(entry)
        return Response.json(200, {"channel": name, "drains": drains})


def hide_credentials(text: str, url: str) -> str:
    """``text`` with the URL's userinfo, password and user name (if any) masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    userinfo = parts.netloc.rpartition("@")[0]
    for secret in (userinfo, parts.password, parts.username):
        # A one- or two-letter user name would mask ordinary words, and hides nothing.
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text
