"""DrainManager lifecycle: before ``run``, bad URLs, channel replacement, stats snapshots."""

from __future__ import annotations

import pytest
import trio

from logplexd.drains import DrainManager, InvalidDrainUrl
from logplexd.router.registry import Registry
from tests.helpers.drains import TOKEN, SyslogSink, append, message


def frame_of(i: int) -> bytes:
    return (
        b"<134>1 2012-12-10T03:00:48.123456Z "
        + TOKEN.encode()
        + b" app console.1 - - drain test message %d\n" % i
    )


async def test_drain_added_before_run_starts_with_it(nursery):
    sink = SyslogSink()
    port = await nursery.start(sink.serve)
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = DrainManager(registry)
    manager.add_drain("app", 7, TOKEN, f"syslog://127.0.0.1:{port}")
    append(channel, [message(1)])  # after add_drain: delivered, even though run is not up
    await nursery.start(manager.run)
    await sink.wait_for(lambda: sink.frames() == [frame_of(1)])


def test_bad_urls_and_unknown_ids():
    manager = DrainManager(Registry())
    with pytest.raises(InvalidDrainUrl):
        manager.add_drain("app", 1, TOKEN, "ftp://example.com/")
    assert len(manager) == 0
    assert manager.update_drain(1, "syslog://example.com") is False
    assert manager.remove_drain(1) is False and manager.remove_channel("app") == 0
    manager.add_drain("app", 1, TOKEN, "syslog://example.com")
    with pytest.raises(InvalidDrainUrl):
        manager.update_drain(1, "gopher://example.com")
    drain = manager.drain(1)
    assert drain is not None and drain.target.host == "example.com"


async def test_drain_follows_its_channel_when_it_is_recreated(nursery):
    sink = SyslogSink()
    port = await nursery.start(sink.serve)
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = DrainManager(registry)
    await nursery.start(manager.run)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    append(channel, [message(1)])
    await sink.wait_for(lambda: sink.messages() == 1)
    registry.drop_channel("app")
    await trio.sleep(0.05)
    append(registry.ensure_channel("app"), [message(2)])
    await sink.wait_for(lambda: sink.messages() == 2, timeout=5)
    assert sink.frames() == [frame_of(1), frame_of(2)]


async def test_stats_snapshot(nursery):
    sink = SyslogSink()
    port = await nursery.start(sink.serve)
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = DrainManager(registry, wall_clock=lambda: 1000.0)
    await nursery.start(manager.run)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    manager.add_drain("other", 2, TOKEN, "syslog://127.0.0.1:1")
    append(channel, [message(1)])
    await sink.wait_for(lambda: sink.messages() == 1)
    [stats] = manager.channel_stats("app")
    assert stats.as_dict() == {
        "drain_id": 1,
        "channel": "app",
        "token": TOKEN,
        "url": f"syslog://127.0.0.1:{port}",
        "state": "connected",
        "delivered": 1,
        "dropped": 0,
        "retried": 0,
        "lost": 0,
        "buffered": 0,
        "in_flight": 0,
        "buffered_bytes": 0,
        "oldest_at": None,
        "oldest_age": None,
        "pending_loss": 0,
        "last_error": None,
        "last_error_at": None,
        "spilling": False,
        "spilled": 0,
        "spilled_bytes": 0,
        "judged_slow": 0,
    }
    assert {s.drain_id for s in manager.stats()} == {1, 2}
