"""Control-API benchmarks (issue 3).

    python bench/bench_api.py startup   # open a store of 100k channels / 200k tokens / 50k drains
    python bench/bench_api.py requests  # GET /v3/channels/{name} over keep-alive connections

Goals: start-up under 3 s and memory under 300 MB for that store.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import time
import uuid

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from logplexd.api import ControlApi, run_api  # noqa: E402
from logplexd.router import attach_registry  # noqa: E402
from logplexd.store import (  # noqa: E402
    ChannelRecord,
    DrainRecord,
    TokenRecord,
    files,
    open_store,
)
from logplexd.store._state import State  # noqa: E402
from logplexd.store.embedded import SNAPSHOT_FILE  # noqa: E402


def _registry() -> object:
    try:
        from logplexd.router.registry import Registry
    except ImportError:
        from tests.helpers.api import FakeRegistry

        return FakeRegistry()
    return Registry()


def build_store(data_dir: str, channels: int, tokens: int, drains: int) -> None:
    state = State()
    for i in range(channels):
        state.channels[f"app-{i}"] = ChannelRecord(f"app-{i}")
    for i in range(tokens):
        state.put_token(TokenRecord(f"t.{uuid.uuid4()}", f"app-{i % channels}", "app"))
    for i in range(drains):
        state.put_drain(
            DrainRecord(i + 1, f"app-{i % channels}", f"d.{uuid.uuid4()}", f"syslog://h{i}:601")
        )
    state.counters["drain"] = drains
    files.write_snapshot(os.path.join(data_dir, SNAPSHOT_FILE), files.encode_snapshot(state))


def bench_startup(channels: int, tokens: int, drains: int) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        build_store(data_dir, channels, tokens, drains)
        # Measured in a fresh process, so that building the store does not count.
        import subprocess

        subprocess.run(
            [
                sys.executable,
                __file__,
                "_open",
                data_dir,
                f"--channels={channels}",
                f"--tokens={tokens}",
                f"--drains={drains}",
            ],
            check=True,
        )


def rss_mb() -> float:
    """Current resident set (ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_and_measure(data_dir: str, channels: int, tokens: int, drains: int) -> None:
    with contextlib.nullcontext():
        rss_before = rss_mb()
        started = time.perf_counter()
        store = open_store(data_dir)
        opened = time.perf_counter()
        attach_registry(store, _registry())  # type: ignore[arg-type]
        loaded = time.perf_counter()
        rss_after = rss_mb()
        size = os.path.getsize(os.path.join(data_dir, SNAPSHOT_FILE))
        print(
            f"startup: {channels} channels, {tokens} tokens, {drains} drains "
            f"(snapshot {size / 1e6:.1f} MB): store {opened - started:.2f} s, "
            f"registry {loaded - opened:.2f} s, total {loaded - started:.2f} s; "
            f"RSS {rss_after:.0f} MB (before open {rss_before:.0f} MB)"
        )
        store.close()


async def _client(port: int, path: str, seconds: float) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Basic bench-key\r\n\r\n"
    ).encode()
    done = 0
    deadline = time.perf_counter() + seconds
    buffer = b""
    while time.perf_counter() < deadline:
        await stream.send_all(request)
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end >= 0:
                head = buffer[:head_end].lower()
                length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(buffer) >= head_end + 4 + length:
                    buffer = buffer[head_end + 4 + length :]
                    break
            buffer += await stream.receive_some(65536)
        done += 1
    await stream.aclose()
    return done


async def bench_requests(seconds: float, connections: int) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        store = open_store(data_dir)
        await store.put_channel("app-1", ["web", "worker"])
        await store.create_drain("app-1", "syslog://h:601", max_drains=6)
        api = ControlApi(store, _registry(), auth_key="bench-key", public_url="http://x")  # type: ignore[arg-type]
        logging_off()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(run_api, api, "127.0.0.1", 0)
            counts: list[int] = []

            async def one() -> None:
                counts.append(await _client(port, "/v3/channels/app-1", seconds))

            async with trio.open_nursery() as clients:
                for _ in range(connections):
                    clients.start_soon(one)
            nursery.cancel_scope.cancel()
        total = sum(counts)
        print(
            f"requests: GET /v3/channels/{{name}}, keep-alive, {connections} connection(s): "
            f"{total / seconds:.0f} requests/s (client and server in one process)"
        )
        store.close()


def logging_off() -> None:
    import logging

    logging.getLogger("logplexd").setLevel(logging.WARNING)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "what", choices=["startup", "requests", "all", "_open"], nargs="?", default="all"
    )
    parser.add_argument("data_dir", nargs="?")
    parser.add_argument("--channels", type=int, default=100_000)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--drains", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    if args.what == "_open":
        open_and_measure(args.data_dir, args.channels, args.tokens, args.drains)
        return
    if args.what in ("startup", "all"):
        bench_startup(args.channels, args.tokens, args.drains)
    if args.what in ("requests", "all"):
        trio.run(bench_requests, args.seconds, args.connections)


if __name__ == "__main__":
    main()
