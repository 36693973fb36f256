"""Request and Response: the plain values that pass between the HTTP server and handlers.

Handlers never see sockets. A Response body is either bytes (sent with Content-Length) or
an async iterable of byte chunks (sent chunked, flushed per chunk, e.g. a live tail).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

JSON_TYPE = "application/json"


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
