"""Syslog drains (TCP and TLS) against real local receivers."""

from __future__ import annotations

import pytest
import trio

from logplexd.drains import DrainEvent, DrainManager, DrainSettings
from logplexd.router.registry import Registry
from tests.helpers.drains import (
    TOKEN,
    HttpSink,
    SyslogSink,
    append,
    delivered,
    message,
    start_manager,
    stats_of,
)
from tests.helpers.net import free_port
from tests.helpers.tls import server_context
from tests.helpers.wait import wait_until

FAST = DrainSettings(syslog_send_timeout=0.5, syslog_connect_timeout=0.5)


def count_events(manager: DrainManager, drain_id: int, event: DrainEvent) -> list[int]:
    drain = manager.drain(drain_id)
    assert drain is not None
    seen = [0]
    on = drain.on

    def counting(ev: DrainEvent) -> None:
        if ev is event:
            seen[0] += 1
        on(ev)

    drain.on = counting  # type: ignore[method-assign,assignment]
    return seen


async def test_tcp_drain_sends_exact_octet_counted_frames(nursery):
    sink = SyslogSink()
    port = await nursery.start(sink.serve)
    registry = Registry()
    channel = registry.ensure_channel("app")
    append(channel, [message(0)])  # before the drain existed: not sent
    manager = await start_manager(nursery, registry)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    append(channel, [message(i) for i in range(1, 4)])
    await sink.wait_for(lambda: len(sink.data) >= 3 * len(delivered(1)))
    assert delivered(3) == (
        b"113 <134>1 2012-12-10T03:00:48.123456Z "
        + TOKEN.encode()
        + b" app console.1 - - drain test message 3\n"
    )
    assert bytes(sink.data) == delivered(1) + delivered(2) + delivered(3)
    stats = manager.drain_stats(1)
    assert stats is not None
    assert (stats.delivered, stats.lost, stats.state) == (3, 0, "connected")


async def test_tcp_drain_writes_many_messages_per_send(nursery):
    sink = SyslogSink()
    port = await nursery.start(sink.serve)
    registry = Registry(history_messages=20_000, history_bytes=16 << 20)
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    sends = count_events(manager, 1, DrainEvent.SEND)
    append(channel, [message(i) for i in range(10_000)])
    await sink.wait_for(lambda: sink.data.endswith(delivered(9999)))
    assert sink.frames()[0] == delivered(0).partition(b" ")[2]
    assert sink.messages() == 10_000 and sink.connections == 1
    assert sends[0] <= 10  # ~1.1 MB in writes of up to 256 KB


async def test_lapped_syslog_drain_sends_l10_with_exact_count_first(nursery):
    sink = SyslogSink()
    port = await nursery.start(sink.serve)
    registry = Registry(history_messages=10)
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry, wall_clock=lambda: 1415694265.0)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    # The drain task has not run yet: 25 messages into a ring of 10 laps it by 15.
    append(channel, [message(i) for i in range(25)])
    await sink.wait_for(lambda: sink.data.endswith(delivered(24)))
    frames = sink.frames()
    assert frames[0] == (
        b"<172>1 2014-11-11T08:24:25+00:00 " + TOKEN.encode() + b" heroku logplex - - Error L10 "
        b"(output buffer overflow): 15 messages dropped since 2014-11-11T08:24:25+00:00.\n"
    )
    assert frames[1:] == [delivered(i).partition(b" ")[2] for i in range(15, 25)]
    stats = manager.drain_stats(1)
    assert stats is not None and (stats.lost, stats.pending_loss, stats.delivered) == (15, 0, 10)


async def test_endpoint_down_for_30s_then_back(nursery, autojump_clock):
    port = free_port()
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    connects = count_events(manager, 1, DrainEvent.CONNECT)
    append(channel, [message(i) for i in range(5)])
    await trio.sleep(30)
    # Immediately, then after 2, 4, 8 and 16 s: exponential, never a tight loop.
    assert 3 <= connects[0] <= 5
    stats = manager.drain_stats(1)
    assert stats is not None and stats.state == "backoff" and stats.buffered == 5
    assert stats.last_error and "connect" in stats.last_error.lower()
    sink = SyslogSink()
    await nursery.start(sink.serve, port)
    append(channel, [message(5)])
    await sink.wait_for(lambda: sink.data.endswith(delivered(5)), timeout=120)
    # What the drain held while the endpoint was down was kept, in order, without loss.
    assert bytes(sink.data) == b"".join(delivered(i) for i in range(6))


async def test_receiver_that_never_reads_does_not_hold_up_routing_or_a_healthy_drain(nursery):
    dead, healthy = SyslogSink(read=False), SyslogSink()
    dead_port = await nursery.start(dead.serve)
    healthy_port = await nursery.start(healthy.serve)
    registry = Registry(history_messages=2000, history_bytes=1 << 20)
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry, settings=FAST)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{dead_port}")
    manager.add_drain("app", 2, TOKEN, f"syslog://127.0.0.1:{healthy_port}")
    filler = "x" * 400
    total = 0
    start = trio.current_time()
    with trio.fail_after(10):
        for _round in range(200):  # ~20 MB: far more than the socket buffers hold
            append(channel, [message(total + i, filler) for i in range(250)])
            total += 250
            await wait_until(lambda: stats_of(manager, 2).delivered == total)  # noqa: B023
    elapsed = trio.current_time() - start
    # Written is not yet read: the sink gets the last write's bytes when it next runs.
    await healthy.wait_for(lambda: healthy.messages() == total)
    dead_stats, healthy_stats = manager.drain_stats(1), manager.drain_stats(2)
    assert healthy_stats is not None and dead_stats is not None
    assert healthy_stats.lost == 0 and healthy.messages() == total
    assert dead_stats.lost > 0 and dead_stats.delivered < total
    assert elapsed < 8
    # The stalled write times out and the drain reconnects instead of hanging.
    await wait_until(lambda: stats_of(manager, 1).last_error is not None)
    assert (stats_of(manager, 1).last_error or "") == "timed out"


async def test_url_change_keeps_unsent_messages_even_across_kinds(nursery):
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{free_port()}")
    append(channel, [message(i) for i in range(4)])
    await wait_until(lambda: stats_of(manager, 1).state == "backoff")
    sink = SyslogSink()
    port = await nursery.start(sink.serve)
    manager.update_drain(1, f"syslog://127.0.0.1:{port}")
    await sink.wait_for(lambda: sink.data.endswith(delivered(3)))
    assert bytes(sink.data) == b"".join(delivered(i) for i in range(4))
    # Now to an HTTP endpoint that is down, then to one that is up.
    manager.update_drain(1, f"http://127.0.0.1:{free_port()}/")
    append(channel, [message(4)])
    await wait_until(lambda: stats_of(manager, 1).state == "backoff")
    http = HttpSink()
    http_port = await nursery.start(http.serve)
    manager.update_drain(1, f"http://127.0.0.1:{http_port}/")
    await http.wait_for(lambda: len(http.requests) == 1)
    assert http.requests[0].body.endswith(b"drain test message 4")
    assert b"L10" not in http.requests[0].body


async def test_remove_drain_and_channel_stop_tasks(nursery):
    sink = SyslogSink()
    port = await nursery.start(sink.serve)
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    manager.add_drain("app", 2, TOKEN, f"syslog://127.0.0.1:{port}")
    first, second = manager.drain(1), manager.drain(2)
    assert first is not None and second is not None
    append(channel, [message(1)])
    await sink.wait_for(lambda: sink.messages() == 2)
    assert manager.remove_drain(1) and not manager.remove_drain(1)
    with trio.fail_after(2):
        await first.done.wait()
    append(channel, [message(2)])
    await sink.wait_for(lambda: sink.messages() == 3)
    assert manager.remove_channel("app") == 1 and len(manager) == 0
    with trio.fail_after(2):
        await second.done.wait()
    assert second.state.value == "stopped"


async def test_shutdown_flushes_what_the_drain_holds(nursery):
    sink = SyslogSink()
    port = await nursery.start(sink.serve)
    registry = Registry(history_messages=50_000, history_bytes=32 << 20)
    channel = registry.ensure_channel("app")
    manager = DrainManager(registry)
    done = trio.Event()

    async def run_manager(task_status=trio.TASK_STATUS_IGNORED):
        await manager.run(task_status=task_status)
        done.set()

    await nursery.start(run_manager)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    append(channel, [message(i) for i in range(30_000)])
    with trio.fail_after(5):
        await manager.shutdown(5)
        await done.wait()
    stats = manager.drain_stats(1)
    assert stats is not None and stats.delivered == 30_000 and stats.state == "stopped"
    await sink.wait_for(lambda: sink.data.endswith(delivered(29_999)))


async def test_shutdown_is_bounded_when_the_endpoint_is_dead(nursery, autojump_clock):
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{free_port()}")
    append(channel, [message(1)])
    await trio.sleep(1)
    start = trio.current_time()
    await manager.shutdown(5)
    assert trio.current_time() - start == pytest.approx(5, abs=0.1)


# -- TLS ----------------------------------------------------------------------------------


async def test_tls_drain_delivers_with_a_trusted_ca(nursery, ca, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sink = SyslogSink(tls=server_context(ca, "127.0.0.1", "localhost"))
    port = await nursery.start(sink.serve)
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry, tls_ca_file=str(ca_file))
    manager.add_drain("app", 1, TOKEN, f"syslog+tls://127.0.0.1:{port}")
    append(channel, [message(i) for i in range(3)])
    await sink.wait_for(lambda: sink.data.endswith(delivered(2)))
    assert bytes(sink.data) == b"".join(delivered(i) for i in range(3))


@pytest.mark.parametrize("case", ["untrusted", "wrong-host"])
async def test_tls_drain_that_fails_verification_stays_disconnected(nursery, ca, tmp_path, case):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    names = ("127.0.0.1",) if case == "untrusted" else ("evilserver",)
    sink = SyslogSink(tls=server_context(ca, *names))
    port = await nursery.start(sink.serve)
    registry = Registry()
    channel = registry.ensure_channel("app")
    # "untrusted": the system store does not know the test CA.
    trusted = None if case == "untrusted" else str(ca_file)
    manager = await start_manager(nursery, registry, tls_ca_file=trusted)
    manager.add_drain("app", 1, TOKEN, f"syslog+tls://127.0.0.1:{port}")
    append(channel, [message(1)])
    await sink.wait_for(lambda: sink.handshake_failures >= 1)
    await wait_until(lambda: stats_of(manager, 1).last_error is not None)
    stats = manager.drain_stats(1)
    assert stats is not None and stats.state == "backoff" and stats.delivered == 0
    assert (
        "CERTIFICATE_VERIFY_FAILED" in (stats.last_error or "")
        or "certificate" in (stats.last_error or "").lower()
    )
    # Buffered: the message and the channel's L14 notice (tests/test_drain_tls_l14.py).
    assert sink.connections == 0 and stats.buffered == 2
    # "#insecure" skips verification and delivers what the drain held.
    manager.update_drain(1, f"syslog+tls://127.0.0.1:{port}#insecure")
    await sink.wait_for(lambda: sink.data.startswith(delivered(1)) and b"Error L14" in sink.data)
