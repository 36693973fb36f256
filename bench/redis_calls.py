#!/usr/bin/env python3
"""The node's CPU per Redis round trip: coredis against the plane's own links (issue 21).

Run from the repository root (about 10 s; needs ``redis-server``)::

    python bench/redis_calls.py [--calls 3000] [--frames 0,4096,524288]

Starts a redis-server on a free port and, alternating, makes ``--calls`` sequential calls
of one script (``EVALSHA`` of a script that returns a small table, as ``APPEND`` does) with
an argument of each ``--frames`` size, in four ways:

* ``coredis pipeline``: what the data plane did (one pipeline per call);
* ``coredis call``: a plain ``evalsha``;
* ``ServerLink``: the plane's own link (``cluster/_direct.py``, ``_native/resp.pyx``);
* ``bare socket``: a hand-packed request on a trio socket stream, the floor.

It prints this process's CPU (user + system) and the wall time per call, and the ratio of
each to the bare socket in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from logplexd.cluster._direct import ServerLink  # noqa: E402
from logplexd.store import parse_redis_url  # noqa: E402

SCRIPT = "return {'ok', '', 1, ARGV[1]:sub(1, 8)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(port: int, workdir: str) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("needs redis-server (apt-get install redis-server)")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


async def measure(port: int, calls: int, frames: int) -> dict[str, tuple[float, float]]:
    import coredis
    from coredis.retry import NoRetryPolicy

    blob = b"x" * frames
    url = f"redis://127.0.0.1:{port}/0"
    out: dict[str, tuple[float, float]] = {}
    client = coredis.Redis("127.0.0.1", port, decode_responses=False, retry_policy=NoRetryPolicy())
    async with client:
        loaded = await client.script_load(SCRIPT)
        sha = loaded.decode() if isinstance(loaded, bytes) else str(loaded)
        target = parse_redis_url(url)
        link = ServerLink(target.nodes[0], target, "bench")
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        request = b"*4\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n0\r\n$%d\r\n%s\r\n" % (
            sha.encode(),
            frames,
            blob,
        )

        async def coredis_pipeline() -> None:
            async with client.pipeline(transaction=False, raise_on_error=False) as pipe:
                reply = pipe.evalsha(sha, keys=[], args=[blob])
            await reply

        async def coredis_call() -> None:
            await client.evalsha(sha, keys=[], args=[blob])

        async def server_link() -> None:
            await link.call([["EVALSHA", sha, 0, blob]])

        async def bare_socket() -> None:
            await stream.send_all(request)
            got = b""
            while got.count(b"\r\n") < 8:  # the reply's 8 lines (see SCRIPT)
                got += await stream.receive_some(65536)

        ways = {
            "coredis pipeline": coredis_pipeline,
            "coredis call": coredis_call,
            "ServerLink": server_link,
            "bare socket": bare_socket,
        }
        for name, call in ways.items():
            for _ in range(50):  # warm up (connections, caches)
                await call()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(calls):
                await call()
            out[name] = (
                (time.process_time() - cpu0) / calls * 1e6,
                (time.perf_counter() - wall0) / calls * 1e6,
            )
        link.close()
        await stream.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--frames", default="0,4096,524288", help="argument sizes, comma-separated")
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = start_redis(port, workdir)
        try:
            print("| argument | way | CPU µs / call | wall µs / call | CPU vs bare socket |")
            print("| --- | --- | --- | --- | --- |")
            for size in (int(s) for s in args.frames.split(",")):
                figures = trio.run(measure, port, args.calls, size)
                floor = figures["bare socket"][0]
                for name, (cpu, wall) in figures.items():
                    print(f"| {size:,} B | {name} | {cpu:.0f} | {wall:.0f} | {cpu / floor:.2f}x |")
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
