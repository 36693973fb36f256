#!/usr/bin/env python3
"""What Redis's ``INFO stats`` ``total_reads_processed`` counts: read events, not round trips.

Run from the repository root (a few seconds; needs ``redis-server``)::

    python bench/redis_reads.py

Redis reads a client's query buffer in chunks of ``PROTO_IOBUF_LEN`` (16 KB); a bulk
argument of 32 KB or more (``PROTO_MBULK_BIG_ARG``) is read whole instead. So one request
sent with one ``sendall`` -- one round trip -- counts as many "reads" as it has 16 KB
chunks (more when the kernel hands Redis a partial buffer). Three requests, each one
``sendall`` and one wait for all its replies, on one connection:

* 2,000 small ``SET`` commands pipelined (~150 KB);
* one ``SET`` of a 200 KB value;
* one ``PING`` (the control: 1 read).

The script prints, for each, the request's size and the ``total_reads_processed``
difference (the ``INFO`` calls that read it are taken out). bench_nodes.py quotes the
result; its round-trip figure is counted by the client (logplexd's
``logplexd_redis_round_trips_total``), not by this counter.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def read_replies(sock: socket.socket, count: int) -> None:
    """Until ``count`` simple/bulk replies have arrived (enough for SET, PING)."""
    buf = b""
    seen = 0
    while seen < count:
        data = sock.recv(1 << 20)
        if not data:
            raise OSError("connection closed")
        buf += data
        seen = buf.count(b"\r\n")  # +OK / +PONG: one line each


def reads(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(command(b"INFO", b"stats"))
        buf = b""
        while b"\r\n" not in buf or len(buf) < int(buf[1 : buf.index(b"\r\n")]) + 4:
            buf += sock.recv(65536)
    for line in buf.decode().splitlines():
        if line.startswith("total_reads_processed:"):
            return int(line.split(":")[1])
    raise RuntimeError("no total_reads_processed in INFO")


def measure(port: int, request: bytes, replies: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(command(b"PING"))  # connected and read once before the baseline
        read_replies(sock, 1)
        before = reads(port)
        sock.sendall(request)
        read_replies(sock, replies)
        after = reads(port)
    # The INFO connection between the two readings costs 2 reads (its request, its close).
    return after - before - 2


def main() -> int:
    exe = shutil.which("redis-server")
    if exe is None:
        print("redis-server not found (apt-get install redis-server)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="redis-reads-") as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", tmp, "--logfile", str(Path(tmp) / "redis.log")],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    reads(port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            version = subprocess.run([exe, "--version"], capture_output=True, text=True)
            print(version.stdout.strip())
            small = b"".join(command(b"SET", b"key:%06d" % i, b"v" * 40) for i in range(2000))
            big = command(b"SET", b"big", b"x" * 200_000)
            ping = command(b"PING")
            for label, request, replies in (
                ("2,000 pipelined SETs", small, 2000),
                ("1 SET of 200 KB", big, 1),
                ("1 PING", ping, 1),
            ):
                counts = [measure(port, request, replies) for _ in range(5)]
                print(
                    f"{label}: {len(request):,} bytes in one sendall, 1 round trip -> "
                    f"total_reads_processed +{min(counts)}..{max(counts)} (5 tries)"
                )
        finally:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
