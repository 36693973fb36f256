"""HTTP(S) drains against a scripted h11 receiver: headers, retries, drops, L10, isolation."""

from __future__ import annotations

import hashlib
import ssl

import pytest
import trio
import trustme

from logplexd import __version__
from logplexd.drains import DrainSettings
from logplexd.router.registry import Registry
from tests.helpers.drains import TOKEN, HttpSink, append, message, start_manager, stats_of
from tests.helpers.wait import wait_until


def mymsg(i: int) -> bytes:
    return b"<134>1 2012-12-10T03:00:48Z erlang app web.1 - - mymsg%d" % i


async def setup(nursery, script=(), *, history=1500, default: int | str = 200, **kwargs):
    sink = HttpSink(script=list(script), default=default)
    port = await nursery.start(sink.serve)
    registry = Registry(history_messages=history)
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry, **kwargs)
    return sink, port, channel, manager


async def test_request_headers_and_body(nursery):
    sink, port, channel, manager = await setup(nursery)
    manager.add_drain("app", 1, TOKEN, f"http://user:secret@127.0.0.1:{port}/drain?x=1#frag")
    append(channel, [message(1), message(2)])
    await sink.wait_for(lambda: len(sink.requests) == 1)
    append(channel, [message(3)])
    await sink.wait_for(lambda: len(sink.requests) == 2)
    first = sink.requests[0]
    body = (
        b"76 <134>1 2012-12-10T03:00:48.123456Z host app console.1 - drain test message 1"
        b"76 <134>1 2012-12-10T03:00:48.123456Z host app console.1 - drain test message 2"
    )
    assert first.target == b"/drain?x=1" and first.body == body
    assert [(k.decode(), v.decode()) for k, v in first.headers] == [
        ("Host", f"127.0.0.1:{port}"),
        ("Authorization", "Basic dXNlcjpzZWNyZXQ="),
        ("Content-Type", "application/logplex-1"),
        ("Logplex-Msg-Count", "2"),
        ("Logplex-Frame-Id", hashlib.md5(body).hexdigest().upper()),
        ("Logplex-Drain-Token", TOKEN),
        ("User-Agent", f"logplexd/{__version__}"),
        ("Content-Length", str(len(body))),
    ]
    # Keep-alive: the second request reuses the connection.
    assert sink.requests[1].connection == first.connection and sink.connections == 1
    assert sink.requests[1].header("Logplex-Msg-Count") == "1"
    await wait_until(lambda: stats_of(manager, 1).delivered == 3)
    stats = manager.drain_stats(1)
    assert stats is not None and (stats.delivered, stats.dropped, stats.retried) == (3, 0, 0)
    assert "secret" not in stats.url


async def test_404_drops_at_once_and_a_later_request_carries_l10(nursery):
    """REFERENCE §10.3: after 5 messages fail with 404, a later 200 request contains mymsg6,
    `Error L10`, `5 messages dropped`, and none of mymsg1-5."""
    sink, port, channel, manager = await setup(nursery, [404])
    manager.add_drain("app", 1, TOKEN, f"http://127.0.0.1:{port}/")
    append(channel, [mymsg(i) for i in range(1, 6)])
    await sink.wait_for(lambda: len(sink.requests) == 1)
    await wait_until(lambda: stats_of(manager, 1).dropped == 5)
    append(channel, [mymsg(6)])
    await sink.wait_for(lambda: len(sink.requests) == 2)
    later = sink.requests[1]
    assert b"mymsg6" in later.body and b"Error L10" in later.body
    assert b"5 messages dropped" in later.body
    assert not any(b"mymsg%d" % i in later.body for i in range(1, 6))
    assert later.header("Logplex-Msg-Count") == "2"
    assert later.header("Logplex-Msg-Loss-Count") == "5"
    assert sink.requests[0].header("Logplex-Msg-Loss-Count") is None
    await wait_until(lambda: stats_of(manager, 1).pending_loss == 0)
    stats = manager.drain_stats(1)
    assert stats is not None and (stats.delivered, stats.dropped, stats.retried) == (1, 5, 0)
    assert stats.last_error and "404" in stats.last_error


async def test_500_three_times_drops_the_frame_then_l10_once(nursery, autojump_clock):
    # 429 and 503 keep the batch instead (tests/test_drain_retry_after.py).
    sink, port, channel, manager = await setup(nursery, [500, 500, 500])
    manager.add_drain("app", 1, TOKEN, f"http://127.0.0.1:{port}/")
    append(channel, [mymsg(i) for i in range(1, 6)])
    await sink.wait_for(lambda: len(sink.requests) == 3)
    tries = sink.requests
    # Same body, same Frame-Id on every attempt; a new connection after each failure.
    assert (
        len({r.body for r in tries}) == 1
        and len({r.header("Logplex-Frame-Id") for r in tries}) == 1
    )
    assert len({r.connection for r in tries}) == 3
    await wait_until(lambda: stats_of(manager, 1).dropped == 5)
    stats = manager.drain_stats(1)
    assert stats is not None and stats.retried == 2
    append(channel, [mymsg(6)])
    await sink.wait_for(lambda: len(sink.requests) == 4)
    assert b"5 messages dropped" in sink.requests[3].body and b"mymsg6" in sink.requests[3].body
    append(channel, [mymsg(7)])
    await sink.wait_for(lambda: len(sink.requests) == 5)
    assert b"L10" not in sink.requests[4].body  # the counter cleared after the 200


async def test_retries_are_paced_by_jittered_backoff(nursery, autojump_clock):
    sink, port, channel, manager = await setup(nursery, [500, 503])
    manager.add_drain("app", 1, TOKEN, f"http://127.0.0.1:{port}/")
    times: list[float] = []
    notify = sink.notify

    def timed_notify() -> None:
        times.append(trio.current_time())
        notify()

    sink.notify = timed_notify  # type: ignore[method-assign]
    append(channel, [mymsg(1)])
    await sink.wait_for(lambda: len(sink.requests) == 3)
    assert len({r.header("Logplex-Frame-Id") for r in sink.requests}) == 1
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert 0.25 <= gaps[0] <= 0.5 and 0.5 <= gaps[1] <= 1.0
    await wait_until(lambda: stats_of(manager, 1).delivered == 1)
    stats = manager.drain_stats(1)
    assert stats is not None and (stats.delivered, stats.retried, stats.dropped) == (1, 2, 0)


@pytest.mark.parametrize("failure", ["stall", "reset"])
async def test_timeouts_and_resets_are_retried(nursery, autojump_clock, failure):
    sink, port, channel, manager = await setup(nursery, [failure])
    manager.add_drain("app", 1, TOKEN, f"http://127.0.0.1:{port}/")
    append(channel, [mymsg(1)])
    start = trio.current_time()
    await sink.wait_for(lambda: len(sink.requests) == 2, timeout=30)
    if failure == "stall":
        assert trio.current_time() - start >= 5  # the request timeout
        assert stats_of(manager, 1).last_error == "timed out"
    await wait_until(lambda: stats_of(manager, 1).delivered == 1)
    assert sink.requests[0].body == sink.requests[1].body


async def test_lapped_http_drain_announces_the_exact_count(nursery):
    sink, port, channel, manager = await setup(nursery, history=10)
    manager.add_drain("app", 1, TOKEN, f"http://127.0.0.1:{port}/")
    append(channel, [mymsg(i) for i in range(40)])  # before the drain task runs: 30 lapped
    await sink.wait_for(lambda: len(sink.requests) == 1)
    request = sink.requests[0]
    assert request.header("Logplex-Msg-Loss-Count") == "30"
    assert request.header("Logplex-Msg-Count") == "11"
    assert b"Error L10 (output buffer overflow): 30 messages dropped since " in request.body
    assert b"mymsg29" not in request.body and request.body.endswith(b"mymsg39")


async def test_batches_stay_under_100kb(nursery):
    sink, port, channel, manager = await setup(nursery, history=5000)
    manager.add_drain("app", 1, TOKEN, f"http://127.0.0.1:{port}/")
    append(channel, [message(i, "y" * 300) for i in range(2000)])  # ~760 KB
    await wait_until(lambda: stats_of(manager, 1).delivered == 2000)
    assert len(sink.requests) >= 8
    assert all(len(r.body) <= 102_400 for r in sink.requests)
    assert sum(int(r.header("Logplex-Msg-Count") or 0) for r in sink.requests) == 2000


async def test_six_drains_one_dead_the_others_get_everything(nursery):
    healthy = [HttpSink() for _ in range(5)]
    ports = [await nursery.start(s.serve) for s in healthy]
    dead = HttpSink(default="stall")
    dead_port = await nursery.start(dead.serve)
    registry = Registry(history_messages=500)
    channel = registry.ensure_channel("app")
    manager = await start_manager(
        nursery, registry, settings=DrainSettings(http_request_timeout=30)
    )
    manager.add_drain("app", 0, TOKEN, f"http://127.0.0.1:{dead_port}/")
    for i, port in enumerate(ports, start=1):
        manager.add_drain("app", i, TOKEN, f"http://127.0.0.1:{port}/")
    sent = 0
    with trio.fail_after(10):
        for _ in range(40):
            append(channel, [mymsg(sent + i) for i in range(100)])
            sent += 100
            await wait_until(
                lambda: all(stats_of(manager, i).delivered == sent for i in range(1, 6))  # noqa: B023
            )
    dead_stats = manager.drain_stats(0)
    assert dead_stats is not None and dead_stats.state == "sending" and dead_stats.lost > 0
    assert all(stats_of(manager, i).lost == 0 for i in range(1, 6))


async def test_url_change_resends_the_unsent_batch_to_the_new_endpoint(nursery):
    stalled, _, channel, manager = await setup(nursery, default="stall")
    manager.add_drain("app", 1, TOKEN, f"http://127.0.0.1:{stalled.port}/")
    append(channel, [mymsg(1), mymsg(2)])
    await stalled.wait_for(lambda: len(stalled.requests) == 1)
    fresh = HttpSink()
    port = await nursery.start(fresh.serve)
    manager.update_drain(1, f"http://127.0.0.1:{port}/new")
    await fresh.wait_for(lambda: len(fresh.requests) == 1)
    assert fresh.requests[0].body == stalled.requests[0].body
    assert fresh.requests[0].target == b"/new"
    assert fresh.requests[0].header("Logplex-Frame-Id") == stalled.requests[0].header(
        "Logplex-Frame-Id"
    )


async def test_https_drain_verifies_the_server(nursery, tmp_path):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    sink = HttpSink(tls=ctx)
    port = await nursery.start(sink.serve)
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry, tls_ca_file=str(ca_file))
    manager.add_drain("app", 1, TOKEN, f"https://127.0.0.1:{port}/")
    append(channel, [mymsg(1)])
    await sink.wait_for(lambda: len(sink.requests) == 1)
    assert sink.requests[0].body.endswith(b"mymsg1")
