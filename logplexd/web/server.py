"""A small HTTP/1.1 server: h11 on trio sockets, around a ``Request -> Response`` handler.

What it guards against, so that no client can stop the daemon or starve other clients:
- a bounded number of open connections (beyond it, new connections wait in the backlog);
- a deadline for the request head (slowloris), for the body, for each send, and for an idle
  keep-alive connection;
- bounded head size (431) and body size (413, checked against Content-Length before reading,
  and against the size each chunk header of a chunked body declares as soon as it arrives);
- malformed HTTP: 400 and the connection closes; so does a request with both Content-Length
  and Transfer-Encoding (RFC 9112 6.1: a proxy framing it by Content-Length would see a
  different request boundary than we do, i.e. request smuggling), even when it is pipelined.
Every response carries a fresh ``Request-Id``; the handler sees the same id on the request.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import h11
import trio

from .messages import Handler, Request, Response

log = logging.getLogger("logplexd.web")

RECEIVE_BYTES = 64 * 1024
# After an error response, how long to drain what the client still sends before closing,
# so the kernel does not answer with a RST that could destroy the response in flight.
CLOSE_LINGER_SECONDS = 0.5
CLOSE_LINGER_BYTES = 256 * 1024
# While a streamed response runs, keep at most this much of a pipelined next request.
PIPELINE_BUFFER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_connections: int = 1024
    max_body: int = 1 << 20
    max_header_bytes: int = 16 * 1024
    # From the first byte of a request (or from accept) until its head is complete.
    header_timeout: float = 10.0
    # A keep-alive connection waiting for its next request.
    idle_timeout: float = 60.0
    # Reading a whole request body.
    body_timeout: float = 30.0
    # One write to the client (a streamed response may write for hours, chunk by chunk).
    send_timeout: float = 30.0


class _CloseConnection(Exception):
    pass


def _reason(status: int, custom: str | None = None) -> bytes:
    if custom:
        return custom.encode("latin-1", "replace")
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


class _DateHeader:
    """``Date`` is formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def value(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True)
        return self._value


_date = _DateHeader()


class _Connection:
    def __init__(
        self, stream: trio.abc.HalfCloseableStream, handler: Handler, limits: ServerLimits
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.limits = limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.client: tuple[str, int] | None = None
        sock = getattr(stream, "socket", None)
        if sock is not None:
            try:
                peer = sock.getpeername()
                self.client = (peer[0], peer[1])
            except OSError:
                pass

    # -- the request/response loop -------------------------------------------------------------
    async def run(self) -> None:
        first = True
        try:
            while True:
                if not await self._serve_one(first):
                    break
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    break
                self.h11.start_next_cycle()
                first = False
        except _CloseConnection:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await self._close()

    async def _serve_one(self, first: bool) -> bool:
        """Serve one request; False when the connection is to be closed."""
        request_id = str(uuid.uuid4())
        try:
            head = await self._read_head(first)
            if head is None:
                return False
            if _head_size(head) > self.limits.max_header_bytes:
                # h11 only bounds a head that arrives in pieces; one that came whole is
                # measured here.
                await self._send_error(431, "Request header too large", request_id)
                return False
            chunked = _has_header(head, b"transfer-encoding")
            if chunked and _has_header(head, b"content-length"):
                await self._send_error(
                    400, "Malformed HTTP request: Content-Length with Transfer-Encoding", request_id
                )
                return False
            declared = _content_length(head)
            if declared is not None and declared > self.limits.max_body:
                await self._send_error(413, "Request body too large", request_id)
                return False
            body = await self._read_body(chunked)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
            message = "Request header too large" if status == 431 else "Malformed HTTP request"
            await self._send_error(status, message, request_id)
            return False
        except _BodyTooLarge:
            await self._send_error(413, "Request body too large", request_id)
            return False
        except _Timeout as timeout:
            if timeout.started:
                await self._send_error(408, "Request timeout", request_id)
            return False

        request = Request(
            method=head.method.decode("ascii"),
            target=head.target.decode("latin-1"),
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
            body=body,
            request_id=request_id,
            client=self.client,
            http_version=head.http_version.decode("ascii"),
        )
        started = time.monotonic()
        try:
            response = await self.handler(request)
        except Exception:
            log.exception("http: handler failed (request_id=%s)", request_id)
            response = Response.error(500, "Internal Server Error")
        await self._send_response(request, response)
        log.debug(
            "http: %s status=%d request_id=%s duration_ms=%.1f",
            request.method,
            response.status,
            request_id,
            (time.monotonic() - started) * 1000,
        )
        return True

    # -- reading -----------------------------------------------------------------------------------
    async def _receive(self, deadline: float) -> bytes:
        with trio.move_on_at(deadline):
            try:
                # bytes() is the same object for a socket's bytes; a memory stream's copied
                data = bytes(await self.stream.receive_some(RECEIVE_BYTES))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.h11.receive_data(data)
            return data
        raise _Timeout(started=True)

    async def _read_head(self, first: bool) -> h11.Request | None:
        now = trio.current_time()
        started = bool(self.h11.trailing_data[0])
        if started or first:
            deadline = now + self.limits.header_timeout
        else:
            deadline = now + self.limits.idle_timeout
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Request):
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            if event is not h11.NEED_DATA:
                raise h11.RemoteProtocolError("unexpected event", error_status_hint=400)
            try:
                data = await self._receive(deadline)
            except _Timeout:
                raise _Timeout(started=started) from None
            if data and not started:
                started = True
                deadline = min(deadline, trio.current_time() + self.limits.header_timeout)

    async def _read_body(self, chunked: bool) -> bytes:
        deadline = trio.current_time() + self.limits.body_timeout
        # h11 keeps the size a chunk header declares to itself: follow the chunk headers in
        # the raw bytes too, so a chunk announcing more than the limit is refused at once.
        sizes = _ChunkSizes(self.limits.max_body) if chunked else None
        if sizes is not None:
            sizes.feed(self.h11.trailing_data[0])
        if self.h11.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        chunks: list[bytes] = []
        size = 0
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.limits.max_body:
                    raise _BodyTooLarge
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            elif event is h11.NEED_DATA:
                data = await self._receive(deadline)
                if sizes is not None:
                    sizes.feed(data)
            elif isinstance(event, h11.ConnectionClosed):
                raise _CloseConnection
            else:
                raise h11.RemoteProtocolError("unexpected event in body", error_status_hint=400)

    # -- writing -----------------------------------------------------------------------------------
    async def _send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            with trio.move_on_after(self.limits.send_timeout) as scope:
                await self.stream.send_all(data)
            if scope.cancelled_caught:
                raise _CloseConnection

    def _response_headers(
        self, response: Response, request_id: str, *, close: bool
    ) -> list[tuple[str, str]]:
        headers = [(k, v) for k, v in response.headers if k.lower() != "request-id"]
        headers.append(("Request-Id", request_id))
        headers.append(("Date", _date.value()))
        if close and not any(k.lower() == "connection" for k, _ in headers):
            headers.append(("Connection", "close"))
        return headers

    async def _send_response(self, request: Request, response: Response) -> None:
        try:
            if response.streamed:
                await self._send_streamed(request, response)
            else:
                await self._send_whole(request, response)
        finally:
            if response.on_close is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await response.on_close()

    async def _send_whole(self, request: Request, response: Response) -> None:
        body = bytes(response.body)  # type: ignore[arg-type]
        headers = self._response_headers(response, request.request_id, close=False)
        no_body = response.status in (204, 304) or 100 <= response.status < 200
        if not no_body:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        await self._send(
            h11.Response(
                status_code=response.status,
                headers=headers,
                reason=_reason(response.status, response.reason),
            )
        )
        if body and not no_body and request.method != "HEAD":
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def _send_streamed(self, request: Request, response: Response) -> None:
        headers = self._response_headers(response, request.request_id, close=False)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        await self._send(
            h11.Response(
                status_code=response.status,
                headers=headers,
                reason=_reason(response.status, response.reason),
            )
        )
        if request.method == "HEAD":
            await self._send(h11.EndOfMessage())
            return
        client_gone = False
        async with trio.open_nursery() as nursery:

            async def watch_for_close() -> None:
                # A tail may stay silent for hours: notice a client that went away.
                nonlocal client_gone
                while len(self.h11.trailing_data[0]) < PIPELINE_BUFFER_BYTES:
                    try:
                        data = await self.stream.receive_some(RECEIVE_BYTES)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        client_gone = True
                        nursery.cancel_scope.cancel()
                        return
                    self.h11.receive_data(bytes(data))
                await trio.sleep_forever()

            nursery.start_soon(watch_for_close)
            chunks = response.body
            try:
                async for chunk in chunks:  # type: ignore[union-attr]
                    if chunk:
                        await self._send(h11.Data(data=chunk))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The client reset the connection mid-stream: that ends this connection
                # only; raised inside this nursery it would take the listener down.
                client_gone = True
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    with trio.CancelScope(shield=True):
                        await aclose()
            nursery.cancel_scope.cancel()
        if client_gone:
            raise _CloseConnection
        await self._send(h11.EndOfMessage())

    async def _send_error(self, status: int, message: str, request_id: str) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = Response.error(status, message)
        body = bytes(response.body)  # type: ignore[arg-type]
        headers = self._response_headers(response, request_id, close=True)
        headers.append(("Content-Length", str(len(body))))
        try:
            await self._send(
                h11.Response(status_code=status, headers=headers, reason=_reason(status))
            )
            await self._send(h11.Data(data=body))
            await self._send(h11.EndOfMessage())
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        self._linger = True

    _linger = False

    async def _close(self) -> None:
        if self._linger:
            # Half-close, then drain briefly: closing with unread input would send a RST.
            with trio.move_on_after(CLOSE_LINGER_SECONDS):
                try:
                    await self.stream.send_eof()
                    drained = 0
                    while drained < CLOSE_LINGER_BYTES:
                        data = await self.stream.receive_some(RECEIVE_BYTES)
                        if not data:
                            break
                        drained += len(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        await trio.aclose_forcefully(self.stream)


class _Timeout(Exception):
    def __init__(self, *, started: bool) -> None:
        super().__init__()
        self.started = started


class _BodyTooLarge(Exception):
    pass


def _head_size(head: h11.Request) -> int:
    return len(head.target) + sum(len(name) + len(value) + 4 for name, value in head.headers)


def _content_length(head: h11.Request) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)
    return None


def _has_header(head: h11.Request, wanted: bytes) -> bool:
    return any(name == wanted for name, _ in head.headers)


# A chunk header as h11 reads it (at most 20 hex digits; a longer one is h11's 400).
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?![0-9A-Fa-f])")
# Longer chunk-header lines are h11's to refuse (431 beyond max_header_bytes).
_MAX_CHUNK_LINE = 64 * 1024


class _ChunkSizes:
    """Adds up the sizes the chunk headers of a chunked body declare, from the raw bytes
    as they arrive, and raises ``_BodyTooLarge`` once the total exceeds ``limit``.

    It only follows the framing h11 parses; anything malformed ends the scan and is left to
    h11, which refuses it. It stops at the last chunk, so a pipelined request is not read.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.declared = 0
        self._skip = 0  # bytes of chunk data (and its CRLF) still to pass over
        self._line = bytearray()
        self._done = False

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and not self._done:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._line += data[pos:]
                if len(self._line) > _MAX_CHUNK_LINE:
                    self._done = True
                return
            self._line += data[pos:newline]
            pos = newline + 1
            match = _CHUNK_SIZE.match(bytes(self._line))
            self._line.clear()
            size = int(match.group(1), 16) if match else 0
            if size == 0:  # the last chunk (trailers follow), or not a chunk header
                self._done = True
                return
            self.declared += size
            if self.declared > self.limit:
                raise _BodyTooLarge
            self._skip = size + 2


async def serve_stream(
    stream: trio.abc.HalfCloseableStream, handler: Handler, limits: ServerLimits | None = None
) -> None:
    """Serve the requests of one connection on ``stream`` until it ends, then close it.

    ``serve_http`` does this for each accepted socket; any half-closeable stream will do
    (the HTTP fuzz harness drives it over an in-memory stream)."""
    await _Connection(stream, handler, limits or ServerLimits()).run()


@dataclass(slots=True)
class ConnectionCount:
    """Connections of one listener, for metrics: open now, and accepted in total."""

    open: int = 0
    total: int = 0


async def _serve_connection(
    stream: trio.SocketStream,
    handler: Handler,
    limits: ServerLimits,
    slots: trio.Semaphore,
    count: ConnectionCount,
) -> None:
    count.open += 1
    count.total += 1
    try:
        await _Connection(stream, handler, limits).run()
    except Exception:
        log.exception("http: connection failed")
        await trio.aclose_forcefully(stream)
    finally:
        count.open -= 1
        slots.release()


async def _accept_loop(
    listener: trio.SocketListener,
    handler: Handler,
    limits: ServerLimits,
    slots: trio.Semaphore,
    nursery: trio.Nursery,
    count: ConnectionCount,
) -> None:
    async with listener:
        while True:
            # Without a free slot we stop accepting: new clients wait in the kernel backlog.
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                slots.release()
                # Out of file descriptors or buffers: back off instead of spinning.
                log.warning("http: accept failed: %s", exc.strerror or exc)
                await trio.sleep(0.1)
                continue
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(_serve_connection, stream, handler, limits, slots, count)


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    max_connections: int = 1024,
    max_body: int = 1 << 20,
    max_header_bytes: int = 16 * 1024,
    header_timeout: float = 10.0,
    idle_timeout: float = 60.0,
    body_timeout: float = 30.0,
    send_timeout: float = 30.0,
    listeners: list[trio.SocketListener] | None = None,
    connections: ConnectionCount | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``host:port`` until cancelled; ``task_status.started(bound_port)``.

    With ``port=0`` the kernel picks a port (give a single-address host such as 127.0.0.1).
    ``listeners`` serves sockets bound elsewhere instead (systemd socket activation); then
    ``host`` and ``port`` only name them in the log. ``connections`` is kept up to date.
    """
    limits = ServerLimits(
        max_connections=max_connections,
        max_body=max_body,
        max_header_bytes=max_header_bytes,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        body_timeout=body_timeout,
        send_timeout=send_timeout,
    )
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port = listeners[0].socket.getsockname()[1]
    slots = trio.Semaphore(max_connections)
    count = connections if connections is not None else ConnectionCount()
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handler, limits, slots, nursery, count)
        log.info("http: listening on %s:%d", host, bound_port)
        task_status.started(bound_port)
