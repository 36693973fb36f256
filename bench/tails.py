#!/usr/bin/env python3
"""Sessions and tails, end to end: producer -> logplexd -> ``GET /sessions/{uuid}`` readers.

Run from the repository root::

    python bench/tails.py                      # every cell, 200,000 messages each
    python bench/tails.py --quick --no-write   # smoke run of the harness
    python bench/tails.py --messages 500000 --idle-tails 10000

Parts (each cell runs a fresh ``logplexd serve`` on loopback ports, stopped by pid):

* **reader capacity**: the tail reader alone, fed by a blaster process that writes
  pre-built chunked session lines as fast as it can (1 and 1,000 connections): the ceiling
  the throughput cells are measured against, so the reader is not the bottleneck.
* **throughput**: TCP syslog (``bench/e2e/loadgen.c``, octet-counted, 64 KB writes) and
  ``POST /logs`` (batches of 100 and 500 frames, token auth, keep-alive) with 1 and 8
  producer connections, into 1 channel (1 tail) or 1,000 channels (1 tail each). Lines are
  counted at the readers; L11 notices (lapped tails) are summed; "unexplained loss" is
  sent - received - L11-dropped and must be 0.
* **latency**: a paced producer stamps each message with the wall clock (``lat=<ns>``);
  the reader subtracts it from its receive time: p50/p99/max.
* **idle tails**: the daemon's RSS growth per idle tail and its CPU use while 1,000 tails on
  one channel (and N tails on N channels) sit idle.

The reader, the ``/logs`` producer, the latency producer and the blaster are this file run
with a hidden first argument (``_reader``, ...), in their own processes. Writes a markdown
section ``## Sessions and tails (bench/tails.py)`` to ``bench/RESULTS.md`` unless
``--no-write`` or ``--quick``.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import http.client
import importlib.util
import json
import math
import os
import re
import selectors
import shlex
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"
HEADING = "## Sessions and tails (bench/tails.py)"
# Key suffix of the figures of the ``--base-tree`` daemon.
BASE = "@base"

SEQ = b"seq="
L11_RE = re.compile(rb"Error L11 \(Tail buffer overflow\) -> This tail session dropped (\d+) ")
LAT_RE = re.compile(rb"lat=(\d+)")
FRAME_HEAD = "<134>1 2024-05-01T12:00:00.000000Z bench {token} web.1 - - "


def load_e2e():
    spec = importlib.util.spec_from_file_location("e2e_run", HERE / "e2e" / "run.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["e2e_run"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# =============================================================================================
# helper processes (run as `python bench/tails.py _name ...`)


def reader_main(argv: list[str]) -> int:
    """Opens one tail per path, prints {"ready": n}, then counts lines until done.

    Done: ``--expect`` messages accounted for (received + L11-dropped), or no data for
    ``--idle`` seconds after the first, or ``--max`` seconds. With ``--hold`` it only keeps
    the connections open until stdin closes. Prints one JSON line with the figures.
    """
    ap = argparse.ArgumentParser(prog="tails.py _reader")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--paths", type=Path, required=True)
    ap.add_argument("--expect", type=int, default=0)
    ap.add_argument("--idle", type=float, default=3.0)
    ap.add_argument("--max", type=float, default=600.0)
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--hold", action="store_true")
    args = ap.parse_args(argv)
    paths = args.paths.read_text().split()
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    for path in paths:
        s = socket.create_connection(("127.0.0.1", args.port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        socks.append(s)
    carry: list[bytes] = [b""] * len(socks)
    heads = 0
    for i, s in enumerate(socks):
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = s.recv(65536)
            if not data:
                raise SystemExit(f"reader: connection {i} closed before the head")
            buf += data
        head, _, carry[i] = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"reader: {head.splitlines()[0]!r}")
        heads += 1
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    emit({"ready": heads})
    if args.hold:
        sys.stdin.read()
        return 0

    received = lost = notices = closed = 0
    first = last = 0.0
    lats: list[int] = []
    started = time.monotonic()
    last_data = started
    while True:
        now = time.monotonic()
        if args.expect and received + lost >= args.expect:
            break
        if now - started > args.max or closed == len(socks):
            break
        if received and now - last_data > args.idle:
            break
        for key, _ in sel.select(0.2):
            i = key.data
            data = key.fileobj.recv(262144)  # type: ignore[union-attr]
            if not data:
                sel.unregister(key.fileobj)
                closed += 1
                continue
            buf = carry[i] + data if carry[i] else data
            nl = buf.rfind(b"\n")
            if nl < 0:
                carry[i] = buf
                continue
            complete, carry[i] = buf[: nl + 1], buf[nl + 1 :]
            n = complete.count(SEQ)
            if n:
                wall = time.time()
                received += n
                first = first or wall
                last = wall
                last_data = time.monotonic()
                if args.latency:
                    ns = time.time_ns()
                    lats.extend(ns - int(m) for m in LAT_RE.findall(complete))
            if b"L11" in complete:
                for m in L11_RE.findall(complete):
                    lost += int(m)
                    notices += 1
    out = {"received": received, "l11_lost": lost, "l11_notices": notices,
           "first_ts": first, "last_ts": last, "closed": closed}  # fmt: skip
    if args.latency:
        lats.sort()
        out["latency_ms"] = {
            "n": len(lats),
            "p50": percentile(lats, 50) / 1e6,
            "p99": percentile(lats, 99) / 1e6,
            "max": (lats[-1] / 1e6) if lats else 0.0,
        }
    emit(out)
    for s in socks:
        s.close()
    return 0


def percentile(sorted_values: list[int], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return float(sorted_values[k])


def frame(token: str, text: str, size: int) -> bytes:
    msg = FRAME_HEAD.format(token=token) + text
    if len(msg) < size:
        msg += " " + "x" * (size - len(msg) - 1)
    raw = msg.encode()
    return b"%d %s" % (len(raw), raw)


def logs_request(token: str, body: bytes, count: int) -> bytes:
    auth = base64.b64encode(f"token:{token}".encode()).decode()
    head = (
        "POST /logs HTTP/1.1\r\nHost: bench\r\nContent-Type: application/logplex-1\r\n"
        f"Authorization: Basic {auth}\r\nLogplex-Msg-Count: {count}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class HttpConn:
    """One keep-alive connection to ``/logs`` with at most one request in flight."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.busy = False

    def send(self, request: bytes) -> None:
        self.sock.sendall(request)
        self.busy = True

    def poll_response(self) -> int | None:
        """Reads what is there; the status once a whole response has arrived."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("logs listener closed the connection")
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buf[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return None
        self.buf = self.buf[end + 4 + length :]
        self.busy = False
        return int(head.split(" ", 2)[1])


def logs_producer_main(argv: list[str]) -> int:
    """Posts ``--messages`` frames to /logs in batches over ``--conns`` keep-alive connections;
    tokens (one request each) round-robin. Prints {"sent", "start_ts", "elapsed", ...}."""
    ap = argparse.ArgumentParser(prog="tails.py _logs-producer")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tokens", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--size", type=int, default=120)
    args = ap.parse_args(argv)
    tokens = args.tokens.read_text().split()
    requests = [
        logs_request(t, b"".join(frame(t, f"seq=0:{i}", args.size) for i in range(args.batch)),
                     args.batch)
        for t in tokens
    ]  # fmt: skip
    total = math.ceil(args.messages / args.batch)
    conns = [HttpConn(args.port) for _ in range(args.conns)]
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    issued = ok = errors = 0
    start, mono = time.time(), time.monotonic()
    for c in conns:
        if issued < total:
            c.send(requests[issued % len(requests)])
            issued += 1
    while ok + errors < total:
        for key, _ in sel.select(30.0):
            c = key.data
            status = c.poll_response()
            if status is None:
                continue
            if status == 204:
                ok += 1
            else:
                errors += 1
            if issued < total:
                c.send(requests[issued % len(requests)])
                issued += 1
    elapsed = time.monotonic() - mono
    emit({"sent": ok * args.batch, "requests": ok, "errors": errors, "start_ts": start,
          "end_ts": time.time(), "elapsed": elapsed})  # fmt: skip
    return 1 if errors else 0


def latency_producer_main(argv: list[str]) -> int:
    """Sends ``--rate`` messages/s for ``--seconds``, ``--per-tick`` messages every tick, each
    stamped ``lat=<wall clock ns>`` when the tick is sent; over TCP syslog or /logs."""
    ap = argparse.ArgumentParser(prog="tails.py _latency-producer")
    ap.add_argument("--transport", choices=["syslog", "logs"], required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tokens", type=Path, required=True)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--base-tree", type=Path, default=None,
                    help="also run every cell with the daemon of this checkout (built in "
                    "place), alternating: before/after in one run")  # fmt: skip
    ap.add_argument("--load-rate", type=float, default=100_000.0,
                    help="msgs/s of the loaded latency cell, 1,000 channels (100,000)")  # fmt: skip
    ap.add_argument("--per-tick", type=int, default=10)
    ap.add_argument("--size", type=int, default=120)
    args = ap.parse_args(argv)
    tokens = args.tokens.read_text().split()
    tick = args.per_tick / args.rate
    ticks = int(args.seconds / tick)
    if args.transport == "syslog":
        sock = socket.create_connection(("127.0.0.1", args.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        conn = HttpConn(args.port)
    sent = 0
    t0 = time.monotonic()
    for k in range(ticks):
        due = t0 + k * tick
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        token = tokens[k % len(tokens)]
        ns = time.time_ns()
        frames = b"".join(
            frame(token, f"lat={ns} seq=0:{sent + j}", args.size) for j in range(args.per_tick)
        )
        if args.transport == "syslog":
            sock.sendall(frames)
        else:
            conn.send(logs_request(token, frames, args.per_tick))
            status = None
            while status is None:
                status = conn.poll_response()
            if status != 204:
                raise SystemExit(f"latency producer: /logs answered {status}")
        sent += args.per_tick
    emit({"sent": sent, "elapsed": time.monotonic() - t0})
    return 0


def blaster_main(argv: list[str]) -> int:
    """A fake session server for measuring the reader alone: accepts ``--conns`` tail
    requests, then writes ``--messages`` session lines (chunked, 1,000 lines a chunk) spread
    over them as fast as the reader takes them."""
    ap = argparse.ArgumentParser(prog="tails.py _blaster")
    ap.add_argument("--conns", type=int, required=True)
    ap.add_argument("--messages", type=int, required=True)
    args = ap.parse_args(argv)
    lst = socket.create_server(("127.0.0.1", 0), backlog=4096)
    emit({"port": lst.getsockname()[1]})
    line = b"2024-05-01T12:00:00.000000+00:00 app[web.1]: seq=0:0 " + b"x" * 48 + b"\n"
    per_chunk = 1000

    def chunk(n: int) -> bytes:
        data = line * n
        return b"%x\r\n%s\r\n" % (len(data), data)

    full = chunk(per_chunk)
    socks, todo, pending = [], [], []
    share, extra = divmod(args.messages, args.conns)
    for i in range(args.conns):
        s, _ = lst.accept()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        s.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        s.setblocking(False)
        socks.append(s)
        todo.append(share + (i < extra))
        pending.append(memoryview(b""))
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_WRITE, i)
    live = len(socks)
    while live:
        for key, _ in sel.select(5.0):
            i = key.data
            if not pending[i]:
                if todo[i] == 0:
                    sel.unregister(key.fileobj)
                    live -= 1
                    continue
                n = min(per_chunk, todo[i])
                todo[i] -= n
                pending[i] = memoryview(full if n == per_chunk else chunk(n))
            try:
                w = key.fileobj.send(pending[i])  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            pending[i] = pending[i][w:]
    sys.stdin.read()  # keep the connections open until the driver is done
    return 0


HELPERS = {
    "_reader": reader_main,
    "_logs-producer": logs_producer_main,
    "_latency-producer": latency_producer_main,
    "_blaster": blaster_main,
}


# =============================================================================================
# the driver


def helper_cmd(name: str, *args: object) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), name, *map(str, args)]


def start_helper(name: str, *args: object, stdin=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(helper_cmd(name, *args), stdin=stdin, stdout=subprocess.PIPE, cwd=REPO)


def json_line(e2e, proc: subprocess.Popen, timeout: float) -> dict:
    return json.loads(e2e.read_line(proc, timeout))


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    """Closes the helper's stdin and returns its last JSON line."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"helper pid {proc.pid} did not finish within {timeout:.0f} s") from None
    lines = out.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(f"helper pid {proc.pid} exited rc={proc.returncode} without output")
    return json.loads(lines[-1])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_daemon_class(e2e):
    class TailDaemon(e2e.Logplexd):
        """``logplexd serve`` with N channels (one token each) and tail sessions on them."""

        def __init__(self, workdir: Path, channels: int, max_connections: int = 4096) -> None:
            wl = e2e.Workload("tails", "tails", 1, channels, 0, 120)
            super().__init__(workdir, wl, 0)
            self.max_connections = max_connections

        def start(self) -> int:
            data = self.workdir / "data"
            data.mkdir()
            ports = self.launch(data, "--api-max-connections", str(self.max_connections))
            self.api, self.syslog_port, self.logs_port = ports
            self.tokens = self._parallel(self._put_channel, range(self.wl.channels))
            return self.syslog_port

        def _parallel(self, fn, items) -> list:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                return list(pool.map(fn, items))

        def _call(self, method: str, path: str, body: dict) -> dict:
            conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=60)
            headers = {"Authorization": f"Basic {self.key}", "Content-Type": "application/json"}
            try:
                conn.request(method, path, body=json.dumps(body), headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            if resp.status != 201:
                raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
            return json.loads(data)

        def _put_channel(self, i: int) -> str:
            return self._call("PUT", f"/v3/channels/bench-{i}", {"tokens": ["app"]})["tokens"][
                "app"
            ]

        def sessions(self, channels: list[int]) -> list[str]:
            """One tail session per entry (channel index); returns their paths."""

            def one(i: int) -> str:
                body = {"channel_id": f"bench-{i}", "tail": True, "num": "0"}
                url = self._call("POST", "/v3/sessions", body)["url"]
                return "/sessions/" + url.rsplit("/sessions/", 1)[1]

            return self._parallel(one, channels)

    return TailDaemon


@dataclass(frozen=True)
class Cell:
    key: str
    transport: str  # syslog | logs
    batch: int  # frames per POST (logs)
    conns: int
    channels: int

    @property
    def label(self) -> str:
        how = "TCP syslog" if self.transport == "syslog" else f"/logs, {self.batch}/POST"
        chans = "1 channel" if self.channels == 1 else f"{self.channels:,} channels"
        return f"{how}, {self.conns} conn{'s' if self.conns > 1 else ''}, {chans}"


CELLS = [
    Cell(f"{t}{'' if t == 'syslog' else b}-c{c}-ch{ch}", t, b, c, ch)
    for t, b in (("syslog", 0), ("logs", 100), ("logs", 500))
    for ch in (1, 1000)
    for c in (1, 8)
]


class Bench:
    def __init__(self, e2e, tools: tuple[Path, Path], args) -> None:
        self.e2e = e2e
        self.loadgen = tools[0]
        self.args = args
        self.daemon_cls = make_daemon_class(e2e)

    # -- the reader alone ------------------------------------------------------------------
    def reader_capacity(self, conns: int, messages: int) -> dict:
        with tempfile.TemporaryDirectory(prefix="tails-cap-") as tmp:
            blaster = reader = None
            try:
                blaster = start_helper("_blaster", "--conns", conns, "--messages", messages)
                port = json_line(self.e2e, blaster, 10)["port"]
                paths = Path(tmp) / "paths"
                paths.write_text("\n".join(f"/sessions/{i}" for i in range(conns)) + "\n")
                reader = start_helper("_reader", "--port", port, "--paths", paths,
                                      "--expect", messages, "--idle", 5)  # fmt: skip
                json_line(self.e2e, reader, 60)
                res = finish(reader, 300)
            finally:
                self.e2e.stop_process(reader, wait=5)
                self.e2e.stop_process(blaster, wait=5)
        span = res["last_ts"] - res["first_ts"]
        res["rate"] = res["received"] / span if span > 0 else 0.0
        return res

    # -- throughput ---------------------------------------------------------------------------
    def throughput(self, cell: Cell, messages: int) -> dict:
        e2e = self.e2e
        with tempfile.TemporaryDirectory(prefix=f"tails-{cell.key}-") as tmp:
            workdir = Path(tmp)
            daemon = reader = producer = None
            try:
                daemon = self.daemon_cls(workdir, cell.channels)
                daemon.start()
                paths = workdir / "paths"
                paths.write_text("\n".join(daemon.sessions(list(range(cell.channels)))) + "\n")
                tokens = workdir / "tokens"
                tokens.write_text("\n".join(daemon.tokens) + "\n")
                budget = 60 + messages / 10_000
                reader = start_helper("_reader", "--port", daemon.api, "--paths", paths,
                                      "--expect", messages, "--idle", self.args.idle,
                                      "--max", budget + 60)  # fmt: skip
                ready = json_line(e2e, reader, 120)
                assert ready["ready"] == cell.channels, ready
                cpu0 = e2e.cpu_seconds(daemon.pid)
                if cell.transport == "syslog":
                    cmd = [str(self.loadgen), "-H", "127.0.0.1", "-p", str(daemon.syslog_port),
                           "-c", str(cell.conns), "-n", str(messages), "-s", str(self.args.size),
                           "-T", str(tokens)]  # fmt: skip
                else:
                    cmd = helper_cmd("_logs-producer", "--port", daemon.logs_port,
                                     "--tokens", tokens, "--batch", cell.batch,
                                     "--messages", messages, "--conns", cell.conns,
                                     "--size", self.args.size)  # fmt: skip
                producer = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, cwd=REPO)  # fmt: skip
                sent = finish(producer, budget)
                if producer.returncode != 0:
                    raise RuntimeError(f"producer failed rc={producer.returncode}: {sent}")
                got = finish(reader, budget + 120)
                cpu = e2e.cpu_seconds(daemon.pid) - cpu0
                rss = e2e.peak_rss_kb(daemon.pid)
                if daemon.proc.poll() is not None:
                    raise RuntimeError("logplexd died during the run")
            finally:
                for proc in (producer, reader):
                    e2e.stop_process(proc, wait=5)
                if daemon is not None:
                    daemon.stop()
        span = got["last_ts"] - sent["start_ts"]
        return {
            "sent": sent["sent"],
            "received": got["received"],
            "rate": got["received"] / span if span > 0 else 0.0,
            "ingest": sent["sent"] / sent["elapsed"] if sent["elapsed"] > 0 else 0.0,
            "l11_lost": got["l11_lost"],
            "l11_notices": got["l11_notices"],
            "unexplained": sent["sent"] - got["received"] - got["l11_lost"],
            "cpu_per_m": cpu / (sent["sent"] / 1e6) if sent["sent"] else None,
            "rss_mb": rss / 1024,
        }

    # -- latency ------------------------------------------------------------------------------
    def latency(self, transport: str, channels: int, rate: float) -> dict:
        e2e, a = self.e2e, self.args
        with tempfile.TemporaryDirectory(prefix="tails-lat-") as tmp:
            workdir = Path(tmp)
            daemon = reader = producer = None
            try:
                daemon = self.daemon_cls(workdir, channels)
                daemon.start()
                paths = workdir / "paths"
                paths.write_text("\n".join(daemon.sessions(list(range(channels)))) + "\n")
                tokens = workdir / "tokens"
                tokens.write_text("\n".join(daemon.tokens) + "\n")
                expected = int(a.latency_seconds * rate / a.per_tick) * a.per_tick
                reader = start_helper("_reader", "--port", daemon.api, "--paths", paths,
                                      "--expect", expected, "--idle", 5, "--latency",
                                      "--max", a.latency_seconds + 60)  # fmt: skip
                json_line(e2e, reader, 120)
                port = daemon.syslog_port if transport == "syslog" else daemon.logs_port
                producer = start_helper("_latency-producer", "--transport", transport,
                                        "--port", port, "--tokens", tokens,
                                        "--rate", rate, "--seconds", a.latency_seconds,
                                        "--per-tick", a.per_tick, "--size", a.size,
                                        stdin=subprocess.DEVNULL)  # fmt: skip
                sent = finish(producer, a.latency_seconds + 60)
                got = finish(reader, 120)
            finally:
                for proc in (producer, reader):
                    e2e.stop_process(proc, wait=5)
                if daemon is not None:
                    daemon.stop()
        got["sent"] = sent["sent"]
        return got

    # -- idle tails ---------------------------------------------------------------------------
    def idle(self, tails: int, channels: int, seconds: float) -> dict:
        """RSS growth per idle tail (VmRSS before and after the readers connect, sessions
        already created) and the daemon's CPU seconds over ``seconds`` of idleness."""
        e2e = self.e2e
        with tempfile.TemporaryDirectory(prefix="tails-idle-") as tmp:
            workdir = Path(tmp)
            daemon = reader = None
            try:
                daemon = self.daemon_cls(workdir, channels, max_connections=tails + 1024)
                t0 = time.monotonic()
                daemon.start()
                sessions = daemon.sessions([i % channels for i in range(tails)])
                provision = time.monotonic() - t0
                paths = workdir / "paths"
                paths.write_text("\n".join(sessions) + "\n")
                time.sleep(1.0)
                before = rss_kb(daemon.pid)
                cpu0 = e2e.cpu_seconds(daemon.pid)
                t0 = time.monotonic()
                reader = start_helper("_reader", "--port", daemon.api, "--paths", paths, "--hold")
                ready = json_line(e2e, reader, 300)
                connect = time.monotonic() - t0
                connect_cpu = e2e.cpu_seconds(daemon.pid) - cpu0
                assert ready["ready"] == tails, ready
                time.sleep(1.0)
                after = rss_kb(daemon.pid)
                cpu1 = e2e.cpu_seconds(daemon.pid)
                time.sleep(seconds)
                idle_cpu = e2e.cpu_seconds(daemon.pid) - cpu1
            finally:
                e2e.stop_process(reader, wait=5)
                if daemon is not None:
                    daemon.stop()
        return {
            "tails": tails,
            "channels": channels,
            "kb_per_tail": (after - before) / tails,
            "rss_before_mb": before / 1024,
            "rss_after_mb": after / 1024,
            "connect_s": connect,
            "connect_cpu_ms_per_tail": 1000 * connect_cpu / tails,
            "idle_cpu_pct": 100 * idle_cpu / seconds,
            "idle_seconds": seconds,
            "provision_s": provision,
        }


def fmt_rate(r: float) -> str:
    return f"{r / 1e6:.2f} M" if r >= 1e6 else f"{r / 1e3:,.1f} k"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in HELPERS:
        return HELPERS[argv[0]](argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=None, help="messages per cell (200,000)")
    ap.add_argument(
        "--cells", default="all", help="comma-separated: " + ",".join(c.key for c in CELLS)
    )
    ap.add_argument("--size", type=int, default=120, help="message size in bytes (120)")
    ap.add_argument(
        "--idle",
        type=float,
        default=3.0,
        help="a reader stops after this many seconds without data",
    )
    ap.add_argument("--latency-rate", type=float, default=1000.0, help="msgs/s (1,000)")
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--base-tree", type=Path, default=None,
                    help="also run every cell with the daemon of this checkout (built in "
                    "place), alternating: before/after in one run")  # fmt: skip
    ap.add_argument("--load-rate", type=float, default=100_000.0,
                    help="msgs/s of the loaded latency cell, 1,000 channels (100,000)")  # fmt: skip
    ap.add_argument("--per-tick", type=int, default=10, help="messages per latency send (10)")
    ap.add_argument(
        "--idle-tails",
        type=int,
        default=10_000,
        help="tails (one per channel) for the idle-cost part; 0 skips it (10,000)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 20,000 messages, 2 s latency, 1,000 idle tails, no write",
    )
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args(argv)  # fmt: skip
    if args.quick:
        args.latency_seconds = min(args.latency_seconds, 2.0)
        args.idle_tails = min(args.idle_tails, 1000)
    messages = args.messages or (20_000 if args.quick else 200_000)
    if args.cells == "all":
        cells = CELLS
    else:
        by_key = {c.key: c for c in CELLS}
        try:
            cells = [by_key[k] for k in args.cells.split(",") if k]
        except KeyError as exc:
            ap.error(f"unknown cell {exc}")
    e2e = load_e2e()
    started = time.monotonic()
    raw: dict[str, object] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="tails-build-") as build:
        bench = Bench(e2e, e2e.build_tools(Path(build)), args)

        capacity = {}
        for conns in (1, 1000):
            n = max(messages * 5, 500_000)
            res = bench.reader_capacity(conns, n)
            capacity[conns] = res
            log(f"[reader alone] {conns} conns: {res['rate']:,.0f} lines/s ({res['received']:,})")
        raw["reader_capacity"] = capacity

        # With --base-tree each cell runs with the base daemon, then with this one.
        trees = [(BASE, args.base_tree.resolve()), ("", None)] if args.base_tree else [("", None)]
        results: dict[str, dict] = {}
        for cell, (suffix, tree) in ((c, t) for c in cells for t in trees):
            bench.daemon_cls.tree = tree
            key = cell.key + suffix
            try:
                res = bench.throughput(cell, messages)
            except (RuntimeError, AssertionError, e2e.HarnessError, OSError) as exc:
                failed = True
                log(f"[{key}] FAILED: {exc}")
                continue
            results[key] = res
            failed |= res["unexplained"] != 0
            log(f"[{key}] {res['rate']:,.0f} msgs/s at the readers, sent "
                f"{res['ingest']:,.0f}/s, {res['received']:,}/{res['sent']:,} received, "
                f"L11 {res['l11_lost']:,}, unexplained {res['unexplained']:,}")  # fmt: skip
        raw["throughput"] = results

        latencies = {}
        paths = [("syslog", 1, args.latency_rate), ("logs", 1, args.latency_rate),
                 ("syslog", 1000, args.latency_rate), ("syslog", 1000, args.load_rate)]  # fmt: skip
        for (transport, channels, rate), (suffix, tree) in ((p, t) for p in paths for t in trees):
            bench.daemon_cls.tree = tree
            key = f"{transport}-ch{channels}" + ("-load" if rate == args.load_rate else "") + suffix
            try:
                res = bench.latency(transport, channels, rate)
            except (RuntimeError, AssertionError, e2e.HarnessError, OSError) as exc:
                failed = True
                log(f"[latency {key}] FAILED: {exc}")
                continue
            latencies[key] = res
            lat = res["latency_ms"]
            log(f"[latency {key}] p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, "
                f"max {lat['max']:.2f} ms, {res['received']:,}/{res['sent']:,}")  # fmt: skip
        raw["latency"] = latencies

        bench.daemon_cls.tree = None
        idle = []
        if args.idle_tails:
            for tails, channels in ((1000, 1), (args.idle_tails, args.idle_tails)):
                res = bench.idle(tails, channels, 10.0 if not args.quick else 3.0)
                idle.append(res)
                log(f"[idle] {tails:,} tails on {channels:,} channels: "
                    f"{res['kb_per_tail']:.1f} KB/tail, idle CPU {res['idle_cpu_pct']:.2f} %, "
                    f"connect {res['connect_s']:.1f} s")  # fmt: skip
        raw["idle"] = idle
    elapsed = time.monotonic() - started

    md = render(cells, results, capacity, latencies, idle, args, messages)
    print(md)
    log(f"total {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    if not (args.quick or args.no_write):
        cmdline = "python bench/tails.py " + " ".join(shlex.quote(a) for a in argv)
        machine = (f"Run of {dt.date.today().isoformat()}: {e2e.cpu_model()}, "
                   f"{os.cpu_count()} CPUs; {'; '.join(e2e.versions(['logplexd']))}; "
                   f"{elapsed:.0f} s in all.")  # fmt: skip
        section = "\n".join([HEADING, "", "Command:", "", f"    {cmdline.rstrip()}", "",
                             machine, "", md])  # fmt: skip
        e2e.write_results(args.results, section.rstrip("\n") + "\n", HEADING)
        log(f"wrote {args.results}")
    return 1 if failed else 0


def render(cells, results, capacity, latencies, idle, args, messages) -> str:
    out = [
        f"Producer -> logplexd -> tail readers, all on loopback; {messages:,} messages of "
        f"{args.size} B per cell, a fresh daemon per cell, one tail session (`tail: true`, "
        "`num: 0`) per channel. msgs/s = lines counted at the readers / (last line received "
        "- first message sent); sent msgs/s = the producer's own rate (how fast the daemon "
        "took the input). L11-dropped: what the tails were told they lost when lapped "
        "(per-channel ring of 16,384 messages); unexplained = sent - received - L11-dropped. "
        "CPU = daemon user+system seconds per million messages sent.",
        "",
        "Reading the table: loadgen round-robins the 1,000 tokens per message, so over TCP "
        "syslog each read of the daemon wakes hundreds of tails with about one line each, and "
        "the per-wake cost of a tail (a task step, an h11 chunk, a send) bounds the rate; a "
        "`/logs` POST goes to one channel, so a wake carries 100 or 500 lines. Where the "
        "producer outruns a single tail, the tail is lapped and told so (L11) while ingestion "
        "goes on: msgs/s at readers is then the rate of the lines that tail did get.",
        "",
        "Reader alone (the ceiling; a blaster writes pre-built chunked session lines): "
        + ", ".join(f"{c:,} connection{'s' if c > 1 else ''} {fmt_rate(r['rate'])} lines/s"
                    for c, r in capacity.items()) + ".",
        "",
        "| workload | msgs/s at readers | sent msgs/s | received / sent | L11-dropped (notices) "
        "| unexplained | CPU s / M | peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    versions = [(BASE, " (base)"), ("", "")] if args.base_tree else [("", "")]
    rows = [(cell.key + suffix, cell.label + label) for cell in cells for suffix, label in versions]
    for key, label in rows:
        r = results.get(key)
        if r is None:
            out.append(f"| {label} | failed | | | | | | |")
            continue
        cpu = f"{r['cpu_per_m']:.2f}" if r["cpu_per_m"] is not None else "-"
        out.append(
            f"| {label} | {fmt_rate(r['rate'])} | {fmt_rate(r['ingest'])} "
            f"| {r['received']:,} / {r['sent']:,} | {r['l11_lost']:,} ({r['l11_notices']:,}) "
            f"| {r['unexplained']:,} | {cpu} | {r['rss_mb']:.0f} MB |"
        )
    out += [
        "",
        f"Tail delivery latency (wall clock, message stamped when written by the producer -> "
        f"line read by the tail reader), {args.latency_rate:,.0f} msgs/s (the last row: "
        f"{args.load_rate:,.0f} msgs/s) for {args.latency_seconds:.0f} s in sends of "
        f"{args.per_tick}:",
        "",
        "| path | p50 | p99 | max | received / sent |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {"syslog-ch1": "TCP syslog, 1 channel", "logs-ch1": f"/logs ({args.per_tick}/POST), "
             "1 channel", "syslog-ch1000": "TCP syslog, 1,000 channels round-robin",
             "syslog-ch1000-load": f"TCP syslog, 1,000 channels, {args.load_rate:,.0f}/s",
             }  # fmt: skip
    for key, r in latencies.items():
        lat = r["latency_ms"]
        name = names.get(key.removesuffix(BASE), key)
        if key.endswith(BASE):
            name += " (base)"
        out.append(
            f"| {name} | {lat['p50']:.2f} ms | {lat['p99']:.2f} ms "
            f"| {lat['max']:.2f} ms | {r['received']:,} / {r['sent']:,} |"
        )
    if idle:
        out += [
            "",
            "Idle tails (daemon VmRSS before and after the readers connect, the sessions "
            "already created; CPU while idle over the stated seconds; connect = all tails' "
            "response heads received, and the daemon's CPU for it):",
            "",
            "| tails | RSS per idle tail | RSS before -> after | daemon CPU while idle "
            "| connect (CPU per tail) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in idle:
            where = "1 channel" if r["channels"] == 1 else f"{r['channels']:,} channels"
            out.append(
                f"| {r['tails']:,} on {where} | {r['kb_per_tail']:.1f} KB "
                f"| {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} MB "
                f"| {r['idle_cpu_pct']:.2f} % over {r['idle_seconds']:.0f} s "
                f"| {r['connect_s']:.1f} s ({r['connect_cpu_ms_per_tail']:.2f} ms) |"
            )
    return "\n".join(wrap(line) for line in out) + "\n"


def wrap(line: str) -> str:
    """Prose at 92 columns, as the other sections of RESULTS.md; tables as they are."""
    return line if line.startswith("|") else textwrap.fill(line, 92, break_on_hyphens=False)


if __name__ == "__main__":
    sys.exit(main())
