#!/usr/bin/env python3
"""End-to-end load harness: TCP syslog in -> router -> ``syslog://`` drain out.

Run from the repository root::

    python bench/e2e/run.py                                    # logplexd + ceiling, 1M msgs
    python bench/e2e/run.py --routers logplexd,rsyslog,syslog-ng
    python bench/e2e/run.py --quick --routers direct           # smoke test of the harness

A C producer (``loadgen.c``) sends RFC 5424 messages, octet-counted, over C connections to
the router's TCP syslog input; the router forwards them to a C sink (``sink.c``) that counts
them and checks every (drain, app, connection) stream for loss and duplicates through the
``seq=C:N`` in each message. ``direct`` is producer -> sink without a router: the ceiling
of the setup. Routers:

* ``logplexd``: this repository's daemon, fresh data dir, channels and drains created with
  the v3 control API.
* ``logplexd-nospill``: the same daemon with durable drain backlogs off
  (``--drain-spill false``): with ``logplexd`` in one run, what spilling costs a healthy drain
  (issue 19; ``bench/bench_spill.py healthy`` alternates the two and prints the ratio).
* ``logplexd-redis``: the same daemon as one node in Redis mode (issue 21), on a
  redis-server of its own started for the run (``--save "" --appendonly no``).
* ``rsyslog``: ``/usr/sbin/rsyslogd -n`` with ``imtcp`` and one ``omfwd`` action (TCP,
  octet-counted, ``RSYSLOG_SyslogProtocol23Format``) per drain.
* ``syslog-ng``: Debian's ``syslog-ng-core`` unpacked with ``dpkg -x`` into
  ``bench/e2e/.cache/sng`` (it conflicts with rsyslog as a package), ``network()`` source
  with framed (octet-counted) TCP and ``syslog()`` destinations.

rsyslog and syslog-ng have no channels: the 1,000-channel workload sends the same 1,000
tokens through them, forwarded by one action. Every process is started and stopped by pid.
Writes a markdown table to ``bench/RESULTS.md`` (section ``## End-to-end (bench/e2e/run.py)``)
unless ``--quick`` or ``--no-write``; exits 1 if the direct path loses or duplicates messages
or a run fails.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = HERE / ".cache"
SNG_PREFIX = CACHE / "sng"
RESULTS = REPO / "bench" / "RESULTS.md"
HEADING = "## End-to-end (bench/e2e/run.py)"
RSYSLOGD = "/usr/sbin/rsyslogd"
SNG_DEBS = ["syslog-ng-core", "libivykis0", "libpcre3", "libnet1", "libwrap0"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    conns: int
    channels: int
    drains: int  # per channel
    size: int


WORKLOADS = [
    Workload("c1-ch1-d1-120", "1 conn, 1 channel, 1 drain, 120 B", 1, 1, 1, 120),
    Workload("c8-ch1-d1-120", "8 conns, 1 channel, 1 drain, 120 B", 8, 1, 1, 120),
    Workload("c1-ch1-d6-120", "1 conn, 1 channel, 6 drains, 120 B", 1, 1, 6, 120),
    Workload("c8-ch1000-d1-120", "8 conns, 1,000 channels x 1 drain, 120 B", 8, 1000, 1, 120),
    Workload("c1-ch1-d1-2k", "1 conn, 1 channel, 1 drain, 2 KB", 1, 1, 1, 2048),
    Workload("c8-ch1-d1-2k", "8 conns, 1 channel, 1 drain, 2 KB", 8, 1, 1, 2048),
]
ROUTERS = [
    "direct", "logplexd", "logplexd-nospill", "logplexd-redis", "logplexd-redis-base",
    "logplexd-redis-unix", "logplexd-redis-unix-base", "rsyslog", "syslog-ng",
]  # fmt: skip


# ``--metrics``: the /metrics samples shown after each run (a regular expression), or None;
# for logplexd-redis also redis-server's byte counters (``--metrics redis-server``).
METRICS_SHOWN: str | None = None
# ``--sink-pauses COUNT:SECONDS``: the sink is stopped (SIGSTOP) COUNT times for SECONDS
# each during the timed part, a receiver that refuses data now and then; (0, 0.0): never.
SINK_PAUSES: tuple[int, float] = (0, 0.0)
# When the first pause begins after the timed part starts, and how far apart they begin.
SINK_PAUSE_START = 0.5
SINK_PAUSE_EVERY = 0.25


class HarnessError(RuntimeError):
    pass


class Skip(HarnessError):
    """The router cannot run on this machine (reported, not fatal)."""


@dataclass
class RunResult:
    rate: float  # messages at the sink / (last receive - first send)
    ingest_rate: float  # messages sent / loadgen's send time (how fast the router reads)
    delivered: int
    expected: int
    lost: int
    duplicates: int
    l10_dropped: int
    out_of_order: int
    cpu_s: float | None  # router CPU seconds (user + system) during the run
    peak_rss_kb: int | None
    # CPU seconds and minor page faults of the router's peers (logplexd-redis: its
    # redis-server) during the run: on a shared machine they take the same cores.
    peer_cpu_s: float | None = None
    peer_minor_faults: int | None = None
    sink: dict = field(default_factory=dict)
    loadgen: dict = field(default_factory=dict)
    router: dict = field(default_factory=dict)  # the router's own figures (Router.figures)
    # Which run of its workload this was (0, 1, ...): runs of the same number of different
    # routers ran one after the other, and are compared as a pair (``pair_ratios``).
    run: int = 0
    # Cores used by the router's busiest thread over the timed part (logplexd: its event
    # loop; near 1, the node is bound by it), and the machine's idle share of all its cores
    # over the same span (``Sampler``: between its samples inside loadgen's first timed
    # send and the sink's last receive).
    busiest_thread: float | None = None
    machine_idle: float | None = None

    @property
    def cpu_per_million(self) -> float | None:
        if self.cpu_s is None or not self.delivered:
            return None
        return self.cpu_s / (self.delivered / 1e6)

    @property
    def peer_cpu_per_million(self) -> float | None:
        if self.peer_cpu_s is None or not self.delivered:
            return None
        return self.peer_cpu_s / (self.delivered / 1e6)


# ---------------------------------------------------------------------------------------------
# processes


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: each socket stays bound until all are picked (one
    at a time, the kernel gave the same port twice: a daemon then refused its api and
    syslog addresses, and the run failed)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, wait: float = 15.0):
    """Stops one process we started, by its pid: ``sig``, then SIGKILL after ``wait`` s."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One stdout line of ``proc`` within ``timeout`` seconds (its stdout is a pipe)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HarnessError(f"no output from pid {proc.pid} within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                raise HarnessError(f"pid {proc.pid} exited (rc={proc.poll()}) without output")
            buf += chunk
    return buf.decode()


# The first connection number (the C of seq=C:N) of the messages loadgen sends before a
# run's timed part (``run_once``'s ``prefill``): above any connection of the timed part
# (loadgen's MAX_CONNS), so the sink checks them as streams of their own.
PREFILL_FIRST_CONN = 1024


def send_prefill(loadgen: list[str], messages: int, sink: subprocess.Popen, budget: float) -> None:
    """Send ``messages`` with ``loadgen`` (its command without ``-n``), numbered from
    connection ``PREFILL_FIRST_CONN``, and return once the sink says it has them all
    (``sink -P``)."""
    try:
        res = subprocess.run(
            [*loadgen, "-n", str(messages), "-C", str(PREFILL_FIRST_CONN)],
            capture_output=True,
            text=True,
            timeout=budget,
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"the prefill did not finish within {budget:.0f} s") from None
    if res.returncode != 0:
        raise HarnessError(f"loadgen (prefill) failed rc={res.returncode}: {res.stderr.strip()}")
    line = json.loads(read_line(sink, budget))
    if "prefilled" not in line:
        raise HarnessError(f"the sink said {line} instead of the prefill's end")


def start_sink(
    sink_exe: Path, expected: int, idle: float, budget: float, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, int]:
    """The C sink on a free port, expecting ``expected`` messages: (process, port).
    ``extra``: more sink flags (e.g. ``-x BYTES``, stop reading; see sink.c)."""
    sink = subprocess.Popen(
        [str(sink_exe), "-p", "0", "-e", str(expected), "-i", str(idle),
         "-m", str(int(budget + 120)), *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
    )  # fmt: skip
    return sink, json.loads(read_line(sink, 10.0))["port"]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a router may spread over worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = stat_fields(Path(f"/proc/{entry}/stat"))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))  # ppid
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def stat_fields(path: Path) -> list[str] | None:
    """The fields of a /proc ``stat`` file after the command name (``state`` first), or
    None for a process or thread that is gone."""
    try:
        return path.read_text().rpartition(")")[2].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    return usage(pid)[0]


def usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and minor page faults of ``pid`` and its children."""
    ticks = faults = 0
    for p in process_tree(pid):
        fields = stat_fields(Path(f"/proc/{p}/stat"))
        if fields is None:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        faults += int(fields[7])  # minflt
    return ticks / CLK_TCK, faults


def thread_seconds(pids: list[int]) -> dict[str, float]:
    """CPU seconds (user + system) of every thread of ``pids``, by ``pid/tid``."""
    out: dict[str, float] = {}
    for p in pids:
        tasks = Path(f"/proc/{p}/task")
        try:
            tids = os.listdir(tasks)
        except OSError:
            continue
        for tid in tids:
            fields = stat_fields(tasks / tid / "stat")
            if fields is not None:
                out[f"{p}/{tid}"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def cpu_ticks(stat: str) -> tuple[int, int]:
    """(idle, total) ticks of all cores from the text of /proc/stat (idle includes
    iowait; guest time is already counted in user)."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(x) for x in fields[1:]]
            return ticks[3] + ticks[4], sum(ticks[:8])
    raise ValueError("no cpu line in /proc/stat")


@dataclass
class Sample:
    at: float  # wall clock (CLOCK_REALTIME, as loadgen's and the sink's timestamps)
    threads: dict[str, float]
    ticks: tuple[int, int]


def busiest_and_idle(first: Sample, last: Sample) -> tuple[float | None, float | None]:
    """Between two samples: the cores the busiest thread used (one that started meanwhile
    counts from 0), and the machine's idle share of all its cores."""
    span = last.at - first.at
    busiest = None
    if span > 0 and last.threads:
        busiest = max(sec - first.threads.get(tid, 0.0) for tid, sec in last.threads.items()) / span
    total = last.ticks[1] - first.ticks[1]
    idle = (last.ticks[0] - first.ticks[0]) / total if total > 0 else None
    return busiest, idle


def within(samples: list[Sample], start: float, end: float) -> tuple[Sample, Sample] | None:
    """The first and the last sample inside [start, end]: figures between them are all of
    the timed part (the warm-up before it and the wind-down after it are idle, and would
    dilute a short run's). None when fewer than two fall inside."""
    inside = [x for x in samples if start <= x.at <= end]
    if len(inside) < 2:
        return None
    return inside[0], inside[-1]


class SinkPauser:
    """Stops the sink process ``count`` times for ``seconds`` each (SIGSTOP, then SIGCONT),
    the first SINK_PAUSE_START after entering, one every SINK_PAUSE_EVERY, in a thread;
    ``done`` counts the pauses made. Leaving stops it and never leaves the sink stopped."""

    def __init__(self, sink: subprocess.Popen, count: int, seconds: float) -> None:
        self.sink, self.count, self.seconds = sink, count, seconds
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._stop.wait(SINK_PAUSE_START):
            return
        for _ in range(self.count):
            if self.sink.poll() is not None:
                return
            try:
                os.kill(self.sink.pid, signal.SIGSTOP)
            except ProcessLookupError:
                return  # the sink ended
            try:
                time.sleep(self.seconds)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.sink.pid, signal.SIGCONT)
            self.done += 1
            if self._stop.wait(SINK_PAUSE_EVERY):
                return

    def __enter__(self) -> SinkPauser:
        if self.count:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class Sampler:
    """Samples the router's threads and the machine's CPU ticks every ``interval`` from a
    thread of the harness, so that a run's figures cover its timed span only (loadgen's
    first timed send to the sink's last receive, ``within``), not the warm-up and the
    wind-down. Its own cost is a few /proc reads per sample."""

    def __init__(self, pid: int | None, interval: float = 0.05) -> None:
        # No router process (``direct``): the machine's figures only.
        self.pids = process_tree(pid) if pid else []
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        ticks = cpu_ticks(Path("/proc/stat").read_text())
        self.samples.append(Sample(time.time(), thread_seconds(self.pids), ticks))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def figures(self, start: float, end: float) -> tuple[float | None, float | None]:
        """(busiest thread's cores or None without a router process, idle share) over
        [start, end]."""
        pair = within(self.samples, start, end)
        if pair is None:
            return None, None
        busiest, idle = busiest_and_idle(*pair)
        return (busiest if self.pids else None), idle


def peak_rss_kb(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total


def wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"{what} exited with rc={proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise HarnessError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# the C tools


def build_tools(build_dir: Path) -> tuple[Path, Path]:
    out = []
    for name, extra in (("loadgen", ["-pthread"]), ("sink", [])):
        exe = build_dir / name
        cmd = ["gcc", "-O2", "-Wall", "-Wextra", *extra, "-o", str(exe), str(HERE / f"{name}.c")]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0 or res.stderr.strip():
            raise HarnessError(f"{' '.join(cmd)} failed or warned:\n{res.stderr}")
        out.append(exe)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# routers


class Router:
    """One router instance for one run: ``start`` returns the syslog input port."""

    name = "?"

    def __init__(self, workdir: Path, wl: Workload, sink_port: int) -> None:
        self.workdir = workdir
        self.wl = wl
        self.sink_port = sink_port
        self.proc: subprocess.Popen | None = None
        self.tokens: list[str] = []
        self.figures: dict = {}  # what a subclass measures itself (start-up, metrics)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        stop_process(self.proc)

    def loss_counters(self) -> list[str]:
        """The router's own non-zero loss counters (for a run that lost messages)."""
        return []

    def peer_usage(self) -> tuple[float, int] | None:
        """CPU seconds and minor page faults of the processes the router needs beside it
        (a redis-server) so far; None: it has none."""
        return None

    def timed_start(self) -> None:
        """The timed part of a run begins (what ``metrics_matching`` counts from, where it
        can)."""

    def metrics_matching(self, pattern: str) -> list[str]:
        """The router's ``/metrics`` samples whose line matches ``pattern`` (``--metrics``)."""
        return []

    def fake_tokens(self) -> list[str]:
        return [f"t.{uuid.UUID(int=i + 1)}" for i in range(self.wl.channels)]


class Direct(Router):
    name = "direct"

    def start(self) -> int:
        self.tokens = self.fake_tokens()
        return self.sink_port


class Logplexd(Router):
    name = "logplexd"
    extra_args: list[str] = []
    # Arguments of this variant of the daemon, after ``extra_args`` (``--logplexd-arg``).
    variant_args: tuple[str, ...] = ()
    # Another checkout of logplexd (extension built in place) to run instead of this one.
    tree: Path | None = None

    @classmethod
    def command(cls) -> list[str]:
        # Both trees the same way (a console script against ``-m`` measured 10-15 % apart
        # with the same code in one run of c1-ch1).
        return [sys.executable, "-m", "logplexd.cli"]

    def start(self) -> int:
        data = self.workdir / "data"
        data.mkdir()
        _, syslog, _ = self.launch(data, *self.extra_args, *self.variant_args)
        self._provision()
        return syslog

    def launch(
        self, data: Path, *extra: str, timeout: float = 30.0, poll: float = 0.1
    ) -> tuple[int, int, int]:
        """Starts ``logplexd serve`` on ``data`` (loopback ports, a fresh auth key) and
        returns its (api, syslog, logs) ports once ``/v3/healthcheck`` answers 200."""
        api, syslog, logs = free_ports(3)
        self.key = secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOGPLEXD_")}
        env["LOGPLEX_AUTH_KEY"] = self.key
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)
        cmd = [
            *self.command(), "serve", "--data-dir", str(data),
            "--api-addr", f"127.0.0.1:{api}", "--syslog-addr", f"127.0.0.1:{syslog}",
            "--logs-addr", f"127.0.0.1:{logs}", "--log-level", "warning", *extra,
        ]  # fmt: skip
        self.log_path = self.workdir / "logplexd.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.tree or REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=out,
            )  # fmt: skip
        self.api = api
        self._wait_healthy(timeout, poll)
        return api, syslog, logs

    def _wait_healthy(self, timeout: float, poll: float = 0.1) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"logplexd exited with rc={self.proc.returncode}:\n{tail(self.log_path)}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=2)
                try:
                    conn.request("GET", "/v3/healthcheck")
                    if conn.getresponse().status == 200:
                        return
                finally:
                    conn.close()
            time.sleep(poll)
        raise HarnessError(f"logplexd: no 200 from /v3/healthcheck within {timeout:.0f} s")

    def _provision(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=30)
        headers = {"Authorization": f"Basic {self.key}", "Content-Type": "application/json"}

        def call(method: str, path: str, body: dict) -> dict:
            conn.request(method, path, body=json.dumps(body), headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 201:
                raise HarnessError(f"{method} {path}: {resp.status} {data[:200]!r}")
            return json.loads(data)

        try:
            for i in range(self.wl.channels):
                name = f"bench-{i}"
                reply = call("PUT", f"/v3/channels/{name}", {"tokens": ["app"]})
                self.tokens.append(reply["tokens"]["app"])
                for d in range(self.wl.drains):
                    url = self.drain_url(i, d)
                    call("POST", f"/v3/channels/{name}/drains", {"url": url})
        finally:
            conn.close()

    def _metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=10)
        try:
            conn.request("GET", "/metrics", headers={"Authorization": f"Basic {self.key}"})
            return conn.getresponse().read().decode(errors="replace")
        finally:
            conn.close()

    def metrics_matching(self, pattern: str) -> list[str]:
        try:
            text = self._metrics()
        except (OSError, http.client.HTTPException) as exc:
            return [f"/metrics: {exc}"]
        found = re.compile(pattern)
        lines = text.splitlines()
        return [line for line in lines if not line.startswith("#") and found.search(line)]

    def loss_counters(self) -> list[str]:
        """Non-zero ``/metrics`` series summed over their labels whose name says lost,
        dropped, trimmed, evicted, held or spilled, and drains judged slow (a receiver that
        refused data may lose past its budget, with an L10)."""
        try:
            text = self._metrics()
        except (OSError, http.client.HTTPException) as exc:
            return [f"/metrics: {exc}"]
        totals: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name = line.split("{")[0].split(" ")[0]
            words = ("lost", "drop", "trim", "evict", "held", "hold", "spill", "slow")
            if any(word in name for word in words):
                with contextlib.suppress(ValueError):
                    totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return [f"{name} {value:g}" for name, value in sorted(totals.items()) if value]

    def drain_url(self, channel: int, drain: int) -> str:
        """The URL of drain ``drain`` of channel ``channel`` (all go to the one sink)."""
        # Distinct paths: the same URL twice on one channel is a 409.
        return f"syslog://127.0.0.1:{self.sink_port}/{drain}"


class Rsyslog(Router):
    name = "rsyslog"

    def start(self) -> int:
        if not os.access(RSYSLOGD, os.X_OK):
            raise Skip(f"{RSYSLOGD} not found (apt-get install rsyslog)")
        self.tokens = self.fake_tokens()
        port = free_port()
        lines = [
            f'global(workDirectory="{self.workdir}" maxMessageSize="64k")',
            'module(load="imtcp")',
            f'input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="fwd")',
        ]
        templates = ["RSYSLOG_SyslogProtocol23Format"]
        if self.wl.drains > 1:
            # RSYSLOG_SyslogProtocol23Format with HOSTNAME naming the drain, so that the sink
            # tells the copies apart (as logplexd's d.<token> HOSTNAME does).
            templates = []
            for d in range(self.wl.drains):
                lines.append(
                    f'template(name="drain{d}" type="string" string="<%PRI%>1 '
                    f"%TIMESTAMP:::date-rfc3339% d.rsyslog-{d} %APP-NAME% %PROCID% %MSGID% "
                    f'%STRUCTURED-DATA% %msg%\\n")'
                )
                templates.append(f"drain{d}")
        lines.append('ruleset(name="fwd") {')
        for t in templates:
            lines.append(
                f'  action(type="omfwd" target="127.0.0.1" port="{self.sink_port}" '
                f'protocol="tcp" tcp_framing="octet-counted" template="{t}")'
            )
        lines.append("}")
        conf = self.workdir / "rsyslog.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.log_path = self.workdir / "rsyslog.log"
        cmd = [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.workdir / "rsyslog.pid")]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            wait_port(port, self.proc, 15.0, "rsyslogd")
        except HarnessError as exc:
            raise HarnessError(f"{exc}\n{tail(self.log_path)}") from None
        return port


def syslog_ng_env() -> dict[str, str]:
    libs = [SNG_PREFIX / "usr/lib/x86_64-linux-gnu", SNG_PREFIX / "lib/x86_64-linux-gnu",
            SNG_PREFIX / "usr/lib/syslog-ng"]  # fmt: skip
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(str(p) for p in libs)
    return env


def syslog_ng_module_path() -> Path | None:
    mods = sorted((SNG_PREFIX / "usr/lib/syslog-ng").glob("3.*"))
    return mods[-1] if mods else None


def ensure_syslog_ng() -> Path:
    """Unpacks syslog-ng-core (and the libraries this machine lacks) into .cache/sng."""
    exe = SNG_PREFIX / "usr/sbin/syslog-ng"
    if not exe.exists():
        debs = CACHE / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        if not shutil.which("apt-get") or not shutil.which("dpkg"):
            raise Skip("syslog-ng: needs apt-get and dpkg to unpack syslog-ng-core")
        log(f"syslog-ng: apt-get download {' '.join(SNG_DEBS)} into {debs}")
        res = subprocess.run(["apt-get", "download", *SNG_DEBS], cwd=debs,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        if not list(debs.glob("syslog-ng-core_*.deb")):
            raise Skip(f"syslog-ng: apt-get download failed: {res.stderr.strip()[-500:]}")
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(SNG_PREFIX)], check=True, timeout=120)
    res = subprocess.run(["ldd", str(exe)], capture_output=True, text=True,
                         env=syslog_ng_env(), timeout=30)  # fmt: skip
    missing = [ln.split()[0] for ln in res.stdout.splitlines() if "not found" in ln]
    if missing:
        raise Skip(f"syslog-ng: libraries missing from the private prefix: {', '.join(missing)}")
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                         env=syslog_ng_env(), timeout=30)  # fmt: skip
    if res.returncode != 0:
        raise Skip(f"syslog-ng --version failed: {res.stderr.strip()[-500:]}")
    return exe


class SyslogNg(Router):
    name = "syslog-ng"

    def start(self) -> int:
        exe = ensure_syslog_ng()
        self.tokens = self.fake_tokens()
        port = free_port()
        version = ".".join(syslog_ng_module_path().name.split(".")[:2])  # type: ignore[union-attr]
        # transport("framed") is network()'s octet-counted TCP (RFC 6587); transport("tcp")
        # would split the stream on newlines, and loadgen sends none.
        lines = [
            f"@version: {version}",
            "options { threaded(yes); use-dns(no); dns-cache(no); use-fqdn(no); "
            "keep-hostname(yes); chain-hostnames(no); stats-freq(0); log-fifo-size(100000); };",
            f'source s_in {{ network(ip("127.0.0.1") port({port}) transport("framed") '
            "flags(syslog-protocol) max-connections(64) log-iw-size(640000) "
            "log-fetch-limit(1000)); };",
        ]
        for d in range(self.wl.drains):
            lines.append(
                f'destination d{d} {{ syslog("127.0.0.1" port({self.sink_port}) '
                f'transport("tcp") persist-name("drain{d}")); }};'
            )
            if self.wl.drains > 1:
                # HOSTNAME names the drain, so that the sink tells the copies apart.
                lines.append(f'rewrite r{d} {{ set("d.syslog-ng-{d}" value("HOST")); }};')
                lines.append(
                    f"log {{ source(s_in); rewrite(r{d}); destination(d{d}); "
                    "flags(flow-control); };"
                )
            else:
                lines.append(f"log {{ source(s_in); destination(d{d}); flags(flow-control); }};")
        conf = self.workdir / "syslog-ng.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.log_path = self.workdir / "syslog-ng.log"
        w = self.workdir
        cmd = [
            str(exe), "-F", "-f", str(conf), f"--module-path={syslog_ng_module_path()}",
            "-p", str(w / "syslog-ng.pid"), "-R", str(w / "syslog-ng.persist"),
            "-c", str(w / "syslog-ng.ctl"), "--no-caps",
        ]  # fmt: skip
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=syslog_ng_env()
            )
        try:
            wait_port(port, self.proc, 15.0, "syslog-ng")
        except HarnessError as exc:
            raise HarnessError(f"{exc}\n{tail(self.log_path)}") from None
        return port


class LogplexdBase(Logplexd):
    """logplexd from ``--base-tree`` (an older commit): before/after ratios in one run."""

    name = "logplexd-base"
    extra_args = []


class LogplexdNoSpill(Logplexd):
    """This tree's logplexd with durable drain backlogs off (issue 19): a drain that falls a
    whole ring behind is lapped (L10) instead of spilling to disk. Takes ``--logplexd-arg``
    like ``logplexd`` (``extra_args`` is looked up on ``Logplexd``)."""

    name = "logplexd-nospill"
    variant_args = ("--drain-spill", "false")


def resp(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """One command to the redis-server on loopback ``port``; the reply's payload (simple or
    bulk string; enough for INFO, PING). Also what ``bench_nodes.py`` and ``soak.py`` use."""
    parts = [a.encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as reader:
            line = reader.readline()
            if line.startswith(b"$"):
                size = int(line[1:])
                return reader.read(size + 2)[:-2] if size >= 0 else b""
            return line[1:].rstrip(b"\r\n")


class LogplexdRedis(Logplexd):
    """This tree's logplexd as one node in Redis mode (issue 21): ``--store-url`` to a
    redis-server of its own on loopback (``--save "" --appendonly no``: the protocol's cost,
    not this machine's disk), started before and stopped after the daemon. The CPU column
    is the daemon's; redis-server's own CPU and minor page faults during the run are shown
    beside it (``peer_usage``: the two share this machine's cores)."""

    name = "logplexd-redis"
    # The node reaches redis-server through its Unix socket (``unix://``), not loopback TCP.
    unix = False

    def start(self) -> int:
        server = shutil.which("redis-server")
        if server is None:
            raise Skip("redis-server not found (apt-get install redis-server)")
        port = free_port()
        rdir = self.workdir / "redis"
        rdir.mkdir()
        sock = rdir / "redis.sock"
        self.redis = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir),
             "--save", "", "--appendonly", "no", "--logfile", str(rdir / "redis.log"),
             *(("--unixsocket", str(sock), "--unixsocketperm", "700") if self.unix else ())],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(port, self.redis, 15.0, "redis-server")
        self.redis_port = port
        self._commands_at_start: dict[str, tuple[int, int]] = {}
        url = f"unix://{sock}?db=0" if self.unix else f"redis://127.0.0.1:{port}/0"
        self.variant_args = ("--store-url", url)
        return super().start()

    def metrics_matching(self, pattern: str) -> list[str]:
        """Also redis-server's own byte counters (``INFO stats``), as ``redis-server
        total_net_input_bytes N`` and ``redis-server total_net_output_bytes N``: what it sent
        the node is what the node's followers read (its own entries should not be among
        them: docs/SCALING.md, "A node's own entries"); and its time per command in the timed
        part (``_command_stats``)."""
        lines = super().metrics_matching(pattern)
        found = re.compile(pattern)
        try:
            reply = resp(self.redis_port, "INFO", "stats")
        except OSError as exc:
            return [*lines, f"redis-server INFO: {exc}"]
        for info_line in reply.decode(errors="replace").splitlines():
            if info_line.startswith(("total_net_input_bytes:", "total_net_output_bytes:")):
                line = "redis-server " + info_line.replace(":", " ", 1)
                if found.search(line):
                    lines.append(line)
        try:
            now = self._command_stats()
        except OSError as exc:
            return [*lines, f"redis-server INFO: {exc}"]
        for name, (calls, usec) in sorted(now.items(), key=lambda item: -item[1][1]):
            calls0, usec0 = self._commands_at_start.get(name, (0, 0))
            line = f"redis-server {name} calls={calls - calls0} usec={usec - usec0}"
            if calls > calls0 and found.search(line):
                lines.append(line)
        return lines

    def timed_start(self) -> None:
        # Only when --metrics asks: otherwise no call to redis-server in the timed part.
        self._commands_at_start = {}
        if METRICS_SHOWN is not None:
            with contextlib.suppress(OSError):
                self._commands_at_start = self._command_stats()

    def _command_stats(self) -> dict[str, tuple[int, int]]:
        """redis-server's calls and microseconds so far per command (``INFO commandstats``):
        ``metrics_matching`` shows those of the timed part, as ``redis-server cmdstat_xadd
        calls=N usec=N``, the costliest first (scripts' commands count both in the script
        and on their own; EXEC counts what it ran)."""
        reply = resp(self.redis_port, "INFO", "commandstats")
        stats: dict[str, tuple[int, int]] = {}
        for info_line in reply.decode(errors="replace").splitlines():
            name, _, fields = info_line.partition(":")
            if name.startswith("cmdstat_"):
                values = dict(field.split("=", 1) for field in fields.split(","))
                stats[name] = (int(values["calls"]), int(values["usec"]))
        return stats

    def peer_usage(self) -> tuple[float, int] | None:
        return usage(self.redis.pid) if self.redis.poll() is None else None

    def stop(self) -> None:
        super().stop()
        stop_process(getattr(self, "redis", None), wait=5.0)


class LogplexdRedisBase(LogplexdRedis):
    """``logplexd-redis`` with the daemon of ``--base-tree`` (before/after in Redis mode)."""

    name = "logplexd-redis-base"
    extra_args = []


class LogplexdRedisUnix(LogplexdRedis):
    """``logplexd-redis`` through redis-server's Unix socket (``unix:///PATH?db=0``): a
    Redis on the node's own host, without the TCP stack on either side."""

    name = "logplexd-redis-unix"
    unix = True


class LogplexdRedisUnixBase(LogplexdRedisUnix):
    """``logplexd-redis-unix`` with the daemon of ``--base-tree``."""

    name = "logplexd-redis-unix-base"
    extra_args = []


ROUTER_CLASSES: dict[str, type[Router]] = {
    "direct": Direct, "logplexd": Logplexd, "logplexd-base": LogplexdBase,
    "logplexd-nospill": LogplexdNoSpill, "logplexd-redis": LogplexdRedis,
    "logplexd-redis-base": LogplexdRedisBase, "logplexd-redis-unix": LogplexdRedisUnix,
    "logplexd-redis-unix-base": LogplexdRedisUnixBase,
    "rsyslog": Rsyslog, "syslog-ng": SyslogNg,
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# one run


def run_once(
    router_cls: type[Router],
    wl: Workload,
    messages: int,
    tools: tuple[Path, Path],
    idle: float,
    rate: float = 0.0,
    *,
    expected: int | None = None,
    warmup: float | None = 1.0,
    prefill: int = 0,
) -> RunResult:
    """One run; ``expected`` (default: every message once per drain) is what the sink
    waits for, ``warmup`` the seconds loadgen waits after one message per token (None: no
    warm-up, the router did its own in ``start``). With ``prefill``, loadgen first sends
    that many messages (streams of their own at the sink, ``send_prefill``) and the
    timed part starts once the sink has them all: the router's rings (and in Redis mode
    its streams) are then as full as a long-running one's, not filling from empty. The
    CPU, the threads and the rate cover the timed part only."""
    loadgen, sink_exe = tools
    copies = wl.drains if router_cls is not Direct else 1  # what the sink gets per message
    if expected is None:
        expected = messages * copies
    prefill_expected = prefill * copies

    def seconds_for(sent: int, received: int) -> float:
        # Generous bounds: a router at 20,000 messages/s still finishes.
        return 60.0 + max(sent, received) / 20_000 + (warmup or 0.0)

    budget = seconds_for(messages, expected)
    prefill_budget = seconds_for(prefill, prefill_expected)
    with tempfile.TemporaryDirectory(prefix=f"e2e-{router_cls.name}-") as tmp:
        workdir = Path(tmp)
        sink = router = None
        try:
            prefilled = ("-P", str(prefill_expected)) if prefill_expected else ()
            sink, sink_port = start_sink(
                sink_exe, expected + prefill_expected, idle, budget + prefill_budget, prefilled
            )
            router = router_cls(workdir, wl, sink_port)
            port = router.start()
            token_file = workdir / "tokens"
            token_file.write_text("\n".join(router.tokens) + "\n")
            pid = router.pid
            base = [str(loadgen), "-H", "127.0.0.1", "-p", str(port), "-c", str(wl.conns),
                    "-s", str(wl.size), "-T", str(token_file)]  # fmt: skip
            # One message per channel first: drains connect (before the prefill, if any).
            warm = ["-w", str(warmup)] if router_cls is not Direct and warmup is not None else []
            if prefill:
                send_prefill([*base, *warm], prefill, sink, prefill_budget)
                warm = []
            cpu0 = cpu_seconds(pid) if pid else None
            peer0 = router.peer_usage()
            router.timed_start()
            cmd = [*base, *warm, "-n", str(messages)]
            if rate:
                cmd += ["-r", str(rate)]
            with Sampler(pid) as sampler, SinkPauser(sink, *SINK_PAUSES) as pauser:
                try:
                    res = subprocess.run(cmd, capture_output=True, text=True, timeout=budget)
                except subprocess.TimeoutExpired:
                    raise HarnessError(
                        f"loadgen did not finish within {budget:.0f} s (router stopped reading?)"
                    ) from None
                if res.returncode != 0:
                    raise HarnessError(f"loadgen failed rc={res.returncode}: {res.stderr.strip()}")
                lg = json.loads(res.stdout.strip().splitlines()[-1])
                try:
                    out, _ = sink.communicate(timeout=budget + 150)
                except subprocess.TimeoutExpired:
                    raise HarnessError("sink did not report") from None
            sk = json.loads(out.decode().strip().splitlines()[-1])
            if METRICS_SHOWN is not None:
                for line in router.metrics_matching(METRICS_SHOWN):
                    log(f"  {router.name} /metrics: {line}")
            if pauser.count:
                log(f"  sink paused {pauser.done} times for {pauser.seconds * 1000:g} ms")
            if sk["lost"] or sk["l10_dropped"]:
                # A failed run: say where the router counted the loss, while it still runs.
                for line in router.loss_counters():
                    log(f"  {router.name} counted: {line}")
            cpu = cpu_seconds(pid) - cpu0 if pid and cpu0 is not None else None
            busiest, machine_idle = sampler.figures(lg["start_ts"], sk["last_ts"])
            peer1 = router.peer_usage()
            peer = (peer1[0] - peer0[0], peer1[1] - peer0[1]) if peer0 and peer1 else None
            rss = peak_rss_kb(pid) if pid else None
            if router is not None and router.proc is not None and router.proc.poll() is not None:
                raise HarnessError(f"{router.name} died during the run")
        finally:
            if router is not None:
                router.stop()
            stop_process(sink, wait=5.0)
    assert router is not None
    span = sk["last_ts"] - lg["start_ts"]
    delivered = sk["received"] - prefill_expected
    rate = delivered / span if span > 0 and delivered > 0 else 0.0
    ingest = lg["sent"] / lg["elapsed"] if lg["elapsed"] > 0 else 0.0
    return RunResult(
        rate=rate, ingest_rate=ingest, delivered=delivered, expected=expected, lost=sk["lost"],
        duplicates=sk["duplicates"], l10_dropped=sk["l10_dropped"],
        out_of_order=sk["out_of_order"], cpu_s=cpu, peak_rss_kb=rss,
        peer_cpu_s=peer[0] if peer else None, peer_minor_faults=peer[1] if peer else None,
        sink=sk, loadgen=lg, router=router.figures, busiest_thread=busiest,
        machine_idle=machine_idle,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# report


def fmt_rate(r: float) -> str:
    return f"{r / 1e6:.2f} M" if r >= 1e6 else f"{r / 1e3:,.0f} k"


def summarize(results: list[RunResult]) -> dict:
    rates = [r.rate for r in results]
    cpus = [c for r in results if (c := r.cpu_per_million) is not None]
    peer_cpus = [c for r in results if (c := r.peer_cpu_per_million) is not None]
    rss = [r.peak_rss_kb for r in results if r.peak_rss_kb is not None]
    return {
        "rate": statistics.median(rates),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "ingest": statistics.median(r.ingest_rate for r in results),
        "expected": max(r.expected for r in results),
        "cpu": statistics.median(cpus) if cpus else None,
        "peer_cpu": statistics.median(peer_cpus) if peer_cpus else None,
        "rss_mb": max(rss) / 1024 if rss else None,
        "lost": max(r.lost for r in results),
        "dups": max(r.duplicates for r in results),
        "l10": max(r.l10_dropped for r in results),
        "ooo": max(r.out_of_order for r in results),
        "runs": len(results),
    }


# One run as ``ratios_of`` compares it: msgs/s, CPU seconds per million messages (None: not
# measured), and whether it lost or duplicated a message.
RunFigures = tuple[float, float | None, bool]


def ratios_of(pairs: list[tuple[RunFigures, RunFigures]]) -> dict | None:
    """Runs of one router (or set-up) against another, pair by pair: the runs of a pair ran
    one after the other, so each pair saw about the same machine (this one's noise between
    runs minutes apart is larger than most effects measured). The median, least and
    greatest of the per-pair ratios of msgs/s, the median of those of CPU per message, how
    many pairs, in how many the first was the faster, and the runs of either that lost or
    duplicated a message. None without a pair."""
    rates = [x[0] / y[0] for x, y in pairs if y[0]]
    if not rates:
        return None
    cpus = [x[1] / y[1] for x, y in pairs if x[1] is not None and y[1]]
    return {
        "rate": statistics.median(rates),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "cpu": statistics.median(cpus) if cpus else None,
        "pairs": len(rates),
        "faster": sum(1 for r in rates if r > 1),
        "lossy": sum(1 for x, y in pairs for side in (x, y) if side[2]),
    }


def pair_ratios(a: list[RunResult], b: list[RunResult]) -> dict | None:
    """``ratios_of`` the runs of ``a`` and ``b`` that have the same number (``run``)."""
    by_run = {r.run: r for r in b}

    def figures(r: RunResult) -> RunFigures:
        return r.rate, r.cpu_per_million, bool(r.lost or r.duplicates)

    return ratios_of([(figures(x), figures(by_run[x.run])) for x in a if x.run in by_run])


def ratio_cells(got: dict) -> str:
    """``ratios_of``'s figures as the cells of a markdown row."""
    cpu = f"{got['cpu']:.2f}x" if got["cpu"] is not None else "-"
    return (
        f"{got['rate']:.2f}x ({got['rate_min']:.2f}-{got['rate_max']:.2f}) | {got['faster']} | "
        f"{cpu} | {got['pairs']} | {got['lossy']}"
    )


RATIO_HEAD = (
    "msgs/s ratio, median of pairs (min-max) | faster | CPU per message ratio | pairs | "
    "runs that lost or duplicated"
)


def ratios_table(
    workloads: list[Workload],
    comparisons: list[tuple[str, str]],
    collected: dict[tuple[str, str], list[RunResult]],
) -> str:
    """Markdown: per workload and comparison, ``pair_ratios``."""
    lines = [f"| workload | routers | {RATIO_HEAD} |", "| --- " * 7 + "|"]
    for wl in workloads:
        for a, b in comparisons:
            got = pair_ratios(collected.get((a, wl.key), []), collected.get((b, wl.key), []))
            if got is not None:
                lines.append(f"| {wl.label} | {a} / {b} | {ratio_cells(got)} |")
    return "\n".join(lines)


def parse_comparisons(text: str, routers: list[str] | None) -> list[tuple[str, str]]:
    """``A/B,C/D`` as router pairs (each router one of ``routers``, when given)."""
    comparisons = []
    for item in text.split(","):
        a, sep, b = item.strip().partition("/")
        if not sep or not a or not b:
            raise ValueError(f"{item!r} is not ROUTER/ROUTER")
        for name in (a, b):
            if routers is not None and name not in routers:
                raise ValueError(f"router {name!r} does not run here")
        comparisons.append((a, b))
    return comparisons


def load_runs(path: Path) -> dict[tuple[str, str], list[RunResult]]:
    """The runs ``--json`` wrote (a file from before runs were numbered pairs its runs in
    order)."""
    known = {f.name for f in fields(RunResult)}
    collected: dict[tuple[str, str], list[RunResult]] = {}
    for key, runs in json.loads(path.read_text()).items():
        router, _, workload = key.partition("/")
        results = collected.setdefault((router, workload), [])
        for i, raw in enumerate(runs):
            figures = {k: v for k, v in raw.items() if k in known}
            figures.setdefault("run", i)
            results.append(RunResult(**figures))
    return collected


def table(
    workloads: list[Workload], routers: list[str], summaries: dict, notes: dict[str, str]
) -> str:
    head = (
        "| workload | router | msgs/s at sink, median (min-max) | % of ceiling "
        "| sent msgs/s | CPU s / M delivered | peak RSS | lost | dup | L10-dropped | runs |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for wl in workloads:
        ceiling = summaries.get(("direct", wl.key))
        for name in routers:
            s = summaries.get((name, wl.key))
            if s is None:
                why = notes.get(name) or notes.get(f"{name}/{wl.key}") or "failed"
                rows.append(f"| {wl.label} | {name} | {why} | | | | | | | | |")
                continue
            pct = f"{100 * s['rate'] / ceiling['rate']:.1f} %" if ceiling else ""
            if name == "direct":
                pct = "(ceiling)"
            cpu = f"{s['cpu']:.2f}" if s["cpu"] is not None else "-"
            if s["peer_cpu"] is not None:
                cpu += f" (+{s['peer_cpu']:.2f} Redis)"
            rss = f"{s['rss_mb']:.0f} MB" if s["rss_mb"] is not None else "-"
            lost = f"{s['lost']:,}"
            if s["lost"]:
                lost += f" ({100 * s['lost'] / s['expected']:.1f} %)"
            rows.append(
                f"| {wl.label} | {name} | {fmt_rate(s['rate'])} ({fmt_rate(s['rate_min'])}-"
                f"{fmt_rate(s['rate_max'])}) | {pct} | {fmt_rate(s['ingest'])} | {cpu} | {rss} "
                f"| {lost} "
                f"| {s['dups']:,} | {s['l10']:,} | {s['runs']} |"
            )
    return head + "\n".join(rows) + "\n"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def versions(routers: list[str]) -> list[str]:
    out = [f"Python {sys.version.split()[0]}"]

    def first_line(cmd: list[str], env: dict | None = None) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env,
                                 cwd=REPO)  # fmt: skip
            text = (res.stdout or res.stderr).strip()
            line = text.splitlines()[0] if text else "?"
            return " ".join(line.removesuffix("compiled with:").split())
        return "?"

    if "logplexd" in routers:
        out.append(first_line([*Logplexd.command(), "--version"]))
    if "rsyslog" in routers:
        out.append(first_line([RSYSLOGD, "-v"]))
    if "syslog-ng" in routers and (SNG_PREFIX / "usr/sbin/syslog-ng").exists():
        exe = str(SNG_PREFIX / "usr/sbin/syslog-ng")
        out.append(first_line([exe, "--version"], syslog_ng_env()))
    return out


def write_results(path: Path, section: str, heading: str = HEADING) -> None:
    """Replaces the section under ``heading`` in RESULTS.md (or appends it); the other
    sections stay as they are."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(heading)
    if start >= 0:
        nxt = text.find("\n## ", start + len(heading))
        end = len(text) if nxt < 0 else nxt + 1
        text = text[:start] + section + ("\n" if nxt >= 0 else "") + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# ---------------------------------------------------------------------------------------------


def write_chart(path: Path, workloads: list[Workload], routers: list[str], summaries: dict) -> bool:
    """Grouped bars of delivered msgs/s (log scale) per workload and router; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no chart (pip install matplotlib)")
        return False
    names = ["direct", *[r for r in routers if r != "direct"]]
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        values = [summaries.get((name, wl.key), {}).get("rate", 0) for wl in workloads]
        xs = [i + j * width for i in range(len(workloads))]
        ax.bar(xs, values, width, label=name)
    ax.set_yscale("log")
    ax.set_ylabel("messages/s delivered at the sink")
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(workloads))])
    ax.set_xticklabels([wl.key for wl in workloads], rotation=15)
    ax.legend()
    ax.set_title("TCP syslog in -> router -> syslog drain(s), loopback")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    log(f"wrote {path}")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--routers",
        default="logplexd",
        help=f"comma-separated, from {','.join(ROUTERS)} (direct always runs)",
    )
    ap.add_argument(
        "--workloads",
        default="all",
        help="comma-separated keys: " + ",".join(w.key for w in WORKLOADS),
    )
    ap.add_argument("--messages", type=int, default=None, help="messages sent per run (1M)")
    ap.add_argument("--runs", type=int, default=None, help="runs per cell, median (3)")
    ap.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="N",
        help="before each run's timed part, send N messages and wait for the sink to have "
        "them: a router as full as a long-running one (rings, Redis streams at their bound: "
        "with 1,000 channels, 1,000 x channel_buffer_messages and more); not timed",
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 50,000 messages, 1 run, no RESULTS.md"
    )
    ap.add_argument(
        "--idle",
        type=float,
        default=5.0,
        help="sink stops after this many seconds without data (loss)",
    )
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument(
        "--logplexd-arg",
        action="append",
        default=[],
        help="extra argument for `logplexd serve` (repeatable)",
    )
    ap.add_argument(
        "--base-arg",
        action="append",
        default=[],
        help="extra argument for the --base-tree daemon's `logplexd serve` (repeatable; "
        "by default it gets none: an older tree may not know a newer flag)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="pace the producer to this many messages/s in all (default: as fast as it can)",
    )
    ap.add_argument("--json", type=Path, help="also write every run's raw figures here")
    ap.add_argument(
        "--ratios",
        metavar="A/B[,C/D]",
        help="also print (and write) same-run ratios of router A against router B, per "
        "workload: the median of per-pair ratios of msgs/s and of CPU per message, e.g. "
        "logplexd-redis/logplexd,logplexd-redis/logplexd-redis-base",
    )
    ap.add_argument(
        "--ratios-from",
        type=Path,
        metavar="JSON",
        help="run nothing: print --ratios of the runs a --json file holds",
    )
    ap.add_argument(
        "--base-tree",
        type=Path,
        help="checkout (built in place) that router logplexd-base runs, e.g. "
        "`git worktree add /tmp/base REV && (cd /tmp/base && python setup.py build_ext --inplace)`",
    )
    ap.add_argument(
        "--metrics",
        metavar="REGEX",
        help="after each run print the router's /metrics samples matching REGEX "
        "(e.g. 'round_trips|entries_own'; for logplexd-redis also redis-server's byte "
        "counters and its time per command in the timed part: 'redis-server')",
    )
    ap.add_argument(
        "--sink-pauses",
        metavar="COUNT:SECONDS",
        help="stop the sink COUNT times for SECONDS each during the timed part (SIGSTOP, "
        f"the first {SINK_PAUSE_START:g} s in, one every {SINK_PAUSE_EVERY:g} s): a receiver "
        "that refuses data now and then (its drain is judged slow); loss must be told by L10",
    )
    args = ap.parse_args(argv)  # fmt: skip
    if args.prefill < 0:
        ap.error("--prefill takes a number of messages, 0 or more")

    if args.ratios_from is not None:
        if not args.ratios:
            ap.error("--ratios-from needs --ratios")
        saved = load_runs(args.ratios_from)
        keys = {w for _, w in saved}
        try:
            comparisons = parse_comparisons(args.ratios, sorted({r for r, _ in saved}))
        except ValueError as exc:
            ap.error(str(exc))
        print(ratios_table([w for w in WORKLOADS if w.key in keys], comparisons, saved))
        return 0
    messages = args.messages or (50_000 if args.quick else 1_000_000)
    runs = args.runs or (1 if args.quick else 3)
    routers = ["direct"] + [r for r in args.routers.split(",") if r and r != "direct"]
    for r in routers:
        if r not in ROUTER_CLASSES:
            ap.error(f"unknown router {r!r}")
    if args.workloads == "all":
        workloads = WORKLOADS
    else:
        by_key = {w.key: w for w in WORKLOADS}
        try:
            workloads = [by_key[k] for k in args.workloads.split(",")]
        except KeyError as exc:
            ap.error(f"unknown workload {exc}")
    try:
        comparisons = parse_comparisons(args.ratios, routers) if args.ratios else []
    except ValueError as exc:
        ap.error(str(exc))
    Logplexd.extra_args = list(args.logplexd_arg)
    for base_class in (LogplexdBase, LogplexdRedisBase, LogplexdRedisUnixBase):
        base_class.extra_args = list(args.base_arg)
    global METRICS_SHOWN, SINK_PAUSES
    METRICS_SHOWN = args.metrics
    if args.sink_pauses:
        try:
            count, seconds = args.sink_pauses.split(":")
            SINK_PAUSES = (int(count), float(seconds))
        except ValueError:
            ap.error("--sink-pauses takes COUNT:SECONDS, e.g. 12:0.008")
    if any(router.endswith("-base") for router in routers):
        if args.base_tree is None:
            ap.error("routers logplexd-base and logplexd-redis[-unix]-base need --base-tree")
        LogplexdBase.tree = args.base_tree.resolve()
        LogplexdRedisBase.tree = LogplexdRedisUnixBase.tree = LogplexdBase.tree
    write = not (args.quick or args.no_write)

    notes: dict[str, str] = {}
    collected: dict[tuple[str, str], list[RunResult]] = {}
    failed = False
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="e2e-build-") as build:
        tools = build_tools(Path(build))
        log(f"built {tools[0].name} and {tools[1].name} with gcc -O2 in {build}")
        for wl in workloads:
            for i in range(runs):
                for name in routers:
                    if name in notes:  # skipped router
                        continue
                    cls = ROUTER_CLASSES[name]
                    try:
                        res = run_once(
                            cls, wl, messages, tools, args.idle, args.rate, prefill=args.prefill
                        )
                    except Skip as exc:
                        notes[name] = f"skipped: {exc}"
                        log(f"[{name}] SKIPPED: {exc}")
                        continue
                    except HarnessError as exc:
                        failed = True
                        notes[f"{name}/{wl.key}"] = "failed (see log)"
                        log(f"[{name}] {wl.key} run {i + 1}/{runs}: FAILED: {exc}")
                        continue
                    res.run = i
                    collected.setdefault((name, wl.key), []).append(res)
                    cpu = res.cpu_per_million
                    peer_cpu = res.peer_cpu_per_million
                    log(
                        f"[{name}] {wl.key} run {i + 1}/{runs}: {res.rate:,.0f} msgs/s, "
                        f"{res.delivered:,}/{res.expected:,} delivered, lost {res.lost:,}, "
                        f"dup {res.duplicates:,}, L10-dropped {res.l10_dropped:,}"
                        + (f", cpu {cpu:.2f} s/M" if cpu is not None else "")
                        + (
                            f" (+{peer_cpu:.2f} Redis, {res.peer_minor_faults:,} page faults)"
                            if peer_cpu is not None
                            else ""
                        )
                        + (f", peak RSS {res.peak_rss_kb / 1024:.0f} MB" if res.peak_rss_kb else "")
                        + (
                            f", busiest thread {res.busiest_thread:.2f} core"
                            if res.busiest_thread is not None
                            else ""
                        )
                        + (
                            f", machine idle {res.machine_idle:.0%}"
                            if res.machine_idle is not None
                            else ""
                        )
                    )
                    if name == "direct" and (res.lost or res.duplicates):
                        failed = True
                        log("[direct] the harness itself lost or duplicated messages")
    summaries = {k: summarize(v) for k, v in collected.items()}
    md = table(workloads, routers, summaries, notes)
    if comparisons:
        md += "\n\nSame-run ratios:\n\n" + ratios_table(workloads, comparisons, collected)
    elapsed = time.monotonic() - started
    print(md)
    for name, note in notes.items():
        if "/" not in name:
            print(f"- {name}: {note}")
    log(f"total {elapsed:.0f} s")

    if args.json:
        raw = {f"{r}/{w}": [vars(x) for x in v] for (r, w), v in collected.items()}
        args.json.write_text(json.dumps(raw, indent=1))
    if write:
        cmdline = "python bench/e2e/run.py " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
        )
        section = "\n".join([
            HEADING,
            "",
            "Command:",
            "",
            f"    {cmdline.rstrip()}",
            "",
            f"Run of {dt.date.today().isoformat()}: {cpu_model()}, {os.cpu_count()} CPUs; "
            + "; ".join(versions(routers)) + f". {messages:,} messages per run, "
            f"median of {runs} run(s), {elapsed:.0f} s in all"
            + (f", producer paced to {args.rate:,.0f} msgs/s." if args.rate else "."),
            "",
            "TCP syslog in (octet-counted RFC 5424 from `loadgen.c`, 64 KB writes) -> router "
            "-> `syslog://` drain(s) -> `sink.c`, all on loopback. msgs/s = messages at the "
            "sink / (last receive - first send); with 6 drains every message arrives 6 times "
            "and each copy counts; sent msgs/s = messages sent / the producer's send time "
            "(how fast the router took its input; it runs ahead of msgs/s when the router "
            "buffers or drops). CPU = router user+system seconds per million messages "
            "delivered; peak RSS = VmHWM (largest of the runs); lost / dup / L10-dropped: "
            "worst run. `direct` is loadgen -> sink without a router (the ceiling). "
            "rsyslog and syslog-ng have no channels: for 1,000 channels they forward the "
            "1,000 tokens' messages through one action.",
            "",
            md,
        ] + [f"- {n}: {t}" for n, t in notes.items() if "/" not in n])  # fmt: skip
        chart = args.results.parent / "e2e.png"
        if write_chart(chart, workloads, routers, summaries):
            section += f"\n\n![messages/s per router and workload]({chart.name})\n"
        write_results(args.results, section.rstrip("\n") + "\n")
        log(f"wrote {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
