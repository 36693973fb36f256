"""``GET /metrics`` in Redis mode: the data plane's round trips, stream and buffer counters.

A real daemon on a real redis-server, scraped over HTTP: the counters must move exactly as
the messages sent, followed by a drain, and then held (and dropped) while Redis is gone.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import trio

from logplexd.cluster import TRIP_KINDS
from logplexd.daemon import Daemon
from tests.helpers.cluster import Sink
from tests.helpers.daemon import settings_for
from tests.helpers.http import create_channel, create_drain
from tests.helpers.metrics import scrape, value
from tests.helpers.redis import RedisServer, eventually
from tests.helpers.syslog import frame, send_syslog

pytestmark = pytest.mark.integration

# Room for the first 300 messages sent at once (a routed batch larger than the buffer is
# dropped whole), little enough to overflow quickly while Redis is down.
BUFFER_MESSAGES = 400


def trips(found: dict) -> dict[str, float]:
    return {
        kind: value(found, "logplexd_redis_round_trips_total", kind=kind) for kind in TRIP_KINDS
    }


async def test_redis_metrics_follow_the_messages(tmp_path: Path, redis_server: RedisServer) -> None:
    settings = dataclasses.replace(
        settings_for(tmp_path),
        store_url=redis_server.url,
        node_id="n1",
        redis_buffer_messages=BUFFER_MESSAGES,
        # Neither the default (cubic) nor a system's usual one: the setting took effect.
        redis_tcp_congestion="reno",
    )
    daemon = Daemon(settings)
    sink = Sink()
    async with trio.open_nursery() as nursery:
        sink_port = await nursery.start(sink.serve)
        ports = await nursery.start(daemon.serve)
        plane = daemon.plane
        assert plane is not None
        await eventually(lambda: plane.failure is None, 5)
        token = await create_channel(ports)
        await create_drain(ports, f"syslog://127.0.0.1:{sink_port}/")

        before = await scrape(ports.api)
        assert value(before, "logplexd_redis_reachable") == 1
        assert value(before, "logplexd_redis_stream_messages_written_total") == 0
        assert value(before, "logplexd_redis_buffer_messages") == 0
        assert value(before, "logplexd_redis_buffer_dropped_total") == 0
        trips0 = trips(before)

        sent = 300
        texts = [f"msg-{i:04d}" for i in range(sent)]
        started = time.monotonic()
        await send_syslog(ports.syslog, b"".join(frame(token, t) for t in texts))
        # Written to the stream, then read back by the drain's follower and delivered.
        await eventually(lambda: plane.messages_written == sent, 10)
        await eventually(lambda: plane.messages_read == sent, 10)
        await eventually(lambda: sink.data.count(b"msg-") == sent, 10)

        found = await scrape(ports.api)
        assert value(found, "logplexd_redis_stream_messages_written_total") == sent
        assert value(found, "logplexd_redis_stream_messages_read_total") == sent
        entries = value(found, "logplexd_redis_stream_entries_written_total")
        assert 1 <= entries <= sent
        assert value(found, "logplexd_redis_stream_entries_read_total") >= entries
        # Its own entries (all of them but those read back) came from its writer.
        own = value(found, "logplexd_redis_stream_entries_own_total")
        assert own == plane.followers.entries_own
        assert 0 <= own <= value(found, "logplexd_redis_stream_entries_read_total")
        assert value(found, "logplexd_redis_stream_entries_malformed_total") == 0
        # One Redis: after its first write of the channel, the writer proposes the ids.
        proposed = value(found, "logplexd_redis_stream_entries_proposed_total")
        assert proposed == plane.writer.entries_proposed and proposed <= entries
        assert value(found, "logplexd_redis_proposals_moved_total") == 0
        # No reply was lost: nothing was found written already.
        assert value(found, "logplexd_redis_stream_entries_landed_total") == 0
        quiet = value(found, "logplexd_redis_flushes_quiet_total")
        assert quiet == plane.writer.quiet_flushes
        # A first write may land while the follower's blocking read waits: at most that
        # one is read ahead of its reply.
        early = value(found, "logplexd_redis_stream_entries_early_total")
        assert early == plane.followers.entries_early <= 1
        # Its one drain: this node took the lease once and delivers.
        assert value(found, "logplexd_redis_drain_takeovers_total") == 1
        # Its own connections: at least the writer's and the follower's, and no more than
        # one per purpose (nothing broke); a purpose's first call may open one since.
        opened = value(found, "logplexd_redis_connections_opened_total")
        assert 2 <= opened <= plane.connections_opened <= 8
        # Every one of them open is on the configured congestion control.
        links = {k[1]: v for k, v in found.items() if k[0] == "logplexd_redis_links"}
        assert set(links) == {(("congestion", "reno"),)}, links
        assert 2 <= links[(("congestion", "reno"),)] <= opened
        # Every message's text is in the frames written (plus its octet count and header).
        assert value(found, "logplexd_redis_stream_bytes_written_total") > sum(map(len, texts))
        trips1 = trips(found)
        writes = trips1["write"] - trips0["write"]
        assert 1 <= writes <= entries
        assert trips1["follow"] - trips0["follow"] >= 1
        assert all(trips1[k] >= trips0[k] for k in TRIP_KINDS)
        assert value(found, "logplexd_redis_buffer_messages") == 0
        assert value(found, "logplexd_redis_buffer_dropped_total") == 0
        assert value(found, "logplexd_redis_reachable") == 1
        # Every flush was answered, and the wait for the answers lies within the test's.
        elapsed = time.monotonic() - started
        flushes = value(found, "logplexd_redis_flushes_total")
        assert flushes == plane.writer.flushes and 1 <= flushes <= writes
        waited = value(found, "logplexd_redis_flush_wait_seconds_total")
        assert 0 < waited < elapsed
        # 300 messages at once fill this buffer past half: the inputs may have waited.
        assert 0 <= value(found, "logplexd_redis_inputs_gated_seconds_total") < elapsed
        await eventually(lambda: not plane.pushback.gate.closed, 5)
        gated = plane.pushback.gate.closed_seconds

        # Redis gone: the gauge says so, routed messages wait in the bounded buffer and the
        # oldest are dropped past its size; no write round trip is counted for them.
        redis_server.kill()
        await eventually(lambda: plane.failure is not None, 5)
        held = 2 * BUFFER_MESSAGES
        step = 100
        for start in range(0, held, step):  # several routed batches: it drops whole ones
            batch = b"".join(frame(token, f"late-{i:04d}") for i in range(start, start + step))
            await send_syslog(ports.syslog, batch)
            await eventually(lambda n=start + step: plane.buffer.pushed >= sent + n, 5)
        # (A write that failed puts its messages back: wait until none is in flight.)
        buf = plane.buffer
        await eventually(lambda: buf.messages + buf.dropped == held, 5)
        down = await scrape(ports.api)
        assert value(down, "logplexd_redis_reachable") == 0
        buffered = value(down, "logplexd_redis_buffer_messages")
        dropped = value(down, "logplexd_redis_buffer_dropped_total")
        assert 0 < buffered <= BUFFER_MESSAGES
        assert dropped >= held - BUFFER_MESSAGES
        assert buffered + dropped == held
        assert value(down, "logplexd_redis_stream_messages_written_total") == sent
        # An outage is not this node being slow: the gate held no input meanwhile.
        assert value(down, "logplexd_redis_inputs_gated_seconds_total") == pytest.approx(gated)
        # Nor did a flush get an answer.
        assert value(down, "logplexd_redis_flushes_total") == flushes
        nursery.cancel_scope.cancel()


async def test_no_redis_metrics_with_the_embedded_store(tmp_path: Path) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        found = await scrape(ports.api)
        assert ("logplexd_channels", ()) in found  # the scrape itself worked
        assert not [name for name, _ in found if name.startswith("logplexd_redis_")]
        nursery.cancel_scope.cancel()
