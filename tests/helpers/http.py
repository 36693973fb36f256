"""HTTP/1.1 (or HTTPS) to a running daemon (an h11 client), and Basic credentials."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterable

import h11
import trio

from logplexd.daemon import BoundPorts

from .daemon import KEY


def credentials(user: str, password: str) -> str:
    """``user:password`` in base64: what follows "Basic " in the header."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def basic_auth(user: str, password: str) -> str:
    """The value of an ``Authorization`` header for HTTP Basic."""
    return "Basic " + credentials(user, password)


class Exchange:
    """One HTTP/1.1 request on its own connection; the body can be read chunk by chunk."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False

    @classmethod
    async def open(
        cls,
        port: int,
        method: str,
        path: str,
        *,
        body: bytes | dict | None = None,
        headers: Iterable[tuple[str, str]] = (),
        auth: str | None = KEY,
        tls: ssl.SSLContext | None = None,
    ) -> Exchange:
        """Send the request; ``auth`` is what follows "Basic " (the raw key by default).
        With ``tls`` (a client context, helpers/tls.py) the request goes over HTTPS."""
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_hostname="127.0.0.1", https_compatible=True)
        self = cls(stream)
        head = [("Host", f"127.0.0.1:{port}"), ("Connection", "close"), *headers]
        if auth is not None:
            head.append(("Authorization", f"Basic {auth}"))
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            head.append(("Content-Type", "application/json"))
        body = body or b""
        head.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=path, headers=head))
        if body:
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        await stream.send_all(out)
        while True:
            event = await self._next()
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                return self

    async def _next(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            return event

    async def chunk(self) -> bytes | None:
        """The next piece of body, or None at its end."""
        while not self.ended:
            event = await self._next()
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.ended = True
        return None

    async def body(self) -> bytes:
        parts = []
        while (piece := await self.chunk()) is not None:
            parts.append(piece)
        await self.stream.aclose()
        return b"".join(parts)


async def request(
    port: int, method: str, path: str, **kwargs: object
) -> tuple[int, dict[str, str], bytes]:
    """One whole exchange (``Exchange.open``'s keywords): status, lower-case headers, body."""
    with trio.fail_after(10):
        exchange = await Exchange.open(port, method, path, **kwargs)  # type: ignore[arg-type]
        return exchange.status, exchange.headers, await exchange.body()


async def create_channel(ports: BoundPorts, name: str = "app") -> str:
    """PUT channel ``name`` with one token named "app" through the daemon's API; the token."""
    status, _, body = await request(
        ports.api, "PUT", f"/v3/channels/{name}", body={"tokens": ["app"]}
    )
    assert status == 201, body
    return json.loads(body)["tokens"]["app"]


async def create_drain(ports: BoundPorts, url: str, channel: str = "app") -> dict:
    """POST a drain of ``url`` on ``channel`` through the daemon's API; the created drain."""
    status, _, body = await request(
        ports.api, "POST", f"/v3/channels/{channel}/drains", body={"url": url}
    )
    assert status == 201, body
    return json.loads(body)
