"""``POST /logs`` (application/logplex-1), sans-IO: headers and body in, a response out.

Responses follow REFERENCE.md §3.2 and part A: 204 on success, ``400 Malformed log
messages`` (nothing of the request routed), ``400 Message count mismatch``, 401, 403, 405,
413, 415. A retransmitted request with the same ``Logplex-Frame-Id`` inside the dedup
window is acknowledged and not routed again.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import trio

from ..native import Batch, parse_body
from ..router import Channel, Registry, Releasable, RouteCounts
from ..web import BasicPassword, Request, Response, parse_authorization

LOGPLEX_CONTENT_TYPES = frozenset({"application/logplex-1", "application/x-logplex-1"})
DEFAULT_MAX_BODY = 8 * 1024 * 1024
DEFAULT_MAX_DECOMPRESSED = 32 * 1024 * 1024
DEFAULT_DEDUP_WINDOW = 600.0
DEFAULT_DEDUP_ENTRIES = 100_000
DEFAULT_HOLD_TIMEOUT = 5.0

AUTH_HEADERS = (("www-authenticate", "Basic realm=Logplex"),)

# (credential id, password) -> its permissions, or None when unknown or wrong.
CredentialCheck = Callable[[str, str], Awaitable["frozenset[str] | None"]]


@dataclass
class LogsResponse:
    status: int
    reason: str = ""
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class LogsIngestStats:
    requests: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[int, int] = field(default_factory=dict)
    frames: int = 0
    routed: int = 0
    unknown_token: int = 0
    malformed_requests: int = 0
    # Requests that waited for a held channel, and those answered 503 after the wait.
    waits: int = 0
    pushed_back: int = 0


def _error(status: int, reason: str, *, auth_header: bool = True) -> LogsResponse:
    headers = list(AUTH_HEADERS) if auth_header else []
    headers.append(("content-type", "text/plain"))
    return LogsResponse(status, reason, reason.encode(), headers)


class FrameIdWindow:
    """Bounded memory of recently acknowledged Frame-Ids (oldest forgotten first)."""

    def __init__(self, window: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            key, at = next(iter(seen.items()))
            if now - at < self.window and len(seen) <= self.max_entries:
                break
            seen.popitem(last=False)

    def seen(self, key: tuple[str, str]) -> bool:
        self._expire(self.clock())
        return key in self._seen

    def remember(self, key: tuple[str, str]) -> None:
        self._seen[key] = self.clock()
        self._seen.move_to_end(key)
        self._expire(self.clock())


class LogsIngest:
    def __init__(
        self,
        registry: Registry,
        check_credential: CredentialCheck | None = None,
        *,
        max_frame: int = 10240,
        max_body: int = DEFAULT_MAX_BODY,
        max_decompressed: int = DEFAULT_MAX_DECOMPRESSED,
        dedup_window: float = DEFAULT_DEDUP_WINDOW,
        dedup_entries: int = DEFAULT_DEDUP_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        hold_timeout: float = DEFAULT_HOLD_TIMEOUT,
    ) -> None:
        self.registry = registry
        # How long a request waits for a channel a consumer holds (the router is behind)
        # before it is answered 503 with Retry-After (token auth) or 204 (already routed).
        self.hold_timeout = hold_timeout
        # Retry-After: the timeout rounded up to whole seconds, at least 1 (as documented;
        # round() would give 2 for 2.2 s or 2.5 s, asking for a retry before the wait ends).
        self.retry_after = max(1, math.ceil(hold_timeout))
        self.check_credential = check_credential
        self.max_frame = max_frame
        self.max_body = max_body
        self.max_decompressed = max_decompressed
        self.frame_ids = FrameIdWindow(dedup_window, dedup_entries, clock)
        self.stats = LogsIngestStats()
        self.deny_ingress = False

    def set_ingress_denied(self, denied: bool) -> None:
        """The ``deny_logs_ingress`` control rod: every ``POST /logs`` answers 503 while on."""
        self.deny_ingress = denied

    async def handle(self, method: str, headers: Mapping[str, str], body: bytes) -> LogsResponse:
        """``headers`` has lower-case names, one value each: several lines of one field
        joined with ", " (``Request.joined_headers``). Returns the response to send."""
        self.stats.requests += 1
        response = await self._handle(method, headers, body)
        if response.status >= 300:
            rejected = self.stats.rejected
            rejected[response.status] = rejected.get(response.status, 0) + 1
        return response

    async def _handle(self, method: str, headers: Mapping[str, str], body: bytes) -> LogsResponse:
        if method != "POST":
            resp = _error(405, "Method Not Allowed", auth_header=False)
            resp.headers.append(("allow", "POST"))
            return resp
        if self.deny_ingress:
            return _error(503, "Service Unavailable", auth_header=False)
        who = await self._authorize(headers.get("authorization", ""))
        if isinstance(who, LogsResponse):
            return who
        content_type = headers.get("content-type", "").strip().lower()
        if content_type not in LOGPLEX_CONTENT_TYPES:
            return _error(415, "Unsupported Media Type")
        if len(body) > self.max_body:
            return _error(413, "Payload Too Large")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            try:
                body = self._gunzip(body)
            except _TooLarge:
                return _error(413, "Payload Too Large")
            except (zlib.error, EOFError):
                return _error(400, "Bad request")
        elif encoding not in ("", "identity"):
            return _error(415, "Unsupported Media Type")

        batch = parse_body(body, self.max_frame)
        if batch.malformed:
            self.stats.malformed_requests += 1
            return _error(400, "Malformed log messages")
        count = headers.get("logplex-msg-count")
        if count is not None and _message_count(count) != len(batch):
            return _error(400, "Message count mismatch")

        frame_id = headers.get("logplex-frame-id")
        dedup_key = (who[0], frame_id) if frame_id else None
        if dedup_key is not None and self.frame_ids.seen(dedup_key):
            self.stats.duplicates += 1
            return self._accepted()

        channel = who[1]
        if channel is None:
            # Routed by APP-NAME: which channels it feeds is known only while routing.
            self.stats.frames += len(batch)
            await self._route_in_turns(
                lambda start, until_held: self.registry.route(batch, start, until_held=until_held)
            )
        else:
            live = self.registry.channel_of_token(who[0])
            waits = () if live is None else self.registry.waits_for(live)
            if waits and not await self._wait_released(waits):
                # Nothing routed: the client sends it again later, nothing is lost.
                self.stats.pushed_back += 1
                return LogsResponse(
                    503,
                    "Service Unavailable",
                    b"channel is behind, retry later",
                    [("retry-after", str(self.retry_after))],
                )
            self.stats.frames += len(batch)
            if live is None:  # token deleted since auth: nowhere to route
                self.stats.unknown_token += len(batch)
            else:
                await self._route_in_turns(partial(self._route_to, batch, live, who[0]))
        if dedup_key is not None:
            self.frame_ids.remember(dedup_key)
        self.stats.accepted += 1
        return self._accepted()

    async def _route_in_turns(self, route: Callable[[int, bool], RouteCounts]) -> None:
        """Route a body with ``route(start, until_held)``: up to the message that reaches a
        held channel's mark, then (the answer waits, bounded, so the client slows down) on
        from there once it is released, or all of the rest after the wait in any case:
        what was routed must not be sent again, so no 503 then."""
        counts = route(0, True)
        self._count(counts)
        while counts.held:
            released = await self._wait_released(counts.held)
            if counts.rest is None:
                break
            counts = route(counts.rest, released)
            self._count(counts)
            if not released:
                break  # waited its bound: all of it is routed now

    def _route_to(
        self, batch: Batch, channel: Channel, token: str, start: int, until_held: bool
    ) -> RouteCounts:
        """A token-authenticated body, into its channel (``_route_in_turns``: a body larger
        than the ring's slack, routed whole, lapped a drain that would have taken it all)."""
        if self.registry.channel_of_token(token) is not channel:
            # The token or its channel went away while the body waited: nowhere to route.
            return RouteCounts(0, len(batch) - start)
        return self.registry.route_to(batch, channel, token, start, until_held=until_held)

    def _count(self, counts: RouteCounts) -> None:
        self.stats.routed += counts.routed
        self.stats.unknown_token += counts.unknown_token

    async def _wait_released(self, held: tuple[Releasable, ...]) -> bool:
        """Wait at most ``hold_timeout`` for ``held`` to be released; False if not."""
        self.stats.waits += 1
        with trio.move_on_after(self.hold_timeout):
            for channel in held:
                await channel.wait_released()
            return True
        return False

    @staticmethod
    def _accepted() -> LogsResponse:
        return LogsResponse(204, "No Content", b"", [("content-type", "text/plain")])

    async def _authorize(self, header: str) -> tuple[str, object] | LogsResponse:
        """(identity, channel or None for any-channel credentials), or the error response."""
        unauthorized = LogsResponse(401, "Unauthorized", b"", list(AUTH_HEADERS))
        presented = parse_authorization(header)
        # Basic "token:<token>" or a stored "id:password" only: no auth key, Bearer or
        # ":token" (no stored credential has an empty id).
        if not isinstance(presented, BasicPassword):
            return unauthorized
        user, password = presented.user, presented.password
        if user == "token" and password.startswith("t."):
            channel = self.registry.channel_of_token(password)
            if channel is None:
                return unauthorized
            return password, channel
        if self.check_credential is None:
            return unauthorized
        permissions = await self.check_credential(user, password)
        if permissions is None:
            return unauthorized
        if "any_channel" not in permissions:
            return _error(403, "Credential not permitted to write to any channel.")
        return "cred:" + user, None

    def _gunzip(self, body: bytes) -> bytes:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = decompressor.decompress(body, self.max_decompressed + 1)
        if len(out) > self.max_decompressed or decompressor.unconsumed_tail:
            raise _TooLarge
        if not decompressor.eof:
            raise EOFError("truncated gzip body")
        return out


class _TooLarge(Exception):
    pass


def _message_count(value: str) -> int | None:
    """The count a ``Logplex-Msg-Count`` value states, or None when it states none or more
    than one. Several field lines arrive joined with ", " (RFC 9110 5.3), so ``2`` then ``5``
    reads as ``2, 5``: a list of counts that disagree, refused whichever comes first. A list
    of equal counts (``2, 2``, or the same header twice) states one count and is accepted,
    as RFC 9110 8.6 lets a recipient take ``Content-Length: 42, 42`` as 42. Empty list
    members are ignored (RFC 9110 5.6.1); only ASCII digits are a count."""
    members = [part.strip(" \t") for part in value.split(",")]
    counts: set[int] = set()
    for member in members:
        if not member:
            continue
        if not (member.isascii() and member.isdigit()):
            return None
        counts.add(int(member))
    return counts.pop() if len(counts) == 1 else None


TEXT_PLAIN = ("Content-Type", "text/plain; charset=utf-8")


class LogsListener:
    """``POST /logs`` and ``GET /healthcheck`` on the HTTP log input listener."""

    # (method, path) of every route ``handle`` serves; ``logplexd/openapi.json`` describes
    # them under ``x-logs-listener`` (tests/test_api_schema.py checks both).
    ROUTES = (("POST", "/logs"), ("GET", "/healthcheck"))

    def __init__(self, ingest: LogsIngest) -> None:
        self.ingest = ingest

    async def handle(self, request: Request) -> Response:
        path = request.path
        if path == "/logs":
            # Several lines of one field mean their joined value (RFC 9110 5.3): the first
            # line alone could disagree with what a proxy in front of us read.
            result = await self.ingest.handle(
                request.method, request.joined_headers(), request.body
            )
            return Response(result.status, list(result.headers), result.body, reason=result.reason)
        if path == "/healthcheck":
            if request.method not in ("GET", "HEAD"):
                return Response(405, [("Allow", "GET"), TEXT_PLAIN], b"Method Not Allowed")
            return Response(200, [TEXT_PLAIN], b"OK")
        return Response(404, [TEXT_PLAIN], b"Not Found")
