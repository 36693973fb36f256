"""Data plane on Redis (issue 11): round trips and bytes per 1,000 messages, ingest CPU.

Runs one ``DataPlane`` with its ``ClusterRegistry`` against a local redis-server (started
here on a free port, stopped at the end) and routes batches as the syslog input would
(one ``route`` call per read), then follows the channel back as a tail would.

    python bench/cluster_plane.py [--messages 200000] [--batch 100] [--channels 1] [--paced]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time

import trio

from logplexd.cluster.plane import DataPlane
from logplexd.cluster.registry import ClusterRegistry
from logplexd.native import parse_body


def frame(token: str, i: int) -> bytes:
    msg = (
        f"<134>1 2024-01-01T00:00:00.000000Z host {token} web.1 - - "
        f"GET /path/{i} 200 OK in 12 ms user_agent=curl/8.0 request_id=0123456789abcdef"
    ).encode()
    return b"%d %s" % (len(msg), msg)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run(messages: int, batch: int, channels: int, url: str, paced: bool) -> dict[str, float]:
    plane = DataPlane(url, node_id="bench", keep_messages=16384)
    registry = ClusterRegistry(plane, 1500, 4 << 20, 16384)
    bodies = []
    for c in range(channels):
        registry.add_token(f"ch{c}", f"t.{c}", "app")
        bodies.append(parse_body(b"".join(frame(f"t.{c}", i) for i in range(batch))))
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        while plane.failure is not None:
            await trio.sleep(0.01)
        follow = plane.hold(registry.channel("ch0"), await plane.top("ch0"))
        rounds = messages // (batch * channels)
        cpu = 0.0
        started = time.perf_counter()
        for r in range(rounds):
            t0 = time.process_time()
            for body in bodies:
                registry.route(body)
            cpu += time.process_time() - t0
            if paced:
                # Light load: every routed batch is its own round trip (the worst case).
                while plane.buffer or plane.messages_written < (r + 1) * batch * channels:
                    await trio.lowlevel.checkpoint()
            elif r % 10 == 9:
                # The writer runs between reads, as under real load.
                await trio.lowlevel.checkpoint()
        while plane.buffer or plane.messages_written < rounds * batch * channels:
            await trio.sleep(0.001)
        wrote = time.perf_counter() - started
        target = rounds * batch
        while follow.last_seq < target:
            await trio.sleep(0.001)
        total = time.perf_counter() - started
        stream_bytes = await plane.client.memory_usage(plane.keys.stream("ch0"), samples=0)
        nursery.cancel_scope.cancel()
    n = rounds * batch * channels
    return {
        "messages": n,
        "round_trips_per_1000": plane.round_trips * 1000 / n,
        "bytes_per_1000": plane.bytes_written * 1000 / n,
        "route_cpu_us_per_msg": cpu * 1e6 / n,
        "write_msgs_per_s": n / wrote,
        "followed_msgs_per_s": target / total,
        # Redis memory per message the channel's stream keeps (keep = 16384 here).
        "stream_bytes_per_kept_msg": (stream_bytes or 0) / min(16384, target),
    }


def redis_cpu(pid: int) -> float:
    """CPU seconds (user + system) the redis-server process has used."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--paced", action="store_true", help="one round trip per routed batch")
    args = parser.parse_args()
    server = shutil.which("redis-server")
    assert server, "needs redis-server"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            before = redis_cpu(proc.pid)
            result = trio.run(
                run,
                args.messages,
                args.batch,
                args.channels,
                f"redis://127.0.0.1:{port}/0",
                args.paced,
            )
            result["redis_cpu_us_per_msg"] = (
                (redis_cpu(proc.pid) - before) * 1e6 / result["messages"]
            )
        finally:
            proc.kill()
            proc.wait()
    for key, value in result.items():
        print(f"{key}: {value:.2f}")


if __name__ == "__main__":
    main()
