"""The read routes of the API: session streams and channel logs.

They translate ``Request``/``Response`` to the sans-IO cores in ``tails``; no logic of
their own beyond that, and the choice of a session's form: plain chunked text, or
server-sent events when the request's ``Accept`` lists ``text/event-stream`` (the heroku
CLI's ``EventSource``). An event stream that ended on its own (a one-shot session's history
sent, a tail's time up, its channel deleted, ``kill_tail_sessions``) asks its client to
reconnect at once and is remembered while its session lives: an ``EventSource`` reconnects
by itself, and gets 204 No Content, which stops it (a session unknown or expired is 404,
which stops it too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..native import Batch
from ..router import Channel, Registry
from ..store import Store
from ..tails import (
    DEFAULT_KEEPALIVE_SECONDS,
    EVENT_STREAM,
    RECONNECT_AT_ONCE,
    SessionParamError,
    TailHolds,
    TailPump,
    channel_logs,
    parse_session_params,
    stream_session,
)
from ..web import AddRoute, Request, Response

if TYPE_CHECKING:
    from .rods import Rods

TEXT_PLAIN = ("Content-Type", "text/plain; charset=utf-8")
NO_CACHE = ("Cache-Control", "no-cache")
EVENT_STREAM_HEADERS = (("Content-Type", EVENT_STREAM), NO_CACHE)
# Ended event streams are forgotten once their session expires: looked at when there are
# twice as many as after the last look (and at least this many).
ENDED_PRUNE_MIN = 64


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
        *,
        keepalive: float = DEFAULT_KEEPALIVE_SECONDS,
        holds: TailHolds | None = None,
        pump: TailPump | None = None,
    ) -> None:
        self.store = store
        # Tails that keep up hold their channel rather than be lapped (tails/pushback.py).
        self.holds = holds
        # Writes the live lines of tails on plain TCP connections from one task.
        self.pump = pump
        self.registry = registry
        self.rods = rods
        # Redis mode: history is read from the channel's stream, tails hold a follow on it.
        self.cluster = cluster
        # Seconds an idle event stream waits before it sends a keep-alive comment.
        self.keepalive = keepalive
        # Sessions whose event stream ended on this node (a reconnect gets 204).
        self._ended: set[str] = set()
        self._prune_at = ENDED_PRUNE_MIN

    def mount(self, add: AddRoute) -> None:
        add("GET", "/sessions/{session_id}", self.session, name="session.get", auth=False)
        add("GET", "/v3/channels/{channel}/logs", self.channel_logs, name="v3.channel.logs")

    async def session(self, request: Request, params: dict[str, str]) -> Response:
        session_id = params["session_id"]
        session = self.store.session(session_id)
        if session is None:
            return Response.error(404, "Not found")
        events = accepts_event_stream(request.joined_headers().get("accept"))
        if events and session_id in self._ended:
            return Response.empty(204, [NO_CACHE])
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
        keepalive = self.keepalive if events else None
        if cluster is None:
            body: AsyncIterator[bytes] = stream_session(
                self.registry,
                channel,
                wanted,
                events=events,
                keepalive=keepalive,
                holds=self.holds,
                pump=self.pump,
                sink=request.sink,
            )
        else:
            filtered = wanted.ps is not None or wanted.source is not None
            # num counts matching lines: with a filter the whole history is searched.
            want = self.registry.history_messages if filtered else wanted.num
            start = await cluster.start(channel, want, wanted.tail)
            body = _releasing(
                stream_session(
                    self.registry,
                    channel,
                    wanted,
                    start=(start.history, start.cursor),
                    events=events,
                    keepalive=keepalive,
                    holds=self.holds,
                    pump=self.pump,
                    sink=request.sink,
                ),
                lambda: cluster.release(start),
            )
        if rods is not None and wanted.tail:
            body = rods.tails.track(body)  # kill_tail_sessions ends what it tracks
        if events:
            ended = _when_ended(body, lambda: self._ended_stream(session_id))
            return Response.stream(200, ended, list(EVENT_STREAM_HEADERS))
        return Response.stream(200, body, [TEXT_PLAIN])

    def _ended_stream(self, session_id: str) -> None:
        self._ended.add(session_id)
        if len(self._ended) >= self._prune_at:
            self._ended = {s for s in self._ended if self.store.session(s) is not None}
            self._prune_at = max(ENDED_PRUNE_MIN, 2 * len(self._ended))

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


def accepts_event_stream(accept: str | None) -> bool:
    """Whether an ``Accept`` value lists ``text/event-stream`` (with a weight above 0)."""
    for item in (accept or "").split(","):
        media, *parameters = item.split(";")
        if media.strip().lower() == EVENT_STREAM and _weight(parameters) > 0:
            return True
    return False


def _weight(parameters: list[str]) -> float:
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0
    return 1.0


async def _when_ended(
    body: AsyncIterator[bytes], ended: Callable[[], None]
) -> AsyncIterator[bytes]:
    """Pass ``body`` through; once it has ended by itself call ``ended`` and send
    ``RECONNECT_AT_ONCE`` last. When its reader goes away instead, ``body`` is closed (as
    the server closes what it streams) and that is all."""
    try:
        async for chunk in body:
            yield chunk
    except BaseException:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
        raise
    ended()
    yield RECONNECT_AT_ONCE


async def _releasing(
    body: AsyncIterator[bytes], release: Callable[[], None]
) -> AsyncIterator[bytes]:
    """Pass ``body`` through; call ``release`` when it ends or its reader goes away."""
    try:
        async for chunk in body:
            yield chunk
    finally:
        release()
