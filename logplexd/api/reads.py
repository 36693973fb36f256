"""The read routes of the API: session streams and channel logs.

They translate ``Request``/``Response`` to the sans-IO cores in ``tails``; no logic of
their own beyond that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..native import Batch
from ..router import Channel, Registry
from ..store import Store
from ..tails import SessionParamError, channel_logs, parse_session_params, stream_session
from ..web import AddRoute, Request, Response

if TYPE_CHECKING:
    from .rods import Rods

TEXT_PLAIN = ("Content-Type", "text/plain; charset=utf-8")


class HistoryStart(Protocol):
    """Where a read starts in Redis mode: the history to send first, and the ring position
    a tail continues from."""

    @property
    def history(self) -> Batch: ...

    @property
    def cursor(self) -> int: ...


class SharedHistory(Protocol):
    """What the read routes need in Redis mode (the cluster's ``ClusterReads``): a read's
    history from the channel's stream, every node's messages in it, and for a tail a hold
    on that stream (the ring then receives them too) until ``release``."""

    async def start(self, channel: Channel, want: int, tail: bool) -> HistoryStart: ...

    # ``start`` is what ``start`` returned, of a type only the implementation knows.
    def release(self, start: Any) -> None: ...


class ReadRoutes:
    """``GET /sessions/{uuid}`` (no auth: the uuid is the capability) and channel logs."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        rods: Rods | None = None,
        cluster: SharedHistory | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.rods = rods
        # Redis mode: history is read from the channel's stream, tails hold a follow on it.
        self.cluster = cluster

    def mount(self, add: AddRoute) -> None:
        add("GET", "/sessions/{session_id}", self.session, name="session.get", auth=False)
        add("GET", "/v3/channels/{channel}/logs", self.channel_logs, name="v3.channel.logs")

    async def session(self, request: Request, params: dict[str, str]) -> Response:
        session = self.store.session(params["session_id"])
        if session is None:
            return Response.error(404, "Not found")
        try:
            wanted = parse_session_params(session.body)
        except SessionParamError as exc:
            return Response.error(400, str(exc))
        channel = self.registry.channel(wanted.channel)
        if channel is None:
            return Response.error(404, "Not found")
        rods = self.rods
        if rods is not None and wanted.tail and rods.state.deny_tail_sessions:
            wanted = dataclasses.replace(wanted, tail=False)
        cluster = self.cluster
        if cluster is None:
            body: AsyncIterator[bytes] = stream_session(self.registry, channel, wanted)
        else:
            filtered = wanted.ps is not None or wanted.source is not None
            # num counts matching lines: with a filter the whole history is searched.
            want = self.registry.history_messages if filtered else wanted.num
            start = await cluster.start(channel, want, wanted.tail)
            body = _releasing(
                stream_session(
                    self.registry, channel, wanted, start=(start.history, start.cursor)
                ),
                lambda: cluster.release(start),
            )
        if rods is not None and wanted.tail:
            body = rods.tails.track(body)  # kill_tail_sessions ends what it tracks
        return Response.stream(200, body, [TEXT_PLAIN])

    async def channel_logs(self, request: Request, params: dict[str, str]) -> Response:
        channel = self.registry.channel(params["channel"])
        if channel is None or self.store.channel(params["channel"]) is None:
            return Response.error(404, "Not found")
        num_raw = request.query_params().get("num", "")
        num = int(num_raw) if num_raw.isascii() and num_raw.isdigit() else 100
        history = None
        if self.cluster is not None:
            history = (await self.cluster.start(channel, num, tail=False)).history
        body, count = channel_logs(self.registry, channel, num, history)
        return Response(
            200,
            [("Content-Type", "application/logplex-1"), ("Logplex-Msg-Count", str(count))],
            body,
        )


async def _releasing(
    body: AsyncIterator[bytes], release: Callable[[], None]
) -> AsyncIterator[bytes]:
    """Pass ``body`` through; call ``release`` when it ends or its reader goes away."""
    try:
        async for chunk in body:
            yield chunk
    finally:
        release()
