"""The h11-on-trio server on a real socket bound to port 0."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import h11
import pytest
import trio

from logplexd.api import run_api
from logplexd.web import Request, Response, serve_http
from tests.helpers.api import AUTH_KEY, make_api

SHORT = 0.2


async def echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    if request.path == "/stream":

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"line {i}\n".encode()

        return Response.stream(200, chunks(), [("Content-Type", "text/plain")])
    return Response.json(
        200,
        {
            "method": request.method,
            "target": request.target,
            "body": request.body.decode(),
            "request_id": request.request_id,
        },
    )


@pytest.fixture
async def server(nursery):
    async def start(handler: Any = echo, **limits: Any) -> int:
        return await nursery.start(functools.partial(serve_http, handler, "127.0.0.1", 0, **limits))

    return start


async def read_until_eof(stream: trio.SocketStream, limit: float = 3.0) -> bytes:
    data = b""
    with trio.fail_after(limit):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


class Client:
    """An h11 client over one connection, for keep-alive tests."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[h11.Response, bytes]:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        all_headers = [("Host", "test"), *(headers or [])]
        if body:
            all_headers.append(("Content-Length", str(len(body))))
        await self.stream.send_all(
            self.h11.send(h11.Request(method=method, target=target, headers=all_headers))
        )
        if body:
            await self.stream.send_all(self.h11.send(h11.Data(data=body)))
        await self.stream.send_all(self.h11.send(h11.EndOfMessage()))
        response = None
        content = b""
        with trio.fail_after(3):
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    self.h11.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    content += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    return response, content


def header(response: h11.Response, name: str) -> str | None:
    for key, value in response.headers:
        if key.decode().lower() == name.lower():
            return value.decode()
    return None


async def test_keep_alive_and_request_ids(server):
    port = await server()
    client = await Client.connect(port)
    first, body1 = await client.request("GET", "/a?x=1")
    second, body2 = await client.request("POST", "/b", b"hello", [("Content-Type", "text/plain")])
    assert (first.status_code, second.status_code) == (200, 200)
    assert json.loads(body1)["target"] == "/a?x=1"
    assert json.loads(body2)["body"] == "hello"
    ids = [header(first, "request-id"), header(second, "request-id")]
    assert ids[0] != ids[1] and all(str(uuid.UUID(i)) == i for i in ids)  # type: ignore[arg-type]
    assert json.loads(body2)["request_id"] == ids[1]
    assert header(first, "date") is not None


async def test_pipelined_requests(server):
    port = await server()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = await read_until_eof(stream)
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.index(b'"/1"') < data.index(b'"/2"')


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ],
)
async def test_malformed_request_is_400_and_close(server, raw):
    port = await server()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(raw)
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nConnection: close\r\n" in data and b"\r\nRequest-Id: " in data
    assert data.endswith(b'{"error":"Malformed HTTP request"}')


async def test_declared_body_over_limit_is_413(server):
    port = await server(max_body=10)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert data.endswith(b'{"error":"Request body too large"}')


async def test_chunked_body_over_limit_is_413(server):
    port = await server(max_body=10)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"8\r\n12345678\r\n8\r\n12345678\r\n"
    )
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 413 ")


async def test_body_at_the_limit_is_fine(server):
    port = await server(max_body=10)
    client = await Client.connect(port)
    response, body = await client.request("POST", "/", b"0123456789")
    assert response.status_code == 200 and json.loads(body)["body"] == "0123456789"


async def test_header_flood_is_431(server):
    port = await server(max_header_bytes=1024)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * 4000 + b"\r\n\r\n"
    )
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 431 ")


async def test_slow_header_is_cut(server):
    port = await server(header_timeout=SHORT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
    data = await read_until_eof(stream, limit=SHORT * 10)
    assert data.startswith(b"HTTP/1.1 408 ")


async def test_silent_connection_is_closed_without_response(server):
    port = await server(header_timeout=SHORT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    assert await read_until_eof(stream, limit=SHORT * 10) == b""


async def test_slow_body_is_cut(server):
    port = await server(body_timeout=SHORT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n123")
    data = await read_until_eof(stream, limit=SHORT * 10)
    assert data.startswith(b"HTTP/1.1 408 ")


async def test_idle_keep_alive_connection_is_closed(server):
    port = await server(idle_timeout=SHORT)
    client = await Client.connect(port)
    response, _ = await client.request("GET", "/")
    assert response.status_code == 200
    assert await read_until_eof(client.stream, limit=SHORT * 10) == b""


async def test_connection_count_is_bounded(server):
    port = await server(max_connections=1)
    first = await Client.connect(port)
    await first.request("GET", "/first")
    second = await trio.open_tcp_stream("127.0.0.1", port)  # waits in the backlog
    await second.send_all(b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with trio.move_on_after(SHORT):
        assert await second.receive_some(100) == b"never"
    await first.stream.aclose()
    data = await read_until_eof(second)
    assert data.startswith(b"HTTP/1.1 200 OK") and b"/second" in data


async def test_handler_error_is_500_and_connection_survives(server):
    port = await server()
    client = await Client.connect(port)
    response, body = await client.request("GET", "/boom")
    assert (response.status_code, json.loads(body)) == (500, {"error": "Internal Server Error"})
    again, _ = await client.request("GET", "/ok")
    assert again.status_code == 200


async def test_streamed_response_is_chunked(server):
    port = await server()
    client = await Client.connect(port)
    response, body = await client.request("GET", "/stream")
    assert header(response, "transfer-encoding") == "chunked"
    assert body == b"line 0\nline 1\nline 2\n"
    assert header(response, "request-id")
    again, _ = await client.request("GET", "/after")
    assert again.status_code == 200


async def test_streaming_stops_when_the_client_goes_away(server):
    closed = trio.Event()
    sent = trio.Event()

    async def tail(request: Request) -> Response:
        async def forever() -> AsyncIterator[bytes]:
            yield b"first\n"
            sent.set()
            await trio.sleep_forever()
            yield b"never\n"

        async def on_close() -> None:
            closed.set()

        return Response.stream(200, forever(), on_close=on_close)

    port = await server(tail)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /sessions/x HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(3):
        await sent.wait()
        await stream.aclose()
        await closed.wait()


async def test_expect_100_continue(server):
    port = await server()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    with trio.fail_after(3):
        assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 100 ")
    await stream.send_all(b"hi")
    data = b""
    with trio.fail_after(3):
        while b'"body":"hi"' not in data:
            data += await stream.receive_some(10000)
    assert data.startswith(b"HTTP/1.1 200 ")


async def test_head_gets_no_body(server):
    port = await server()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n")


async def test_control_api_over_http(nursery, tmp_path):
    api = make_api(str(tmp_path))
    port = await nursery.start(run_api, api, "127.0.0.1", 0)
    client = await Client.connect(port)
    auth = [("Authorization", f"Basic {AUTH_KEY}"), ("Content-Type", "application/json")]
    created, body = await client.request("PUT", "/v3/channels/app", b'{"tokens":["web"]}', auth)
    assert created.status_code == 201 and json.loads(body)["channel"] == "app"
    fetched, body = await client.request("GET", "/v3/channels/app", headers=auth)
    assert fetched.status_code == 200
    denied, body = await client.request("GET", "/v3/channels/app")
    assert denied.status_code == 401
    assert header(denied, "www-authenticate") == "Basic realm=Logplex"
    deleted, body = await client.request("DELETE", "/v3/channels/app", headers=auth)
    assert (deleted.status_code, body, header(deleted, "content-length")) == (204, b"", None)
    api.store.close()


# -- request framing (issue 22) ------------------------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
        b"content-length: 3\r\ntransfer-encoding: CHUNKED\r\n",
    ],
)
async def test_content_length_with_transfer_encoding_is_400_and_close(server, head):
    """RFC 9112 6.1: a proxy framing by Content-Length would see another request boundary
    (request smuggling). Refused, and the pipelined request behind it is never answered."""
    calls = []

    async def handler(request: Request) -> Response:
        calls.append(request.path)
        return await echo(request)

    port = await server(handler)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"POST /first HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n3\r\nabc\r\n0\r\n\r\n" + SMUGGLED
    )
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nConnection: close\r\n" in data
    assert data.count(b"HTTP/1.1 ") == 1
    assert data.endswith(b'"Malformed HTTP request: Content-Length with Transfer-Encoding"}')
    assert calls == []


@pytest.mark.parametrize(
    "chunks",
    [
        b"40000000\r\n",  # 1 GiB declared, not a byte of it sent
        b"ffffffffffffffffff\r\n",
        b"0000000011\r\n",  # 17 > 16, leading zeros
        b"8;ext=1\r\n12345678\r\n9\r\n",  # the second chunk takes the total over
    ],
)
async def test_chunk_declaring_more_than_the_limit_is_413_at_once(server, chunks):
    # Before issue 22 these waited for the body timeout (here 1000 s), then got 408.
    port = await server(max_body=16, body_timeout=1000)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    await stream.send_all(chunks)  # and the connection stays open
    data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert data.endswith(b'{"error":"Request body too large"}')


async def test_chunked_body_at_the_limit_then_a_pipelined_request(server):
    port = await server(max_body=16)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10;x=y\r\n0123456789abcdef\r\n0\r\nTrailer: 1\r\n\r\n"
        b"POST /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
    )
    data = await read_until_eof(stream)
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert b'"body":"0123456789abcdef"' in data and b'"body":"hi"' in data
