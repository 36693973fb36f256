"""HTTP(S) drains: ``application/logplex-1`` batches POSTed with h11 (REFERENCE §5.2).

``build_request`` and ``HttpExchange`` are sans-IO; ``HttpDrain`` is the trio adapter. One
request is in flight per drain; messages arriving meanwhile go into the next request.
"""

from __future__ import annotations

import hashlib

import h11
import trio

from ..native import Batch, http_frames, l10_http
from ..store import DrainTarget
from .delivery import DrainHandle
from .feed import Payload
from .policy import (
    TRANSPORT_ERRORS,
    Outcome,
    classify,
    http_retry_backoff,
    retry_after,
    retry_later,
)
from .state import DrainEvent
from .transport import open_drain_stream

CONTENT_TYPE = b"application/logplex-1"


def frame_id(body: bytes) -> str:
    """``Logplex-Frame-Id``: the body's md5 in upper-case hex; retries resend the same body."""
    return hashlib.md5(body, usedforsecurity=False).hexdigest().upper()


def build_request(
    target: DrainTarget, payload: Payload, *, drain_token: str, user_agent: str
) -> h11.Request:
    """The request head, headers in the original's order (REFERENCE §5.2)."""
    headers: list[tuple[bytes, bytes]] = [(b"Host", target.host_header)]
    if target.authorization is not None:
        headers.append((b"Authorization", target.authorization))
    headers += [
        (b"Content-Type", CONTENT_TYPE),
        (b"Logplex-Msg-Count", b"%d" % payload.frames),
    ]
    if payload.loss_announced:
        headers.append((b"Logplex-Msg-Loss-Count", b"%d" % payload.loss_announced))
    headers += [
        (b"Logplex-Frame-Id", payload.frame_id.encode()),
        (b"Logplex-Drain-Token", drain_token.encode()),
        (b"User-Agent", user_agent.encode()),
        (b"Content-Length", b"%d" % len(payload.data)),
    ]
    return h11.Request(method=b"POST", target=target.request_target, headers=headers)


class HttpExchange:
    """Sans-IO: one h11 client connection, fed bytes by the adapter, one request at a time."""

    def __init__(self, max_response_body: int = 1 << 20) -> None:
        self.conn = h11.Connection(h11.CLIENT)
        self.max_response_body = max_response_body
        self.requests = 0
        self.status: int | None = None
        # The response's Retry-After (several fields joined: then it parses as nothing).
        self.retry_after: bytes | None = None
        self.received_any = False
        self._body_bytes = 0

    def start(self, request: h11.Request, body: bytes) -> bytes:
        """The bytes to send for ``request``; must follow a completed (or no) exchange."""
        self.requests += 1
        self.status = None
        self.retry_after = None
        self.received_any = False
        self._body_bytes = 0
        return (
            self.conn.send(request)
            + self.conn.send(h11.Data(data=body))
            + self.conn.send(h11.EndOfMessage())
        )

    def feed(self, data: bytes | bytearray) -> bool:
        """Take bytes from the server (b"" = EOF); True once the response is complete.

        Raises ``h11.RemoteProtocolError`` on garbage and ``EOFError`` when the server
        closes before the response is complete.
        """
        if data:
            self.received_any = True
        self.conn.receive_data(bytes(data))
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                return False
            if isinstance(event, h11.Response):
                self.status = event.status_code
                values = [v for k, v in event.headers if k == b"retry-after"]
                self.retry_after = b", ".join(values) if values else None
            elif isinstance(event, h11.Data):
                self._body_bytes += len(event.data)
                if self._body_bytes > self.max_response_body:
                    # Not worth reading: the status is known, the connection is given up.
                    return True
            elif isinstance(event, h11.EndOfMessage):
                return True
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("connection closed before the response was complete")

    def reusable(self) -> bool:
        """After a complete response: can the next request use this connection?"""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False


class HttpDrain:
    def __init__(self, drain: DrainHandle) -> None:
        self.drain = drain
        self.stream: trio.abc.Stream | None = None
        self.exchange: HttpExchange | None = None
        # The payload a 429 or 503 turned back: re-sent, same bytes and Frame-Id, until it
        # is delivered or the drain falls a whole ring behind (``_lapped``).
        self._held: Payload | None = None
        # The wait before the next attempt when the receiver said (Retry-After), else None.
        self._asked: float | None = None

    @staticmethod
    def _encode(batch: Batch, start: int, max_bytes: int) -> tuple[bytes, int, int]:
        return http_frames(batch, start, max_bytes)

    def _next_payload(self) -> Payload | None:
        feed, settings = self.drain.feed, self.drain.settings
        cached = feed.cached
        if cached is not None and cached.frame_id:
            return cached
        payload = feed.build_payload(
            self._encode,
            l10_http,
            max_messages=settings.read_max_messages,
            max_bytes=settings.http_batch_bytes,
        )
        if payload is not None:
            payload.frame_id = frame_id(payload.data)
        return payload

    async def run(self) -> None:
        """Deliver until cancelled; returns once a flush (shutdown) has nothing left."""
        try:
            await self._run()
        finally:
            await self._close()

    async def _run(self) -> None:
        drain, feed, settings = self.drain, self.drain.feed, self.drain.settings
        # Consecutive failed attempts, across batches: paces retries against a dead endpoint.
        failures = 0
        while True:
            if not await feed.wait_for_data(settings.linger, settings.linger_messages):
                return
            payload = self._next_payload()
            if payload is None:
                continue
            delay, self._asked = self._asked, None
            if delay is None and failures:
                delay = http_retry_backoff(
                    failures,
                    drain.rng,
                    base=settings.http_backoff_base,
                    cap=settings.http_backoff_cap,
                )
            if delay:
                await trio.sleep(delay)
            if self._lapped(payload):
                continue
            if self.stream is None:
                drain.on(DrainEvent.CONNECT)
                try:
                    self.stream = await open_drain_stream(
                        drain.target, drain.tls, connect_timeout=settings.http_connect_timeout
                    )
                except TRANSPORT_ERRORS as exc:
                    # The batch was never sent: it waits (and the ring may lap what follows
                    # it, which the L10 notice then reports) without using up an attempt.
                    failures += 1
                    drain.fail(exc, connecting=True)
                    continue
                self.exchange = HttpExchange(settings.max_response_body)
                drain.on(DrainEvent.CONNECTED)
            failures = await self._attempt(payload, failures)

    async def _attempt(self, payload: Payload, failures: int) -> int:
        """Send ``payload`` once and settle it if that decides its fate; returns ``failures``."""
        drain, feed, settings = self.drain, self.drain.feed, self.drain.settings
        assert self.stream is not None and self.exchange is not None
        exchange = self.exchange
        reused = exchange.requests > 0
        request = build_request(
            drain.target, payload, drain_token=drain.token, user_agent=drain.user_agent
        )
        drain.on(DrainEvent.SEND)
        keep = False
        result: int | BaseException
        try:
            with trio.fail_after(settings.http_request_timeout):
                await self.stream.send_all(exchange.start(request, payload.data))
                while not exchange.feed(await self.stream.receive_some(65536)):
                    pass
            assert exchange.status is not None
            result = exchange.status
            keep = exchange.reusable()
        except TRANSPORT_ERRORS as exc:
            result = exc
        outcome = classify(result)
        later = retry_later(result)
        if not later:
            payload.attempts += 1

        if outcome is Outcome.RETRY and isinstance(result, BaseException):
            stale = reused and not exchange.received_any and not payload.free_retry_used
            if stale and not isinstance(result, trio.TooSlowError):
                # A keep-alive connection the server had already closed: not the batch's
                # fault, so retry at once on a new connection without using an attempt.
                payload.attempts -= 1
                payload.free_retry_used = True
                await self._close()
                drain.on(DrainEvent.CLOSED)
                return failures

        if outcome is not Outcome.RETRY:
            self._held = None
        if outcome is Outcome.DELIVERED:
            feed.delivered(payload)
            drain.on(DrainEvent.SENT)
        elif outcome is Outcome.DROP:
            feed.dropped(payload)
            feed.note_error(f"HTTP {result}: batch of {payload.messages} messages dropped")
            drain.on(DrainEvent.SENT)
        else:
            # The original closes the connection after any temporary failure.
            await self._close()
            error: BaseException | str
            if later:
                # 429/503: the receiver is up and asks for time. The batch keeps its
                # attempts and is re-sent after what it asked (capped), else the backoff.
                self._held = payload
                self._asked = retry_after(
                    exchange.retry_after, feed.wall_clock(), cap=settings.http_retry_after_cap
                )
                feed.counters.retried += 1
                error = f"HTTP {result}"
                if self._asked is not None:
                    error += f" (Retry-After: {self._asked:g} s)"
            else:
                # With a disk backlog the batch is re-sent until delivered (what follows
                # it waits on disk; only the budget drops, with an L10); without one it
                # is given up after http_max_attempts, as the original does.
                if feed.disk is None and payload.attempts >= settings.http_max_attempts:
                    feed.dropped(payload)
                    self._held = None
                else:
                    feed.counters.retried += 1
                error = result if isinstance(result, BaseException) else f"HTTP {result}"
            drain.fail(error)
            return failures + 1
        if not keep:
            await self._close()
            drain.on(DrainEvent.CLOSED)
        return 0

    def _lapped(self, payload: Payload) -> bool:
        """Give up a batch held back by 429/503 once the ring has lapped the drain.

        The ring no longer holds anything as old as the batch: like the messages lapped
        behind it, its messages are counted and announced by the next request's L10, and
        the next batch goes out at once (the wait the receiver asked for was served).
        Nothing else gives such a batch up: it is re-sent until delivered.
        """
        feed = self.drain.feed
        if payload is not self._held or feed.lapped == 0:
            return False
        self._held = None
        feed.dropped(payload)
        feed.note_error(
            f"batch of {payload.messages} messages turned back (429/503) until the drain "
            "fell a whole buffer behind: dropped"
        )
        self._asked = 0.0
        return True

    async def _close(self) -> None:
        stream, self.stream, self.exchange = self.stream, None, None
        if stream is not None:
            await trio.aclose_forcefully(stream)
