"""Request and Response: the plain values that pass between the HTTP server and handlers.

Handlers never see sockets. A Response body is either bytes (sent with Content-Length) or
an async iterable of byte chunks (sent chunked, flushed per chunk, e.g. a live tail).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

JSON_TYPE = "application/json"


class InvalidJson(ValueError):
    """A request body that is not JSON; ``str()`` says why, without quoting the body."""


# ``json.loads`` decodes bytes with "surrogatepass" and turns an escaped ``"\ud800"`` into a
# lone surrogate: a str that cannot be encoded, which would fail later, far from the input
# (the store's encoder, a log line, a drain's request).
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _not_a_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:  # iterative: as deep as json.loads went, whatever the stack left
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json(body: bytes) -> Any:
    """The one JSON parser of request bodies (RFC 8259), for every route.

    Raises ``InvalidJson`` for a body that is not UTF-8 (UTF-16 and UTF-32 as ``json``
    detects them are still read), is not JSON, has ``NaN``/``Infinity``, nests too deep,
    or holds a lone surrogate (raw ``\\xed\\xa0\\x80`` or the escape ``"\\ud800"``).
    Pairs of escaped surrogates are one character, as JSON means them.
    """
    try:
        text = body.decode(json.detect_encoding(body))  # strict: no surrogates pass
    except UnicodeDecodeError:
        raise InvalidJson("not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_not_a_constant)
    except (ValueError, RecursionError):
        raise InvalidJson("not JSON") from None
    if _ESCAPED_SURROGATE.search(text) and _has_lone_surrogate(value):
        raise InvalidJson("lone surrogate")
    return value


class DirectSink(Protocol):
    """The server's offer to a streamed response body (``Request.sink``): write chunks to
    the client's socket without a task switch per chunk.

    Only valid while the body is being iterated (the head is out and the server's task
    waits in the body's ``__anext__``), and only by whoever iterates it or acts for it
    meanwhile: the server writes nothing else then. ``fd`` is the connected non-blocking
    socket; bytes written to it must be ``frame``d; ``send_framed`` sends what a direct
    write left over (or any framed bytes) under the server's send timeout, and raises
    ``trio.BrokenResourceError`` when the client is gone or does not take it in time.
    """

    @property
    def fd(self) -> int: ...

    def frame(self, data: bytes) -> bytes: ...

    async def send_framed(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    # Raw request target: path plus query, still percent-encoded.
    target: str
    # (lower-case name, value) pairs in arrival order.
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    request_id: str = ""
    client: tuple[str, int] | None = None
    http_version: str = "1.1"
    # Set by the server on a plain-TCP HTTP/1.1 connection (not TLS: there is no fd to
    # write to): see ``DirectSink``.
    sink: DirectSink | None = field(default=None, compare=False, repr=False)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def query_params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def joined_headers(self) -> dict[str, str]:
        """Each header name once (lower case), its field lines joined with ", " in arrival
        order: what several lines of one field mean (RFC 9110 5.3). A singleton field sent
        twice then reads as a list, which its parser refuses unless it allows one."""
        joined: dict[str, str] = {}
        for key, value in self.headers:
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        return joined

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-case; '' when absent."""
        value = self.header("content-type") or ""
        return value.partition(";")[0].strip().lower()


Body = bytes | AsyncIterable[bytes]


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = b""
    # Called once the response is finished or abandoned (e.g. to unregister a tail).
    on_close: Callable[[], Awaitable[None]] | None = None
    # Status-line text when it says more than the standard phrase (Logplex's /logs does).
    reason: str | None = None

    @property
    def streamed(self) -> bool:
        return not isinstance(self.body, bytes | bytearray)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def set_header(self, name: str, value: str) -> None:
        wanted = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != wanted]
        self.headers.append((name, value))

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def json(cls, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(status, [("Content-Type", JSON_TYPE), *headers], body)

    @classmethod
    def error(cls, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls.json(status, {"error": message}, headers)

    @classmethod
    def text(
        cls,
        status: int,
        text: str,
        content_type: str = "text/plain; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        return cls(status, [("Content-Type", content_type), *headers], text.encode())

    @classmethod
    def empty(cls, status: int, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, list(headers), b"")

    @classmethod
    def stream(
        cls,
        status: int,
        chunks: AsyncIterable[bytes],
        headers: Iterable[tuple[str, str]] = (),
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> Response:
        return cls(status, list(headers), chunks, on_close)


Handler = Callable[[Request], Awaitable[Response]]

# ``errors(request, status, message)``: how a listener words an error that no route wrote (the
# server's 400, 408, 413, 431 and 500, the control rods' 503). ``request`` is what is known of
# it: without a complete head, the method and target of its request line and no headers.
# The control API answers in the format of the request's path family through one.
ErrorFormat = Callable[[Request, int, str], Response]


def json_error(request: Request, status: int, message: str) -> Response:
    """The default ``ErrorFormat``: ``{"error": message}``, whatever the path."""
    return Response.error(status, message)
