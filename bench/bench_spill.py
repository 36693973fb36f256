#!/usr/bin/env python3
"""Durable drain backlogs (issue 19): what spilling to disk costs and how fast it goes.

Run from the repository root::

    python bench/bench_spill.py rates      # (a) spill write and read-back rates
    python bench/bench_spill.py healthy    # (b) a healthy drain, spill on vs off, one run

**rates** drives the disk backlog exactly as a drain does, without sockets: a
``BacklogStore`` (its writer task and worker thread) and one ``DrainBacklog``, trio on the
main thread. Write: each chunk is one ring read (``ChannelRing.read`` of up to 16,384
messages / 1 MiB, what ``DrainFeed.spill`` reads), framed with ``native.octet_frames`` and
queued with ``DrainBacklog.enqueue``; when the writer's queue is full the loop waits for the
writer (``on_written``), as the drain's spill guard does. The clock stops when the last
chunk is written (``SegmentLog.end_seq``); "durable" adds the final fsync
(``write_round(sync=True)``). Read-back: ``DrainBacklog.read`` (1 MiB, ``chunk_bytes``) ->
``native.parse_body`` -> ``ack`` (which deletes delivered segments), what
``DrainFeed._take_disk`` and ``_settle`` do, every message counted and the first and last
compared with what was written. Read-back runs twice per write: from the page cache, and
"cold" after the segment files were evicted with ``posix_fadvise(DONTNEED)`` (only these
files; the disk may still have its own cache). Rates are messages (and message bytes,
1 MB = 10^6 B) per wall-clock second; "loop" is the event loop's own time per message (ring
read + framing + enqueue; read + parse + ack), the rest runs in the worker thread.

**healthy** runs ``bench/e2e/run.py``'s routers ``logplexd`` (spilling on, the default) and
``logplexd-nospill`` (``--drain-spill false``) on the same workloads, alternating run by
run (the order flips every pair), and prints each workload's ratio spill/nospill of the
median msgs/s at the sink and the median of the per-pair ratios. A run that loses or
duplicates a message (or whose router fails) is a failed run: the script then exits 1.
Each logplexd run also reports what its drains wrote to disk
(``logplexd_backlog_written_messages_total`` from ``/metrics`` before it stops): a healthy
drain should write nothing.

Standalone script (not part of the pytest suite). Writes nothing to bench/RESULTS.md: copy
the printed tables by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "e2e"))

from logplexd.backlog import BacklogStore, SpillSettings  # noqa: E402
from logplexd.native import ChannelRing, octet_frames, parse_body, parse_frames  # noqa: E402

# What DrainFeed.spill reads per ring read (logplexd/drains/feed.py).
SPILL_READ_MESSAGES = 16384
SPILL_READ_BYTES = 1 << 20
SPILL_MAX_FRAME = 65000
MB = 1e6


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# (a) write and read-back rates


def message(i: int, size: int) -> bytes:
    head = (
        f"<134>1 2024-05-01T12:00:00.{i % 1_000_000:06d}Z host "
        f"t.2b0fa2d1-76b4-4b8a-9e0b-8f6a0b0c1d2e web.1 - - seq=0:{i} "
    ).encode()
    if len(head) > size:
        raise ValueError(f"messages of {size} bytes are too small for the header")
    return head + b"x" * (size - len(head))


def source_batch(size: int):
    """Enough messages of ``size`` bytes for one full ring read."""
    n = min(SPILL_READ_MESSAGES, SPILL_READ_BYTES // size + 1)
    return parse_frames([message(i, size) for i in range(n)])


def fadvise_dontneed(directory: Path) -> int:
    """Evict the backlog's segment files from the page cache (they are synced); returns
    their bytes."""
    total = 0
    for path in directory.rglob("*.seg"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def du_bytes(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_blocks * 512
    return total


async def one_rate_run(workdir: Path, size: int, policy: str, total_bytes: int) -> dict[str, float]:
    """Write ``total_bytes`` of ``size``-byte messages through a fresh backlog, then read them
    back twice (page cache, cold); returns the figures."""
    settings = SpillSettings(
        fsync=policy,
        # Room for the whole run: nothing is evicted by the budget.
        drain_budget_bytes=4 * total_bytes + (64 << 20),
        total_budget_bytes=8 * total_bytes + (64 << 20),
    )
    out: dict[str, float] = {}
    src = source_batch(size)
    # The ring as the router leaves it: the default 16,384 messages / 16 MiB.
    ring = ChannelRing(16384, 16 << 20)
    for directory_name in ("hot", "cold"):
        # One write per read variant (a read acks and deletes what it read).
        directory = workdir / directory_name
        store = BacklogStore(directory, settings)
        store.open()
        backlog = store.attach(1, "bench")
        # Set by the writer (``on_written``, on the loop) after each round that wrote chunks.
        wake = [trio.Event()]
        backlog.on_written = lambda wake=wake: wake[0].set()
        messages = nbytes = chunks = 0
        loop_s = 0.0
        cursor = ring.head
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            t0 = time.perf_counter()
            while nbytes < total_bytes:
                ring.append_batch(src)  # the router's part: not counted as loop time
                t1 = time.perf_counter()
                batch, cursor, lost = ring.read(cursor, SPILL_READ_MESSAGES, SPILL_READ_BYTES)
                assert not lost
                n = len(batch)
                payload = octet_frames(batch)
                loop_s += time.perf_counter() - t1
                while True:
                    t1 = time.perf_counter()
                    ok = backlog.enqueue(n, payload, time.time())
                    loop_s += time.perf_counter() - t1
                    if ok:
                        break
                    # The writer's queue is full: wait for it (the spill guard's case).
                    wake[0] = trio.Event()
                    await wake[0].wait()
                messages += n
                nbytes += batch.nbytes
                chunks += 1
                await trio.lowlevel.checkpoint()  # the spill guard yields between reads
            while backlog.log.end_seq < backlog.queued_end:
                wake[0] = trio.Event()
                with trio.move_on_after(0.2):
                    await wake[0].wait()
            t_written = time.perf_counter()
            await store.write_round(sync=True)
            t_durable = time.perf_counter()
            nursery.cancel_scope.cancel()
        disk = du_bytes(directory)
        if directory_name == "hot":
            out.update(
                messages=messages,
                message_bytes=nbytes,
                chunks=chunks,
                write_s=t_written - t0,
                durable_s=t_durable - t0,
                write_loop_s=loop_s,
                disk_bytes=disk,
            )
        else:
            out["cold_evicted_bytes"] = fadvise_dontneed(directory / "drains")

        # Read back as the drain does: read 1 MiB, parse, ack (deletes delivered segments).
        first_frame = last_frame = None
        worst_read = worst_parse = worst_ack = 0.0
        read_messages = 0
        t0 = time.perf_counter()
        while backlog.read_seq < backlog.queued_end:
            t1 = time.perf_counter()
            payloads, first, count, lost = backlog.read(settings.chunk_bytes)
            assert lost == 0 and payloads, (lost, len(payloads))
            t2 = time.perf_counter()
            batch = parse_body(b"".join(payloads), SPILL_MAX_FRAME)
            assert len(batch) == count, (len(batch), count)
            t3 = time.perf_counter()
            backlog.ack(first + count)  # deletes the segments wholly delivered
            t4 = time.perf_counter()
            worst_read = max(worst_read, t2 - t1)
            worst_parse = max(worst_parse, t3 - t2)
            worst_ack = max(worst_ack, t4 - t3)
            if first_frame is None:
                first_frame = batch.frame(0)
            last_frame = batch.frame(len(batch) - 1)
            read_messages += count
        read_s = time.perf_counter() - t0
        assert read_messages == messages, (read_messages, messages)
        assert first_frame == src.frame(0), "first message read back differs"
        assert last_frame == src.frame((messages - 1) % len(src)), "last message differs"
        left = du_bytes(directory / "drains")
        out[f"read_{directory_name}_s"] = read_s
        out[f"read_{directory_name}_worst_ms"] = worst_read * 1000
        out[f"parse_{directory_name}_worst_ms"] = worst_parse * 1000
        out[f"ack_{directory_name}_worst_ms"] = worst_ack * 1000
        out[f"left_after_{directory_name}_read"] = left
        await store.close()
        shutil.rmtree(directory, ignore_errors=True)
    return out


def cmd_rates(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",")]
    policies = args.fsync.split(",")
    total = int(args.mib * (1 << 20))
    base = Path(args.dir) if args.dir else None
    rows = []
    for size in sizes:
        for policy in policies:
            runs = []
            for i in range(args.runs):
                with tempfile.TemporaryDirectory(prefix="bench-spill-", dir=base) as tmp:
                    res = trio.run(one_rate_run, Path(tmp), size, policy, total)
                runs.append(res)
                m, b = res["messages"], res["message_bytes"]
                log(
                    f"{size} B, fsync {policy}, run {i + 1}/{args.runs}: write "
                    f"{m / res['write_s'] / 1e6:.2f} M msgs/s "
                    f"({b / res['write_s'] / MB:.0f} MB/s), "
                    f"durable {b / res['durable_s'] / MB:.0f} MB/s; read hot "
                    f"{m / res['read_hot_s'] / 1e6:.2f} M msgs/s ({b / res['read_hot_s'] / MB:.0f} "
                    f"MB/s), cold {m / res['read_cold_s'] / 1e6:.2f} M msgs/s "
                    f"({b / res['read_cold_s'] / MB:.0f} MB/s); {res['chunks']} chunks, "
                    f"{res['disk_bytes'] / MB:.1f} MB on disk, left "
                    f"{res['left_after_hot_read']}/{res['left_after_cold_read']} B"
                )
            rows.append((size, policy, runs))

    def med(runs, f):
        return statistics.median(f(r) for r in runs)

    def rate(m, s):
        return f"{m / s / 1e6:.2f} M" if m / s >= 1e6 else f"{m / s / 1e3:,.0f} k"

    print(
        f"\n{args.mib:g} MiB of messages per run, median of {args.runs} run(s) "
        "(min-max of the msgs/s in brackets)\n"
    )
    print(
        "| message | fsync | write msgs/s | write MB/s | until durable MB/s | loop ns/msg (write) "
        "| read-back msgs/s (page cache) | MB/s | read-back msgs/s (cold) | MB/s "
        "| loop ns/msg (read) | worst loop step: read / parse / ack | on disk / message bytes |"
    )
    print("| --- " * 13 + "|")
    for size, policy, runs in rows:
        m = runs[0]["messages"]
        b = runs[0]["message_bytes"]
        w = med(runs, lambda r: r["write_s"])
        d = med(runs, lambda r: r["durable_s"])
        hot = med(runs, lambda r: r["read_hot_s"])
        cold = med(runs, lambda r: r["read_cold_s"])
        wl = med(runs, lambda r: r["write_loop_s"])
        ws = [r["write_s"] for r in runs]
        hs = [r["read_hot_s"] for r in runs]
        cs = [r["read_cold_s"] for r in runs]
        worst = {
            k: max(max(r[f"{k}_hot_worst_ms"], r[f"{k}_cold_worst_ms"]) for r in runs)
            for k in ("read", "parse", "ack")
        }
        print(
            f"| {size:,} B | {policy} | {rate(m, w)} ({rate(m, max(ws))}-{rate(m, min(ws))}) "
            f"| {b / w / MB:,.0f} | {b / d / MB:,.0f} | {wl / m * 1e9:.0f} "
            f"| {rate(m, hot)} ({rate(m, max(hs))}-{rate(m, min(hs))}) | {b / hot / MB:,.0f} "
            f"| {rate(m, cold)} ({rate(m, max(cs))}-{rate(m, min(cs))}) | {b / cold / MB:,.0f} "
            f"| {hot / m * 1e9:.0f} | {worst['read']:.1f} / {worst['parse']:.1f} / "
            f"{worst['ack']:.1f} ms "
            f"| {runs[0]['disk_bytes'] / b:.3f} |"
        )
    return 0


# ---------------------------------------------------------------------------------------------
# (b) a healthy drain: spilling on vs off


def scrape_metrics(api: int, key: str) -> dict[str, float]:
    """The daemon's /metrics, the families this benchmark reports."""
    wanted = (
        "logplexd_backlog_written_messages_total",
        "logplexd_backlog_written_bytes_total",
        "logplexd_backlog_refused_messages_total",
        "logplexd_drains_spilling",
        "logplexd_syslog_pushbacks_total",
    )
    out: dict[str, float] = {}
    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=5)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Basic {key}"})
        resp = conn.getresponse()
        body = resp.read().decode()
    finally:
        conn.close()
    for line in body.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            out[name.removeprefix("logplexd_")] = float(value)
    return out


def metered(base):
    """A router class like ``base`` that reads the daemon's backlog figures before it stops."""

    class Metered(base):
        name = base.name

        def stop(self) -> None:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                    self.figures.update(scrape_metrics(self.api, self.key))
            super().stop()

    Metered.__name__ = f"Metered{base.__name__}"
    return Metered


def cmd_healthy(args: argparse.Namespace) -> int:
    import run as e2e  # bench/e2e/run.py

    variants = {
        "logplexd": metered(e2e.Logplexd),
        "logplexd-nospill": metered(e2e.LogplexdNoSpill),
    }
    e2e.Logplexd.extra_args = list(args.logplexd_arg)
    by_key = {w.key: w for w in e2e.WORKLOADS}
    workloads = [by_key[k] for k in args.workloads.split(",")]
    failed = False
    results: dict[tuple[str, str], list] = {}
    pairs: dict[str, list[float]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-spill-build-") as build:
        tools = e2e.build_tools(Path(build))
        for wl in workloads:
            for i in range(args.runs):
                order = list(variants) if i % 2 == 0 else list(reversed(variants))
                got: dict[str, float] = {}
                for name in order:
                    try:
                        res = e2e.run_once(
                            variants[name], wl, args.messages, tools, args.idle, args.rate
                        )
                    except e2e.HarnessError as exc:
                        failed = True
                        log(f"[{name}] {wl.key} run {i + 1}: FAILED: {exc}")
                        continue
                    lossy = res.lost or res.duplicates or res.l10_dropped
                    fig = res.router
                    place = "first" if name == order[0] else "second"
                    log(
                        f"[{name}] {wl.key} run {i + 1}/{args.runs} ({place}): "
                        f"{res.rate:,.0f} msgs/s at sink, sent {res.ingest_rate:,.0f}/s, "
                        f"lost {res.lost:,}, dup {res.duplicates:,}, L10 {res.l10_dropped:,}, "
                        f"out of order {res.out_of_order:,}, "
                        f"cpu {res.cpu_per_million or 0:.2f} s/M, "
                        f"spilled {fig.get('backlog_written_messages_total', 0):,.0f} msgs, "
                        f"input pushbacks {fig.get('syslog_pushbacks_total', 0):,.0f}"
                        + (" LOSSY: failed run" if lossy else "")
                    )
                    if lossy:
                        failed = True
                        continue
                    results.setdefault((name, wl.key), []).append(res)
                    got[name] = res.rate
                if len(got) == 2:
                    pairs.setdefault(wl.key, []).append(got["logplexd"] / got["logplexd-nospill"])
    elapsed = time.monotonic() - started

    def fmt(r: float) -> str:
        return f"{r / 1e6:.2f} M" if r >= 1e6 else f"{r / 1e3:,.0f} k"

    print(
        f"\n{args.messages:,} messages per run, {args.runs} run(s) per variant alternating "
        f"(order flipped every pair), {elapsed:.0f} s in all\n"
    )
    print(
        "| workload | router | msgs/s at sink, median (min-max) | sent msgs/s | CPU s / M "
        "| peak RSS | spilled msgs (max of runs) | input pushbacks (median) | out of order (max) "
        "| good runs "
        "| spill/nospill msgs/s (medians) | median of per-pair ratios (min-max) "
        "| spill/nospill CPU per msg |"
    )
    print("| --- " * 13 + "|")
    for wl in workloads:
        meds: dict[str, float] = {}
        cpus: dict[str, float] = {}
        for name in variants:
            runs = results.get((name, wl.key), [])
            if not runs:
                print(f"| {wl.label} | {name} | no good run | | | | | | | 0 | | | |")
                continue
            rates = [r.rate for r in runs]
            meds[name] = statistics.median(rates)
            cpu = statistics.median(c for r in runs if (c := r.cpu_per_million) is not None)
            cpus[name] = cpu
            rss = max(r.peak_rss_kb or 0 for r in runs) / 1024
            spilled = max(r.router.get("backlog_written_messages_total", 0) for r in runs)
            ooo = max(r.out_of_order for r in runs)
            holds = statistics.median(r.router.get("syslog_pushbacks_total", 0) for r in runs)
            ratio = pair = cpu_ratio = ""
            if name == "logplexd-nospill" and len(meds) == 2:
                ratio = f"{meds['logplexd'] / meds['logplexd-nospill']:.3f}"
                cpu_ratio = f"{cpus['logplexd'] / cpus['logplexd-nospill']:.3f}"
                p = pairs.get(wl.key, [])
                if p:
                    pair = f"{statistics.median(p):.3f} ({min(p):.3f}-{max(p):.3f}, {len(p)} pairs)"
            print(
                f"| {wl.label} | {name} | {fmt(meds[name])} ({fmt(min(rates))}-{fmt(max(rates))}) "
                f"| {fmt(statistics.median(r.ingest_rate for r in runs))} | {cpu:.2f} "
                f"| {rss:.0f} MB | {spilled:,.0f} | {holds:,.0f} | {ooo:,} | {len(runs)} | {ratio} "
                f"| {pair} "
                f"| {cpu_ratio} |"
            )
    if args.json:
        raw = {f"{n}/{w}": [vars(x) for x in v] for (n, w), v in results.items()}
        raw["pairs"] = pairs  # type: ignore[assignment]
        args.json.write_text(json.dumps(raw, indent=1))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rates", help="(a) spill write and read-back rates")
    r.add_argument("--sizes", default="120,2048", help="message sizes in bytes")
    r.add_argument("--fsync", default="interval,always", help="policies (interval,always,never)")
    r.add_argument("--mib", type=float, default=128.0, help="MiB of messages per run")
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--dir", help="where to put the backlogs (default: the temp dir)")
    h = sub.add_parser("healthy", help="(b) a healthy drain: spilling on vs off, alternating")
    h.add_argument("--workloads", default="c1-ch1-d1-120,c8-ch1-d1-120")
    h.add_argument("--runs", type=int, default=5, help="runs per variant and workload")
    h.add_argument("--messages", type=int, default=1_000_000)
    h.add_argument("--idle", type=float, default=5.0)
    h.add_argument("--rate", type=float, default=0.0, help="pace the producer (msgs/s in all)")
    h.add_argument("--logplexd-arg", action="append", default=[])
    h.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    return cmd_rates(args) if args.cmd == "rates" else cmd_healthy(args)


if __name__ == "__main__":
    sys.exit(main())
