"""Drain throughput: messages/s from a channel ring out to real sockets.

Run: ``python bench/bench_drains.py [--messages N]``.

Scenarios: one ``syslog://`` drain, fan-out to 6 ``syslog://`` drains, one ``http://`` drain.
Receivers run in separate processes (they only count frames) so that they are not the
bottleneck and do not share this process's CPU. The producer appends pre-parsed batches of
1000 ~120-byte messages straight into the ring (what routing does after parsing), so the
figures isolate the drain side; ``ceiling`` is producer -> receiver without any drain.
"""

from __future__ import annotations

import argparse
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logplexd.drains import DrainManager  # noqa: E402
from logplexd.native import parse_frames, syslog_frames  # noqa: E402
from logplexd.router.registry import Registry  # noqa: E402

TOKEN = "d.2b0fa2d1-76b4-4b8a-9e0b-8f6a0b0c1d2e"

# Counts LF-terminated syslog frames, or answers HTTP requests and sums Logplex-Msg-Count.
SINK = r"""
import socket, sys, threading
mode, expected = sys.argv[1], int(sys.argv[2])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(64)
print(srv.getsockname()[1], flush=True)
total = 0
lock = threading.Lock()
done = threading.Event()
def syslog(conn):
    global total
    buf = bytearray(1 << 20)
    while True:
        n = conn.recv_into(buf)
        if not n: return
        with lock:
            total += buf[:n].count(10)
            if total >= expected: done.set()
def http(conn):
    global total
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(1 << 20)
            if not chunk: return
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        fields = dict(l.split(b": ", 1) for l in head.split(b"\r\n")[1:])
        length = int(fields[b"Content-Length"])
        while len(data) < length:
            data += conn.recv(1 << 20)
        data = data[length:]
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        with lock:
            total += int(fields[b"Logplex-Msg-Count"])
            if total >= expected: done.set()
def accept():
    while True:
        conn, _ = srv.accept()
        handler = syslog if mode == "syslog" else http
        threading.Thread(target=handler, args=(conn,), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
done.wait()
print(total, flush=True)
"""


def frames(n: int) -> list[bytes]:
    return [
        b"<134>1 2024-05-01T12:00:00.%06dZ host t.token web.%d - - at=info method=GET path=/ "
        b"status=200 bytes=%05d" % (i, i % 9, i % 99999)
        for i in range(n)
    ]


def start_sink(mode: str, expected: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SINK, mode, str(expected)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def scenario(kind: str, drains: int, total: int) -> dict[str, float]:
    batch = parse_frames(frames(1000))
    sinks = [start_sink("http" if kind == "http" else "syslog", total) for _ in range(drains)]
    registry = Registry(history_messages=200_000, history_bytes=64 << 20)
    channel = registry.ensure_channel("bench")
    manager = DrainManager(registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        for i, (_, port) in enumerate(sinks):
            manager.add_drain("bench", i, TOKEN, f"{kind}://127.0.0.1:{port}/")
        wall, cpu0 = time.perf_counter(), cpu()
        sent = 0
        while sent < total:
            channel.ring.append_batch(batch)
            channel.notify()
            sent += len(batch)
            # Pace the producer to the slowest drain so the figure is throughput, not loss.
            while (
                channel.ring.head - min(d.feed.cursor for d in manager._drains.values()) > 100_000
            ):
                await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
        await trio.to_thread.run_sync(lambda: [p.wait() for p, _ in sinks])
        wall, used = time.perf_counter() - wall, cpu() - cpu0
        lost = sum(s.lost for s in manager.stats())
        nursery.cancel_scope.cancel()
    return {
        "msgs_per_s": total * drains / wall,
        "cpu_s_per_M": used / (total * drains) * 1e6,
        "lost": lost,
    }


async def ceiling(total: int) -> dict[str, float]:
    """Producer -> receiver with no drain: the same bytes written by one plain task."""
    proc, port = start_sink("syslog", total)
    data, _, _ = syslog_frames(parse_frames(frames(1000)), TOKEN.encode(), 0, 1 << 30)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    wall = time.perf_counter()
    for _ in range(total // 1000):
        await stream.send_all(data)
    await trio.to_thread.run_sync(proc.wait)
    await stream.aclose()
    wall = time.perf_counter() - wall
    return {"msgs_per_s": total / wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.messages
    # The receivers exit when they have counted everything; the drains' reconnect noise is moot.
    logging.getLogger("logplexd.drains").setLevel(logging.ERROR)
    print(f"ceiling (producer -> sink, no drain): {trio.run(ceiling, n)}")
    for kind, drains in [("syslog", 1), ("syslog", 6), ("http", 1)]:
        print(f"{kind} x{drains}: {trio.run(scenario, kind, drains, n)}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
