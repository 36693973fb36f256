"""Reading a session's streamed body inside the test's own nursery, under trio's MockClock."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import trio
import trio.testing

from logplexd.web import Response


@dataclass
class Reader:
    """The chunks a streamed response body gave so far; ``done`` once it ended."""

    chunks: list[bytes]
    done: trio.Event


def start_reading(nursery: trio.Nursery, response: Response) -> Reader:
    """Read ``response``'s streamed body (a 200) in the background."""
    assert response.status == 200 and not isinstance(response.body, bytes | bytearray)
    body = response.body
    reader = Reader([], trio.Event())

    async def read() -> None:
        async for chunk in body:
            reader.chunks.append(chunk)
        reader.done.set()

    nursery.start_soon(read)
    return reader


async def settle(clock: trio.testing.MockClock, seconds: float = 0.011) -> None:
    """Let a tail take what was sent (it lingers 10 ms after a wake-up to batch lines)."""
    await trio.testing.wait_all_tasks_blocked()
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


class PairSink:
    """A ``DirectSink`` over one end of a socket pair, for the tail pump without a server.

    It frames a chunk as a netstring (``b"5:hello,"``), not as HTTP chunks: ``chunks``
    parses what the peer received back into the chunks the pump (or the task) framed.
    """

    def __init__(self, *, sndbuf: int | None = None) -> None:
        ours, peer = socket.socketpair()
        if sndbuf is not None:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        ours.setblocking(False)
        self._ours = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        self.peer = trio.SocketStream(trio.socket.from_stdlib_socket(peer))
        self.fd = ours.fileno()
        self.received = b""

    def frame(self, data: bytes) -> bytes:
        return b"%d:%b," % (len(data), data)

    async def send_framed(self, data: bytes) -> None:
        try:
            await self._ours.send_all(data)
        except OSError as exc:
            raise trio.BrokenResourceError from exc

    async def read_until(self, wanted: bytes, *, lines: int = 0) -> None:
        """Read from the peer until ``wanted`` arrived (and at least ``lines`` lines)."""
        while wanted not in self.received or self.received.count(b"\n") < lines:
            data = await self.peer.receive_some(1 << 16)
            assert data, "the pump's end closed"
            self.received += data

    def chunks(self) -> list[bytes]:
        out, rest = [], self.received
        while rest:
            size, colon, rest = rest.partition(b":")
            assert colon, rest[:40]
            n = int(size)
            assert rest[n : n + 1] == b",", rest[: n + 1][-40:]
            out.append(rest[:n])
            rest = rest[n + 1 :]
        return out

    async def aclose(self) -> None:
        await self._ours.aclose()
        await self.peer.aclose()
