"""Loopback ports, and reading what a server sends until it closes."""

from __future__ import annotations

import socket

import trio


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a peer that must be told its port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bindable(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def accepting(port: int) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection (a peer that has no other way
    to say it is ready); the caller bounds the wait."""
    while True:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.05)
        else:
            await stream.aclose()
            return


async def read_until_eof(stream: trio.abc.Stream, limit: float = 5.0) -> bytes:
    """What the server sends until it closes (or resets; then ``stream`` is closed too)."""
    data = b""
    try:
        with trio.fail_after(limit):
            try:
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:
                pass
    finally:
        await trio.aclose_forcefully(stream)
    return data
