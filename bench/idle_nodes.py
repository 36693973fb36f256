#!/usr/bin/env python3
"""Idle cost of Redis mode (issue 21): commands per second per node with many channels.

Run from the repository root::

    python bench/idle_nodes.py                                  # 10,000 channels, 1 and 2 nodes
    python bench/idle_nodes.py --setups redis-1,cluster-2 --channels 10000
    python bench/idle_nodes.py --base-tree /tmp/base            # + an older tree, alternating

Each set-up starts redis-server (or a three-master Redis Cluster) and its nodes (as
``bench/bench_nodes.py`` does), creates ``--channels`` channels with one token and one
``syslog://`` drain each on node 1 (nothing is ever sent: the drains own their leases and
follow their channels, but never connect), waits until every node knows the last channel and
``--settle`` seconds more (leases acquired, follows started), and then reads Redis ``INFO``
before and after ``--window`` seconds. Reported per node and per second: the commands Redis
counted (``INFO commandstats``: what a script calls is counted too, per call), by name, and
the round trips the nodes counted (``logplexd_redis_round_trips_total``), and the CPU each
node's process used (a share of one core).

The target of issue 21: at most 50 commands per second per node with 10,000 channels.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import bench_nodes  # noqa: E402

e2e = bench_nodes.e2e

TARGET_PER_NODE = 50.0


def provision(node: bench_nodes.Node, channels: int, sink_port: int, threads: int = 4) -> None:
    """``channels`` channels with one token and one drain each, over keep-alive connections."""
    errors: list[str] = []

    def work(start: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", node.api, timeout=60)
        headers = {"Authorization": f"Basic {node.key}", "Content-Type": "application/json"}

        def call(method: str, path: str, body: dict) -> int:
            conn.request(method, path, body=json.dumps(body), headers=headers)
            reply = conn.getresponse()
            reply.read()
            return reply.status

        try:
            for i in range(start, channels, threads):
                if call("PUT", f"/v3/channels/idle-{i}", {"tokens": ["a"]}) != 201:
                    errors.append(f"PUT channel idle-{i}")
                    return
                url = f"syslog://127.0.0.1:{sink_port}/{i}"
                if call("POST", f"/v3/channels/idle-{i}/drains", {"url": url}) != 201:
                    errors.append(f"POST drain of idle-{i}")
                    return
        finally:
            conn.close()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise e2e.HarnessError("provisioning failed: " + "; ".join(errors))


def nodes_cpu(nodes: list[bench_nodes.Node]) -> float:
    """CPU seconds (user + system) the nodes' processes have used so far, summed."""
    total = 0.0
    for node in nodes:
        assert node.proc is not None
        total += e2e.cpu_seconds(node.proc.pid)
    return total


def run_idle(
    setup: str, channels: int, settle: float, window: float, base: bool
) -> dict[str, float]:
    """Per second over ``window``: Redis counters (``cmd:<name>``, ``commands``) and the
    nodes' round trips (``trips``), for ``setup`` idle with ``channels`` channels."""
    node_class = bench_nodes.BaseNode if base else bench_nodes.Node
    wl = e2e.Workload("idle", "idle", 1, channels, 1, 120)
    with tempfile.TemporaryDirectory(prefix=f"idle-{setup}-") as tmp:
        workdir = Path(tmp)
        redis: bench_nodes.Redis | bench_nodes.Cluster = (
            bench_nodes.Cluster(workdir)
            if setup.startswith("cluster")
            else bench_nodes.Redis(workdir)
        )
        nodes: list[bench_nodes.Node] = []
        try:
            redis.start()
            count = 2 if setup.endswith("-2") else 1
            # Nothing is sent, so the drains never connect: any closed port will do.
            sink_port = e2e.free_port()
            nodes = [node_class(workdir, wl, sink_port, f"n{i + 1}") for i in range(count)]
            for node in nodes:
                node.start_node(redis.url)
            started = time.monotonic()
            provision(nodes[0], channels, sink_port)
            e2e.log(f"[{setup}{' base' if base else ''}] {channels:,} channels and drains "
                    f"in {time.monotonic() - started:.1f} s")  # fmt: skip
            for node in nodes:
                node.wait_channel(f"idle-{channels - 1}", timeout=120.0)
            time.sleep(settle)
            before = redis.counters()
            trips0 = bench_nodes.plane_counters(nodes)
            node_cpu0 = nodes_cpu(nodes)
            time.sleep(window)
            after = redis.counters()
            node_cpu1 = nodes_cpu(nodes)
            trips1 = bench_nodes.plane_counters(nodes)
            bench_nodes.check_alive(nodes)
        finally:
            for node in nodes:
                node.stop()
            redis.stop()
    delta = bench_nodes.difference(after, before)
    out = {
        k: v / window / count for k, v in delta.items() if k.startswith("cmd:") or k == "commands"
    }
    out["cpu"] = delta["cpu"] / window
    out["node_cpu"] = (node_cpu1 - node_cpu0) / window / count
    trips = bench_nodes.counters_delta(trips1, trips0)
    if trips is not None:
        out["trips"] = trips["trips"] / window / count
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default="redis-1,redis-2")
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--settle", type=float, default=15.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--base-tree", type=Path)
    args = parser.parse_args(argv)
    if args.base_tree is not None:
        bench_nodes.BaseNode.tree = args.base_tree.resolve()
    failed = False
    rows = []
    for setup in [s for s in args.setups.split(",") if s]:
        for base in [False, True] if args.base_tree is not None else [False]:
            label = f"{setup}{' (base)' if base else ''}"
            try:
                figures = run_idle(setup, args.channels, args.settle, args.window, base)
            except e2e.HarnessError as exc:
                e2e.log(f"[{label}] failed: {exc}")
                failed = True
                continue
            top = sorted(
                ((k.removeprefix("cmd:"), v) for k, v in figures.items() if k.startswith("cmd:")),
                key=lambda kv: -kv[1],
            )
            by = ", ".join(f"{k} {v:.1f}" for k, v in top if v >= 0.05)
            trips = figures.get("trips")
            rows.append(
                f"| {label} | {args.channels:,} | {figures['commands']:.1f} | {by} "
                f"| {'-' if trips is None else f'{trips:.1f}'} | {100 * figures['cpu']:.2f} % "
                f"| {100 * figures['node_cpu']:.2f} % |"
            )
            if not base and figures["commands"] > TARGET_PER_NODE:
                e2e.log(f"[{label}] {figures['commands']:.1f} commands/s per node "
                        f"(target <= {TARGET_PER_NODE:.0f})")  # fmt: skip
    print("| set-up | channels (1 drain each) | Redis commands/s per node | by name "
          "| round trips/s per node | Redis CPU | node CPU, per node |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
