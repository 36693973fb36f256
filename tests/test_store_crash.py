"""SIGKILL during a burst of writes: every acknowledged write is there after restart.

Twice: the store alone with four writers and compaction, and the whole daemon (a child
process) under syslog load and control-API writes, killed five times at random moments.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
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


# --- the whole daemon, SIGKILLed under load, again and again -----------------------------------

DAEMON_KEY = "crash-key"


class KilledDaemon:
    """The console daemon in a child process, on the given data dir, with its bound ports."""

    def __init__(self, data_dir: str) -> None:
        env = {**os.environ, "LOGPLEX_AUTH_KEY": DAEMON_KEY, "PYTHONPATH": os.getcwd()}
        args = ["--data-dir", data_dir]
        for flag in ("--api-addr", "--logs-addr", "--syslog-addr"):
            args += [flag, "127.0.0.1:0"]
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from logplexd.cli import main; sys.exit(main())"]
            + args,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        # A thread reads its stderr (so it never blocks on a full pipe) and finds the ports.
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        seen = []
        while True:
            line = lines.get(timeout=20)
            assert line is not None, f"the daemon exited: {''.join(seen)}"
            seen.append(line)
            ready = re.search(r"api 127\.0\.0\.1:(\d+).*syslog 127\.0\.0\.1:(\d+)", line)
            if ready:
                self.api, self.syslog = int(ready.group(1)), int(ready.group(2))
                break

    def _read(self, lines: queue.Queue[str | None]) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            lines.put(line)
        lines.put(None)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def api_call(port: int, method: str, path: str, body: object = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = None if body is None else json.dumps(body)
        headers = {"Authorization": f"Basic {DAEMON_KEY}", "Content-Type": "application/json"}
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw.strip().startswith(b"{") else {})
    finally:
        connection.close()


@dataclasses.dataclass
class Acknowledged:
    """Every change the API answered 2xx to, and the channels whose fate is unknown (a
    request that was in flight when the daemon died may or may not have taken effect)."""

    channels: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> token id
    drains: dict[int, str] = dataclasses.field(default_factory=dict)  # id -> channel
    deleted: set[str] = dataclasses.field(default_factory=set)
    unknown: set[str] = dataclasses.field(default_factory=set)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def api_writer(port: int, prefix: str, acked: Acknowledged, stop: threading.Event) -> None:
    """Create a channel, give it a drain, delete every third one; until the daemon dies."""
    i = 0
    while not stop.is_set():
        name = f"{prefix}-{i}"
        step = "create"
        try:
            status, body = api_call(port, "PUT", f"/v3/channels/{name}", {"tokens": ["web"]})
            assert status == 201, (status, body)
            with acked.lock:
                acked.channels[name] = body["tokens"]["web"]
            step = "drain"
            url = f"syslog://127.0.0.1:9/{i}"
            status, body = api_call(port, "POST", f"/v3/channels/{name}/drains", {"url": url})
            assert status == 201, (status, body)
            with acked.lock:
                acked.drains[int(body["id"])] = name
            if i % 3 == 2:
                step = "delete"
                status, _ = api_call(port, "DELETE", f"/v3/channels/{name}")
                assert status in (200, 204), status
                with acked.lock:
                    acked.deleted.add(name)
        except (OSError, http.client.HTTPException):
            # The daemon died during this request: it may or may not have been applied.
            with acked.lock:
                if step in ("create", "delete"):
                    acked.unknown.add(name)
            return
        i += 1


def syslog_load(port: int, tokens: list[str], stop: threading.Event) -> None:
    """As many frames as one connection takes, round-robin over the channels' tokens."""
    frames = b"".join(
        b"%d %s" % (len(line), line)
        for line in (
            f"<134>1 2024-01-01T00:00:00Z host {token} web.1 - - load {k}".encode()
            for k, token in enumerate(tokens * 50)
        )
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            while not stop.is_set():
                sock.sendall(frames)
    except OSError:
        pass  # the daemon died


def check_store(data_dir: str, acked: Acknowledged) -> None:
    store = open_store(data_dir)  # it opens, every time
    try:
        for name, token_id in acked.channels.items():
            if name in acked.unknown:
                continue
            if name in acked.deleted:
                assert store.channel(name) is None, f"deleted channel {name} is back"
                continue
            assert store.channel(name) is not None, f"acknowledged channel {name} lost"
            token = store.token(token_id)
            assert token is not None and token.channel == name
        for drain_id, name in acked.drains.items():
            if name in acked.unknown or name in acked.deleted:
                continue
            drain = store.drain(drain_id)
            assert drain is not None and drain.channel == name, f"drain {drain_id} lost"
        drain_ids = [d.id for d in store.drains()]
        assert len(drain_ids) == len(set(drain_ids))
    finally:
        store.close()


def test_daemon_sigkilled_under_load_keeps_every_acknowledged_change(tmp_path, rng):
    data_dir = str(tmp_path / "data")
    acked = Acknowledged()
    for round_number in range(5):
        daemon = KilledDaemon(data_dir)
        try:
            if round_number == 0:
                for k in range(8):  # channels for the syslog load
                    status, body = api_call(
                        daemon.api, "PUT", f"/v3/channels/load-{k}", {"tokens": ["web"]}
                    )
                    assert status == 201
                    acked.channels[f"load-{k}"] = body["tokens"]["web"]
            # What survived the last kill is served by the restarted daemon too.
            for name in list(acked.channels)[:: max(1, len(acked.channels) // 20)]:
                if name not in acked.unknown:
                    status, _ = api_call(daemon.api, "GET", f"/v3/channels/{name}")
                    assert status == (404 if name in acked.deleted else 200), name
            stop = threading.Event()
            load_tokens = [acked.channels[f"load-{k}"] for k in range(8)]
            threads = [
                threading.Thread(target=syslog_load, args=(daemon.syslog, load_tokens, stop))
                for _ in range(2)
            ] + [
                threading.Thread(
                    target=api_writer, args=(daemon.api, f"r{round_number}w{k}", acked, stop)
                )
                for k in range(3)
            ]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.4, 1.5))  # a random moment under full load
        finally:
            daemon.kill()
        stop.set()
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive()
        check_store(data_dir, acked)
    # Enough happened for the test to mean something.
    print(
        f"acknowledged: {len(acked.channels)} channels, {len(acked.drains)} drains, "
        f"{len(acked.deleted)} deletions; {len(acked.unknown)} unknown"
    )
    assert len(acked.drains) > 30 and len(acked.deleted) > 5, acked
