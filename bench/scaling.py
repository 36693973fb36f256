#!/usr/bin/env python3
"""Scaling curves of logplexd alone: throughput, CPU and RSS as channels, drains and tails grow.

Run from the repository root::

    python bench/scaling.py            # the three curves (~6 minutes), into bench/RESULTS.md
    python bench/scaling.py --quick    # smoke run (~30 s): small points, no RESULTS.md

Every point is one fresh ``logplexd serve`` on loopback, end to end as in
``bench/e2e/run.py`` (whose process, port and measurement code this reuses): the C producer
(``loadgen.c``) sends octet-counted RFC 5424 messages over TCP syslog, round-robin over the
loaded channels' tokens; the daemon's ``syslog://`` drains deliver to the C sink
(``sink.c``), which checks every (drain, connection) stream for loss and duplicates.

* **channels**: N channels of one token each; the drained ones (``min(N, --drained)``,
  1,000 by default, spread evenly over the N) have one drain to the sink, the others only
  keep the messages in their history. Messages go round-robin over all N tokens. Start-up
  (process start -> ``/v3/healthcheck`` answers) and idle RSS are recorded per N.
* **drains**: 1 channel with 1..6 drains: every message is delivered once per drain.
* **idle tails**: 1 channel with 1 drain takes the load while T tail sessions (``tail:
  true``, ``num: 0``) sit on T other channels that get no traffic; the 10,000 idle
  channels exist at every point (only the tails vary). The tails are held open by the
  reader of ``bench/tails.py`` (``_reader --hold``).

The channels, tokens, drains and sessions are written straight into the store's snapshot
before the daemon starts (as ``bench/bench_api.py startup`` does): creating 100,000
channels through the HTTP API would take longer than the whole bench.

Besides the sink's count, every point checks that the daemon stored every message in a
channel (``logplexd_messages_routed_total`` on ``/metrics`` = messages sent, warm-up
included). Writes the section ``## Scaling curves (logplexd alone)`` of bench/RESULTS.md
and ``bench/scaling-{channels,drains,tails}.png`` unless ``--quick`` or ``--no-write``;
exits 1 if a point fails or loses, duplicates or fails to route messages. The section is
rewritten whole: run partial selections (``--curves``, ``--channels``...) with ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import shlex
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import tails  # noqa: E402  (bench/tails.py: its tail reader helper)

from logplexd.store import ChannelRecord, DrainRecord, SessionRecord, TokenRecord, files  # noqa: E402
from logplexd.store._state import DRAIN_COUNTER, State  # noqa: E402
from logplexd.store.embedded import SNAPSHOT_FILE  # noqa: E402

e2e = tails.load_e2e()

RESULTS = HERE / "RESULTS.md"
HEADING = "## Scaling curves (logplexd alone)"
CURVES = ("channels", "drains", "tails")
# Sessions outlive the run by far (the store drops expired ones when it loads them).
SESSION_TTL = 3600.0
ROUTED = "logplexd_messages_routed_total"


@dataclass(frozen=True)
class Point:
    curve: str
    x: int  # channels, drains per channel, or idle tails
    channels: int  # in the store
    drained: tuple[int, ...]  # channel indices with drains
    drains_per: int
    loaded: int  # the first `loaded` channels' tokens take the traffic
    tails: int  # idle tail sessions, on channels loaded..loaded+tails-1
    messages: int

    @property
    def key(self) -> str:
        return f"{self.curve}-{self.x}"


def spread(n: int, k: int) -> tuple[int, ...]:
    """``k`` indices spread evenly over ``range(n)``, the last one included: the last
    message loadgen sends goes to a drained channel, so the sink sees the end of the run
    (exactly so when the messages per connection are a multiple of n, as by default)."""
    return tuple(((i + 1) * n) // k - 1 for i in range(k))


def per_token_counts(messages: int, conns: int, tokens: int) -> list[int]:
    """How many messages loadgen sends each token: its connections split ``messages`` as
    evenly as possible and each goes round-robin over the tokens from the first."""
    counts = [0] * tokens
    for c in range(conns):
        share = messages // conns + (c < messages % conns)
        rounds, rest = divmod(share, tokens)
        for t in range(tokens):
            counts[t] += rounds + (t < rest)
    return counts


# ---------------------------------------------------------------------------------------------
# the daemon, its store written beforehand


def build_data_dir(data: Path, p: Point, sink_port: int) -> tuple[list[str], list[str]]:
    """Writes the snapshot of ``p``'s channels, tokens, drains and sessions; returns the
    tokens (channel order) and the session paths."""
    state = State()
    tokens = []
    for i in range(p.channels):
        name = f"bench-{i}"
        state.channels[name] = ChannelRecord(name)
        token = f"t.{uuid.uuid4()}"
        state.put_token(TokenRecord(token, name, "app"))
        tokens.append(token)
    drain_id = 0
    for i in p.drained:
        for d in range(p.drains_per):
            drain_id += 1
            # Distinct paths: the store refuses the same URL twice on one channel.
            url = f"syslog://127.0.0.1:{sink_port}/{d}"
            state.put_drain(DrainRecord(drain_id, f"bench-{i}", f"d.{uuid.uuid4()}", url))
    state.counters[DRAIN_COUNTER] = drain_id
    paths = []
    expires = time.time() + SESSION_TTL
    for i in range(p.loaded, p.loaded + p.tails):
        sid = str(uuid.uuid4())
        body = {"channel_id": f"bench-{i}", "tail": True, "num": "0"}
        state.sessions[sid] = SessionRecord(sid, body, expires)
        paths.append(f"/sessions/{sid}")
    files.write_snapshot(str(data / SNAPSHOT_FILE), files.encode_snapshot(state))
    return tokens, paths


def scrape_metrics(port: int) -> dict[str, float]:
    """The unlabelled and ``input="syslog"`` samples of ``/metrics`` (loopback: no auth)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode()
    finally:
        conn.close()
    if resp.status != 200:
        raise e2e.HarnessError(f"GET /metrics: {resp.status}")
    out = {}
    for line in text.splitlines():
        if line.startswith("logplexd_") and ("{" not in line or '{input="syslog"}' in line):
            name, _, value = line.rpartition(" ")
            out[name.split("{")[0]] = float(value)
    return out


class PrebuiltLogplexd(e2e.Logplexd):
    """``logplexd serve`` on a data dir written beforehand (``point`` is set per subclass);
    records its start-up time, idle RSS and, before it stops, its counters."""

    point: Point
    size: int
    holder = None  # the process holding the idle tails open

    def start(self) -> int:
        p = self.point
        data = self.workdir / "data"
        data.mkdir()
        t0 = time.monotonic()
        tokens, sessions = build_data_dir(data, p, self.sink_port)
        self.figures["build_s"] = time.monotonic() - t0
        self.figures["snapshot_mb"] = (data / SNAPSHOT_FILE).stat().st_size / 1e6
        t0 = time.monotonic()
        extra = ["--api-max-connections", str(p.tails + 1024)]
        _, syslog, _ = self.launch(data, *extra, timeout=120.0, poll=0.02)
        self.figures["startup_s"] = time.monotonic() - t0
        self.tokens = tokens[: p.loaded]
        if sessions:
            paths = self.workdir / "paths"
            paths.write_text("\n".join(sessions) + "\n")
            t0 = time.monotonic()
            self.holder = tails.start_helper("_reader", "--port", self.api, "--paths", paths,
                                             "--hold")  # fmt: skip
            ready = tails.json_line(e2e, self.holder, 300)["ready"]
            if ready != p.tails:
                raise e2e.HarnessError(f"{ready} of {p.tails} tails connected")
            self.figures["tails_connect_s"] = time.monotonic() - t0
        time.sleep(1.0)  # let start-up garbage settle
        assert self.pid is not None
        self.figures["idle_rss_kb"] = tails.rss_kb(self.pid)
        self._warm_up(syslog)
        return syslog

    def _warm_up(self, syslog: int) -> None:
        """One message per loaded token before the clock starts, then a wait until the
        daemon has routed them all: the first message of a channel allocates its ring, and
        the drains connect. (Sent in one write: loadgen's own warm-up writes one message
        per send, which with 100,000 tokens takes 15 s of small reads.)"""
        t0 = time.monotonic()
        frames = b"".join(tails.frame(t, "warmup", self.size) for t in self.tokens)
        with socket.create_connection(("127.0.0.1", syslog), timeout=60) as sock:
            sock.sendall(frames)
        deadline = time.monotonic() + 120.0
        while scrape_metrics(self.api).get(ROUTED, 0) < len(self.tokens):
            if time.monotonic() > deadline:
                raise e2e.HarnessError("the warm-up messages were not all routed in 120 s")
            time.sleep(0.05)
        self.figures["warmup_s"] = time.monotonic() - t0
        time.sleep(1.0)  # the drains' connections, and the loop quiet again

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.figures["metrics"] = self._final_counters()
        except (OSError, http.client.HTTPException, e2e.HarnessError) as exc:
            e2e.log(f"[{self.point.key}] GET /metrics failed: {exc}")
        finally:
            e2e.stop_process(self.holder, wait=5)
            super().stop()

    def _final_counters(self) -> dict[str, float]:
        """``/metrics`` once every message sent (and the warm-up) is routed, or after 5 s:
        the sink may have seen its last message before another connection's last ones."""
        target = self.point.messages + self.point.loaded
        deadline = time.monotonic() + 5.0
        while True:
            metrics = scrape_metrics(self.api)
            if metrics.get(ROUTED, 0) >= target or time.monotonic() > deadline:
                return metrics
            time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# one point


def measure(p: Point, tools, args) -> dict:
    attrs = {"point": p, "size": args.size}
    cls = type(f"Prebuilt_{p.key}", (PrebuiltLogplexd,), attrs)
    counts = per_token_counts(p.messages, args.conns, p.loaded)
    drained = [i for i in p.drained if i < p.loaded]
    expected = sum(counts[i] for i in drained) * p.drains_per
    wl = e2e.Workload(p.key, p.key, args.conns, p.channels, p.drains_per, args.size)
    res = e2e.run_once(cls, wl, p.messages, tools, args.idle, expected=expected, warmup=None)
    sent, span = res.loadgen["sent"], res.sink["last_ts"] - res.loadgen["start_ts"]
    metrics = res.router.get("metrics", {})
    routed = metrics.get(ROUTED)
    unrouted = None if routed is None else sent + p.loaded - int(routed)
    return {
        "point": p.key, "curve": p.curve, "x": p.x, "channels": p.channels,
        "drained": len(drained), "drains_per": p.drains_per, "tails": p.tails,
        "sent": sent, "delivered": res.delivered, "expected": expected,
        "msgs_per_s": sent / span if span > 0 else 0.0,
        "deliveries_per_s": res.rate,
        "ingest_per_s": res.ingest_rate,
        "cpu_s_per_m": res.cpu_s / (sent / 1e6) if res.cpu_s is not None and sent else None,
        "peak_rss_mb": (res.peak_rss_kb or 0) / 1024,
        "idle_rss_mb": res.router["idle_rss_kb"] / 1024,
        "startup_s": res.router["startup_s"],
        "build_s": res.router["build_s"],
        "snapshot_mb": res.router["snapshot_mb"],
        "tails_connect_s": res.router.get("tails_connect_s"),
        "warmup_s": res.router["warmup_s"],
        "lost": res.lost, "duplicates": res.duplicates, "l10_dropped": res.l10_dropped,
        "unrouted": unrouted,
    }  # fmt: skip


def median_point(runs: list[dict]) -> dict:
    """The run of median msgs/s, with the worst loss and the largest peak RSS of all."""
    ordered = sorted(runs, key=lambda r: r["msgs_per_s"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    for k in ("lost", "duplicates", "l10_dropped", "unrouted"):
        values = [r[k] for r in runs if r[k] is not None]
        out[k] = max(values, key=abs) if values else None
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["runs"] = len(runs)
    out["lossy_runs"] = sum(1 for r in runs if r["lost"])
    out["msgs_per_s_range"] = (ordered[0]["msgs_per_s"], ordered[-1]["msgs_per_s"])
    return out


def bad(r: dict) -> bool:
    return bool(r["lost"] or r["duplicates"] or r["unrouted"] or r["unrouted"] is None)


# ---------------------------------------------------------------------------------------------
# the curves


def points(args) -> list[Point]:
    out = []
    idle_channels = max(args.tails) if args.tails else 0
    for n in args.channels:
        messages = args.messages if n <= args.big_from else args.big_messages
        k = min(n, args.drained)
        out.append(Point("channels", n, n, spread(n, k), 1, n, 0, messages))
    for d in args.drains:
        out.append(Point("drains", d, 1, (0,), d, 1, 0, args.messages))
    for t in args.tails:
        out.append(Point("tails", t, 1 + idle_channels, (0,), 1, 1, t, args.messages))
    return [p for p in out if p.curve in args.curves]


def fmt_rate(r: float) -> str:
    return e2e.fmt_rate(r)


def loss_cell(r: dict) -> str:
    parts = [f"{r['lost']:,}"]
    if r["lost"]:
        parts[0] += f" ({100 * r['lost'] / r['expected']:.1f} %, {r['l10_dropped']:,} told by L10"
        parts[0] += f"; {r['lossy_runs']} of {r['runs']} runs)" if r["runs"] > 1 else ")"
    if r["duplicates"]:
        parts.append(f"dup {r['duplicates']:,}")
    if r["unrouted"]:
        parts.append(f"unrouted {r['unrouted']:,}")
    elif r["unrouted"] is None:
        parts.append("routed count unknown")
    return ", ".join(parts)


def cpu_cell(r: dict) -> str:
    return f"{r['cpu_s_per_m']:.2f}" if r["cpu_s_per_m"] is not None else "-"


def tables(results: dict[str, list[dict]]) -> list[str]:
    out = []
    rows = results.get("channels", [])
    if rows:
        out += [
            "**Channels** (one token each; 1 drain on each of min(channels, "
            f"{max(r['drained'] for r in rows):,}) channels spread evenly, the others keep "
            "the messages in their history; loadgen round-robin over every channel's token):",
            "",
            "| channels | drained | messages | msgs/s | delivered/s | CPU s / M msgs "
            "| start-up | idle RSS | peak RSS | lost |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            out.append(
                f"| {r['x']:,} | {r['drained']:,} | {r['sent']:,} | {fmt_rate(r['msgs_per_s'])} "
                f"| {fmt_rate(r['deliveries_per_s'])} | {cpu_cell(r)} | {r['startup_s']:.2f} s "
                f"| {r['idle_rss_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB | {loss_cell(r)} |"
            )
        out.append("")
    rows = results.get("drains", [])
    if rows:
        out += [
            "**Drains per channel** (1 channel, every message delivered once per drain):",
            "",
            "| drains | messages | msgs/s | deliveries/s | CPU s / M msgs | CPU s / M deliveries "
            "| peak RSS | lost |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            cpu, delivered = r["cpu_s_per_m"], r["delivered"]
            per_delivery = f"{cpu * r['sent'] / delivered:.2f}" if cpu and delivered else "-"
            out.append(
                f"| {r['x']} | {r['sent']:,} | {fmt_rate(r['msgs_per_s'])} "
                f"| {fmt_rate(r['deliveries_per_s'])} | {cpu_cell(r)} "
                f"| {per_delivery} | {r['peak_rss_mb']:.0f} MB | {loss_cell(r)} |"
            )
        out.append("")
    rows = results.get("tails", [])
    if rows:
        out += [
            f"**Idle tail sessions** (1 loaded channel with 1 drain; {rows[0]['channels'] - 1:,} "
            "other channels without traffic, the tails on the first T of them):",
            "",
            "| idle tails | messages | msgs/s | CPU s / M msgs | tails connect | idle RSS "
            "| peak RSS | lost |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            connect = f"{r['tails_connect_s']:.1f} s" if r["tails_connect_s"] else "-"
            out.append(
                f"| {r['x']:,} | {r['sent']:,} | {fmt_rate(r['msgs_per_s'])} | {cpu_cell(r)} "
                f"| {connect} | {r['idle_rss_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB "
                f"| {loss_cell(r)} |"
            )
        out.append("")
    return out


def write_charts(results: dict[str, list[dict]], directory: Path) -> list[Path]:
    """One PNG per curve: msgs/s (and CPU per message) above, RSS below."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        e2e.log("matplotlib not installed: no charts (pip install matplotlib)")
        return []
    titles = {
        "channels": ("channels (log scale)", "logplexd alone: channels"),
        "drains": ("drains on the channel", "logplexd alone: drains per channel"),
        "tails": ("idle tail sessions", "logplexd alone: idle tail sessions"),
    }
    written = []
    for curve, rows in results.items():
        if not rows:
            continue
        xs = [r["x"] for r in rows]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
        top.plot(xs, [r["msgs_per_s"] for r in rows], "o-", label="msgs/s (input)")
        if curve != "tails":  # with one drain, deliveries/s is msgs/s
            name = "deliveries/s" if curve == "drains" else "delivered/s (drained channels)"
            top.plot(xs, [r["deliveries_per_s"] for r in rows], "s-", label=name)
        top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_rate(v).replace(" ", "")))
        top.set_ylabel("messages/s")
        top.set_ylim(bottom=0)
        cpu = top.twinx()
        cpu.plot(xs, [r["cpu_s_per_m"] or 0 for r in rows], "^--", color="tab:red",
                 label="CPU s / M msgs")  # fmt: skip
        cpu.set_ylabel("daemon CPU s per million messages", color="tab:red")
        cpu.set_ylim(bottom=0)
        lines = top.get_legend_handles_labels()
        more = cpu.get_legend_handles_labels()
        top.legend(lines[0] + more[0], lines[1] + more[1], loc="best", fontsize=8)
        bottom.plot(xs, [r["peak_rss_mb"] for r in rows], "o-", label="peak RSS (VmHWM)")
        bottom.plot(xs, [r["idle_rss_mb"] for r in rows], "s-", label="idle RSS before load")
        bottom.set_ylabel("MB")
        bottom.set_ylim(bottom=0)
        bottom.legend(loc="best", fontsize=8)
        label, title = titles[curve]
        if curve == "channels":
            bottom.set_xscale("log")
        elif curve == "tails":
            bottom.set_xscale("symlog", linthresh=100)
        bottom.set_xticks(xs)
        bottom.set_xticklabels([f"{x:,}" for x in xs])
        bottom.set_xlabel(label)
        top.set_title(title)
        fig.tight_layout()
        path = directory / f"scaling-{curve}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
        e2e.log(f"wrote {path}")
    return written


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 50,000 messages, small points, no RESULTS.md",
    )
    ap.add_argument(
        "--curves", default=",".join(CURVES), help="comma-separated: " + ",".join(CURVES)
    )
    ap.add_argument(
        "--channels",
        type=int_list,
        default=None,
        help="channel counts, comma-separated (1,10,100,1000,10000,100000)",
    )
    ap.add_argument(
        "--drains", type=int_list, default=None, help="drains per channel (1,2,3,4,5,6)"
    )
    ap.add_argument(
        "--tails", type=int_list, default=None, help="idle tail sessions (0,100,1000,10000)"
    )
    ap.add_argument(
        "--drained",
        type=int,
        default=1000,
        help="channels with a drain on the channel curve, at most (1,000)",
    )
    ap.add_argument("--messages", type=int, default=None, help="messages per point (2,000,000)")
    ap.add_argument(
        "--big-messages",
        type=int,
        default=None,
        help="messages per point above --big-from channels (as --messages)",
    )
    ap.add_argument(
        "--big-from",
        type=int,
        default=1000,
        help="channel counts above this use --big-messages (1,000)",
    )
    ap.add_argument("--conns", type=int, default=1, help="producer connections (1)")
    ap.add_argument("--size", type=int, default=120, help="message size in bytes (120)")
    ap.add_argument("--runs", type=int, default=None, help="runs per point, median (3)")
    ap.add_argument(
        "--idle",
        type=float,
        default=5.0,
        help="the sink stops after this many seconds without data (loss)",
    )
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md or the PNGs")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--json", type=Path, help="also write every run's raw figures here")
    args = ap.parse_args(argv)  # fmt: skip
    args.curves = [c for c in args.curves.split(",") if c]
    for c in args.curves:
        if c not in CURVES:
            ap.error(f"unknown curve {c!r}")
    if args.quick:
        args.channels = args.channels or [1, 100, 10_000]
        args.drains = args.drains or [1, 6]
        args.tails = args.tails or [0, 1000]
        args.messages = args.messages or 50_000
        args.runs = args.runs or 1
    args.channels = args.channels or [1, 10, 100, 1000, 10_000, 100_000]
    args.drains = args.drains or [1, 2, 3, 4, 5, 6]
    args.tails = args.tails if args.tails is not None else [0, 100, 1000, 10_000]
    args.messages = args.messages or 2_000_000
    args.big_messages = args.big_messages or args.messages
    args.runs = args.runs or 3
    write = not (args.quick or args.no_write)

    started = time.monotonic()
    raw: dict[str, list[dict]] = {}
    results: dict[str, list[dict]] = {c: [] for c in args.curves}
    failed = False
    with tempfile.TemporaryDirectory(prefix="scaling-build-") as build:
        tools = e2e.build_tools(Path(build))
        for p in points(args):
            runs = []
            for i in range(args.runs):
                try:
                    r = measure(p, tools, args)
                except (e2e.HarnessError, OSError, KeyError, ValueError) as exc:
                    failed = True
                    e2e.log(f"[{p.key}] run {i + 1}/{args.runs}: FAILED: {exc}")
                    continue
                runs.append(r)
                failed |= bad(r)
                cpu = f"{r['cpu_s_per_m']:.2f}" if r["cpu_s_per_m"] is not None else "-"
                e2e.log(
                    f"[{p.key}] {r['msgs_per_s']:,.0f} msgs/s, {r['deliveries_per_s']:,.0f} "
                    f"deliveries/s, {r['delivered']:,}/{r['expected']:,} at the sink, lost "
                    f"{r['lost']:,} (L10 {r['l10_dropped']:,}), dup {r['duplicates']:,}, "
                    f"unrouted {r['unrouted']}, CPU {cpu} s/M, start-up {r['startup_s']:.2f} s, "
                    f"idle RSS {r['idle_rss_mb']:.0f} MB, peak {r['peak_rss_mb']:.0f} MB"
                )
            raw[p.key] = runs
            if runs:
                results[p.curve].append(median_point(runs))
    elapsed = time.monotonic() - started
    md = "\n".join(tables(results))
    print(md)
    e2e.log(f"total {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    if write:
        section = render(args, argv, md, elapsed, write_charts(results, args.results.parent))
        e2e.write_results(args.results, section, HEADING)
        e2e.log(f"wrote {args.results}")
    return 1 if failed else 0


def render(args, argv: list[str], md: str, elapsed: float, charts: list[Path]) -> str:
    cmdline = "python bench/scaling.py " + " ".join(shlex.quote(a) for a in argv)
    machine = (f"Run of {dt.date.today().isoformat()}: {e2e.cpu_model()}, {os.cpu_count()} "
               f"CPUs; {'; '.join(e2e.versions(['logplexd']))}; {elapsed:.0f} s in all; "
               f"{args.runs} run(s) per point"
               + (" (the run of median msgs/s shown, with the worst loss and largest RSS of "
                  "the runs)." if args.runs > 1
                  else "."))  # fmt: skip
    conns = f"{args.conns} connection{'s' if args.conns > 1 else ''}"
    counts = f"{args.messages:,} messages per point"
    if args.big_messages != args.messages:
        counts += f" ({args.big_messages:,} above {args.big_from:,} channels)"
    prose = [
        f"TCP syslog in (loadgen, {conns}, {args.size}-byte octet-counted RFC 5424 messages "
        "in 64 KB writes) -> logplexd -> `syslog://` drains -> sink, on loopback; a fresh "
        "daemon per point, its channels, tokens, drains and sessions written into its store "
        f"before it starts; {counts}, after one warm-up message per loaded token that the "
        "daemon has routed before the clock starts (it allocates each channel's ring).",
        "",
        "msgs/s = messages sent / (last message at the sink - first sent): the last channel "
        "of the round-robin has a drain, so the sink sees the end of the run. delivered/s "
        "(deliveries/s) = messages at the sink over the same span. CPU = the daemon's "
        "user+system seconds during the load per million messages sent. Start-up = process "
        "start -> `/v3/healthcheck` answers 200 (interpreter, store load and routing index). "
        "Idle RSS = VmRSS 1 s after start-up (idle tails connected), before any message; "
        "peak RSS = VmHWM at the end: it includes the history every channel keeps (up to "
        "16,384 messages or 4 MB each), so with many channels nearly every message sent is "
        "still in memory. lost = expected at the sink (each drained channel's share, once per "
        "drain) - received, worst run; 'told by L10' = what the drains reported dropping in "
        "their L10 notices (a drain that falls too far behind skips ahead and says so). "
        "Every point also checks that every message sent was stored in a channel "
        "(`logplexd_messages_routed_total` on `/metrics`), 'unrouted' otherwise.",
        "",
        "Reading the channel curve: above 1,000 channels only 1,000 have a drain, so the "
        "share of messages that reach a drain falls (10 % at 10,000 channels, 1 % at "
        "100,000); there msgs/s is mostly the cost of routing into channels' history, and "
        "the per-drain cost is the 1-1,000 part of the curve. The idle tails are on channels "
        "that get no traffic (not filtered tails on the loaded channel): they measure what "
        "holding sessions open costs the hot path and memory.",
    ]
    body = [HEADING, "", "Command:", "", f"    {cmdline.rstrip()}", "", machine, ""]
    body += [tails.wrap(line) for line in prose] + ["", md.rstrip("\n"), ""]
    for path in charts:
        body.append(f"![{path.stem}]({path.name})")
    return "\n".join(body).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.exit(main())
