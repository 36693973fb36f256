"""Soak: run the whole daemon for a set time under steady, messy load; watch for leaks.

    python bench/soak.py [--seconds 600] [--out bench/soak-out] [--tcp-rate 2000] ...
    python bench/soak.py --redis single|cluster ...   # Redis mode (issue 11)

In one process (the daemon plus its clients, all on loopback):
- 100 channels; a steady offered load over TCP syslog (octet-counted) and HTTP POST /logs;
- drains on some channels pointing at local syslog sinks that flap: up, slow, down;
- live tail sessions that connect, read for a while and disconnect;
- control-API churn: channels and drains created and deleted all the time.

Every ``--sample`` seconds it records RSS, open descriptors, event-loop lag (worst timer
overshoot) and counters into ``OUT/soak.csv`` (and ``OUT/soak.png`` when matplotlib is
installed). It fails (exit 1) when, after warm-up, RSS or descriptors trend upward, or when
any message is unaccounted for: for each long-lived drain, once the load stops and the sinks
are back up, delivered + dropped + lost + still buffered must equal exactly the messages its
channel received since the drain was made.

``--redis single`` starts one redis-server (``--redis cluster``: three masters formed with
``redis-cli --cluster create``), with ``--save "" --appendonly no``, on free loopback ports in
the temporary directory (``bench_nodes.Redis``/``Cluster``), runs the daemon with
``store_url`` pointing at it and stops it at the end whatever happens. The checks are the
same; a drain's "received" is then counted in the channel's stream sequence (Redis key
``seq``) from the drain's birth checkpoint, read right after the API answered. The samples
add the daemon's ``/metrics`` families ``logplexd_redis_round_trips_total{kind}``,
``logplexd_redis_buffer_dropped_total``, ``logplexd_redis_buffer_messages`` and
``logplexd_redis_reachable`` (which must stay 1), and Redis ``used_memory``; at the end it
lists the keys of deleted (churn) channels left in Redis. ``--tracemalloc`` prints the
source lines whose Python allocations grew between warm-up and the end.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import dataclasses
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logplexd.config import Address, Settings  # noqa: E402
from logplexd.daemon import Daemon  # noqa: E402

TRIP_KINDS = ("write", "follow", "history", "lease", "checkpoint", "probe", "other")

KEY = "soak-key"
AUTH = f"Basic {KEY}"


# -- small HTTP client ---------------------------------------------------------------------------
async def http(port: int, method: str, path: str, body: bytes = b"", headers=()) -> tuple:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    for k, v in headers:
        head += f"{k}: {v}\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head.encode() + b"\r\n" + body)
        out = bytearray()
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            while chunk := await stream.receive_some(65536):
                out += chunk
    head_b, _, rest = bytes(out).partition(b"\r\n\r\n")
    status = int(head_b.split(b" ", 2)[1]) if head_b else 0
    return status, rest


API_HEADERS = (("Authorization", AUTH), ("Content-Type", "application/json"))


def frame(token: str, text: str) -> bytes:
    line = f"<134>1 2024-01-01T00:00:00.000000Z soak {token} web.1 - - {text}".encode()
    return b"%d %s" % (len(line), line)


# -- flapping drain sink ---------------------------------------------------------------------------
class Sink:
    """A syslog TCP sink on a fixed port cycling through up (read all), slow, down (closed)."""

    PHASES = ("up", "slow", "down")

    def __init__(self, flap: float) -> None:
        self.flap = flap
        self.phase = "up"
        self.received = 0  # bytes
        with contextlib.closing(socket.socket()) as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.hold_up = False

    async def run(self, offset: float) -> None:
        await trio.sleep(offset)
        i = 0
        while True:
            self.phase = "up" if self.hold_up else self.PHASES[i % 3]
            i += 1
            if self.phase == "down":
                await trio.sleep(self.flap)
                continue
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            async with trio.open_nursery() as n:
                n.start_soon(trio.serve_listeners, self._serve, listeners)
                await trio.sleep(self.flap)
                while self.hold_up and self.phase == "up":
                    await trio.sleep(3600)  # held up until the soak ends
                n.cancel_scope.cancel()
            for listener in listeners:
                with contextlib.suppress(trio.ClosedResourceError, OSError):
                    await listener.aclose()

    async def _serve(self, stream) -> None:
        slow = self.phase == "slow"
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            async with stream:
                while data := await stream.receive_some(4096 if slow else 1 << 20):
                    self.received += len(data)
                    if slow:
                        await trio.sleep(0.05)


# -- the soak -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Counters:
    tcp_sent: int = 0
    http_sent: int = 0
    http_errors: int = 0
    sessions: int = 0
    churn: int = 0
    churn_errors: int = 0
    lag_max: float = 0.0
    # Every loop-lag measurement (one per 50 ms: 12,000 in 10 minutes), for percentiles.
    lags: list = dataclasses.field(default_factory=list)


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def redis_metrics(port: int) -> dict[str, float]:
    """The Redis families of the daemon's ``/metrics`` (loopback: no auth needed)."""
    status, body = await http(port, "GET", "/metrics", headers=(("Authorization", AUTH),))
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in body.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("logplexd_redis_round_trips_total{"):
            kind = name.split('kind="', 1)[1].split('"', 1)[0]
            out[f"rt_{kind}"] = float(value)
        elif name == "logplexd_redis_buffer_dropped_total":
            out["buf_dropped"] = float(value)
        elif name == "logplexd_redis_buffer_messages":
            out["buf_msgs"] = float(value)
        elif name == "logplexd_redis_reachable":
            out["reachable"] = float(value)
    return out


def start_redis(mode: str, workdir: Path):
    """A running ``bench_nodes.Redis`` (single) or ``Cluster`` (three masters)."""
    import bench_nodes  # bench/bench_nodes.py: the same redis-server set-ups as the benchmark

    redis = bench_nodes.Cluster(workdir) if mode == "cluster" else bench_nodes.Redis(workdir)
    try:
        redis.start()
    except BaseException:
        redis.stop()
        raise
    return redis


def redis_ports(redis) -> list[int]:
    return [s.port for s in getattr(redis, "servers", [redis])]


def redis_memory(ports: list[int]) -> int:
    """used_memory summed over the Redis servers (one short INFO each, blocking: < 1 ms)."""
    import bench_nodes

    total = 0
    for port in ports:
        for line in bench_nodes.resp(port, "INFO", "memory").decode().splitlines():
            if line.startswith("used_memory:"):
                total += int(line.split(":")[1])
    return total


def leftover_keys(ports: list[int]) -> list[str]:
    """Keys of channels the churn deleted still in Redis after the run (there should be
    none: their drains and streams are gone)."""
    import subprocess

    keys: list[str] = []
    for port in ports:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), "--scan", "--pattern", "*{ch:churn-*"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        keys += out.split()
    return keys


async def soak(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir
    loop = Address("127.0.0.1", 0)
    settings = dataclasses.replace(
        Settings(),
        api_addr=loop,
        logs_addr=loop,
        syslog_addr=loop,
        tls_syslog_addr=loop,
        data_dir=data_dir,
        auth_key=KEY,
        log_level="warning",
        store_url=args.store_url,
    )
    daemon = Daemon(settings)
    plane = daemon.plane  # None: the embedded store
    staging = getattr(daemon.registry, "staging", None)

    def ingest_ring(name: str):
        """The ring that counts what this node ingested for a channel (Redis mode: the
        staging ring; the readers' ring is filled by the stream follower)."""
        return staging[name] if staging is not None else daemon.registry.channel(name).ring

    async def redis_get_int(key: str) -> int:
        assert plane is not None
        raw = await plane.client.get(key)
        return int(raw) if raw is not None else 0

    redis0: dict[str, float] = {}
    min_reachable = [1.0]
    rng = random.Random(args.seed)
    c = Counters()
    rows: list[dict] = []
    stop_load = trio.Event()
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        tokens: dict[str, str] = {}
        for i in range(args.channels):
            name = f"soak-{i}"
            status, body = await http(
                ports.api, "PUT", f"/v3/channels/{name}", b'{"tokens":["app"]}', API_HEADERS
            )
            assert status == 201, (status, body)
            tokens[name] = json.loads(body)["tokens"]["app"]
        names = list(tokens)

        if args.prefill:
            # Fill every channel's buffer first, twice over. It holds up to
            # channel_buffer_messages (16,384) per channel and the load brings each channel
            # 25 messages/s: left to fill during the run, the buffers would grow RSS for 11
            # minutes, then (the byte arena has room to spare, and its pages become resident
            # only when the write position first passes over them) for 11 more. Bounded by
            # design, but the trend check could not tell it from a leak.
            fill = daemon.registry.buffer_messages
            t0 = time.monotonic()
            # Redis mode: follow every channel meanwhile, so the readers' rings (filled from
            # the streams) are full as well as the staging rings.
            follows = (
                [plane.hold(daemon.registry.channel(n), None) for n in names]
                if plane is not None
                else []
            )
            if follows:
                while not all(f.resolved for f in follows):
                    await trio.sleep(0.2)
                await trio.sleep(1.0)  # every follow has read the (empty) stream once
            streams = [await trio.open_tcp_stream("127.0.0.1", ports.syslog) for _ in range(4)]
            for k, name in enumerate(names):
                chunk = b"".join(frame(tokens[name], f"tcp {j}") for j in range(fill))
                for _ in range(2):
                    await streams[k % len(streams)].send_all(chunk)
                    # Redis mode: not faster than Redis takes it (the outbound buffer would
                    # drop, and the soak's drop counter is to be about the soak's load).
                    while plane is not None and plane.buffer.messages > 50_000:
                        await trio.sleep(0.05)
            for stream in streams:
                await stream.aclose()
            rings = [ingest_ring(n) for n in names]
            while sum(r.head for r in rings) < 2 * fill * len(rings):
                await trio.sleep(0.2)
            # Redis mode: until every follow has read its stream through (a follow that fell
            # behind the stream's trimming skips what was trimmed: its ring is full anyway).
            while any(f.last_seq < 2 * fill for f in follows):
                await trio.sleep(0.2)
            for follow in follows:
                plane.release(follow)
            print(
                f"prefilled {len(rings)} channel buffers with 2 x {fill} messages each in "
                f"{time.monotonic() - t0:.1f} s; RSS {rss_kb() / 1024:.1f} MB",
                flush=True,
            )

        # Long-lived drains on the first channels, at flapping sinks.
        sinks = [Sink(args.flap) for _ in range(args.drains)]
        drains: dict[int, tuple[str, int]] = {}  # drain id -> (channel, ring head at creation)
        for i, sink in enumerate(sinks):
            name = names[i]
            url = json.dumps({"url": f"syslog://127.0.0.1:{sink.port}"}).encode()
            status, body = await http(
                ports.api, "POST", f"/v3/channels/{name}/drains", url, API_HEADERS
            )
            assert status == 201, (status, body)
            drain_id = json.loads(body)["id"]
            if plane is not None:
                # Its birth checkpoint (written before the 201): it delivers what comes after
                # that stream sequence. Read now, before its owner moves it.
                start = await redis_get_int(plane.keys.checkpoint(name, drain_id))
            else:
                start = daemon.registry.channel(name).ring.head
            drains[drain_id] = (name, start)
            nursery.start_soon(sink.run, i * args.flap / len(sinks))

        async def tcp_load() -> None:
            streams = [await trio.open_tcp_stream("127.0.0.1", ports.syslog) for _ in range(4)]
            per_tick = max(1, int(args.tcp_rate / 10))
            seq = 0
            while not stop_load.is_set():
                t0 = trio.current_time()
                buf = b"".join(
                    frame(tokens[names[(seq + k) % len(names)]], f"tcp {seq + k}")
                    for k in range(per_tick)
                )
                await streams[seq % len(streams)].send_all(buf)
                seq += per_tick
                c.tcp_sent += per_tick
                await trio.sleep_until(t0 + 0.1)
            for s in streams:
                await s.aclose()

        async def http_load() -> None:
            per_tick = max(1, int(args.http_rate / 10))
            seq = 0
            while not stop_load.is_set():
                t0 = trio.current_time()
                name = names[seq % len(names)]
                body = b"".join(frame(tokens[name], f"http {seq + k}") for k in range(per_tick))
                auth = base64.b64encode(f"token:{tokens[name]}".encode()).decode()
                status, _ = await http(
                    ports.logs,
                    "POST",
                    "/logs",
                    body,
                    (
                        ("Authorization", f"Basic {auth}"),
                        ("Content-Type", "application/logplex-1"),
                        ("Logplex-Msg-Count", str(per_tick)),
                    ),
                )
                if status == 204:
                    c.http_sent += per_tick
                else:
                    c.http_errors += 1
                seq += 1
                await trio.sleep_until(t0 + 0.1)

        async def tails() -> None:
            while not stop_load.is_set():
                name = rng.choice(names)
                body = json.dumps({"channel_id": name, "num": "10", "tail": "true"}).encode()
                status, reply = await http(ports.api, "POST", "/v3/sessions", body, API_HEADERS)
                if status == 201:
                    path = "/" + json.loads(reply)["url"].split("/", 3)[3]
                    c.sessions += 1
                    with trio.move_on_after(rng.uniform(0.5, 3.0)):
                        stream = await trio.open_tcp_stream("127.0.0.1", ports.api)
                        async with stream:
                            await stream.send_all(
                                f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                            )
                            while await stream.receive_some(65536):
                                pass
                await trio.sleep(0.2)

        async def churn() -> None:
            i = 0
            while not stop_load.is_set():
                name = f"churn-{i}"
                i += 1
                try:
                    status, _ = await http(
                        ports.api, "PUT", f"/v3/channels/{name}", b'{"tokens":["a"]}', API_HEADERS
                    )
                    url = json.dumps({"url": "syslog://127.0.0.1:9"}).encode()
                    s2, _ = await http(
                        ports.api, "POST", f"/v3/channels/{name}/drains", url, API_HEADERS
                    )
                    s3, _ = await http(
                        ports.api, "DELETE", f"/v3/channels/{name}", headers=API_HEADERS
                    )
                    if status != 201 or s2 != 201 or s3 not in (200, 204):
                        c.churn_errors += 1
                    c.churn += 1
                except OSError:
                    c.churn_errors += 1
                await trio.sleep(0.25)

        async def lag() -> None:
            while True:
                t0 = trio.current_time()
                await trio.sleep(0.05)
                lag = trio.current_time() - t0 - 0.05
                c.lag_max = max(c.lag_max, lag)
                c.lags.append(lag)

        for task in (tcp_load, http_load, tails, churn, lag):
            nursery.start_soon(task)

        started = time.monotonic()
        writer_f = open(out / "soak.csv", "w", newline="")  # noqa: SIM115
        fields = [
            "t",
            "rss_kb",
            "fds",
            "lag_ms",
            "tcp_sent",
            "http_sent",
            "http_errors",
            "ingested",
            "delivered",
            "dropped",
            "lost",
            "buffered",
            "sessions",
            "churn",
            "churn_errors",
            "stall_s",
        ]
        if plane is not None:
            fields += [f"rt_{k}" for k in TRIP_KINDS]
            fields += ["buf_msgs", "buf_dropped", "reachable", "redis_mem_kb"]
            redis0.update(await redis_metrics(ports.api))
        writer = csv.DictWriter(writer_f, fieldnames=fields)
        writer.writeheader()

        # Per long-lived drain: (delivered at the last change, when it last changed). A drain
        # with messages waiting whose count stays flat is stalled (its sink down, or backing
        # off); the longest stall is reported (the sinks are down 1/3 of the time, 5 s each).
        progress: dict[int, tuple[int, float]] = {}
        longest_stall = [0.0]

        async def sample() -> dict:
            stats = [s for s in daemon.drains.stats() if s.drain_id in drains]
            now = time.monotonic()
            stall = 0.0
            for st in stats:
                last, since = progress.get(st.drain_id, (-1, now))
                if st.delivered != last or st.buffered == 0:
                    progress[st.drain_id] = (st.delivered, now)
                else:
                    stall = max(stall, now - since)
            longest_stall[0] = max(longest_stall[0], stall)
            row = {
                "t": round(time.monotonic() - started, 1),
                "rss_kb": rss_kb(),
                "fds": open_fds(),
                "lag_ms": round(c.lag_max * 1000, 2),
                "tcp_sent": c.tcp_sent,
                "http_sent": c.http_sent,
                "http_errors": c.http_errors,
                "ingested": sum(ingest_ring(n).head for n in names),
                "delivered": sum(s.delivered for s in stats),
                "dropped": sum(s.dropped for s in stats),
                "lost": sum(s.lost for s in stats),
                "buffered": sum(s.buffered for s in stats),
                "sessions": c.sessions,
                "churn": c.churn,
                "churn_errors": c.churn_errors,
                "stall_s": round(stall, 1),
            }
            c.lag_max = 0.0
            if plane is not None:
                metrics = await redis_metrics(ports.api)
                for key in fields[fields.index("rt_write") :]:
                    row[key] = metrics.get(key, -1)
                min_reachable[0] = min(min_reachable[0], row["reachable"])
                row["redis_mem_kb"] = redis_memory(args.redis_ports) // 1024
            rows.append(row)
            writer.writerow(row)
            writer_f.flush()
            return row

        while time.monotonic() - started < args.seconds:
            await trio.sleep(args.sample)
            row = await sample()
            if args.tracemalloc and args.snapshot0 is None and row["t"] >= args.warmup:
                import tracemalloc

                args.snapshot0 = tracemalloc.take_snapshot()
            print(
                f"t={row['t']:>6}s rss={row['rss_kb'] / 1024:.1f}MB fds={row['fds']} "
                f"lag={row['lag_ms']}ms in={row['ingested']} dlv={row['delivered']} "
                f"drop={row['dropped']} lost={row['lost']} buf={row['buffered']} "
                f"stall={row['stall_s']}s"
                + (
                    f" rt_write={row['rt_write']:.0f} buf={row['buf_msgs']:.0f} "
                    f"bufdrop={row['buf_dropped']:.0f} reach={row['reachable']:.0f}"
                    if plane is not None
                    else ""
                ),
                flush=True,
            )

        # Stop the load, bring every sink up, let the drains settle.
        stop_load.set()
        for sink in sinks:
            sink.hold_up = True
        settle_end = time.monotonic() + args.settle

        async def received_by(drain_id: int) -> int:
            channel, start = drains[drain_id]
            if plane is not None:
                # Messages of the channel's stream after the drain's birth checkpoint.
                return await redis_get_int(plane.keys.sequence(channel)) - start
            return daemon.registry.channel(channel).ring.head - start

        while time.monotonic() < settle_end:
            await trio.sleep(0.5)
            stats = [s for s in daemon.drains.stats() if s.drain_id in drains]
            if plane is None:
                if all(s.buffered == 0 for s in stats):
                    break
                continue
            # Redis mode: messages may still be in the outbound buffer or not yet read from
            # the stream (not counted as buffered by the drain): wait for the sums to meet.
            if plane.buffer.messages == 0 and len(stats) == len(drains):
                settled = True
                for s in stats:
                    done = s.delivered + s.dropped + s.lost
                    settled &= s.buffered == 0 and done == await received_by(s.drain_id)
                if settled:
                    break
        final = await sample()
        writer_f.close()

        # Accounting, per drain, exactly.
        problems: list[str] = []
        seen = set()
        for s in daemon.drains.stats():
            if s.drain_id not in drains:
                continue
            seen.add(s.drain_id)
            channel, _ = drains[s.drain_id]
            received = await received_by(s.drain_id)
            accounted = s.delivered + s.dropped + s.lost + s.buffered
            if accounted != received:
                problems.append(
                    f"drain {s.drain_id} ({channel}): received {received}, delivered "
                    f"{s.delivered} + dropped {s.dropped} + lost {s.lost} + buffered "
                    f"{s.buffered} = {accounted}"
                )
        for drain_id in set(drains) - seen:
            problems.append(f"drain {drain_id} ({drains[drain_id][0]}) is not running here")
        if plane is not None and min_reachable[0] != 1:
            problems.append(f"logplexd_redis_reachable fell to {min_reachable[0]:.0f}")
        nursery.cancel_scope.cancel()

    if args.tracemalloc and args.snapshot0 is not None:
        import tracemalloc

        # Before the chart: its imports would fill the comparison.
        args.snapshot1 = tracemalloc.take_snapshot()

    # Trends after warm-up: the last third against the middle third.
    warm = [r for r in rows if r["t"] >= min(args.warmup, args.seconds / 3)]
    if len(warm) >= 6:
        third = len(warm) // 3
        mid, last = warm[third : 2 * third], warm[2 * third :]

        def mean(rs, key):
            return sum(r[key] for r in rs) / len(rs)

        rss_mid, rss_last = mean(mid, "rss_kb"), mean(last, "rss_kb")
        fd_mid, fd_last = mean(mid, "fds"), mean(last, "fds")
        if rss_last > rss_mid * 1.10 + 8 * 1024:
            problems.append(f"RSS trends upward: {rss_mid / 1024:.1f} -> {rss_last / 1024:.1f} MB")
        if fd_last > fd_mid + 16:
            problems.append(f"descriptors trend upward: {fd_mid:.0f} -> {fd_last:.0f}")
    else:
        problems.append("too few samples after warm-up to judge trends")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
        t = [r["t"] for r in rows]
        axes[0].plot(t, [r["rss_kb"] / 1024 for r in rows])
        axes[0].set_ylabel("RSS MB")
        axes[1].plot(t, [r["fds"] for r in rows])
        axes[1].set_ylabel("fds")
        axes[2].plot(t, [r["lag_ms"] for r in rows])
        axes[2].set_ylabel("loop lag ms")
        axes[2].set_xlabel("s")
        fig.savefig(out / "soak.png")
        print(f"chart: {out / 'soak.png'}")
    except ImportError:
        print("matplotlib not installed: CSV only")

    print(
        f"soak {args.seconds:.0f} s: tcp {final['tcp_sent']} + http {final['http_sent']} sent, "
        f"{final['ingested']} ingested; drains delivered {final['delivered']}, dropped "
        f"{final['dropped']}, lost {final['lost']}, buffered {final['buffered']}; "
        f"{final['sessions']} sessions, {final['churn']} churn cycles "
        f"({final['churn_errors']} errors), http errors {final['http_errors']}; "
        f"max loop lag {max(r['lag_ms'] for r in rows)} ms; csv {out / 'soak.csv'}"
    )
    lags = sorted(c.lags) or [0.0]

    def pct(q: float) -> float:
        return round(lags[min(len(lags) - 1, int(q * len(lags)))] * 1000, 2)

    warm_rows = warm or rows
    print(
        f"RSS {rows[0]['rss_kb'] / 1024:.1f} MB at {rows[0]['t']} s, "
        f"{warm_rows[0]['rss_kb'] / 1024:.1f} MB after warm-up, "
        f"{rows[-1]['rss_kb'] / 1024:.1f} MB at the end "
        f"(max {max(r['rss_kb'] for r in rows) / 1024:.1f}); "
        f"fds {rows[0]['fds']} -> {rows[-1]['fds']} (max {max(r['fds'] for r in rows)}); "
        f"loop lag p50 {pct(0.5)} ms, p99 {pct(0.99)} ms, max {pct(1.0)} ms "
        f"({len(c.lags)} samples); longest delivery stall of a drain {longest_stall[0]:.1f} s"
    )
    if args.store_url and len(rows) and "rt_write" in final:
        msgs = (final["tcp_sent"] + final["http_sent"]) / 1e3 or 1.0
        trips = {k: final[f"rt_{k}"] - redis0.get(f"rt_{k}", 0.0) for k in TRIP_KINDS}
        print(
            f"Redis ({args.redis}): round trips "
            + ", ".join(f"{k} {v:,.0f}" for k, v in trips.items())
            + f" ({sum(trips.values()) / msgs:.2f} per 1,000 messages sent); outbound buffer "
            f"dropped {final['buf_dropped'] - redis0.get('buf_dropped', 0.0):.0f} during the "
            f"soak ({final['buf_dropped']:.0f} in all), max waiting "
            f"{max(r['buf_msgs'] for r in rows):.0f} messages; reachable min "
            f"{min(r['reachable'] for r in rows):.0f}; Redis used_memory "
            f"{warm_rows[0]['redis_mem_kb'] / 1024:.1f} MB after warm-up, "
            f"{rows[-1]['redis_mem_kb'] / 1024:.1f} MB at the end "
            f"(max {max(r['redis_mem_kb'] for r in rows) / 1024:.1f})"
        )
    if args.tracemalloc and args.snapshot0 is not None:
        diff = args.snapshot1.compare_to(args.snapshot0, "lineno")
        print("tracemalloc, growth since warm-up (top 15 lines):")
        for stat in diff[:15]:
            print("   ", stat)
    for p in problems:
        print("FAIL:", p)
    print("PASS" if not problems else "FAILED")
    return 1 if problems else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--out", default="bench/soak-out")
    ap.add_argument("--channels", type=int, default=100)
    ap.add_argument("--drains", type=int, default=6, help="long-lived flapping drains")
    ap.add_argument("--tcp-rate", type=float, default=2000.0, help="msg/s over TCP")
    ap.add_argument("--http-rate", type=float, default=500.0, help="msg/s over HTTP")
    ap.add_argument("--flap", type=float, default=5.0, help="seconds per drain sink phase")
    ap.add_argument("--sample", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--no-prefill",
        dest="prefill",
        action="store_false",
        help="do not fill the channel buffers before the run (RSS then grows as they fill)",
    )
    ap.add_argument(
        "--redis",
        choices=("single", "cluster"),
        help="Redis mode: a redis-server (or a 3-master Redis Cluster) started for the run",
    )
    ap.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace Python allocations; print the lines that grew between warm-up and the end",
    )
    args = ap.parse_args()
    args.snapshot0 = None
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(1)
    args.redis_ports = []
    args.data_dir = Path(tempfile.mkdtemp(prefix="logplexd-soak-"))
    args.store_url = None
    redis = None
    try:
        if args.redis:
            redis = start_redis(args.redis, args.data_dir)
            args.store_url = redis.url
            args.redis_ports = redis_ports(redis)

            def terminated(signum: int, _frame: object) -> None:
                # Killed (timeout, kill PID): no finally runs then; stop Redis first.
                redis.stop()
                os._exit(128 + signum)

            signal.signal(signal.SIGTERM, terminated)
            print(f"Redis mode: {args.store_url}", flush=True)
        code = trio.run(soak, args)
        if redis is not None:
            left = leftover_keys(args.redis_ports)
            ckpts = [k for k in left if k.endswith(":ckpt")]
            print(
                f"keys of deleted (churn) channels left in Redis: {len(left)}, of which "
                f"{len(ckpts)} drain checkpoints (no TTL; the rest: leases, with a TTL) "
                f"{ckpts[:4]}"
            )
    finally:
        if redis is not None:
            redis.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
