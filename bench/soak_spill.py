#!/usr/bin/env python3
"""Soak with durable drain backlogs (issue 19): receivers down for minutes at a time.

Run from the repository root::

    python bench/soak_spill.py                       # 300 s, defaults below
    python bench/soak_spill.py --seconds 120 --down 30 --up 15 --out /tmp/soak-spill

The daemon (this tree's ``logplexd serve``, spilling on: the default) runs as its own
process on a fresh data dir, so that its RSS and its ``<data_dir>/backlog`` are its own.
``--channels`` channels, each with one ``syslog://`` drain to its own receiver; a producer
sends a steady ``--rate`` messages/s in all (round robin over the channels, octet-counted
RFC 5424 of ``--size`` bytes, one TCP syslog connection per channel, paced every 10 ms). Each
message carries ``seq=C:N t=SEND_TIME``: N counts channel C's messages from 0.

Every receiver except the healthy one flaps: up for ``--warmup`` s, then down ``--down`` s,
up ``--up`` s, again and again, the receivers' cycles staggered evenly. Down = the listening
socket is closed and so is every connection, after reading what it had received (a syslog
receiver acknowledges nothing: what a drain wrote after that last read is lost in TCP and
logplexd cannot know; such gaps are told apart below). With ``--healthy`` (default) channel
0 has a second drain to a receiver that never goes down: its delivery latency (receive time
- the message's send time) shows whether the flapping drain of its channel delays it.

Every ``--sample`` s: the daemon's RSS (VmRSS, VmHWM), CPU, open descriptors, ``du`` of
``<data_dir>/backlog``, and from ``/metrics`` the backlog families (disk and queued bytes,
messages written and refused, drains spilling, messages spilled), written to
``OUT/soak_spill.csv``.

At the end the load stops, every receiver comes up for good and the soak waits (up to
``--settle`` s; a drain may be in a reconnect backoff of up to 64 s after a 60 s outage) until
every receiver has every message of its channel, or no drain has anything buffered and
nothing has arrived for 20 s. Then, per drain, exactly: sent = unique
messages received + messages announced by L10 notices + messages lost in TCP at a receiver's
close + unexplained. The last two are told apart by where the gaps lie: a gap right after
the last message a receiver read before closing and before the first it read after may be
what the drain wrote into that connection after the receiver's last read (TCP took it,
nobody read it; syslog has no acknowledgement, so logplexd counts it delivered); it is
counted so only for what the L10 notices do not already cover. Unexplained must be 0 (and
L10 must not announce more than is missing); with the default budgets L10 must be 0 too
(nothing dropped by logplexd); duplicates (at-least-once after a failed write) and
out-of-order messages are reported. Disk and RSS are bounded when the backlog directory
returns to (near) empty at the end and RSS shows no trend after warm-up (last third vs
middle third of the samples, as bench/soak.py). Exit 1 on any failed check. Prints a markdown
summary (also ``OUT/summary.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import re
import selectors
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench" / "e2e"))

import run as e2e  # noqa: E402  (bench/e2e/run.py: Logplexd launch, process helpers)

CLK_TCK = os.sysconf("SC_CLK_TCK")
SEQ = re.compile(rb"seq=(\d+):(\d+) t=(\d+\.\d+)")
L10 = re.compile(rb"Error L10 \([^)]*\): (\d+) messages dropped")
METRICS = {
    "logplexd_backlog_disk_bytes": "m_disk_bytes",
    "logplexd_backlog_queued_bytes": "m_queued_bytes",
    "logplexd_backlog_written_messages_total": "m_written_msgs",
    "logplexd_backlog_refused_messages_total": "m_refused_msgs",
    "logplexd_backlog_refusing": "m_refusing",
    "logplexd_drains_spilling": "m_spilling",
    "logplexd_drains_spilled_messages": "m_spilled_msgs",
    "logplexd_drains_buffered_messages": "m_buffered_msgs",
}


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# receivers


@dataclass
class CloseEvent:
    at: float
    max_before: int  # highest N received before the close (-1: none)
    first_after: int | None = None  # first N received after it


@dataclass
class Receiver:
    """A syslog receiver on a fixed port, in its own thread; ``up`` says whether it listens."""

    name: str
    channel: int
    flapping: bool
    port: int = 0
    up: bool = True
    # Per-message accounting for its channel's messages (one byte per N).
    seen: bytearray = field(default_factory=bytearray)
    unique: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    max_n: int = -1
    l10_notices: int = 0
    l10_messages: int = 0
    other: int = 0
    frames: int = 0
    connections: int = 0
    closes: list[CloseEvent] = field(default_factory=list)
    # (when it came up, when the drain connected, when it had caught up) per up period.
    ups: list[list[float | None]] = field(default_factory=list)
    catch_up_target: int = -1
    latencies: list[float] = field(default_factory=list)
    last_receive: float = 0.0
    longest_silence_up: float = 0.0  # longest gap between messages while up and traffic flows
    _want_up: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def want(self, up: bool) -> None:
        self._want_up = up

    # -- accounting (receiver thread) ----------------------------------------------------------
    def message(self, frame: bytes, now: float) -> None:
        self.frames += 1
        m = SEQ.search(frame)
        if m is not None:
            c, n, t = int(m.group(1)), int(m.group(2)), float(m.group(3))
            if c != self.channel:
                self.other += 1
                return
            if n >= len(self.seen):
                self.seen.extend(bytes(max(n + 1 - len(self.seen), 65536)))
            if self.seen[n]:
                self.duplicates += 1
            else:
                self.seen[n] = 1
                self.unique += 1
                if n < self.max_n:
                    self.out_of_order += 1
            if self.closes and self.closes[-1].first_after is None:
                self.closes[-1].first_after = n
            self.max_n = max(self.max_n, n)
            if self.flapping is False:
                self.latencies.append(now - t)
            if self.last_receive:
                self.longest_silence_up = max(self.longest_silence_up, now - self.last_receive)
            self.last_receive = now
            if self.ups and self.ups[-1][2] is None and self.max_n + 1 >= self.catch_up_target:
                self.ups[-1][2] = now
            return
        m = L10.search(frame)
        if m is not None:
            self.l10_notices += 1
            self.l10_messages += int(m.group(1))
            return
        self.other += 1

    def run(self, stop: threading.Event) -> None:
        sel = selectors.DefaultSelector()
        listener: socket.socket | None = None
        conns: dict[socket.socket, bytearray] = {}

        def parse(buf: bytearray, now: float) -> None:
            pos = 0
            end = len(buf)
            while True:
                sp = buf.find(b" ", pos, min(end, pos + 9))
                if sp < 0:
                    break
                length = int(buf[pos:sp])
                if sp + 1 + length > end:
                    break
                self.message(bytes(buf[sp + 1 : sp + 1 + length]), now)
                pos = sp + 1 + length
            del buf[:pos]

        def read(conn: socket.socket) -> bool:
            """Read what is there; False at EOF or error."""
            buf = conns[conn]
            try:
                data = conn.recv(1 << 20)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            buf += data
            parse(buf, time.time())
            return True

        def close(conn: socket.socket) -> None:
            sel.unregister(conn)
            conns.pop(conn, None)
            conn.close()

        while not stop.is_set():
            if self._want_up and listener is None:
                listener = socket.socket()
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", self.port))
                listener.listen(16)
                listener.setblocking(False)
                self.port = listener.getsockname()[1]
                sel.register(listener, selectors.EVENT_READ)
                with self._lock:
                    self.up = True
                    # Caught up once it has what the producer had sent when it came up.
                    self.ups.append([time.time(), None, None])
            elif not self._want_up and listener is not None:
                sel.unregister(listener)
                listener.close()
                listener = None
                # Read what each connection holds, then close it: what the drain writes
                # after this read is lost in TCP (counted apart at the end).
                for conn in list(conns):
                    with contextlib.suppress(OSError):
                        while read(conn):
                            try:
                                peek = conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                            except BlockingIOError:
                                break
                            if not peek:
                                break
                    close(conn)
                with self._lock:
                    self.up = False
                    self.closes.append(CloseEvent(time.time(), self.max_n))
                self.last_receive = 0.0
            for key, _ in sel.select(timeout=0.05):
                sock = key.fileobj
                if sock is listener:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = listener.accept()
                        conn.setblocking(False)
                        conns[conn] = bytearray()
                        sel.register(conn, selectors.EVENT_READ)
                        self.connections += 1
                        if self.ups and self.ups[-1][1] is None:
                            self.ups[-1][1] = time.time()
                elif sock in conns and not read(sock):  # type: ignore[arg-type]
                    close(sock)  # type: ignore[arg-type]
        for conn in list(conns):
            close(conn)
        if listener is not None:
            listener.close()

    def gaps(self, sent: int) -> list[tuple[int, int]]:
        """Missing N in [0, sent) as [lo, hi) ranges."""
        out = []
        n = 0
        seen = self.seen
        limit = min(sent, len(seen))
        while n < sent:
            if n < limit and seen[n]:
                # Skip a run of received messages quickly.
                nxt = seen.find(0, n, limit)
                n = limit if nxt < 0 else nxt
                continue
            lo = n
            while n < sent and (n >= limit or not seen[n]):
                n += 1
            out.append((lo, n))
        return out


# ---------------------------------------------------------------------------------------------
# producer


@dataclass
class Producer:
    port: int
    tokens: list[str]
    rate: float
    size: int
    sent: list[int] = field(default_factory=list)
    behind_max: float = 0.0  # most messages behind schedule (the daemon held the input)
    started: float = 0.0
    stopped: float = 0.0

    def frame(self, c: int, n: int, now: float) -> bytes:
        head = (
            f"<134>1 2024-05-01T12:00:00.000000Z soak {self.tokens[c]} web.1 - - "
            f"seq={c}:{n} t={now:.6f} "
        ).encode()
        body = head + b"x" * max(0, self.size - len(head))
        return b"%d %s" % (len(body), body)

    def run(self, stop: threading.Event) -> None:
        nchan = len(self.tokens)
        self.sent = [0] * nchan
        # One connection per channel: the daemon keeps each connection's order, so every
        # channel's N must arrive in order at its receivers.
        socks = [socket.create_connection(("127.0.0.1", self.port)) for _ in range(nchan)]
        tick = 0.01
        self.started = time.monotonic()
        done = 0
        while not stop.is_set():
            due = int(self.rate * (time.monotonic() - self.started))
            self.behind_max = max(self.behind_max, due - done)
            # At most 10 ticks' worth per send: catching up after a hold is a burst, bounded.
            n = min(due - done, max(1, int(self.rate * tick * 10)))
            if n > 0:
                now = time.time()
                parts: list[list[bytes]] = [[] for _ in range(nchan)]
                for _ in range(n):
                    c = done % nchan
                    parts[c].append(self.frame(c, self.sent[c], now))
                    self.sent[c] += 1
                    done += 1
                for c, frames in enumerate(parts):
                    if frames:
                        socks[c].sendall(b"".join(frames))
            time.sleep(tick)
        self.stopped = time.monotonic()
        for s in socks:
            s.close()


# ---------------------------------------------------------------------------------------------
# the daemon's figures


def proc_figures(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0].lower()] = int(line.split()[1]) / 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def du(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (st_blocks), as ``du`` counts them."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def api(port: int, key: str, method: str, path: str, body: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Basic {key}", "Content-Type": "application/json"}
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)  # fmt: skip
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metrics(port: int, key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    with contextlib.suppress(OSError, http.client.HTTPException):
        status, body = api(port, key, "GET", "/metrics")
        if status == 200:
            for line in body.decode().splitlines():
                name, _, value = line.rpartition(" ")
                if name in METRICS:
                    out[METRICS[name]] = float(value)
    return out


# ---------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="duration of the load")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--rate", type=float, default=8000.0, help="messages/s in all")
    ap.add_argument("--size", type=int, default=256, help="bytes per message")
    ap.add_argument("--down", type=float, default=60.0, help="seconds a receiver is down")
    ap.add_argument("--up", type=float, default=30.0, help="seconds it is up between outages")
    ap.add_argument("--warmup", type=float, default=10.0, help="all up this long first")
    ap.add_argument("--sample", type=float, default=5.0)
    ap.add_argument("--settle", type=float, default=240.0, help="max wait for delivery at the end")
    ap.add_argument("--no-healthy", dest="healthy", action="store_false",
                    help="no second, always-up drain on channel 0")  # fmt: skip
    ap.add_argument("--logplexd-arg", action="append", default=[],
                    help="extra argument for `logplexd serve` (repeatable)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "soak-spill-out")
    ap.add_argument("--keep", action="store_true", help="keep the daemon's data dir")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    workdir = Path(tempfile.mkdtemp(prefix="soak-spill-"))
    wl = e2e.Workload("soak-spill", "soak", args.channels, args.channels, 1, args.size)
    daemon = e2e.Logplexd(workdir, wl, 0)
    data = workdir / "data"
    data.mkdir()
    stop_sinks = threading.Event()
    stop_load = threading.Event()
    threads: list[threading.Thread] = []
    problems: list[str] = []
    rows: list[dict] = []
    code = 1
    try:
        # Receivers first (fixed ports: a flapping one comes back on the same port).
        receivers = [Receiver(f"r{c}", c, True) for c in range(args.channels)]
        if args.healthy:
            receivers.append(Receiver("healthy", 0, False))
        for r in receivers:
            r.port = e2e.free_port()
            t = threading.Thread(target=r.run, args=(stop_sinks,), daemon=True)
            t.start()
            threads.append(t)
        _, syslog_port, _ = daemon.launch(data, *args.logplexd_arg)
        pid = daemon.proc.pid
        log(f"logplexd pid {pid}, data dir {data}, log {daemon.log_path}")
        tokens = []
        for c in range(args.channels):
            status, body = api(daemon.api, daemon.key, "PUT", f"/v3/channels/spill-{c}",
                               {"tokens": ["app"]})  # fmt: skip
            assert status == 201, (status, body)
            tokens.append(json.loads(body)["tokens"]["app"])
        drains: dict[str, int] = {}
        for r in receivers:
            status, body = api(daemon.api, daemon.key, "POST",
                               f"/v3/channels/spill-{r.channel}/drains",
                               {"url": f"syslog://127.0.0.1:{r.port}/{r.name}"})  # fmt: skip
            assert status == 201, (status, body)
            drains[r.name] = json.loads(body)["id"]
        time.sleep(1.0)

        producer = Producer(syslog_port, tokens, args.rate, args.size)
        pt = threading.Thread(target=producer.run, args=(stop_load,), daemon=True)
        pt.start()
        t0 = time.monotonic()
        cycle = args.down + args.up
        flapping = [r for r in receivers if r.flapping]
        offsets = {r.name: args.warmup + i * cycle / len(flapping) for i, r in enumerate(flapping)}
        cpu0 = proc_figures(pid).get("cpu_s", 0.0)
        fields = ["t", "vmrss", "vmhwm", "cpu_s", "fds", "du_backlog", *METRICS.values(),
                  "sent", "received", "down"]  # fmt: skip
        csv_f = open(args.out / "soak_spill.csv", "w", newline="")  # noqa: SIM115
        writer = csv.DictWriter(csv_f, fieldnames=fields)
        writer.writeheader()

        def sample(t: float) -> dict:
            row: dict = {"t": round(t, 1)}
            row.update(proc_figures(pid))
            row["cpu_s"] = round(row.get("cpu_s", 0.0) - cpu0, 2)
            row["du_backlog"] = du(data / "backlog")
            row.update(metrics(daemon.api, daemon.key))
            row["sent"] = sum(producer.sent) if producer.sent else 0
            row["received"] = sum(r.unique for r in receivers)
            row["down"] = "".join("" if r.up else r.name for r in receivers) or "-"
            rows.append(row)
            writer.writerow({k: row.get(k, "") for k in fields})
            csv_f.flush()
            return row

        next_sample = args.sample
        while True:
            t = time.monotonic() - t0
            if t >= args.seconds:
                break
            for r in flapping:
                start = offsets[r.name]
                phase = (t - start) % cycle if t >= start else None
                want = phase is None or phase >= args.down
                if want and not r._want_up and producer.sent:
                    r.catch_up_target = sum(producer.sent[r.channel : r.channel + 1])
                r.want(want)
            if t >= next_sample:
                row = sample(t)
                next_sample += args.sample
                log(
                    f"t={row['t']:>6}s rss={row.get('vmrss', 0):.1f}MB "
                    f"du={row['du_backlog'] / 1e6:.1f}MB "
                    f"disk={row.get('m_disk_bytes', 0) / 1e6:.1f}MB "
                    f"spilling={row.get('m_spilling', 0):.0f} "
                    f"spilled={row.get('m_spilled_msgs', 0):.0f} "
                    f"written={row.get('m_written_msgs', 0):.0f} "
                    f"sent={row['sent']} recv={row['received']} down={row['down']}"
                )
            time.sleep(0.05)

        # Stop the load; every receiver up for good; wait for every message.
        stop_load.set()
        pt.join(timeout=30)
        sent = list(producer.sent)
        load_s = producer.stopped - producer.started
        for r in flapping:
            if not r._want_up:
                r.catch_up_target = sent[r.channel]
            r.want(True)
        settle_t0 = time.monotonic()
        # Also done once the daemon holds nothing for any drain and nothing has arrived for
        # QUIET s: what is still missing then was lost in TCP at a receiver's close.
        quiet, last_total, last_change = 20.0, -1, time.monotonic()
        while time.monotonic() - settle_t0 < args.settle:
            if all(r.unique + r.l10_messages >= sent[r.channel] for r in receivers):
                break
            total = sum(r.unique + r.duplicates + r.l10_notices for r in receivers)
            if total != last_total:
                last_total, last_change = total, time.monotonic()
            elif time.monotonic() - last_change > quiet:
                m = metrics(daemon.api, daemon.key)
                if m.get("m_buffered_msgs", 1) == 0 and m.get("m_spilled_msgs", 1) == 0:
                    break
            t = time.monotonic() - t0
            if t >= next_sample:
                row = sample(t)
                next_sample += args.sample
                log(
                    f"settling t={row['t']:>6}s du={row['du_backlog'] / 1e6:.1f}MB "
                    f"spilled={row.get('m_spilled_msgs', 0):.0f} recv={row['received']}/"
                    f"{sum(sent) + (sent[0] if args.healthy else 0)}"
                )
            time.sleep(0.2)
        settle_s = time.monotonic() - settle_t0
        time.sleep(3.0)  # late duplicates or notices; segments deleted after the last ack
        final = sample(time.monotonic() - t0)
        csv_f.close()

        status, body = 0, b""
        drain_status: dict[int, dict] = {}
        for c in range(args.channels):
            status, body = api(daemon.api, daemon.key, "GET",
                               f"/v3/channels/spill-{c}/drains/status")  # fmt: skip
            if status == 200:
                for d in json.loads(body)["drains"]:
                    drain_status[d["id"]] = d

        # -- accounting ----------------------------------------------------------------------
        acc_rows = []
        for r in receivers:
            n_sent = sent[r.channel]
            gaps = r.gaps(n_sent)
            # Gaps that begin right after the last message a receiver read before closing and
            # end before the first it read after: what a drain wrote into a connection the
            # receiver then closed (TCP took it, nobody read it) -- or what logplexd dropped
            # and announced by L10 (the notices do not say which messages): L10 first.
            adjacent = 0
            other_ranges = []
            for lo, hi in gaps:
                if any(
                    lo == e.max_before + 1 and (e.first_after is None or hi <= e.first_after)
                    for e in r.closes
                ):
                    adjacent += hi - lo
                else:
                    other_ranges.append((lo, hi))
            missing = sum(hi - lo for lo, hi in gaps)
            in_tcp = max(0, min(adjacent, missing - r.l10_messages))
            unexplained = missing - r.l10_messages - in_tcp
            st = drain_status.get(drains[r.name], {})
            acc_rows.append((r, n_sent, missing, in_tcp, unexplained, other_ranges, st))
            if unexplained > 0:
                problems.append(
                    f"{r.name}: {unexplained} message(s) unaccounted for (sent {n_sent}, unique "
                    f"{r.unique}, L10 {r.l10_messages}, lost in TCP at a close {in_tcp}); "
                    f"gaps away from a receiver close {other_ranges[:5]}"
                )
            elif unexplained < 0:
                problems.append(
                    f"{r.name}: L10 notices announced {-unexplained} more messages than are "
                    f"missing (sent {n_sent}, unique {r.unique}, L10 {r.l10_messages})"
                )
            if r.l10_messages:
                problems.append(f"{r.name}: {r.l10_messages} messages dropped (L10) within "
                                "the default budgets")  # fmt: skip
            if r.other:
                problems.append(f"{r.name}: {r.other} frames that are neither ours nor L10")
        end_du = final["du_backlog"]
        max_du = max(row["du_backlog"] for row in rows)
        # The ledger files stay (heads.bin, drains.bin): a few pages.
        if end_du > 1 << 20:
            problems.append(f"backlog dir still holds {end_du:,} bytes after delivery")
        if final.get("m_refused_msgs"):
            problems.append(f"backlogs refused {final['m_refused_msgs']:.0f} messages")
        warm = [row for row in rows if row["t"] >= min(args.warmup + cycle, args.seconds / 3)]
        warm = [row for row in warm if row["t"] <= args.seconds]
        rss_note = "too few samples"
        if len(warm) >= 6:
            third = len(warm) // 3
            mid = statistics.mean(r["vmrss"] for r in warm[third : 2 * third])
            last = statistics.mean(r["vmrss"] for r in warm[2 * third :])
            rss_note = f"{mid:.1f} -> {last:.1f} MB (middle third -> last third of the load)"
            if last > mid * 1.10 + 8:
                problems.append(f"RSS trends upward: {rss_note}")
        else:
            problems.append("too few samples after warm-up to judge the RSS trend")
        if daemon.proc.poll() is not None:
            problems.append(f"logplexd exited with {daemon.proc.returncode}")

        # -- summary -------------------------------------------------------------------------
        healthy = next((r for r in receivers if not r.flapping), None)
        lines = [
            f"Soak of {args.seconds:.0f} s load ({load_s:.0f} s measured) + {settle_s:.0f} s "
            f"settle: {args.channels} channels, {args.rate:,.0f} msgs/s of {args.size} B in all "
            f"({args.rate / args.channels:,.0f}/s and "
            f"{args.rate / args.channels * args.size / 1e6:.2f} MB/s per channel), receivers "
            f"down {args.down:.0f} s / up {args.up:.0f} s after {args.warmup:.0f} s, staggered"
            + (", plus an always-up second drain on channel 0" if healthy else "")
            + f". Producer: {sum(sent):,} messages, at most {producer.behind_max:,.0f} behind "
            "schedule (held by the daemon).",
            "",
            "| drain | sent | unique received | duplicates | out of order | L10 announced "
            "| lost in TCP at a receiver close | unexplained | outages | reconnect after up "
            "(median / max) | caught up after up (median / max) "
            "| daemon: delivered / dropped / lost |",
            "| --- " * 12 + "|",
        ]
        for r, n_sent, _missing, in_tcp, unexplained, _, st in acc_rows:
            reconnect = [u[1] - u[0] for u in r.ups[1:] if u[1] is not None]
            caught = [u[2] - u[0] for u in r.ups[1:] if u[2] is not None]

            def mm(v: list[float]) -> str:
                return f"{statistics.median(v):.1f} / {max(v):.1f} s" if v else "-"

            lines.append(
                f"| {r.name} (ch {r.channel}{', always up' if not r.flapping else ''}) "
                f"| {n_sent:,} | {r.unique:,} | {r.duplicates:,} | {r.out_of_order:,} "
                f"| {r.l10_messages:,} ({r.l10_notices} notices) | {in_tcp:,} | {unexplained:,} "
                f"| {len(r.closes)} | {mm(reconnect)} | {mm(caught)} "
                f"| {st.get('delivered', '?')} / {st.get('dropped', '?')} / {st.get('lost', '?')} |"
            )
        lines += [
            "",
            "| figure | value |",
            "| --- | --- |",
            f"| daemon RSS (VmRSS) | first sample {rows[0].get('vmrss', 0):.1f} MB, max "
            f"{max(r.get('vmrss', 0) for r in rows):.1f} MB, end {final.get('vmrss', 0):.1f} MB; "
            f"VmHWM {final.get('vmhwm', 0):.1f} MB; trend {rss_note} |",
            f"| `du <data_dir>/backlog` | max {max_du / 1e6:.1f} MB, end {end_du / 1e3:.0f} kB |",
            f"| backlog metrics | written {final.get('m_written_msgs', 0):,.0f} messages, refused "
            f"{final.get('m_refused_msgs', 0):,.0f}; max spilled (not yet delivered) "
            f"{max(r.get('m_spilled_msgs', 0) for r in rows):,.0f} messages; max disk "
            f"{max(r.get('m_disk_bytes', 0) for r in rows) / 1e6:.1f} MB; max queued "
            f"{max(r.get('m_queued_bytes', 0) for r in rows) / 1e6:.1f} MB |",
            f"| daemon CPU | {final.get('cpu_s', 0):.1f} s over {final['t']:.0f} s "
            f"({100 * final.get('cpu_s', 0) / max(1.0, final['t']):.1f} % of a core) |",
            f"| open descriptors | {rows[0].get('fds', 0):.0f} at start, max "
            f"{max(r.get('fds', 0) for r in rows):.0f}, end {final.get('fds', 0):.0f} |",
        ]
        if healthy is not None:
            lat = healthy.latencies
            lines.append(
                "| always-up drain of channel 0: delivery latency "
                f"| p50 {pct(lat, 0.5) * 1e3:.1f} ms, "
                f"p99 {pct(lat, 0.99) * 1e3:.1f} ms, max {max(lat) * 1e3:.1f} ms "
                f"({len(lat):,} messages); longest silence {healthy.longest_silence_up:.2f} s |"
            )
        with contextlib.suppress(OSError):
            warnings = daemon.log_path.read_text(errors="replace").splitlines()
            lines.append(f"| daemon log lines (level warning and up) | {len(warnings)} |")
            shutil.copy(daemon.log_path, args.out / "logplexd.log")
        lines += ["", "PASS" if not problems else "FAILED"]
        lines += [f"- {p}" for p in problems]
        summary = "\n".join(lines)
        print("\n" + summary)
        (args.out / "summary.md").write_text(summary + "\n")
        code = 1 if problems else 0
    finally:
        stop_load.set()
        stop_sinks.set()
        daemon.stop()
        for t in threads:
            t.join(timeout=5)
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
