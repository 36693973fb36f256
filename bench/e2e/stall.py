#!/usr/bin/env python3
"""A receiver that stops reading on channel A: what does it cost channel B? (issue 18)

Run from the repository root::

    python bench/e2e/stall.py                          # 500,000 msgs per channel, 5 runs
    python bench/e2e/stall.py --quick                  # smoke run: small, 1 run, no RESULTS.md

Two channels, A and B, one ``syslog://`` drain each, each drain to its own C sink
(``sink.c``); the C producer (``loadgen.c``) sends both channels' messages as fast as it
can. Two variants, alternating run by run (the order flips every run):

* ``baseline``: A's sink reads normally;
* ``stalled``: A's sink accepts the connection, reads ``--stall-after`` bytes (256 KB; 0:
  nothing) and then stops reading (``sink -x``) until B's sink has all of B's messages (or
  gave up); then it reads on, so that A's drain can deliver what it still holds and its
  L10 notice.

Two layouts of the producer (``--layouts``):

* ``mixed``: one loadgen, ``--conns`` connection(s), each interleaving A and B message by
  message (A, B, A, B, ...): B's messages share every connection with the stalled channel's;
* ``split``: one loadgen per channel, ``--conns`` connection(s) each, started together:
  B's connections carry only B.

Measured per run: B's msgs/s at its sink (messages / (last receive - first send)). B must
be lossless (no loss, duplicate or L10): a run where it is not is a failed run and counts
as 0 msgs/s. A's accounting must be exact: unique messages delivered + messages announced
by L10 notices == messages sent to A (A's sink reads until ``--idle-a`` seconds without data
after the stall, so an L10 that announces too many shows up too); a run where it is not is
a failed run too. The ratio is median(B, stalled) / median(B, baseline), per layout; the
median of the per-run-pair ratios is printed too.

Reuses ``run.py``'s pieces (C tools, ``start_sink``, ``Logplexd`` launch and provisioning,
process helpers). Everything is on loopback and bounded (message counts, timeouts).
Appends or replaces its section of ``bench/RESULTS.md`` unless ``--quick`` or
``--no-write``; exits 1 if a run failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import run as e2e  # noqa: E402  (bench/e2e/run.py)

HEADING = "## A stalled receiver on another channel (issue 18, bench/e2e/stall.py)"
LAYOUTS = ("mixed", "split")
VARIANTS = ("baseline", "stalled")


@dataclass
class StallRun:
    layout: str
    variant: str
    b_rate: float  # B's messages at its sink / (B's last receive - B's producer start)
    b_sent: int
    b_delivered: int  # unique
    b_lost: int
    b_dup: int
    b_l10: int
    b_reason: str
    b_gap: float  # B's longest silence at its sink between two of its messages, s
    a_sent: int
    a_delivered: int  # unique
    a_l10: int  # messages announced dropped by L10 notices
    a_l10_notices: int
    a_dup: int
    a_stall_bytes: int
    a_stall_s: float
    send_rate_a: float  # messages to A / the send time of the producer carrying them
    send_rate_b: float
    cpu_s: float | None
    failure: str = ""

    @property
    def a_exact(self) -> bool:
        return self.a_delivered + self.a_l10 == self.a_sent

    @property
    def counted_rate(self) -> float:
        return 0.0 if self.failure else self.b_rate


class TwoSinkLogplexd(e2e.Logplexd):
    """``logplexd serve`` with channels bench-0 (A) and bench-1 (B), each drain to its own
    sink."""

    def __init__(self, workdir: Path, wl: e2e.Workload, sink_ports: list[int]) -> None:
        super().__init__(workdir, wl, sink_ports[0])
        self.sink_ports = sink_ports

    def drain_url(self, channel: int, drain: int) -> str:
        return f"syslog://127.0.0.1:{self.sink_ports[channel]}/{drain}"


def split_counts(total: int, conns: int) -> list[int]:
    """Messages per connection, as loadgen shares ``-n total`` out."""
    return [total // conns + (i < total % conns) for i in range(conns)]


def per_channel(layout: str, messages: int, conns: int) -> tuple[int, int]:
    """Messages sent to (A, B): ``mixed`` sends 2 x messages alternating A, B on every
    connection (A first), ``split`` sends messages to each."""
    if layout == "split":
        return messages, messages
    counts = split_counts(2 * messages, conns)
    return sum((n + 1) // 2 for n in counts), sum(n // 2 for n in counts)


def sink_report(proc: subprocess.Popen, timeout: float, what: str) -> dict:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise e2e.HarnessError(f"{what} did not report within {timeout:.0f} s") from None
    lines = out.decode().strip().splitlines()
    if not lines:
        raise e2e.HarnessError(f"{what} exited rc={proc.returncode} without a report")
    return json.loads(lines[-1])


def run_once(
    layout: str,
    variant: str,
    messages: int,
    conns: int,
    size: int,
    tools: tuple[Path, Path],
    stall_after: int,
    idle: float,
    idle_a: float,
    extra_args: list[str],
) -> StallRun:
    loadgen, sink_exe = tools
    sent_a, sent_b = per_channel(layout, messages, conns)
    # Generous bounds: a router at 20,000 messages/s still finishes.
    budget = 60.0 + (sent_a + sent_b) / 20_000 + 1.0
    wl = e2e.Workload(f"stall-{layout}", f"2 channels, {layout}", conns, 2, 1, size)
    with tempfile.TemporaryDirectory(prefix="e2e-stall-") as tmp:
        workdir = Path(tmp)
        sink_a = sink_b = router = None
        producers: list[subprocess.Popen] = []
        try:
            stall = ("-x", str(stall_after)) if variant == "stalled" else ()
            # A's sink does not stop on a count: it reads until idle_a s without data (after
            # its stall), so an L10 that announces too many is seen as such.
            sink_a, port_a = e2e.start_sink(sink_exe, 0, idle_a, budget, stall)
            sink_b, port_b = e2e.start_sink(sink_exe, sent_b, idle, budget)
            TwoSinkLogplexd.extra_args = extra_args
            router = TwoSinkLogplexd(workdir, wl, [port_a, port_b])
            port = router.start()
            token_a, token_b = router.tokens
            assert router.pid is not None
            cpu0 = e2e.cpu_seconds(router.pid)
            base = [
                str(loadgen),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
                "-c",
                str(conns),
                "-s",
                str(size),
                "-w",
                "1.0",
            ]
            if layout == "mixed":
                token_file = workdir / "tokens"
                token_file.write_text(f"{token_a}\n{token_b}\n")
                cmds = [[*base, "-n", str(2 * messages), "-T", str(token_file)]]
            else:
                cmds = [[*base, "-n", str(messages), "-t", tok] for tok in (token_a, token_b)]
            for cmd in cmds:
                producers.append(
                    subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )
            # B first: it ends on its count (or idle s without data: B was held back).
            sk_b = sink_report(sink_b, budget + 150, "B's sink")
            if variant == "stalled" and sink_a.poll() is None:
                os.kill(sink_a.pid, signal.SIGUSR1)  # A's receiver reads again
            lgs = []
            for p in producers:
                try:
                    out, err = p.communicate(timeout=budget)
                except subprocess.TimeoutExpired:
                    raise e2e.HarnessError(
                        f"loadgen did not finish within {budget:.0f} s"
                    ) from None
                if p.returncode != 0:
                    raise e2e.HarnessError(f"loadgen failed rc={p.returncode}: {err.strip()}")
                lgs.append(json.loads(out.strip().splitlines()[-1]))
            sk_a = sink_report(sink_a, budget + 150, "A's sink")
            cpu = e2e.cpu_seconds(router.pid) - cpu0
            if router.proc is not None and router.proc.poll() is not None:
                raise e2e.HarnessError("logplexd died during the run")
        finally:
            for p in producers:
                e2e.stop_process(p, wait=5.0)
            if router is not None:
                router.stop()
            e2e.stop_process(sink_a, wait=5.0)
            e2e.stop_process(sink_b, wait=5.0)
    lg_a, lg_b = (lgs[0], lgs[0]) if layout == "mixed" else (lgs[0], lgs[1])
    for lg in lgs:
        if lg["errors"]:
            raise e2e.HarnessError(f"loadgen: {lg['errors']} connection(s) failed")
    span = sk_b["last_ts"] - lg_b["start_ts"]
    res = StallRun(
        layout=layout,
        variant=variant,
        b_rate=sk_b["received"] / span if span > 0 and sk_b["received"] else 0.0,
        b_sent=sent_b,
        b_delivered=sk_b["unique"],
        b_lost=sent_b - sk_b["unique"],
        b_dup=sk_b["duplicates"],
        b_l10=sk_b["l10_dropped"],
        b_reason=sk_b["reason"],
        b_gap=sk_b["max_gap"],
        a_sent=sent_a,
        a_delivered=sk_a["unique"],
        a_l10=sk_a["l10_dropped"],
        a_l10_notices=sk_a["l10_notices"],
        a_dup=sk_a["duplicates"],
        a_stall_bytes=sk_a["stall_bytes"],
        a_stall_s=sk_a["stall_seconds"],
        send_rate_a=sent_a / lg_a["elapsed"] if lg_a["elapsed"] > 0 else 0.0,
        send_rate_b=sent_b / lg_b["elapsed"] if lg_b["elapsed"] > 0 else 0.0,
        cpu_s=cpu,
    )
    why = []
    if res.b_lost or res.b_dup or res.b_l10 or sk_b["l10_notices"]:
        why.append(f"B lost {res.b_lost:,}, dup {res.b_dup:,}, L10 {res.b_l10:,}")
    if not res.a_exact:
        why.append(f"A: {res.a_delivered:,} delivered + {res.a_l10:,} L10 != {res.a_sent:,} sent")
    if sk_a["malformed"] or sk_b["malformed"]:
        why.append("malformed frames at a sink")
    res.failure = "; ".join(why)
    return res


# ---------------------------------------------------------------------------------------------
# report


def fmt_rate(r: float) -> str:
    return e2e.fmt_rate(r) if r else "0"


def summarize(runs: list[StallRun]) -> dict:
    counted = [r.counted_rate for r in runs]
    ok = [r for r in runs if not r.failure]
    cpus = [r.cpu_s for r in runs if r.cpu_s is not None]
    return {
        "rate": statistics.median(counted),
        "rate_min": min(counted),
        "rate_max": max(counted),
        "send_a": statistics.median(r.send_rate_a for r in runs),
        "send_b": statistics.median(r.send_rate_b for r in runs),
        "b_lost": max(r.b_lost for r in runs),
        "b_dup": max(r.b_dup for r in runs),
        "b_gap": statistics.median(r.b_gap for r in runs),
        "a_sent": max(r.a_sent for r in runs),
        "a_delivered": (min(r.a_delivered for r in runs), max(r.a_delivered for r in runs)),
        "a_l10": (min(r.a_l10 for r in runs), max(r.a_l10 for r in runs)),
        "a_dup": max(r.a_dup for r in runs),
        "a_exact": sum(r.a_exact for r in runs),
        "stall_kb": statistics.median(r.a_stall_bytes for r in runs) / 1024,
        "stall_s": statistics.median(r.a_stall_s for r in runs),
        "cpu": statistics.median(cpus) if cpus else None,
        "runs": len(runs),
        "failed": len(runs) - len(ok),
    }


def span(pair: tuple[int, int]) -> str:
    lo, hi = pair
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def ratios(collected: dict, layout: str) -> tuple[float, float] | None:
    """(median stalled / median baseline, median of the per-run-pair ratios) for B."""
    base = collected.get((layout, "baseline"), [])
    stalled = collected.get((layout, "stalled"), [])
    if not base or not stalled:
        return None
    mb = statistics.median(r.counted_rate for r in base)
    ms = statistics.median(r.counted_rate for r in stalled)
    pairs = [
        s.counted_rate / b.counted_rate
        for b, s in zip(base, stalled, strict=False)
        if b.counted_rate
    ]
    return (ms / mb if mb else 0.0), (statistics.median(pairs) if pairs else 0.0)


def table(collected: dict, layouts: list[str], conns: int) -> str:
    head = (
        "| layout | A's receiver | B msgs/s at its sink, median (min-max) | sent msgs/s A / B "
        "| B lost / dup | B longest pause | A sent | A delivered | A L10-announced | A dup "
        "| A exact | A stalled after / for | CPU s | runs (failed) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    label = {
        "mixed": f"mixed ({conns} conn{'s' if conns > 1 else ''}, A and B interleaved)",
        "split": f"split ({conns} conn{'s' if conns > 1 else ''} per channel)",
    }
    rows = []
    for layout in layouts:
        for variant in VARIANTS:
            runs = collected.get((layout, variant))
            if not runs:
                rows.append(f"| {label[layout]} | {variant} | failed | | | | | | | | | | | |")
                continue
            s = summarize(runs)
            stall = (
                "-" if variant == "baseline" else f"{s['stall_kb']:,.0f} KB / {s['stall_s']:.1f} s"
            )
            cpu = f"{s['cpu']:.2f}" if s["cpu"] is not None else "-"
            rows.append(
                f"| {label[layout]} | {variant} | {fmt_rate(s['rate'])} "
                f"({fmt_rate(s['rate_min'])}-{fmt_rate(s['rate_max'])}) "
                f"| {fmt_rate(s['send_a'])} / {fmt_rate(s['send_b'])} "
                f"| {s['b_lost']:,} / {s['b_dup']:,} | {1000 * s['b_gap']:,.0f} ms "
                f"| {s['a_sent']:,} | {span(s['a_delivered'])} "
                f"| {span(s['a_l10'])} | {s['a_dup']:,} | {s['a_exact']}/{s['runs']} | {stall} "
                f"| {cpu} | {s['runs']} ({s['failed']}) |"
            )
    return head + "\n".join(rows) + "\n"


def ratio_lines(collected: dict, layouts: list[str]) -> list[str]:
    out = []
    for layout in layouts:
        r = ratios(collected, layout)
        if r is None:
            out.append(f"- {layout}: no ratio (a variant has no runs)")
            continue
        verdict = "met" if r[0] >= 0.9 else "NOT met"
        out.append(
            f"- {layout}: B stalled / baseline = **{r[0]:.2f}** (medians; median of the "
            f"per-run pairs {r[1]:.2f}); target >= 0.90 (< 10 % lower): {verdict}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--messages", type=int, default=None, help="messages per channel per run (500,000)"
    )
    ap.add_argument("--runs", type=int, default=None, help="runs per variant, median (5)")
    ap.add_argument("--layouts", default="mixed,split", help="comma-separated: mixed,split")
    ap.add_argument(
        "--conns",
        type=int,
        default=1,
        help="connections of the producer (mixed) or of each producer (split)",
    )
    ap.add_argument("--size", type=int, default=120, help="message size in bytes")
    ap.add_argument(
        "--stall-after",
        type=int,
        default=256 * 1024,
        help="bytes A's sink reads before it stops reading (0: from the start)",
    )
    ap.add_argument(
        "--idle",
        type=float,
        default=5.0,
        help="B's sink gives up after this many seconds without data (loss)",
    )
    ap.add_argument(
        "--idle-a",
        type=float,
        default=2.0,
        help="A's sink ends after this many seconds without data (not stalled)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 20,000 messages per channel, 1 run, no RESULTS.md",
    )
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--results", type=Path, default=e2e.RESULTS)
    ap.add_argument(
        "--logplexd-arg",
        action="append",
        default=[],
        help="extra argument for `logplexd serve` (repeatable)",
    )
    ap.add_argument("--json", type=Path, help="also write every run's raw figures here")
    args = ap.parse_args(argv)

    messages = args.messages or (20_000 if args.quick else 500_000)
    runs = args.runs or (1 if args.quick else 5)
    layouts = [x for x in args.layouts.split(",") if x]
    for layout in layouts:
        if layout not in LAYOUTS:
            ap.error(f"unknown layout {layout!r}")
    if args.conns < 1 or args.stall_after < 0 or args.idle_a <= 1.0:
        ap.error("--conns >= 1, --stall-after >= 0, --idle-a > 1 (the warm-up pause is 1 s)")
    write = not (args.quick or args.no_write)

    collected: dict[tuple[str, str], list[StallRun]] = {}
    errors: list[str] = []
    failed = False
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="e2e-build-") as build:
        tools = e2e.build_tools(Path(build))
        e2e.log(f"built {tools[0].name} and {tools[1].name} with gcc -O2 in {build}")
        for layout in layouts:
            for i in range(runs):
                order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    tag = f"[{layout}/{variant}] run {i + 1}/{runs}"
                    try:
                        res = run_once(
                            layout,
                            variant,
                            messages,
                            args.conns,
                            args.size,
                            tools,
                            args.stall_after,
                            args.idle,
                            args.idle_a,
                            list(args.logplexd_arg),
                        )
                    except e2e.HarnessError as exc:
                        failed = True
                        errors.append(f"{tag}: {exc}")
                        e2e.log(f"{tag}: FAILED: {exc}")
                        continue
                    collected.setdefault((layout, variant), []).append(res)
                    if res.failure:
                        failed = True
                    e2e.log(
                        f"{tag}: B {res.b_rate:,.0f} msgs/s ({res.b_delivered:,}/{res.b_sent:,}, "
                        f"dup {res.b_dup:,}, longest pause {1000 * res.b_gap:.0f} ms); "
                        f"A {res.a_delivered:,} delivered + {res.a_l10:,} "
                        f"L10 ({res.a_l10_notices} notices) of {res.a_sent:,}, dup {res.a_dup:,}"
                        + (
                            f", stalled after {res.a_stall_bytes:,} B for {res.a_stall_s:.2f} s"
                            if variant == "stalled"
                            else ""
                        )
                        + (f"; FAILED: {res.failure}" if res.failure else "")
                    )
    elapsed = time.monotonic() - started
    md = table(collected, layouts, args.conns)
    lines = ratio_lines(collected, layouts)
    print(md)
    print("\n".join(lines))
    for err in errors:
        print(f"- {err}")
    e2e.log(f"total {elapsed:.0f} s")

    if args.json:
        raw = {
            f"{k[0]}/{k[1]}": [asdict(r) | {"a_exact": r.a_exact} for r in v]
            for k, v in collected.items()
        }
        args.json.write_text(json.dumps(raw, indent=1))
    if write:
        cmdline = "python bench/e2e/stall.py " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
        )
        section = "\n".join(
            [
                HEADING,
                "",
                "Command:",
                "",
                f"    {cmdline.rstrip()}",
                "",
                f"Run of {dt.date.today().isoformat()}: {e2e.cpu_model()}, {os.cpu_count()} CPUs; "
                + "; ".join(e2e.versions(["logplexd"]))
                + f". {messages:,} messages of "
                f"{args.size} B per channel per run, median of {runs} run(s) per variant, "
                f"variants alternating run by run, {elapsed:.0f} s in all.",
                "",
                "Channels A and B, one `syslog://` drain each, each drain to its own `sink.c`; "
                "`loadgen.c` sends both channels' messages as fast as it can (TCP syslog, "
                "octet-counted, 64 KB writes, loopback). `mixed`: one producer whose "
                "connection(s) interleave A and B message by message; `split`: one producer "
                "per channel. `stalled`: A's sink accepts, reads the first "
                f"{args.stall_after:,} bytes and stops reading until B's sink has all of B; "
                "then it reads on (A's drain delivers what it kept and its L10). B msgs/s = B's "
                "messages at its sink / (last receive - first send); a run where B is not "
                "lossless, or where A's delivered + L10-announced != sent to A, is failed and "
                "counts as 0. sent msgs/s = each channel's messages / its producer's send "
                "time (a held producer shows here). A delivered / L10-announced: range over "
                "the runs; B longest pause = the longest time between two of B's messages at its "
                "sink (median); A stalled after / for: bytes A's sink read before it stopped, and "
                "how long it did not read (medians). CPU = logplexd user+system seconds per run "
                "(median).",
                "",
                md,
                *lines,
                *[f"- {err}" for err in errors],
            ]
        )
        e2e.write_results(args.results, section.rstrip("\n") + "\n", heading=HEADING)
        e2e.log(f"wrote {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
