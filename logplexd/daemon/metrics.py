"""``GET /metrics``: the daemon's live counters in the Prometheus text format.

Nothing here keeps a second copy of a counter the data plane already keeps: at scrape time
a custom ``prometheus_client`` collector asks for a ``MetricsSnapshot`` (typed: the inputs'
stats, the drains' stats, the registry's, the store's, the tails', the rods' and, in Redis
mode, the data plane's figures) and renders it; the daemon composes the snapshot. Only what
has no home elsewhere is recorded here: API requests (a counter and a latency histogram per
route) and the event-loop lag. Each daemon has its own ``CollectorRegistry`` (several daemons
may run in one process, e.g. in the tests), so nothing is registered globally.

The exposition itself is ``prometheus_client.generate_latest``: no hand-written format.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..api import RodState
from ..drains import DrainState, DrainStats
from ..ingest import LogsIngestStats, SyslogInputStats
from ..web import AddRoute, ConnectionCount, Request, Response

log = logging.getLogger("logplexd.daemon.metrics")

_Family = TypeVar("_Family", CounterMetricFamily, GaugeMetricFamily)

PREFIX = "logplexd"
CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# How often the event-loop lag probe wakes up.
LAG_INTERVAL = 0.5
DRAIN_STATES = tuple(state.value for state in DrainState)
# The per-drain families (labels drain_id, channel) show at most this many drains: those
# with the largest backlog, then those in backoff, then the lowest ids. 100k drains must not
# make 100k series; the drains_* aggregates count every drain.
DRAIN_SERIES_LIMIT = 100


@dataclass(frozen=True, slots=True)
class TailFigures:
    active: int
    started: int
    killed: int
    # Pushback (tails/pushback.py): holds that took effect, and readers judged slow.
    holds: int = 0
    slow: int = 0
    # The tail pump (tails/pump.py): tails it writes for now, its writes, its linger.
    pumped: int = 0
    pump_writes: int = 0
    pump_linger: float = 0.0


@dataclass(frozen=True, slots=True)
class DrainPumpFigures:
    """The drain pump (drains/pump.py): the plain-TCP syslog drains it writes for now, its
    writes, the writes it handed back to a drain's own task, its linger, and its rounds
    written from its worker thread."""

    attached: int
    writes: int
    handed_back: int
    linger: float
    threaded_rounds: int = 0


@dataclass(frozen=True, slots=True)
class StoreFigures:
    healthy: bool
    # Bytes in the journal since the last snapshot (the embedded store only).
    journal_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class RedisFigures:
    """The Redis data plane's counters (Redis mode only)."""

    trips: Mapping[str, int]
    entries_written: int
    messages_written: int
    bytes_written: int
    entries_read: int
    messages_read: int
    # Trimmed from a followed stream before this node read them (its drains say L10).
    messages_trimmed: int
    # Times the writer kept a channel's entries because a follower of it was far behind.
    writes_waited: int
    # Of the entries read, those this node wrote itself, appended from its writer.
    entries_own: int
    # Entries a read carried ahead of this node's writer's reply for them, and left.
    entries_early: int
    # Of the entries written, those written by PROPOSE and plain XADDs (frames outside Lua),
    # and the times PROPOSE found that another node had written the channel since.
    entries_proposed: int
    proposals_moved: int
    # Entries a write whose reply was lost had written: found in the stream when the
    # writer sent them again, and not written twice.
    entries_landed: int
    malformed_entries: int
    # Flushes taken before their linger was out because the node had gone quiet.
    flushes_quiet: int
    # Times this node held a channel's inputs because it was behind on it (ChannelPushback).
    pushback_holds: int
    buffer_messages: int
    buffer_dropped: int
    reachable: bool
    # Drains this node began to deliver after taking their lease (ClusterDrains).
    drain_takeovers: int = 0
    # Connections the data plane opened for its own calls (cluster/_direct.py).
    connections_opened: int = 0
    # Flushes Redis answered, and the seconds the writer waited for those answers.
    flushes: int = 0
    flush_wait_seconds: float = 0.0
    # Seconds every input waited on the outbound gate (the writer behind on everything).
    inputs_gated_seconds: float = 0.0
    # The data plane's open TCP connections to Redis by congestion control.
    link_congestion: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BacklogFigures:
    """The disk backlogs of drains, all together."""

    disk_bytes: int
    queued_bytes: int
    written_messages: int
    written_bytes: int
    refused_messages: int
    cut_bytes: int
    refusing: bool


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything ``/metrics`` shows, read at scrape time."""

    syslog: SyslogInputStats
    logs: LogsIngestStats | None
    logs_bytes: int
    connections: Mapping[str, ConnectionCount]
    drains: Sequence[DrainStats]
    channels: int
    unknown_tokens: int
    store: StoreFigures | None
    tails: TailFigures
    rods: RodState
    redis: RedisFigures | None = None
    # Messages the firehose copied to each firehose channel (REFERENCE.md section 7).
    firehose: Mapping[str, int] = field(default_factory=dict)
    # Drain backlogs on disk (issue 19); None when spilling is off.
    backlog: BacklogFigures | None = None
    drain_pump: DrainPumpFigures | None = None


class LoopLag:
    """Event-loop lag: how much later than asked a ``trio.sleep`` wakes up.

    A loop busy with CPU work (or blocked by a synchronous call) delays every task: the
    overshoot of a periodic sleep measures exactly that delay.
    """

    def __init__(self, histogram: Histogram, interval: float = LAG_INTERVAL) -> None:
        self.histogram = histogram
        self.interval = interval
        self.last = 0.0
        self.max = 0.0

    def observe(self, lag: float) -> None:
        lag = max(0.0, lag)
        self.last = lag
        self.max = max(self.max, lag)
        self.histogram.observe(lag)

    async def run(self) -> None:
        while True:
            asked = trio.current_time() + self.interval
            await trio.sleep(self.interval)
            self.observe(trio.current_time() - asked)


class Metrics:
    """The daemon's metrics registry and the few instruments it records into directly."""

    def __init__(
        self, snapshot: Callable[[], MetricsSnapshot], *, drain_series: int = DRAIN_SERIES_LIMIT
    ) -> None:
        self.snapshot = snapshot
        reg = self.registry = CollectorRegistry(auto_describe=True)
        self.api_requests = Counter(
            f"{PREFIX}_api_requests",
            "Control API requests by route name, method and status code.",
            ["route", "method", "status"],
            registry=reg,
        )
        self.api_latency = Histogram(
            f"{PREFIX}_api_request_duration_seconds",
            "Control API time from request received to response ready, by route name.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.loop_lag_histogram = Histogram(
            f"{PREFIX}_event_loop_lag_seconds",
            "How late the event loop woke a periodic sleep (a busy or blocked loop).",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.loop_lag = LoopLag(self.loop_lag_histogram)
        self._last_lag = Gauge(
            f"{PREFIX}_event_loop_lag_last_seconds",
            "The most recent event-loop lag measurement.",
            registry=reg,
        )
        self._last_lag.set_function(lambda: self.loop_lag.last)
        reg.register(DaemonCollector(snapshot, drain_series=drain_series))
        ProcessCollector(namespace="", registry=reg)

    def observe_api(self, route: str, method: str, status: int, seconds: float) -> None:
        # Methods are bounded to the usual ones so a client cannot grow the label set.
        if method not in _METHODS:
            method = "other"
        self.api_requests.labels(route, method, str(status)).inc()
        self.api_latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return _generate_latest(self.registry)

    def mount(self, add: AddRoute, *, auth: bool) -> None:
        """``GET /metrics`` (``auth``: whether a scrape needs the API's credentials)."""
        add("GET", "/metrics", self._serve, name="metrics", auth=auth)

    async def _serve(self, request: Request, params: dict[str, str]) -> Response:
        return Response(200, [("Content-Type", CONTENT_TYPE)], self.render())


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _drain_rank(stats: DrainStats) -> tuple[int, bool, int]:
    return (stats.buffered, stats.state == DrainState.BACKOFF.value, -stats.drain_id)


def _counter(
    name: str, doc: str, labels: list[str] | None = None, *, value: float | None = None
) -> CounterMetricFamily:
    """A counter family; with ``value``, its one unlabelled sample."""
    return _filled(CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels), value)


def _gauge(
    name: str, doc: str, labels: list[str] | None = None, *, value: float | None = None
) -> GaugeMetricFamily:
    """A gauge family; with ``value``, its one unlabelled sample."""
    return _filled(GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels), value)


def _filled(family: _Family, value: float | None) -> _Family:
    if value is not None:
        family.add_metric([], value)
    return family


class DaemonCollector(Collector):
    """Reads the live counters at scrape time."""

    def __init__(
        self,
        snapshot: Callable[[], MetricsSnapshot],
        clock: Callable[[], float] = time.time,
        *,
        drain_series: int = DRAIN_SERIES_LIMIT,
    ) -> None:
        self.snapshot = snapshot
        self.clock = clock
        # How many drains the per-drain families show (DRAIN_SERIES_LIMIT).
        self.drain_series = drain_series

    def describe(self) -> list[Metric]:
        # Families are known only at scrape time (drains come and go): no up-front describe.
        return []

    def collect(self) -> Iterator[Metric]:
        src = self.snapshot()
        yield from self._inputs(src)
        yield from self._drains(src)
        yield from self._state(src)
        yield from self._rods(src)
        yield from self._redis(src)

    # -- inputs ----------------------------------------------------------------------------
    def _inputs(self, src: MetricsSnapshot) -> Iterator[Metric]:
        syslog, logs = src.syslog, src.logs
        received = _counter(
            "messages_received", "Syslog frames received (well-formed), by input.", ["input"]
        )
        routed = _counter("messages_routed", "Messages stored in a channel, by input.", ["input"])
        dropped = _counter(
            "messages_dropped",
            "Messages not routed, by input and reason (malformed, unknown_token).",
            ["input", "reason"],
        )
        malformed = _counter(
            "malformed_frames", "Frames that were not valid syslog, by input.", ["input"]
        )
        unknown = _counter(
            "unknown_tokens", "Messages whose token is not known, by input.", ["input"]
        )
        received_bytes = _counter("received_bytes", "Bytes received, by input.", ["input"])
        received.add_metric(["syslog"], syslog.frames)
        routed.add_metric(["syslog"], syslog.routed)
        malformed.add_metric(["syslog"], syslog.malformed)
        unknown.add_metric(["syslog"], syslog.unknown_token)
        dropped.add_metric(["syslog", "malformed"], syslog.malformed)
        dropped.add_metric(["syslog", "unknown_token"], syslog.unknown_token)
        received_bytes.add_metric(["syslog"], syslog.bytes_received)
        if logs is not None:
            received.add_metric(["logs"], logs.frames)
            routed.add_metric(["logs"], logs.routed)
            unknown.add_metric(["logs"], logs.unknown_token)
            dropped.add_metric(["logs", "unknown_token"], logs.unknown_token)
            received_bytes.add_metric(["logs"], src.logs_bytes)
            requests = _counter(
                "logs_requests", "POST /logs requests by outcome (status code).", ["status"]
            )
            requests.add_metric(["204"], logs.accepted + logs.duplicates)
            for status, count in sorted(logs.rejected.items()):
                requests.add_metric([str(status)], count)
            yield requests
            yield _counter(
                "logs_malformed_requests",
                "POST /logs requests refused whole because a frame was malformed.",
                value=logs.malformed_requests,
            )
            yield _counter(
                "logs_duplicate_requests",
                "POST /logs retransmissions acknowledged without routing (Logplex-Frame-Id).",
                value=logs.duplicates,
            )
        yield from (received, routed, dropped, malformed, unknown, received_bytes)

        open_ = _gauge("connections_open", "Open connections, by listener.", ["listener"])
        total = _counter("connections", "Connections accepted, by listener.", ["listener"])
        open_.add_metric(["syslog"], syslog.connections_open)
        total.add_metric(["syslog"], syslog.connections_total)
        for name, listener in sorted(src.connections.items()):
            open_.add_metric([name], listener.open)
            total.add_metric([name], listener.total)
        yield open_
        yield total
        yield _counter(
            "syslog_connections_rejected",
            "Syslog connections refused at max_syslog_connections.",
            value=syslog.connections_rejected,
        )
        yield _counter(
            "syslog_connections_idle_closed",
            "Syslog connections closed when idle.",
            value=syslog.connections_idle_closed,
        )
        yield _counter(
            "syslog_connections_evicted",
            "Idle syslog connections closed at max_syslog_connections to let a new one in.",
            value=syslog.connections_evicted,
        )
        yield _counter(
            "syslog_connections_silent_closed",
            "Syslog connections closed before their first bytes (syslog_first_byte_timeout).",
            value=syslog.connections_silent_closed,
        )
        yield _counter(
            "syslog_pushbacks",
            "Times a syslog connection stopped reading because a channel it fed was held "
            "(a drain that takes every write was behind: the router was the bottleneck).",
            value=syslog.pushbacks,
        )
        yield _gauge(
            "syslog_connections_held",
            "Syslog connections waiting for a held channel.",
            value=syslog.connections_held,
        )
        if logs is not None:
            yield _counter(
                "logs_pushback_waits",
                "POST /logs requests that waited for a held channel.",
                value=logs.waits,
            )
            yield _counter(
                "logs_pushback_refused",
                "POST /logs requests answered 503 + Retry-After: their channel stayed held "
                "for logs_hold_timeout (nothing of them was routed).",
                value=logs.pushed_back,
            )

    # -- drains ----------------------------------------------------------------------------
    def _drains(self, src: MetricsSnapshot) -> Iterator[Metric]:
        stats = src.drains
        yield from self._drain_series(self._listed(stats))
        yield _gauge("drains_running", "Drains with a running delivery task.", value=len(stats))
        yield _gauge(
            "drains_unlisted",
            f"Running drains left out of the per-drain families (at most {self.drain_series} "
            "are shown: the largest backlogs first).",
            value=max(0, len(stats) - self.drain_series),
        )
        by_state = _gauge("drains", "Running drains by connection state.", ["state"])
        counts = Tally(s.state for s in stats)
        for name in DRAIN_STATES:
            by_state.add_metric([name], counts[name])
        yield by_state
        yield _gauge(
            "drains_buffered_messages",
            "Messages waiting for drains, summed over every drain (a message two drains "
            "wait for counts twice).",
            value=sum(s.buffered for s in stats),
        )
        yield _gauge(
            "drains_buffered_bytes",
            "Bytes of the messages waiting for drains, summed over every drain (estimated "
            "from average message sizes, see drain_buffered_bytes).",
            value=sum(s.buffered_bytes for s in stats),
        )
        oldest = _gauge(
            "drains_oldest_buffered_age_seconds",
            "Age of the oldest message any drain waits to deliver, by its own timestamp "
            "(0 when none waits).",
        )
        ages = [s.oldest_age for s in stats if s.oldest_age is not None]
        oldest.add_metric([], max(ages, default=0.0))
        yield oldest
        yield _gauge(
            "drains_spilling",
            "Drains reading their backlog from disk.",
            value=sum(1 for s in stats if s.spilling),
        )
        yield _gauge(
            "drains_spilled_messages",
            "Messages in drains' disk backlogs, not yet delivered.",
            value=sum(s.spilled for s in stats),
        )
        yield _gauge(
            "drains_judged_slow",
            "Times the running drains' receivers were judged slow (drain_judged_slow_total "
            "summed over them: it falls when a drain is removed).",
            value=sum(s.judged_slow for s in stats),
        )
        yield from self._drain_pump(src.drain_pump)
        yield from self._backlog(src.backlog)

    def _drain_pump(self, figures: DrainPumpFigures | None) -> Iterator[Metric]:
        if figures is None:
            return
        yield _gauge(
            "drain_pump_attached",
            "Connected plain-TCP syslog drains the drain pump writes for; the others are "
            "written by their own task.",
            value=figures.attached,
        )
        yield _counter(
            "drain_pump_writes",
            "Payloads the drain pump wrote to drains' sockets (each one write call).",
            value=figures.writes,
        )
        yield _counter(
            "drain_pump_handed_back",
            "Times the drain pump handed a drain back to its own task (a write the socket did "
            "not take whole, an error, a flush, a removed channel).",
            value=figures.handed_back,
        )
        yield _counter(
            "drain_pump_threaded_rounds",
            "Drain pump rounds written from its worker thread (rounds of 8 drains or more), "
            "while the event loop went on routing.",
            value=figures.threaded_rounds,
        )
        yield _gauge(
            "drain_pump_linger_seconds",
            "How long the drain pump gathers messages before a round (grows with a round's "
            "cost, at most 0.1 s).",
            value=figures.linger,
        )

    def _backlog(self, figures: BacklogFigures | None) -> Iterator[Metric]:
        if figures is None:
            return
        for name, value, text in (
            (
                "backlog_disk_bytes",
                figures.disk_bytes,
                "Bytes of drain backlog segment files on disk.",
            ),
            (
                "backlog_queued_bytes",
                figures.queued_bytes,
                "Bytes copied for drain backlogs, not yet written.",
            ),
            (
                "backlog_refusing",
                1 if figures.refusing else 0,
                "1 while drain backlogs take nothing (total budget reached or disk too full).",
            ),
        ):
            yield _gauge(name, text, value=value)
        for name, value, text in (
            (
                "backlog_written_messages_total",
                figures.written_messages,
                "Messages written to drain backlogs.",
            ),
            (
                "backlog_written_bytes_total",
                figures.written_bytes,
                "Bytes written to drain backlogs.",
            ),
            (
                "backlog_refused_messages_total",
                figures.refused_messages,
                "Messages drain backlogs refused (budget or free space; each announced by L10).",
            ),
            (
                "backlog_cut_bytes_total",
                figures.cut_bytes,
                "Damaged bytes cut off drain backlog segments at start.",
            ),
        ):
            yield _counter(name.removesuffix("_total"), text, value=value)

    def _listed(self, stats: Sequence[DrainStats]) -> Sequence[DrainStats]:
        """The drains the per-drain families show: all of them, or the ``drain_series``
        with the largest backlog (then those in backoff, then the lowest ids)."""
        if len(stats) <= self.drain_series:
            return stats
        return heapq.nlargest(self.drain_series, stats, key=_drain_rank)

    def _drain_series(self, stats: Sequence[DrainStats]) -> Iterator[Metric]:
        labels = ["drain_id", "channel"]
        delivered = _counter("drain_delivered", "Messages a drain delivered.", labels)
        dropped = _counter("drain_dropped", "Messages a drain gave up on.", labels)
        retried = _counter("drain_retried", "Delivery attempts a drain retried.", labels)
        lost = _counter("drain_lost", "Messages lapped before a drain read them.", labels)
        judged_slow = _counter(
            "drain_judged_slow",
            "Times a drain's receiver was judged slow: it took nothing of a pending write "
            "for slow_write_after (it then holds no input until it has caught up).",
            labels,
        )
        buffered = _gauge("drain_buffered", "Messages waiting for a drain.", labels)
        nbytes = _gauge(
            "drain_buffered_bytes",
            "Bytes of the messages waiting for a drain (exact when the whole ring waits, "
            "else from the ring's average message size).",
            labels,
        )
        oldest = _gauge(
            "drain_oldest_buffered_age_seconds",
            "Age of the oldest message waiting for a drain, by its own RFC 5424 timestamp "
            "(absent when none waits or it has none).",
            labels,
        )
        state = StateSetMetricFamily(
            f"{PREFIX}_drain_state", "Connection state of each drain.", labels=labels
        )
        for s in stats:
            key = [str(s.drain_id), s.channel]
            delivered.add_metric(key, s.delivered)
            dropped.add_metric(key, s.dropped)
            retried.add_metric(key, s.retried)
            lost.add_metric(key, s.lost)
            judged_slow.add_metric(key, s.judged_slow)
            buffered.add_metric(key, s.buffered)
            nbytes.add_metric(key, s.buffered_bytes)
            if s.oldest_age is not None:
                oldest.add_metric(key, s.oldest_age)
            state.add_metric(key, {name: name == s.state for name in DRAIN_STATES})
        yield from (delivered, dropped, retried, lost, judged_slow, buffered, nbytes, oldest, state)

    # -- registry, store, sessions ----------------------------------------------------------
    def _state(self, src: MetricsSnapshot) -> Iterator[Metric]:
        yield _gauge("channels", "Channels in the registry.", value=src.channels)
        yield _counter(
            "routed_unknown_tokens",
            "Messages the router found no channel for (all inputs).",
            value=src.unknown_tokens,
        )
        firehose = _counter(
            "firehose_messages",
            "Messages of firehose tokens copied to each firehose channel.",
            ["channel"],
        )
        for channel, count in sorted(src.firehose.items()):
            firehose.add_metric([channel], count)
        yield firehose
        store = src.store
        if store is not None and store.journal_bytes is not None:
            yield _gauge(
                "store_journal_bytes",
                "Bytes in the store journal since its snapshot.",
                value=store.journal_bytes,
            )
        if store is not None:
            yield _gauge(
                "store_healthy",
                "1 while the store takes writes, 0 after a failure.",
                value=1 if store.healthy else 0,
            )
        tails = src.tails
        yield _gauge("tail_sessions", "Open tail sessions.", value=tails.active)
        yield _counter("tail_sessions_started", "Tail sessions started.", value=tails.started)
        yield _counter(
            "tail_sessions_killed", "Tail sessions ended by kill_tail_sessions.", value=tails.killed
        )
        yield _counter(
            "tail_holds",
            "Times a tail whose reader keeps up held its channel's inputs instead of being lapped.",
            value=tails.holds,
        )
        yield _counter(
            "tail_slow",
            "Times a tail's reader left a chunk unsent for 0.1 s (a slow reader: it holds "
            "nothing until it has caught up).",
            value=tails.slow,
        )
        yield _gauge(
            "tail_pumped",
            "Following tails whose lines the tail pump writes (plain TCP, HTTP/1.1); the "
            "others are written by their own task.",
            value=tails.pumped,
        )
        yield _counter(
            "tail_pump_writes",
            "Chunks the tail pump wrote to tails' sockets.",
            value=tails.pump_writes,
        )
        yield _gauge(
            "tail_pump_linger_seconds",
            "How long the tail pump gathers lines before a round (grows with a round's cost, "
            "at most 0.015 s).",
            value=tails.pump_linger,
        )

    def _rods(self, src: MetricsSnapshot) -> Iterator[Metric]:
        state = src.rods
        active = _gauge(
            "control_rod_active", "1 while a control rod is engaged (REFERENCE.md 8).", ["rod"]
        )
        for name, value in state.flags().items():
            active.add_metric([name], 1 if value else 0)
        yield active
        status = StateSetMetricFamily(f"{PREFIX}_api_status", "API_STATUS control rod.", labels=[])
        status.add_metric([], {name: name == state.api_status for name in _API_STATUSES})
        yield status

    # -- Redis data plane (Redis mode only) -------------------------------------------------
    def _redis(self, src: MetricsSnapshot) -> Iterator[Metric]:
        plane = src.redis
        if plane is None:
            return
        trips = _counter(
            "redis_round_trips",
            "Round trips to Redis by the data plane, by kind (one request and its reply, or "
            "one pipeline, per Redis server it went to).",
            ["kind"],
        )
        for kind, count in plane.trips.items():
            trips.add_metric([kind], count)
        yield trips
        for name, attr, doc in _PLANE_COUNTERS:
            yield _counter(name, doc, value=getattr(plane, attr))
        yield _gauge(
            "redis_buffer_messages",
            "Messages routed on this node waiting in the outbound buffer for Redis.",
            value=plane.buffer_messages,
        )
        yield _counter(
            "redis_buffer_dropped",
            "Messages dropped from a full outbound buffer (announced to drains as L10).",
            value=plane.buffer_dropped,
        )
        links = _gauge(
            "redis_links",
            "The data plane's open TCP connections to Redis, by the congestion control they "
            "use (redis_tcp_congestion; a name the kernel refused leaves the system's).",
            ["congestion"],
        )
        for name, count in sorted(plane.link_congestion.items()):
            links.add_metric([name], count)
        yield links
        yield _gauge(
            "redis_reachable",
            "0 before Redis first answers and from a failed data plane call until that "
            "task's calls succeed again, else 1.",
            value=1 if plane.reachable else 0,
        )


# (metric name without prefix and _total, DataPlane attribute, help)
_PLANE_COUNTERS = (
    ("redis_stream_entries_written", "entries_written",
     "Stream entries the data plane appended (each holds a run of one channel's messages)."),
    ("redis_stream_messages_written", "messages_written",
     "Messages the data plane appended to channel streams."),
    ("redis_stream_bytes_written", "bytes_written",
     "Bytes of message frames the data plane appended to channel streams."),
    ("redis_stream_entries_read", "entries_read",
     "Stream entries the data plane read while following channels."),
    ("redis_stream_messages_read", "messages_read",
     "Messages the data plane read while following channels."),
    ("redis_stream_messages_trimmed", "messages_trimmed",
     "Messages trimmed from a followed stream before this node read them (its drains "
     "announce them with L10)."),
    ("redis_writes_waited", "writes_waited",
     "Times a channel's entries waited in the outbound buffer because a node following it "
     "had fallen 4 x channel_buffer_messages behind (instead of trimming what it had not "
     "read)."),
    ("redis_stream_entries_own", "entries_own",
     "Of the stream entries read, those this node wrote and appended from its writer "
     "without reading them back from Redis."),
    ("redis_stream_entries_early", "entries_early",
     "Stream entries a read carried before this node's writer had the reply for its own "
     "entries among them, and left to that reply (read for nothing; a follow is left out "
     "of the reads while its channel is being written)."),
    ("redis_stream_entries_proposed", "entries_proposed",
     "Of the stream entries written, those written as plain XADDs behind the PROPOSE "
     "script (one Redis: the frames never become Lua strings)."),
    ("redis_proposals_moved", "proposals_moved",
     "Times a channel's proposed entries were refused because another node had written "
     "the channel since (they are written with the APPEND script instead)."),
    ("redis_stream_entries_landed", "entries_landed",
     "Stream entries the writer sent again after a call whose reply was lost, found "
     "already written by that call (right after this node's last entry) and not written "
     "twice."),
    ("redis_flushes_quiet", "flushes_quiet",
     "Flushes the writer took before its linger after the last one was out, because "
     "nothing was routed and the node was idle (a flood had ended)."),
    ("redis_stream_entries_malformed", "malformed_entries",
     "Stream entries no logplexd wrote, skipped by the data plane."),
    ("redis_drain_takeovers", "drain_takeovers",
     "Drains this node took the lease of and began to deliver (at start-up, when one was "
     "added, or from a node that died)."),
    ("redis_connections_opened", "connections_opened",
     "Connections the data plane opened to Redis servers for its frequent calls (one per "
     "server and purpose; one that keeps growing means connections keep breaking)."),
    ("redis_flushes", "flushes",
     "Flushes of the outbound buffer Redis answered (one write of every channel with "
     "something buffered: one round trip per Redis server)."),
    ("redis_flush_wait_seconds", "flush_wait_seconds",
     "Seconds the writer spent on its flushes' round trips, from sending one to having read "
     "its reply, its own work on the replies of a flush's first groups left out (Redis's "
     "time, the transfer both ways, and, on a busy node, the wait for the event loop); "
     "divided by redis_flushes_total, the mean time a flush takes."),
    ("redis_inputs_gated_seconds", "inputs_gated_seconds",
     "Seconds every input of this node waited because its outbound buffer was past half "
     "full: Redis (or this node's writer) was not keeping up with what the node routed."),
    ("redis_pushback_holds", "pushback_holds",
     "Times this node held a channel's inputs because it was behind on it (unwritten plus "
     "not yet read back past channel_buffer_messages), or every input because its outbound "
     "buffer was past half full (one count each time)."),
)  # fmt: skip

_API_STATUSES = ("normal", "read_only", "disabled")


def generate_latest(metrics: Metrics) -> bytes:
    return metrics.render()


__all__ = [
    "CONTENT_TYPE",
    "DRAIN_SERIES_LIMIT",
    "DaemonCollector",
    "DrainPumpFigures",
    "LoopLag",
    "Metrics",
    "MetricsSnapshot",
    "RedisFigures",
    "StoreFigures",
    "TailFigures",
    "generate_latest",
]
