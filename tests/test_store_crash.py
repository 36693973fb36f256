"""SIGKILL during a burst of writes: every acknowledged write is there after restart."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from logplexd.store import open_store

# Four concurrent writers (so flushes are shared), compaction running all the while.
WRITER = """
import sys
import trio
from logplexd.store import open_store

async def writer(store, prefix):
    i = 0
    while True:
        name = f"{prefix}-{i}"
        put = await store.put_channel(name, ["web"])
        drain = await store.create_drain(name, f"syslog://h{i}.example", max_drains=6)
        print(name, put.tokens[0].id, drain.id, flush=True)
        i += 1

async def main():
    store = open_store(sys.argv[1], compact_min_bytes=8192)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: store.maintain(interval=0.005))
        for k in range(4):
            nursery.start_soon(writer, store, f"{sys.argv[2]}{k}")

trio.run(main)
"""


def run_and_kill(data_dir: str, prefix: str, rng: random.Random) -> list[tuple[str, str, int]]:
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, data_dir, prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # the child is up and writing
    time.sleep(rng.uniform(0.02, 0.25))
    process.send_signal(signal.SIGKILL)
    rest = process.stdout.read()
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()  # type: ignore[union-attr]
    acknowledged = []
    lines = (first + rest).decode().split("\n")
    # The kill can land in the middle of a print: a line without its newline says nothing.
    for line in lines[:-1]:
        name, token, drain = line.split()
        acknowledged.append((name, token, int(drain)))
    return acknowledged


def test_acknowledged_writes_survive_sigkill(tmp_path, rng):
    data_dir = str(tmp_path)
    acknowledged: list[tuple[str, str, int]] = []
    for round_number in range(4):
        acknowledged += run_and_kill(data_dir, f"r{round_number}w", rng)
        store = open_store(data_dir)
        try:
            for name, token_id, drain_id in acknowledged:
                assert store.channel(name) is not None, name
                token = store.token(token_id)
                assert token is not None and token.channel == name and token.name == "web"
                drain = store.drain(drain_id)
                assert drain is not None and drain.channel == name
            # Ids are never handed out twice, even across crashes.
            drain_ids = [d.id for d in store.drains()]
            assert len(drain_ids) == len(set(drain_ids))
        finally:
            store.close()
    assert len(acknowledged) > 20
