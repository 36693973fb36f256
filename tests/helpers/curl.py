"""A running daemon driven by the real curl (helpers/peers.py: ``needs_curl``)."""

from __future__ import annotations

import trio

from logplexd.daemon import BoundPorts

from .daemon import KEY

# curl arguments: the operator's credentials (the raw auth key), a JSON body.
AUTH = ["-H", f"Authorization: Basic {KEY}"]
JSON = ["-H", "Content-Type: application/json"]


async def curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    """Run curl; return (status, lower-case headers, body)."""
    done = await trio.run_process(
        ["curl", "-sS", "-D", "-", *args], capture_stdout=True, check=True
    )
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def api(ports: BoundPorts, path: str) -> str:
    """The URL of ``path`` on the daemon's API listener."""
    return f"http://127.0.0.1:{ports.api}{path}"
