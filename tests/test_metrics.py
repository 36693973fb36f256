"""``GET /metrics``: Prometheus text from the live counters of a real daemon."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import trio

from logplexd.config import Address
from logplexd.daemon import Daemon
from logplexd.daemon.metrics import LoopLag
from tests.helpers.daemon import KEY, settings_for
from tests.helpers.http import create_channel, request
from tests.helpers.metrics import scrape, value
from tests.helpers.syslog import frame, send_syslog
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

        found = await scrape(ports.api)  # loopback listener: no auth needed
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
        assert value(found, "logplexd_connections_open", listener="api") == 1  # this scrape
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
