"""Reading a session's streamed body inside the test's own nursery, under trio's MockClock."""

from __future__ import annotations

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
