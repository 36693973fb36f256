#!/usr/bin/env python3
"""Several nodes (issue 11): logplexd embedded vs one node + Redis vs two nodes + Redis.

Run from the repository root (one command; ~5 minutes; writes bench/RESULTS.md)::

    python bench/bench_nodes.py
    python bench/bench_nodes.py --setups embedded,redis-1,redis-2,cluster-2   # + Redis Cluster
    python bench/bench_nodes.py --quick        # smoke run: small, one run, no RESULTS.md
    python bench/bench_nodes.py --base-tree /tmp/base   # + the Redis set-ups of an older tree

End to end as ``bench/e2e/run.py`` (whose C producer ``loadgen.c``, C sink ``sink.c`` and
process helpers this reuses): TCP syslog in -> logplexd -> ``syslog://`` drain -> sink, all
on loopback, the sink checking every stream for loss and duplicates. Three set-ups:

* ``embedded``: one node, the embedded store (the default; no Redis at all);
* ``1 node + Redis``: one node with ``--store-url redis://...`` (Redis mode: history, tails
  and drains go through Redis as the daemon does it at the time of the run);
* ``2 nodes + Redis``: two nodes sharing that Redis; the channels are created on node 1;
* ``cluster-2`` (only when asked: ``--setups embedded,redis-1,redis-2,cluster-2``): the
  same two nodes on a three-master Redis Cluster (``redis-cli --cluster create``), Redis
  figures summed over the masters.

The load is the same in all three: two loadgen processes, each with half the connections
and half the messages, each on its own token of every channel (so the sink tells their
streams apart by the APP-NAME, the token's name). With two nodes, loadgen 1 sends to node 1
and loadgen 2 to node 2, so a drain owned by one node delivers the other node's messages.

Measured per run: msgs/s at the sink (messages / (last receive - first send)); CPU seconds
per million messages of the logplexd processes (utime+stime from /proc, summed over nodes)
and of redis-server (INFO cpu); and, all per 1,000 messages:

* **round trips**, counted by the client: each node's ``GET /metrics``
  ``logplexd_redis_round_trips_total{kind}`` (one request and its reply, or one pipeline,
  per Redis server it went to) before and after the load, summed over the nodes, in all
  and by kind (write, follow, history, lease, checkpoint, probe, other);
* from Redis, ``INFO`` before and after the load: commands (``INFO commandstats`` calls,
  per command), bytes in and out (``total_net_input_bytes`` / ``total_net_output_bytes``)
  and "Redis read events" (``total_reads_processed``).

Redis read events are not round trips: Redis reads a client's query buffer 16 KB at a time
(``PROTO_IOBUF_LEN``; a bulk argument of 32 KB or more is read whole), so one pipelined
request counts one read per 16 KB or so. Measured with ``bench/redis_reads.py`` (Debian's
redis-server 7.0.15, one ``sendall`` and one wait for the replies each): 2,000 pipelined
``SET``s of 154,000 bytes -> 8 reads; one ``SET`` of a 200 KB value -> 4 reads; one
``PING`` -> 1 read. The column is kept (it is what reading costs Redis), under its name.

All of these include the background traffic of the run's seconds (change-stream reads,
lease renewals, probes), which is also measured alone, on idle nodes, and reported per
second.

``--base-tree DIR`` also runs the Redis set-ups with the daemon of another checkout (built
in place: ``git worktree add /tmp/base REV && (cd /tmp/base && python setup.py build_ext
--inplace)``), started as ``bench/e2e/run.py`` starts ``logplexd-base`` (``python -m
logplexd.cli`` with ``PYTHONPATH`` and the working directory set to DIR). Those rows are
labelled ``(base)``; the repetitions alternate between the two daemons, so before/after
ratios come from one run on one machine. A daemon without the round-trip metrics (older
than them) shows "-" in those columns.

redis-server runs with ``--save "" --appendonly no`` (no disk: what is measured is the
network and CPU cost of the protocol, not the disk of this machine).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench/ (tails.py) and the repository

import tails  # noqa: E402  (bench/tails.py: loads bench/e2e/run.py)

e2e = tails.load_e2e()

RESULTS = HERE / "RESULTS.md"
HEADING = "## Several nodes (issue 11)"
REDIS_SERVER = shutil.which("redis-server")
SETUPS = ["embedded", "redis-1", "redis-2", "cluster-2"]
DEFAULT_SETUPS = SETUPS[:3]
SETUP_LABELS = {
    "embedded": "1 node, embedded store",
    "redis-1": "1 node + Redis",
    "redis-2": "2 nodes + Redis",
    "cluster-2": "2 nodes + Redis Cluster (3 masters)",
}
WORKLOADS = {
    "ch1": e2e.Workload("ch1", "8 conns, 1 channel, 1 drain, 120 B", 8, 1, 1, 120),
    "ch1000": e2e.Workload("ch1000", "8 conns, 1,000 channels x 1 drain, 120 B", 8, 1000, 1, 120),
}
TOKEN_NAMES = ("a", "b")  # one per loadgen process


def _keep() -> int:
    from logplexd.config import Settings

    return int(Settings().channel_buffer_messages)


# Messages a channel's stream keeps (the daemon's default trimming point).
KEEP = _keep()


# ---------------------------------------------------------------------------------------------
# Redis


# One command to a redis-server; its reply's payload (``bench/e2e/run.py``).
resp = e2e.resp


class Redis:
    """One redis-server on loopback, started and stopped by pid."""

    def __init__(self, workdir: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.port = port or e2e.free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir()
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if REDIS_SERVER is None:
            raise e2e.Skip("redis-server not found (apt-get install redis-server)")
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", str(self.dir), "--save", "", "--appendonly", "no",
               "--logfile", str(self.dir / "redis.log"), *self.extra]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError):
                if resp(self.port, "PING", timeout=0.5) == b"PONG":
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise e2e.HarnessError(
                    f"redis-server did not start:\n{e2e.tail(self.dir / 'redis.log')}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        e2e.stop_process(self.proc, wait=5.0)

    def counters(self) -> dict[str, float]:
        """The cumulative counters compared before and after a run."""
        info: dict[str, str] = {}
        reply = resp(self.port, "INFO", "all")
        for line in reply.decode().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                info[key] = value
        out = {
            # Read events, not round trips: see the module docstring.
            "read_events": float(info["total_reads_processed"]),
            "commands": float(info["total_commands_processed"]),
            "bytes_in": float(info["total_net_input_bytes"]),
            "bytes_out": float(info["total_net_output_bytes"]),
            "cpu": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            "memory": float(info["used_memory"]),
            # What this INFO call itself adds to the next reading (see difference()).
            "_reply": float(len(reply) + len(b"$%d\r\n\r\n" % len(reply))),
        }
        for key, value in info.items():
            if key.startswith("cmdstat_"):
                calls = dict(kv.split("=") for kv in value.split(","))
                out["cmd:" + key.removeprefix("cmdstat_")] = float(calls["calls"])
                out["usec:" + key.removeprefix("cmdstat_")] = float(calls["usec"])
        return out


# What one ``INFO all`` of the harness costs Redis, taken out of every difference: 2 read events
# (the request, then the close), 1 command, the 23-byte request, and its reply (counted in
# the next reading, since the reply is written after the figures were taken).
_OWN = {"read_events": 2.0, "commands": 1.0, "cmd:info": 1.0, "bytes_in": 23.0}


class Cluster:
    """Three redis-server masters formed into a Redis Cluster (``redis-cli --cluster
    create``); the counters are the sums over the three."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.servers = []
        for _ in range(masters):
            port = _cluster_port()
            extra = ("--cluster-enabled", "yes", "--cluster-config-file",
                     str(workdir / f"nodes-{port}.conf"))  # fmt: skip
            self.servers.append(Redis(workdir, port, extra))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise e2e.Skip("redis-cli not found (apt-get install redis-tools)")
        for server in self.servers:
            server.start()
        nodes = [f"127.0.0.1:{s.port}" for s in self.servers]
        subprocess.run([cli, "--cluster", "create", *nodes, "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, timeout=60)  # fmt: skip
        deadline = time.monotonic() + 30
        while not all(b"cluster_state:ok" in resp(s.port, "CLUSTER", "INFO") for s in self.servers):
            if time.monotonic() > deadline:
                raise e2e.HarnessError("the Redis Cluster did not become ready")
            time.sleep(0.05)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def counters(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for server in self.servers:
            for key, value in server.counters().items():
                total[key] = total.get(key, 0.0) + value
        return total


def _cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free as well."""
    import random

    for _ in range(1000):
        port = random.randrange(20000, 30000)
        ok = True
        for candidate in (port, port + 10000):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", candidate))
                except OSError:
                    ok = False
        if ok:
            return port
    raise e2e.HarnessError("no free port pair for a cluster node")


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    out = {
        k: v - before.get(k, 0.0) - _OWN.get(k, 0.0)
        for k, v in after.items()
        if k not in ("memory", "_reply")
    }
    out["bytes_out"] -= before["_reply"]
    return out


# ---------------------------------------------------------------------------------------------
# nodes


class Node(e2e.Logplexd):
    """One ``logplexd serve``; with a Redis URL, in Redis mode under ``node_id``."""

    # ``tree`` (from e2e.Logplexd): None runs this checkout; BaseNode sets --base-tree.

    def __init__(self, workdir: Path, wl: e2e.Workload, sink_port: int, name: str) -> None:
        workdir = workdir / name
        workdir.mkdir()
        super().__init__(workdir, wl, sink_port)
        self.node_name = name

    def start_node(self, store_url: str | None) -> int:
        extra = ["--store-url", store_url, "--node-id", self.node_name] if store_url else []
        data = self.workdir / "data"
        data.mkdir()
        _, syslog, _ = self.launch(data, *extra, timeout=60.0)
        return syslog

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=30)
        headers = {"Authorization": f"Basic {self.key}", "Content-Type": "application/json"}
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers=headers)  # fmt: skip
            resp_ = conn.getresponse()
            return resp_.status, resp_.read()
        finally:
            conn.close()

    def provision(self) -> dict[str, list[str]]:
        """Channels ``bench-i`` with one token per loadgen and the drains; the tokens by name."""
        tokens: dict[str, list[str]] = {name: [] for name in TOKEN_NAMES}
        for i in range(self.wl.channels):
            status, body = self.request(
                "PUT", f"/v3/channels/bench-{i}", {"tokens": list(TOKEN_NAMES)}
            )
            if status != 201:
                raise e2e.HarnessError(f"PUT channel: {status} {body[:200]!r}")
            reply = json.loads(body)
            for name in TOKEN_NAMES:
                tokens[name].append(reply["tokens"][name])
            for d in range(self.wl.drains):
                url = f"syslog://127.0.0.1:{self.sink_port}/{d}"
                status, body = self.request("POST", f"/v3/channels/bench-{i}/drains", {"url": url})
                if status != 201:
                    raise e2e.HarnessError(f"POST drain: {status} {body[:200]!r}")
        return tokens

    def plane_counters(self) -> dict[str, float] | None:
        """The data plane's counters from ``GET /metrics`` (keys ``trip:<kind>`` and
        ``written``, ``entries``, ``read``); None when this daemon has no round-trip metrics
        (an older tree)."""
        from prometheus_client.parser import text_string_to_metric_families

        status, body = self.request("GET", "/metrics")
        if status != 200:
            raise e2e.HarnessError(f"{self.node_name}: GET /metrics: {status}")
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == "logplexd_redis_round_trips_total":
                    out["trip:" + sample.labels["kind"]] = sample.value
                elif sample.name in _PLANE_SAMPLES:
                    out[_PLANE_SAMPLES[sample.name]] = sample.value
        return out if any(k.startswith("trip:") for k in out) else None

    def wait_channel(self, name: str, timeout: float = 30.0) -> None:
        """Until this node knows channel ``name`` (a change made on another node)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.request("GET", f"/v3/channels/{name}")[0] == 200:
                    return
            time.sleep(0.05)
        raise e2e.HarnessError(f"{self.node_name} did not learn channel {name} in {timeout} s")


class BaseNode(Node):
    """A node of the ``--base-tree`` checkout (``tree`` is set from the option)."""


_PLANE_SAMPLES = {
    "logplexd_redis_stream_messages_written_total": "written",
    "logplexd_redis_stream_entries_written_total": "entries",
    "logplexd_redis_stream_messages_read_total": "read",
    # One Redis: entries written as plain XADDs behind PROPOSE, and proposals refused
    # because another node wrote the channel since (docs/SCALING.md, "The frames outside
    # Lua"); absent from a tree older than them.
    "logplexd_redis_stream_entries_proposed_total": "proposed",
    "logplexd_redis_proposals_moved_total": "moved",
}


def check_alive(nodes: list[Node]) -> None:
    """Fail the run if a node died during it (with the end of its log)."""
    for node in nodes:
        if node.proc is not None and node.proc.poll() is not None:
            raise e2e.HarnessError(f"{node.node_name} died:\n{e2e.tail(node.log_path)}")


def plane_counters(nodes: list[Node]) -> dict[str, float] | None:
    """``Node.plane_counters`` summed over the nodes (None if one has none)."""
    total: dict[str, float] = {}
    for node in nodes:
        counters = node.plane_counters()
        if counters is None:
            return None
        for key, value in counters.items():
            total[key] = total.get(key, 0.0) + value
    total["trips"] = sum(v for k, v in total.items() if k.startswith("trip:"))
    return total


def counters_delta(
    after: dict[str, float] | None, before: dict[str, float] | None
) -> dict[str, float] | None:
    if after is None or before is None:
        return None
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


@dataclass
class NodesRun:
    rate: float
    delivered: int
    expected: int
    lost: int
    duplicates: int
    l10: int
    node_cpu: float
    redis: dict[str, float] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)  # per second, nodes idle
    rss_kb: list[int] = field(default_factory=list)
    redis_memory: float = 0.0
    redis_growth: float = 0.0  # used_memory after the load - before it
    held: int = 0  # messages the streams still hold after the load (kept per channel)
    # Client-side counters (``plane_counters``) during the load, and per second while idle;
    # None: embedded, or a daemon without the metrics.
    plane: dict[str, float] | None = None
    idle_plane: dict[str, float] | None = None

    def per_million(self, seconds: float) -> float:
        return seconds / (self.delivered / 1e6) if self.delivered else float("nan")

    def per_thousand(self, key: str) -> float:
        return self.redis.get(key, 0.0) / (self.delivered / 1e3) if self.delivered else 0.0

    def plane_per_thousand(self, key: str) -> float:
        if self.plane is None or not self.delivered:
            return float("nan")
        return self.plane.get(key, 0.0) / (self.delivered / 1e3)


def run_nodes(
    setup: str,
    wl: e2e.Workload,
    messages: int,
    tools: tuple[Path, Path],
    idle_timeout: float,
    idle_window: float,
    base: bool = False,
    prefill: int = 0,
) -> NodesRun:
    """One run of ``setup``; ``base``: with the daemon of ``--base-tree`` (``BaseNode``).
    ``prefill``: messages sent (and delivered) after the idle window, before the timed
    part, as ``bench/e2e/run.py --prefill`` does: rings and streams as full as a node's
    that has run for a while."""
    loadgen, sink_exe = tools
    node_class = BaseNode if base else Node
    expected = messages * wl.drains
    budget = 60.0 + messages / 10_000
    prefill -= prefill % len(TOKEN_NAMES)  # each loadgen sends its share
    prefill_budget = 60.0 + prefill / 10_000
    with tempfile.TemporaryDirectory(prefix=f"nodes-{setup}-") as tmp:
        workdir = Path(tmp)
        sink = None
        redis: Redis | Cluster | None = None
        nodes: list[Node] = []
        try:
            prefilled = ("-P", str(prefill * wl.drains)) if prefill else ()
            sink, sink_port = e2e.start_sink(
                sink_exe,
                expected + prefill * wl.drains,
                idle_timeout,
                budget + prefill_budget,
                prefilled,
            )
            url = None
            if setup != "embedded":
                redis = Cluster(workdir) if setup.startswith("cluster") else Redis(workdir)
                redis.start()
                url = redis.url
            count = 2 if setup.endswith("-2") else 1
            nodes = [node_class(workdir, wl, sink_port, f"n{i + 1}") for i in range(count)]
            ports = [node.start_node(url) for node in nodes]
            tokens = nodes[0].provision()
            for node in nodes[1:]:
                node.wait_channel(f"bench-{wl.channels - 1}")
            idle: dict[str, float] = {}
            idle_plane: dict[str, float] | None = None
            if redis is not None:
                # Background traffic alone: the nodes idle with the channels and drains.
                time.sleep(1.0)
                before = redis.counters()
                plane_before = plane_counters(nodes)
                time.sleep(idle_window)
                idle = {k: v / idle_window for k, v in difference(redis.counters(), before).items()}
                idle_delta = counters_delta(plane_counters(nodes), plane_before)
                if idle_delta is not None:
                    idle_plane = {k: v / idle_window for k, v in idle_delta.items()}
            loads = []
            for i, name in enumerate(TOKEN_NAMES):
                token_file = workdir / f"tokens-{name}"
                token_file.write_text("\n".join(tokens[name]) + "\n")
                port = ports[i % len(ports)]
                loads.append([str(loadgen), "-H", "127.0.0.1", "-p", str(port),
                              "-c", str(max(1, wl.conns // 2)), "-s", str(wl.size),
                              "-T", str(token_file), "-w", "1.0"])  # fmt: skip
            if prefill:
                send_prefill(loads, prefill, sink, prefill_budget)
            cpu0 = [e2e.cpu_seconds(node.pid) for node in nodes]
            redis0 = redis.counters() if redis is not None else {}
            plane0 = plane_counters(nodes) if redis is not None else None
            timed = [[*cmd, "-n", str(messages // 2)] for cmd in loads]
            results = [
                json.loads(out.strip().splitlines()[-1])
                for out in run_loadgens(timed, budget, "loadgen")
            ]
            try:
                out_b, _ = sink.communicate(timeout=budget + 150)
            except subprocess.TimeoutExpired:
                raise e2e.HarnessError("sink did not report") from None
            sk = json.loads(out_b.decode().strip().splitlines()[-1])
            if sk["lost"] or sk["l10_dropped"]:
                # Where a lossy run lost them (as bench/e2e/run.py prints them).
                for node in nodes:
                    counters = node.loss_counters()
                    e2e.log(f"[{setup}] {node.node_name} loss counters: " + ", ".join(counters))
            node_cpu = sum(e2e.cpu_seconds(n.pid) - c for n, c in zip(nodes, cpu0, strict=True))
            rss = [e2e.peak_rss_kb(n.pid) for n in nodes]
            redis_delta: dict[str, float] = {}
            memory = growth = 0.0
            plane_delta = None
            if redis is not None:
                plane_delta = counters_delta(plane_counters(nodes), plane0)
                after = redis.counters()
                redis_delta = difference(after, redis0)
                memory = after["memory"]
                growth = after["memory"] - redis0["memory"]
            check_alive(nodes)
        finally:
            for node in nodes:
                node.stop()
            if redis is not None:
                redis.stop()
            e2e.stop_process(sink, wait=5.0)
    start = min(r["start_ts"] for r in results)
    span = sk["last_ts"] - start
    # The sink counts the prefill's messages too (their own streams, delivered first).
    delivered = sk["received"] - prefill * wl.drains
    rate = delivered / span if span > 0 and delivered > 0 else 0.0
    return NodesRun(
        rate=rate, delivered=delivered, expected=expected, lost=sk["lost"],
        duplicates=sk["duplicates"], l10=sk["l10_dropped"], node_cpu=node_cpu,
        redis=redis_delta, idle=idle, rss_kb=rss, redis_memory=memory, redis_growth=growth,
        held=wl.channels * min((messages + prefill) // wl.channels, KEEP),
        plane=plane_delta, idle_plane=idle_plane,
    )  # fmt: skip


def run_loadgens(cmds: list[list[str]], budget: float, what: str) -> list[str]:
    """Run the loadgen commands ``cmds`` at once; their outputs once all have finished (a
    HarnessError naming ``what`` if one fails or outlasts ``budget``)."""
    procs = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        for cmd in cmds
    ]
    outs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            for p in procs:
                e2e.stop_process(p, signal.SIGKILL)
            raise e2e.HarnessError(
                f"{what} did not finish within {budget:.0f} s (a node stopped reading?)"
            ) from None
        if proc.returncode != 0:
            raise e2e.HarnessError(f"{what} failed rc={proc.returncode}: {err.strip()}")
        outs.append(out)
    return outs


def send_prefill(
    loads: list[list[str]], messages: int, sink: subprocess.Popen, budget: float
) -> None:
    """Send ``messages`` in all with the loadgen commands ``loads`` (without ``-n``; each
    its share, at once, numbered from ``e2e.PREFILL_FIRST_CONN``) and return once the sink
    says it has them all."""
    share = str(messages // len(loads))
    first = str(e2e.PREFILL_FIRST_CONN)
    run_loadgens([[*cmd, "-n", share, "-C", first] for cmd in loads], budget, "the prefill")
    line = json.loads(e2e.read_line(sink, budget))
    if "prefilled" not in line:
        raise e2e.HarnessError(f"the sink said {line} instead of the prefill's end")


# ---------------------------------------------------------------------------------------------
# loading the configuration from Redis


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def store_load(channels: int) -> dict[str, float]:
    """``channels`` channels with 2 tokens each and a drain on every second one, written
    straight into Redis in the store's format (as bench_api.py startup does for the
    embedded store); then one RedisStore loads them (HSCAN) as a node does at start.
    Measured: Redis memory per channel, load time, and this process's RSS growth (the
    node's in-memory copy; the routing index comes on top, see bench_api.py startup)."""
    import gc

    import msgpack
    import trio

    from logplexd.store import RedisStore

    pack = msgpack.Packer(use_bin_type=True).pack
    with tempfile.TemporaryDirectory(prefix="nodes-load-") as tmp:
        redis = Redis(Path(tmp))
        redis.start()
        try:
            empty = redis.counters()["memory"]

            async def fill() -> None:
                from logplexd.store._redis_client import open_redis

                client = open_redis(redis.url)
                async with client:
                    tag = "logplex:{cfg}:"
                    seq = 0
                    for start in range(0, channels, 1000):
                        names = [f"app-{i:07d}" for i in range(start, min(channels, start + 1000))]
                        chans, tokens, drains = {}, {}, {}
                        for i, name in enumerate(names, start):
                            chans[name] = pack([None, []])
                            for t in ("web", "worker"):
                                seq += 1
                                tokens[f"t.{seq:08d}-0000-4000-8000-{i:012d}"] = pack(
                                    [name, t, seq]
                                )
                            if i % 2 == 0:
                                drains[str(i // 2 + 1)] = pack(
                                    [name, f"d.{i:08d}-0000-4000-8000-000000000000",
                                     f"syslog://logs{i}.example.com:514"]
                                )  # fmt: skip
                        await client.hset(tag + "channels", chans)
                        await client.hset(tag + "tokens", tokens)
                        if drains:
                            await client.hset(tag + "drains", drains)
                    await client.set(tag + "token_index", str(seq))
                    await client.set(tag + "drain_index", str((channels + 1) // 2))

            trio.run(fill)
            filled = redis.counters()["memory"]
            gc.collect()
            before = rss_kb()
            store = RedisStore(redis.url, node_id="load")

            async def load() -> float:
                async with trio.open_nursery() as nursery:
                    started = time.monotonic()
                    await nursery.start(store.maintain)
                    took = time.monotonic() - started
                    if store.failure is not None:
                        raise e2e.HarnessError(f"load failed: {store.failure}")
                    nursery.cancel_scope.cancel()
                return took

            took = trio.run(load)
            gc.collect()
            grown = rss_kb() - before
            loaded = sum(1 for _ in store.channels())

            async def writes(count: int = 2000) -> float:
                """Sequential control-API-like writes (channel + 1 token), one store."""
                writer = RedisStore(redis.url, node_id="writer")
                async with trio.open_nursery() as nursery:
                    await nursery.start(writer.maintain)
                    started = time.monotonic()
                    for i in range(count):
                        await writer.put_channel(f"w-{i}", ["web"])
                    rate = count / (time.monotonic() - started)
                    nursery.cancel_scope.cancel()
                return rate

            write_rate = trio.run(writes)
        finally:
            redis.stop()
    if loaded != channels:
        raise e2e.HarnessError(f"loaded {loaded} of {channels} channels")
    return {
        "channels": channels,
        "load_s": took,
        "redis_bytes_per_channel": (filled - empty) / channels,
        "rss_bytes_per_channel": grown * 1024 / channels,
        "writes_per_s": write_rate,
    }


# ---------------------------------------------------------------------------------------------
# report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[NodesRun]) -> dict:
    out: dict = {
        "rate": median([r.rate for r in runs]),
        "rate_min": min(r.rate for r in runs),
        "rate_max": max(r.rate for r in runs),
        "node_cpu": median([r.per_million(r.node_cpu) for r in runs]),
        "lost": max(r.lost for r in runs),
        "dups": max(r.duplicates for r in runs),
        "l10": max(r.l10 for r in runs),
        "rss_mb": max(max(r.rss_kb) for r in runs) / 1024,
        "runs": len(runs),
    }
    if runs[0].redis:
        out["redis_cpu"] = median([r.per_million(r.redis.get("cpu", 0.0)) for r in runs])
        for key in ("read_events", "commands", "bytes_in", "bytes_out"):
            out[key] = median([r.per_thousand(key) for r in runs])
        commands: dict[str, float] = {}
        for key in runs[0].redis:
            if key.startswith("cmd:"):
                value = median([r.per_thousand(key) for r in runs])
                if value >= 0.01:
                    commands[key[4:]] = value
        out["by_command"] = dict(sorted(commands.items(), key=lambda kv: -kv[1]))
        out["usec_per_call"] = {
            name: median(
                [r.redis[f"usec:{name}"] / r.redis[f"cmd:{name}"] for r in runs
                 if r.redis.get(f"cmd:{name}")]
            )
            for name in commands
        }  # fmt: skip
        out["idle_cpu_per_s"] = median([r.idle.get("cpu", 0.0) for r in runs])
        out["idle"] = {
            k: median([r.idle.get(k, 0.0) for r in runs])
            for k in ("read_events", "commands", "bytes_in", "bytes_out")
        }
        out["idle_commands"] = {
            k[4:]: v
            for k in runs[0].idle
            if k.startswith("cmd:") and (v := median([r.idle.get(k, 0.0) for r in runs])) >= 0.05
        }
        out["redis_mb"] = max(r.redis_memory for r in runs) / 2**20
        out["bytes_per_held"] = median([r.redis_growth / r.held for r in runs if r.held])
        if all(r.plane is not None for r in runs):
            keys = sorted(runs[0].plane or {})
            out["plane"] = {k: median([r.plane_per_thousand(k) for r in runs]) for k in keys}
        if all(r.idle_plane is not None for r in runs):
            keys = sorted(runs[0].idle_plane or {})
            out["idle_plane"] = {
                k: median([(r.idle_plane or {}).get(k, 0.0) for r in runs]) for k in keys
            }
    return out


def label(variant: str) -> str:
    """``redis-1`` -> its description; ``redis-1 (base)`` -> the same, marked (base)."""
    setup, base, _ = variant.partition(" (base)")
    return SETUP_LABELS[setup] + (" **(base)**" if base else "")


def by_kind(plane: dict[str, float], digits: int = 2) -> str:
    """Non-zero round trips by kind, largest first."""
    kinds = sorted(
        ((k[5:], v) for k, v in plane.items() if k.startswith("trip:") and v > 0),
        key=lambda kv: -kv[1],
    )
    return ", ".join(f"{k} {v:.{digits}f}" for k, v in kinds) or "0"


def plane_figure(s: dict, key: str, digits: int = 2) -> str:
    """A client-side figure, or "-" (embedded, or a daemon without the metrics)."""
    plane = s.get("plane")
    return fmt(plane.get(key, float("nan")), digits) if plane else "-"


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def versus_embedded(numbered: dict[str, dict[int, NodesRun]], name: str) -> dict | None:
    """Same-run ratios (``e2e.ratios_of``) of set-up ``name`` against the embedded node,
    repetition by repetition (each repetition ran every set-up in turn); None for the
    embedded node itself or without it."""
    embedded = numbered.get("embedded")
    if name == "embedded" or not embedded:
        return None

    def figures(run: NodesRun) -> e2e.RunFigures:
        return run.rate, run.per_million(run.node_cpu), bool(run.lost or run.duplicates)

    return e2e.ratios_of(
        [(figures(run), figures(embedded[i])) for i, run in numbered[name].items() if i in embedded]
    )


def report(results: dict[tuple[str, str], dict], args: argparse.Namespace) -> str:
    lines = [
        HEADING,
        "",
        f"`{shlex.join(['python', 'bench/bench_nodes.py', *sys.argv[1:]])}` "
        f"({dt.date.today().isoformat()}, {e2e.cpu_model()}, "
        f"{os.cpu_count()} cores shared by everything: the nodes, redis-server, loadgen and "
        f"the sink). {args.messages:,} messages of 120 B per run"
        + (f", after {args.prefill:,} not timed (`--prefill`)" if args.prefill else "")
        + f", median of {args.runs} runs "
        "(min-max for the rate). Same load in every set-up: two loadgen processes of 4 "
        "connections each, each on its own token; with 2 nodes each loadgen sends to its own "
        "node. CPU = utime+stime of the logplexd processes (all nodes summed) and of "
        "redis-server, per million messages delivered. Per 1,000 messages delivered: round "
        "trips counted by the nodes (`logplexd_redis_round_trips_total` from each node's "
        "/metrics before/after the load, summed; one request+reply or one pipeline per "
        "Redis server); commands, bytes and read events from Redis INFO before/after. "
        "Redis read events (`total_reads_processed`) are not round trips: Redis reads a "
        "query buffer 16 KB at a time, so one pipeline of 2,000 SETs (154 KB) counts 8 and "
        "one 200 KB SET 4 (`python bench/redis_reads.py`, redis-server 7.0). All include "
        "the background traffic of those seconds, shown alone in the second table. "
        '"(base)": the daemon of `--base-tree`, runs alternating with this tree\'s; "-": '
        "no such figure (embedded, or a daemon without the round-trip metrics).",
        "",
        "| workload | set-up | msgs/s at sink | logplexd CPU s / M msgs | Redis CPU s / M msgs "
        "| round trips / 1k msgs | Redis read events / 1k | commands / 1k | bytes in / 1k "
        "| bytes out / 1k | lost / dup / L10 | peak RSS per node |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (wl_key, setup), s in results.items():
        if wl_key == "load":
            continue
        if "error" in s:
            lines.append(f"| {WORKLOADS[wl_key].label} | {label(setup)} | failed: "
                         f"{s['error']} | | | | | | | | | |")  # fmt: skip
            continue
        redis = "redis_cpu" in s
        lines.append(
            f"| {WORKLOADS[wl_key].label} | {label(setup)} "
            f"| {fmt(s['rate'], 0)} ({fmt(s['rate_min'], 0)}-{fmt(s['rate_max'], 0)}) "
            f"| {fmt(s['node_cpu'], 2)} "
            f"| {fmt(s['redis_cpu'], 2) if redis else '-'} "
            f"| {plane_figure(s, 'trips')} "
            f"| {fmt(s['read_events'], 2) if redis else '-'} "
            f"| {fmt(s['commands'], 2) if redis else '-'} "
            f"| {fmt(s['bytes_in'], 0) if redis else '-'} "
            f"| {fmt(s['bytes_out'], 0) if redis else '-'} "
            f"| {s['lost']} / {s['dups']} / {s['l10']} | {fmt(s['rss_mb'], 0)} MB |"
        )
    against = [(k, s["vs_embedded"]) for k, s in results.items() if "vs_embedded" in s]
    if against:
        lines += [
            "",
            "Against the embedded node, repetition by repetition (each ran every set-up in "
            "turn): the median of per-pair ratios (`e2e.ratios_of`; node CPU only, Redis's "
            "own not included):",
            "",
            f"| workload | set-up | {e2e.RATIO_HEAD} |",
            "| --- " * 7 + "|",
        ]
        lines += [
            f"| {WORKLOADS[wl_key].label} | {label(setup)} | {e2e.ratio_cells(got)} |"
            for (wl_key, setup), got in against
        ]
    lines += [
        "",
        "Round trips per 1,000 messages by kind and stream entries written per 1,000 "
        "messages (client side), commands per 1,000 messages during the load, background "
        "traffic per second with the nodes idle (same channels and drains), Redis memory "
        "after the load, and its growth during the load per message the streams still hold "
        f"(each channel keeps its last {KEEP:,}):",
        "",
        "| workload | set-up | round trips / 1k msgs by kind | entries written / 1k "
        "| commands / 1k msgs by name (Redis µs per call) | idle: round trips/s (by kind) "
        "| idle: Redis read events/s | idle: commands/s by name | idle: bytes in+out /s "
        "| idle: Redis CPU | Redis used_memory | growth per message held |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (wl_key, setup), s in results.items():
        if wl_key == "load" or "redis_cpu" not in s:
            continue
        by = ", ".join(
            f"{k} {v:.2f} ({s['usec_per_call'].get(k, float('nan')):.1f} µs)"
            for k, v in list(s["by_command"].items())[:8]
        )
        idle = s["idle"]
        idle_by = ", ".join(f"{k} {v:.1f}" for k, v in list(s["idle_commands"].items())[:6])
        plane = s.get("plane")
        idle_plane = s.get("idle_plane")
        idle_trips = (
            f"{fmt(idle_plane['trips'], 1)} ({by_kind(idle_plane, 1)})" if idle_plane else "-"
        )
        lines.append(
            f"| {WORKLOADS[wl_key].label} | {label(setup)} "
            f"| {by_kind(plane) if plane else '-'} | {plane_figure(s, 'entries')} | {by} "
            f"| {idle_trips} | {fmt(idle['read_events'], 1)} | {idle_by} "
            f"| {fmt(idle['bytes_in'] + idle['bytes_out'], 0)} "
            f"| {fmt(100 * s['idle_cpu_per_s'], 2)} % "
            f"| {fmt(s['redis_mb'], 1)} MB "
            f"| {fmt(s['bytes_per_held'], 0)} B |"
        )
    load = results.get(("load", "load"))
    if load is not None and "error" not in load:
        lines += [
            "",
            f"Configuration loaded from Redis (`store_load`): {load['channels']:,} channels, "
            f"{2 * load['channels']:,} tokens, {load['channels'] // 2:,} drains written into "
            "the `{cfg}` hashes, then one RedisStore loads them (HSCAN) as a node does at "
            f"start: **{load['load_s']:.2f} s**; Redis `used_memory` "
            f"**{load['redis_bytes_per_channel']:,.0f} bytes per channel** (with its 2 "
            "tokens and half a drain); the loading process grew by "
            f"{load['rss_bytes_per_channel']:,.0f} bytes per channel (the in-memory copy; "
            "the routing index comes on top, see bench_api.py startup). Configuration "
            f"writes (`put_channel` with one token, sequential, one node, those "
            f"{load['channels']:,} channels present): **{load['writes_per_s']:,.0f} per s**.",
        ]
    elif load is not None:
        lines += ["", f"Configuration load from Redis failed: {load['error']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--setups", default=",".join(DEFAULT_SETUPS), help=f"from {', '.join(SETUPS)}"
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--idle", type=float, default=10.0, help="sink idle timeout (loss)")
    parser.add_argument(
        "--idle-window", type=float, default=3.0, help="seconds of idle nodes measured alone"
    )
    parser.add_argument(
        "--load-channels", type=int, default=100_000, help="channels for the store load (0: skip)"
    )
    parser.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="N",
        help="before each run's timed part, send N messages and wait for the sink to have "
        "them (rings and streams as full as a long-running node's; 1,000 channels need "
        "17,000,000 to bring every stream to its bound); not timed",
    )
    parser.add_argument("--quick", action="store_true", help="20,000 messages, 1 run, no file")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the summaries as JSON here")
    parser.add_argument(
        "--base-tree",
        type=Path,
        help="also run the Redis set-ups with the daemon of this checkout (built in place), "
        "rows labelled (base)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.runs, args.no_write, args.idle_window = 20_000, 1, True, 1.0
        args.load_channels = min(args.load_channels, 10_000)
    setups = [s for s in args.setups.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    for name in setups:
        if name not in SETUPS:
            parser.error(f"unknown set-up {name!r} (choose from {', '.join(SETUPS)})")
    # (variant name, base?): each set-up, then its base-tree twin (Redis set-ups only).
    variants = [(name, False) for name in setups]
    if args.base_tree is not None:
        tree = args.base_tree.resolve()
        cli = tree / "logplexd"
        if not (cli / "cli.py").is_file() and not (cli / "cli").is_dir():
            parser.error(f"--base-tree {tree}: no logplexd/cli there")
        BaseNode.tree = tree
        variants = [
            v for name in setups
            for v in [(name, False)] + ([(f"{name} (base)", True)] if name != "embedded" else [])
        ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="nodes-tools-") as build:
        tools = e2e.build_tools(Path(build))
        results: dict[tuple[str, str], dict] = {}
        failed = False
        for wl_key in workloads:
            wl = WORKLOADS[wl_key]
            # Repetition by repetition, every variant in turn: a base tree and this one are
            # measured alternately, under the same conditions of the machine.
            # Per variant, its runs by repetition number (``versus_embedded`` pairs them).
            numbered: dict[str, dict[int, NodesRun]] = {name: {} for name, _ in variants}
            errors: dict[str, str] = {}
            for i in range(args.runs):
                for name, base in variants:
                    if name in errors:
                        continue
                    setup = name.removesuffix(" (base)")
                    try:
                        run = run_nodes(
                            setup,
                            wl,
                            args.messages,
                            tools,
                            args.idle,
                            args.idle_window,
                            base,
                            args.prefill,
                        )
                    except e2e.HarnessError as exc:
                        e2e.log(f"[{wl_key} {name}] failed: {exc}")
                        errors[name] = str(exc).splitlines()[0][:120]
                        failed = True
                        continue
                    trips = run.plane_per_thousand("trips")
                    e2e.log(
                        f"[{wl_key} {name} run {i + 1}] {run.rate:,.0f} msgs/s, "
                        f"cpu {run.per_million(run.node_cpu):.2f} s/M, "
                        f"round trips/1k {fmt(trips, 2)}, "
                        f"entries/1k {fmt(run.plane_per_thousand('entries'), 2)} "
                        f"(proposed {fmt(run.plane_per_thousand('proposed'), 2)}, "
                        f"refused {fmt(run.plane_per_thousand('moved'), 2)}), "
                        f"Redis read events/1k {run.per_thousand('read_events'):.2f}, "
                        f"lost {run.lost} dup {run.duplicates} L10 {run.l10}"
                    )
                    numbered[name][i] = run
            for name, _ in variants:
                if name in errors:
                    results[(wl_key, name)] = {"error": errors[name]}
                else:
                    results[(wl_key, name)] = summarize(list(numbered[name].values()))
                    against = versus_embedded(numbered, name)
                    if against is not None:
                        results[(wl_key, name)]["vs_embedded"] = against
        if args.load_channels:
            try:
                results[("load", "load")] = store_load(args.load_channels)
                e2e.log(f"[store load] {results[('load', 'load')]}")
            except e2e.HarnessError as exc:
                results[("load", "load")] = {"error": str(exc)[:200]}
                failed = True
    section = report(results, args)
    print(section)
    if args.json:
        args.json.write_text(
            json.dumps({f"{k[0]} {k[1]}": v for k, v in results.items()}, indent=1)
        )
    if not args.no_write:
        e2e.write_results(RESULTS, section, HEADING)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
