"""``GET /metrics``: Prometheus text from the live counters of a real daemon."""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest

from logplexd.api import RodState
from logplexd.config import Address
from logplexd.daemon import Daemon
from logplexd.daemon.metrics import (
    DRAIN_SERIES_LIMIT,
    DRAIN_STATES,
    DaemonCollector,
    LoopLag,
    MetricsSnapshot,
    TailFigures,
)
from logplexd.drains import DrainStats
from logplexd.ingest import SyslogInputStats
from tests.helpers.daemon import KEY, settings_for
from tests.helpers.drains import SyslogSink
from tests.helpers.http import create_channel, create_drain, request
from tests.helpers.metrics import samples, scrape, value
from tests.helpers.syslog import TS, frame, send_syslog
from tests.helpers.wait import wait_until


async def test_metrics_reads_live_counters(tmp_path: Path) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        token = await create_channel(ports)
        await request(
            ports.api, "POST", "/v3/channels/app/drains", body={"url": "syslog://127.0.0.1:1/"}
        )
        good = frame(token, "hello") + frame(token, "again")
        await send_syslog(ports.syslog, good + frame("t.unknown", "lost") + b"99999999 x")
        await wait_until(lambda: daemon.syslog.stats.frames >= 3 and daemon.syslog.stats.malformed)
        status, _, _ = await request(
            ports.logs,
            "POST",
            "/logs",
            body=frame(token, "via http"),
            headers=[("Content-Type", "application/logplex-1")],
            auth=base64.b64encode(f"token:{token}".encode()).decode(),
        )
        assert status == 204
        await request(ports.api, "GET", "/v3/channels/nope")

        # Loopback listener: no auth needed. The earlier requests' connections close on the
        # server's side a moment after their replies (under load, not yet at the first
        # scrape): scraped again until only this scrape's own is open.
        with trio.fail_after(10):
            while True:
                found = await scrape(ports.api)
                if value(found, "logplexd_connections_open", listener="api") == 1:
                    break
                await trio.sleep(0.01)
        assert value(found, "logplexd_messages_received_total", input="syslog") == 3
        assert value(found, "logplexd_messages_routed_total", input="syslog") == 2
        assert value(found, "logplexd_messages_routed_total", input="logs") == 1
        assert (
            value(found, "logplexd_messages_dropped_total", input="syslog", reason="unknown_token")
            == 1
        )
        assert value(found, "logplexd_malformed_frames_total", input="syslog") == 1
        assert value(found, "logplexd_unknown_tokens_total", input="syslog") == 1
        assert value(found, "logplexd_received_bytes_total", input="syslog") > len(good)
        assert value(found, "logplexd_received_bytes_total", input="logs") > 0
        assert value(found, "logplexd_logs_requests_total", status="204") == 1
        assert value(found, "logplexd_channels") == 1
        assert value(found, "logplexd_store_journal_bytes") > 0
        assert value(found, "logplexd_tail_sessions") == 0
        assert value(found, "logplexd_connections_total", listener="api") >= 4
        assert value(found, "logplexd_connections_total", listener="syslog") == 1
        assert value(found, "logplexd_connections_total", listener="logs") == 1
        drain = {"drain_id": "1", "channel": "app"}
        assert value(found, "logplexd_drain_delivered_total", **drain) == 0
        assert ("logplexd_drain_buffered", tuple(sorted(drain.items()))) in found
        states = [
            labels
            for (name, labels), v in found.items()
            if name == "logplexd_drain_state" and v == 1
        ]
        assert len(states) == 1
        put = {"route": "v3.channel.put", "method": "PUT", "status": "201"}
        assert value(found, "logplexd_api_requests_total", **put) == 1
        missing = {"route": "v3.channel.get", "method": "GET", "status": "404"}
        assert value(found, "logplexd_api_requests_total", **missing) == 1
        assert (
            value(found, "logplexd_api_request_duration_seconds_count", route="v3.channel.put") == 1
        )
        assert value(found, "logplexd_control_rod_active", rod="deny_logs_ingress") == 0
        assert value(found, "logplexd_api_status", logplexd_api_status="normal") == 1
        assert ("logplexd_event_loop_lag_seconds_count", ()) in found
        assert ("process_open_fds", ()) in found
        nursery.cancel_scope.cancel()


async def test_drain_aggregates(tmp_path: Path) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        token = await create_channel(ports)
        await create_channel(ports, "quiet")
        for channel in ("app", "quiet"):
            status, _, _ = await request(
                ports.api,
                "POST",
                f"/v3/channels/{channel}/drains",
                body={"url": "syslog://127.0.0.1:1/"},  # nothing listens there
            )
            assert status == 201
        await send_syslog(ports.syslog, b"".join(frame(token, f"m{i}") for i in range(3)))

        def waiting() -> bool:
            stats = {s.channel: s for s in daemon.drains.stats()}
            return stats["app"].state == "backoff" and stats["app"].buffered == 3

        await wait_until(waiting)
        found = await scrape(ports.api)
        channel = daemon.registry.channel("app")
        assert channel is not None
        by_state = {state: value(found, "logplexd_drains", state=state) for state in DRAIN_STATES}
        assert by_state == {
            "disconnected": 1,  # "quiet": nothing to deliver, so no connection tried
            "connecting": 0,
            "connected": 0,
            "sending": 0,
            "backoff": 1,
            "stopped": 0,
        }
        assert value(found, "logplexd_drains_running") == 2
        assert value(found, "logplexd_drains_unlisted") == 0
        assert value(found, "logplexd_drains_buffered_messages") == 3
        assert value(found, "logplexd_drains_buffered_bytes") == channel.ring.nbytes
        # Every message is stamped TS (2012): the oldest is that old, by its own clock.
        age = time.time() - datetime.fromisoformat(TS).timestamp()
        oldest = value(found, "logplexd_drains_oldest_buffered_age_seconds")
        assert age - 60 < oldest <= age
        app = {"drain_id": "1", "channel": "app"}
        assert value(found, "logplexd_drain_buffered_bytes", **app) == channel.ring.nbytes
        assert value(found, "logplexd_drain_oldest_buffered_age_seconds", **app) == oldest
        quiet = tuple(sorted({"drain_id": "2", "channel": "quiet"}.items()))
        assert ("logplexd_drain_buffered_bytes", quiet) in found
        assert ("logplexd_drain_oldest_buffered_age_seconds", quiet) not in found
        nursery.cancel_scope.cancel()


async def test_drain_pump_figures(tmp_path: Path) -> None:
    daemon = Daemon(settings_for(tmp_path))
    sink = SyslogSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve)
        ports = await nursery.start(daemon.serve)
        token = await create_channel(ports)
        await create_drain(ports, f"syslog://127.0.0.1:{sink.port}/")
        await send_syslog(ports.syslog, frame(token, "first"))
        await sink.wait_for(lambda: sink.messages() == 1)
        # Connected and caught up: the drain's task parks and the pump writes from now on.
        await wait_until(lambda: daemon.drains.pump.attached == 1)
        await send_syslog(ports.syslog, b"".join(frame(token, f"m{i}") for i in range(50)))
        await sink.wait_for(lambda: sink.messages() == 51)
        found = await scrape(ports.api)
        assert value(found, "logplexd_drain_pump_attached") == 1
        writes = value(found, "logplexd_drain_pump_writes_total")
        assert 1 <= writes == daemon.drains.pump.writes
        assert value(found, "logplexd_drain_pump_handed_back_total") == 0
        assert value(found, "logplexd_drain_pump_threaded_rounds_total") == 0  # one drain
        assert 0 < value(found, "logplexd_drain_pump_linger_seconds") <= 0.1
        nursery.cancel_scope.cancel()


def drain_stats(drain_id: int, buffered: int, state: str = "connected") -> DrainStats:
    return DrainStats(
        drain_id=drain_id,
        channel=f"c{drain_id % 7}",
        token="d.x",
        url="syslog://h:1/",
        state=state,
        delivered=drain_id,
        dropped=0,
        retried=0,
        lost=0,
        buffered=buffered,
        in_flight=0,
        buffered_bytes=buffered * 100,
        oldest_at=None if buffered == 0 else 1000.0 - drain_id,
        oldest_age=None if buffered == 0 else float(drain_id),
        pending_loss=0,
        last_error=None,
        last_error_at=None,
    )


def test_per_drain_series_are_bounded() -> None:
    # 1000 drains; 20 of them have a backlog (ids 500..519, the larger id the larger), and
    # three with none are in backoff.
    stats = [drain_stats(i, 0) for i in range(1, 1001)]
    for i in range(500, 520):
        stats[i - 1] = drain_stats(i, i)
    for i in (7, 8, 9):
        stats[i - 1] = drain_stats(i, 0, "backoff")
    # Two receivers were judged slow: one listed (510), one not (100, twice).
    stats[509] = replace(stats[509], judged_slow=1)
    stats[99] = replace(stats[99], judged_slow=2)
    snapshot = MetricsSnapshot(
        syslog=SyslogInputStats(),
        logs=None,
        logs_bytes=0,
        connections={},
        drains=stats,
        channels=7,
        unknown_tokens=0,
        store=None,
        tails=TailFigures(0, 0, 0),
        rods=RodState(),
    )

    def render(limit: int) -> dict:
        registry = CollectorRegistry()
        registry.register(DaemonCollector(lambda: snapshot, drain_series=limit))
        return samples(generate_latest(registry).decode())

    def listed(found: dict) -> set[int]:
        return {int(dict(labels)["drain_id"]) for _, labels in found if "drain_id" in dict(labels)}

    found = render(22)
    # The 20 largest backlogs, then the drains in backoff by id: 7 and 8, not 9.
    assert listed(found) == {*range(500, 520), 7, 8}
    per_drain = [key for key in found if "drain_id" in dict(key[1])]
    assert len(per_drain) <= 22 * (8 + len(DRAIN_STATES))
    assert value(found, "logplexd_drains_unlisted") == 978
    # The aggregates count every drain.
    assert value(found, "logplexd_drains_running") == 1000
    assert value(found, "logplexd_drains", state="connected") == 997
    assert value(found, "logplexd_drains", state="backoff") == 3
    assert value(found, "logplexd_drains_buffered_messages") == sum(range(500, 520))
    assert value(found, "logplexd_drains_buffered_bytes") == 100 * sum(range(500, 520))
    assert value(found, "logplexd_drains_oldest_buffered_age_seconds") == 519.0
    assert value(found, "logplexd_drain_buffered", drain_id="519", channel="c1") == 519
    assert value(found, "logplexd_drains_judged_slow") == 3
    assert value(found, "logplexd_drain_judged_slow_total", drain_id="510", channel="c6") == 1
    assert value(found, "logplexd_drain_judged_slow_total", drain_id="519", channel="c1") == 0

    assert listed(render(0)) == set()
    assert len(listed(render(DRAIN_SERIES_LIMIT))) == DRAIN_SERIES_LIMIT
    assert value(render(5000), "logplexd_drains_unlisted") == 0


async def test_metrics_need_auth_on_a_non_loopback_listener(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, api_addr=Address("0.0.0.0", 0))
    daemon = Daemon(settings)
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        status, headers, _ = await request(ports.api, "GET", "/metrics", auth=None)
        assert status == 401
        assert headers["www-authenticate"] == "Basic realm=Logplex"
        found = await scrape(ports.api, auth=KEY)
        assert ("logplexd_channels", ()) in found
        nursery.cancel_scope.cancel()


async def test_loop_lag_measures_sleep_overshoot(autojump_clock: trio.abc.Clock) -> None:
    from prometheus_client import CollectorRegistry, Histogram

    lag = LoopLag(Histogram("lag", "lag", registry=CollectorRegistry()), interval=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        await trio.sleep(2.5)
        assert lag.last == pytest.approx(0.0, abs=1e-6)
        nursery.cancel_scope.cancel()
    lag.observe(0.25)
    assert (lag.last, lag.max) == (0.25, 0.25)
    lag.observe(-1)  # a clock that jumped back is no lag
    assert lag.last == 0.0
