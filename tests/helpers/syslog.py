"""RFC 5424 messages as Logplex producers send them, octet-counted frames, TCP syslog."""

from __future__ import annotations

import random

import trio

# The timestamp of the Logplex documentation's examples (host "erlang", process "console.1").
TS = "2012-12-10T03:00:48.123456Z"


def message(
    app: str | bytes,
    text: str | bytes,
    *,
    pri: int = 134,
    ts: str = TS,
    host: str = "erlang",
    ps: str = "console.1",
) -> bytes:
    """``<pri>1 ts host app ps - - text``: no MSGID, no structured data. On the inputs
    ``app`` is where the producer puts its token."""
    head = f"<{pri}>1 {ts} {host} ".encode()
    app_b = app.encode() if isinstance(app, str) else app
    text_b = text.encode() if isinstance(text, str) else text
    return head + app_b + f" {ps} - - ".encode() + text_b


def octet_counted(msg: bytes) -> bytes:
    """One frame of RFC 6587 octet counting: ``<length> <message>``."""
    return b"%d %s" % (len(msg), msg)


def frame(app: str | bytes, text: str | bytes, **fields: object) -> bytes:
    """``message(app, text, **fields)`` as one octet-counted frame: what the TCP syslog
    input and a ``application/logplex-1`` body carry."""
    return octet_counted(message(app, text, **fields))  # type: ignore[arg-type]


async def send_syslog(port: int, data: bytes) -> None:
    """``data`` on one fresh TCP connection to a syslog port on loopback, then closed."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    await stream.aclose()


def random_splits(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` cut at up to 40 random places: the reads a peer's writes may arrive as."""
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 40))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
