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
The errors the server answers itself (400, 408, 413, 431, 500) are worded by the listener's
``ErrorFormat`` callback, given what is known of the request (the control API words them by
path family).

With a TLS context (``tls=``, a ``ServerCertificate``'s) it serves HTTPS: the handshake has
the head's deadline; a failed one (plain HTTP, a client refusing the certificate, garbage)
is one log line and a closed connection, and plain HTTP gets a plain-text 400 first.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import h11
import trio

from .messages import ErrorFormat, Handler, Request, Response, json_error

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
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        limits: ServerLimits,
        errors: ErrorFormat = json_error,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.limits = limits
        self.errors = errors
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.client: tuple[str, int] | None = None
        transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        sock = getattr(transport, "socket", None)
        if sock is not None:
            try:
                peer = sock.getpeername()
                self.client = (peer[0], peer[1])
            except OSError:
                pass
        # A plain TCP connection's socket, for streamed bodies that write directly.
        self._sink: _DirectSink | None = None
        if isinstance(stream, trio.SocketStream):
            self._sink = _DirectSink(self, stream.socket.fileno())

    # -- the request/response loop -------------------------------------------------------------
    async def run(self) -> None:
        first = True
        if isinstance(self.stream, trio.SSLStream) and not await self._handshake(self.stream):
            await trio.aclose_forcefully(self.stream)
            return
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
        head: h11.Request | None = None
        try:
            head = await self._read_head(first)
            if head is None:
                return False
            if _head_size(head) > self.limits.max_header_bytes:
                # h11 only bounds a head that arrives in pieces; one that came whole is
                # measured here.
                await self._send_error(431, "Request header too large", head, request_id)
                return False
            chunked = _has_header(head, b"transfer-encoding")
            if chunked and _has_header(head, b"content-length"):
                await self._send_error(
                    400,
                    "Malformed HTTP request: Content-Length with Transfer-Encoding",
                    head,
                    request_id,
                )
                return False
            declared = _content_length(head)
            if declared is not None and declared > self.limits.max_body:
                await self._send_error(413, "Request body too large", head, request_id)
                return False
            body = await self._read_body(chunked)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
            message = "Request header too large" if status == 431 else "Malformed HTTP request"
            await self._send_error(status, message, head, request_id)
            return False
        except _BodyTooLarge:
            await self._send_error(413, "Request body too large", head, request_id)
            return False
        except _Timeout as timeout:
            if timeout.started:
                await self._send_error(408, "Request timeout", head, request_id)
            return False

        request = self._request(head, request_id, body)
        started = time.monotonic()
        try:
            response = await self.handler(request)
        except Exception:
            # The traceback, and of the request only its id and method: its target and
            # headers may carry credentials, tokens or a session's capability URL.
            log.exception(
                "http: handler failed, answered 500 (request_id=%s method=%s)",
                request_id,
                request.method,
            )
            response = self._error_response(request, 500, "Internal Server Error")
        await self._send_response(request, response)
        log.debug(
            "http: %s status=%d request_id=%s duration_ms=%.1f",
            request.method,
            response.status,
            request_id,
            (time.monotonic() - started) * 1000,
        )
        return True

    def _request(self, head: h11.Request, request_id: str, body: bytes = b"") -> Request:
        return Request(
            method=head.method.decode("ascii"),
            target=head.target.decode("latin-1"),
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
            body=body,
            request_id=request_id,
            client=self.client,
            http_version=head.http_version.decode("ascii"),
            # HTTP/1.1: h11 frames a streamed response chunked, as ``_DirectSink`` does.
            sink=self._sink if head.http_version == b"1.1" else None,
        )

    def _known_request(self, head: h11.Request | None, request_id: str) -> Request:
        """What is known of the request being answered with an error: its head, or the
        method and target of a complete request line still in the buffer (a head that is
        too large or too slow), else nothing (an empty target)."""
        if head is not None:
            return self._request(head, request_id)
        method, target = _request_line(self.h11.trailing_data[0])
        return Request(method, target, (), request_id=request_id, client=self.client)

    def _error_response(self, request: Request, status: int, message: str) -> Response:
        try:
            return self.errors(request, status, message)
        except Exception:
            log.exception("http: error format failed (request_id=%s)", request.request_id)
            return Response.error(status, message)

    # -- TLS -----------------------------------------------------------------------------------
    def _peer(self) -> str:
        return "unknown" if self.client is None else f"{self.client[0]}:{self.client[1]}"

    async def _handshake(self, stream: trio.SSLStream[Any]) -> bool:
        """The TLS handshake, within the head's deadline; False (logged) when it fails."""
        with trio.move_on_after(self.limits.header_timeout):
            try:
                await stream.do_handshake()
                return True
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__
            except trio.ClosedResourceError:
                return False
            # Warnings, so the log's repeat limiter keeps a flood of them to a few lines.
            if isinstance(cause, ssl.SSLError) and cause.reason == "HTTP_REQUEST":
                log.warning("http: plain HTTP on the TLS port closed (client=%s)", self._peer())
                await self._refuse_plain_http(stream)
            else:
                reason = _tls_failure(cause)
                log.warning("http: TLS handshake failed (client=%s): %s", self._peer(), reason)
            return False
        log.info("http: TLS handshake timed out (client=%s)", self._peer())
        return False

    async def _refuse_plain_http(self, stream: trio.SSLStream[Any]) -> None:
        """Tell a plain-HTTP client (curl http://...) what went wrong, in plain HTTP."""
        body = b"This port speaks HTTPS only: use https://.\n"
        head = (
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        with (
            trio.move_on_after(self.limits.send_timeout),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            await stream.transport_stream.send_all(head + body)

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

    async def _send_error(
        self, status: int, message: str, head: h11.Request | None, request_id: str
    ) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = self._error_response(self._known_request(head, request_id), status, message)
        body = bytes(response.body) if isinstance(response.body, bytes | bytearray) else b""
        headers = self._response_headers(response, request_id, close=True)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
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
                    # A TLS stream cannot half-close: its client closes on "Connection: close".
                    send_eof = getattr(self.stream, "send_eof", None)
                    if send_eof is not None:
                        await send_eof()
                    drained = 0
                    while drained < CLOSE_LINGER_BYTES:
                        data = await self.stream.receive_some(RECEIVE_BYTES)
                        if not data:
                            break
                        drained += len(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        await trio.aclose_forcefully(self.stream)


class _DirectSink:
    """``DirectSink`` for a plain TCP connection whose streamed response h11 frames chunked
    (HTTP/1.1): a chunk is its size in hex, CRLF, the data, CRLF. h11 tracks nothing of a
    chunked body's contents, so chunks written past it leave it in step."""

    __slots__ = ("_connection", "fd")

    def __init__(self, connection: _Connection, fd: int) -> None:
        self._connection = connection
        self.fd = fd

    def frame(self, data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data)

    async def send_framed(self, data: bytes) -> None:
        connection = self._connection
        with trio.move_on_after(connection.limits.send_timeout) as scope:
            await connection.stream.send_all(data)
        if scope.cancelled_caught:
            raise trio.BrokenResourceError("send timed out")


def _tls_failure(cause: BaseException | None) -> str:
    """One line saying why a handshake failed (never the bytes the client sent)."""
    if isinstance(cause, ssl.SSLError):
        return cause.reason or cause.__class__.__name__
    if isinstance(cause, OSError):
        return cause.strerror or cause.__class__.__name__
    return "connection closed" if cause is None else cause.__class__.__name__


def _request_line(buffer: bytes) -> tuple[str, str]:
    """(method, target) of the request line at the start of ``buffer`` when its target is
    complete (followed by a space); ("", "") otherwise."""
    line = buffer.lstrip(b"\r\n")
    method, sep, rest = line.partition(b" ")
    target, sep2, _ = rest.partition(b" ")
    if not sep or not sep2 or not target or b"\n" in method or b"\n" in target:
        return "", ""
    return method.decode("latin-1"), target.decode("latin-1")


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
    stream: trio.abc.Stream,
    handler: Handler,
    limits: ServerLimits | None = None,
    errors: ErrorFormat = json_error,
) -> None:
    """Serve the requests of one connection on ``stream`` until it ends, then close it.

    ``serve_http`` does this for each accepted socket; any half-closeable stream will do
    (the HTTP fuzz harness drives it over an in-memory stream), and a ``trio.SSLStream``
    is handshaken first."""
    await _Connection(stream, handler, limits or ServerLimits(), errors).run()


@dataclass(slots=True)
class ConnectionCount:
    """Connections of one listener, for metrics: open now, and accepted in total."""

    open: int = 0
    total: int = 0


async def _serve_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    limits: ServerLimits,
    errors: ErrorFormat,
    slots: trio.Semaphore,
    count: ConnectionCount,
) -> None:
    count.open += 1
    count.total += 1
    try:
        await _Connection(stream, handler, limits, errors).run()
    except Exception:
        log.exception("http: connection failed")
        await trio.aclose_forcefully(stream)
    finally:
        count.open -= 1
        slots.release()


async def _accept_loop(
    listener: trio.abc.Listener[Any],
    handler: Handler,
    limits: ServerLimits,
    errors: ErrorFormat,
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
            nursery.start_soon(_serve_connection, stream, handler, limits, errors, slots, count)


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
    errors: ErrorFormat = json_error,
    tls: ssl.SSLContext | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``host:port`` until cancelled; ``task_status.started(bound_port)``.

    With ``port=0`` the kernel picks a port (give a single-address host such as 127.0.0.1).
    ``listeners`` serves sockets bound elsewhere instead (systemd socket activation); then
    ``host`` and ``port`` only name them in the log. ``connections`` is kept up to date.
    ``errors`` words the errors the server answers itself (default ``{"error": ...}``).
    With ``tls`` (a server context, e.g. ``ServerCertificate.context``, which a reload
    updates in place) every connection speaks HTTPS.
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
    serving: list[trio.abc.Listener[Any]] = list(listeners)
    if tls is not None:
        # https_compatible: a client may close without close_notify, as HTTPS clients do.
        serving = [trio.SSLListener(ln, tls, https_compatible=True) for ln in listeners]
    async with trio.open_nursery() as nursery:
        for listener in serving:
            nursery.start_soon(
                _accept_loop, listener, handler, limits, errors, slots, nursery, count
            )
        scheme = "https" if tls is not None else "http"
        log.info("http: listening on %s:%d (%s)", host, bound_port, scheme)
        task_status.started(bound_port)
