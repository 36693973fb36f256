#!/usr/bin/env python3
"""What it costs Redis to take a stream entry's frames through a Lua script (issue 21).

Run from the repository root (about 10 s; needs ``redis-server``)::

    python bench/redis_lua_args.py [--calls 300] [--flushes 2400x1,65x300]

The data plane's ``APPEND`` script (``cluster/_stream.py``) receives every entry's frames
in ARGV. Redis 7 hashes each Lua string it creates over all of its bytes
(redis/redis#9449: ``luaS_newlstr`` with a step of 1), so each byte of a flush is hashed
once, one byte per step, before ``XADD`` copies it. This script starts a redis-server on a
free port and, for each ``--flushes`` shape ``MxC`` (one call writes an entry of M
messages of 133 bytes on the wire, as bench/e2e sends, to each of C streams: 2,400 x 1 is
a flush of one busy channel, 65 x 300 one of 1,000 busy channels as bench_nodes ch1000
sends them), makes ``--calls`` calls in three ways, alternating:

* ``lua``: one ``EVALSHA`` of a script that ``XADD``s the entries of its ARGV (what
  ``APPEND`` does);
* ``multi``: ``MULTI``, one ``EVALSHA`` of a script with small arguments only, a plain
  ``XADD`` per entry, ``EXEC`` (a control script beside the data, not around it);
* ``xadd``: the plain ``XADD``s alone, pipelined (the floor).

It prints redis-server's CPU (``INFO cpu``, user + system) per million messages for each,
and the ratio to ``xadd`` in the same run.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile

from redis_calls import free_port, start_redis  # bench/: a scratch redis-server

MESSAGE = b"<134>1 2026-12-04T00:00:00.000000+00:00 host app web.1 - " + b"x" * 62
FRAME = b"%d %s" % (len(MESSAGE), MESSAGE)  # an octet-counted frame, as entries hold them

LUA_XADD = b"""
for c = 1, #KEYS do
  redis.pcall('XADD', KEYS[c], ARGV[1], 'n', ARGV[2], 'f', ARGV[c + 2])
end
return #KEYS"""
LUA_CONTROL = b"""
for c = 1, #KEYS do redis.pcall('GET', KEYS[c]) end
return #KEYS"""


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class Link:
    """One connection; ``call`` sends a request and reads ``replies`` whole replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.reader = self.sock.makefile("rb")

    def _reply(self) -> bytes:
        line = self.reader.readline()
        kind = line[:1]
        if kind == b"$":
            size = int(line[1:])
            return self.reader.read(size + 2)[:-2] if size >= 0 else b""
        if kind == b"*":
            return b"\n".join(self._reply() for _ in range(max(0, int(line[1:]))))
        if kind == b"-":
            raise RuntimeError(line.decode().strip())
        return line[1:].rstrip(b"\r\n")

    def call(self, request: bytes, replies: int = 1) -> bytes:
        self.sock.sendall(request)
        return b"".join(self._reply() for _ in range(replies))

    def cpu(self) -> float:
        info = self.call(command(b"INFO", b"cpu")).decode()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def measure(link: Link, way: str, messages: int, channels: int, calls: int) -> float:
    """redis-server's CPU seconds per million messages, making ``calls`` calls."""
    frames = FRAME * messages
    keys = [b"bench:{s%d}:%s" % (c, way.encode()) for c in range(channels)]
    link.call(command(b"DEL", *keys))
    xadd_sha = link.call(command(b"SCRIPT", b"LOAD", LUA_XADD))
    control_sha = link.call(command(b"SCRIPT", b"LOAD", LUA_CONTROL))
    n = b"%d" % messages
    count = b"%d" % channels
    before = link.cpu()
    for i in range(calls):
        entry_id = b"%d-0" % ((i + 1) * messages)
        xadds = b"".join(command(b"XADD", key, entry_id, b"n", n, b"f", frames) for key in keys)
        if way == "lua":
            link.call(
                command(b"EVALSHA", xadd_sha, count, *keys, entry_id, n, *([frames] * channels))
            )
        elif way == "multi":
            control = command(b"EVALSHA", control_sha, count, *(k + b":seq" for k in keys))
            link.call(command(b"MULTI") + control + xadds + command(b"EXEC"), channels + 3)
        else:
            link.call(xadds, channels)
    spent = link.cpu() - before
    link.call(command(b"DEL", *keys))
    return spent / (calls * messages * channels) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument(
        "--flushes",
        default="2400x1,65x300",
        help="MxC, comma-separated: per call an entry of M messages to each of C streams",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = start_redis(port, workdir)
        try:
            link = Link(port)
            ways = ("lua", "multi", "xadd")
            for shape in args.flushes.split(","):
                messages, channels = (int(part) for part in shape.split("x"))
                spent: dict[str, list[float]] = {way: [] for way in ways}
                for _ in range(args.repeats):
                    for way in ways:
                        spent[way].append(measure(link, way, messages, channels, args.calls))
                floor = min(spent["xadd"])
                print(
                    f"{args.calls} calls of {channels} x {messages} messages "
                    f"({messages * len(FRAME):,} bytes an entry), {args.repeats} times: "
                    "redis-server CPU s per million messages"
                )
                for way in ways:
                    best = min(spent[way])
                    print(f"  {way:6} {best:.3f} (runs {', '.join(f'{s:.3f}' for s in spent[way])})"
                          f"  {best / floor:.1f}x xadd")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
