"""HTTP drains and ``Retry-After`` (issue 19): 429 and 503 are retried after what the receiver
asks (capped), without using up the batch's attempts, until delivered or lapped by the ring."""

from __future__ import annotations

import calendar
import email.utils
import time

import pytest
import trio

from logplexd.drains import DrainSettings
from logplexd.drains.policy import HTTP_RETRY_AFTER_CAP, retry_after, retry_later
from logplexd.router.registry import Registry
from tests.helpers.drains import TOKEN, HttpSink, SinkAction, append, start_manager, stats_of
from tests.helpers.wait import wait_until

# -- the pure parts ----------------------------------------------------------------------

# RFC 9110 5.6.7's example instant, in its three forms.
SUNDAY = float(calendar.timegm((1994, 11, 6, 8, 49, 37, 0, 0, 0)))
IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
RFC850 = "Sunday, 06-Nov-94 08:49:37 GMT"
ASCTIME = "Sun Nov  6 08:49:37 1994"
BIG = 1e12  # a cap that caps nothing


@pytest.mark.parametrize(
    ("result", "later"),
    [
        (429, True),
        (503, True),
        (500, False),
        (502, False),
        (504, False),
        (200, False),
        (404, False),
        (trio.TooSlowError(), False),
        (ConnectionResetError(), False),
    ],
)
def test_only_429_and_503_say_retry_later(result, later):
    assert retry_later(result) is later


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        (b"2", 2.0),
        ("0", 0.0),  # at once
        ("007", 7.0),
        (" 3\t", 3.0),
        ("30", 30.0),
        ("31", 30.0),  # the cap
        ("86400", 30.0),
        ("9" * 50, 30.0),
        ("9" * 5000, 30.0),  # past int()'s digit limit: still just the cap
    ],
)
def test_delta_seconds(value, seconds):
    assert retry_after(value, SUNDAY, cap=30.0) == seconds


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        " ",
        "-1",
        "+1",
        "1.5",
        "1e3",
        "0x10",
        "soon",
        "1, 2",  # two Retry-After fields, joined
        "\u0663",  # ARABIC-INDIC DIGIT THREE: a digit, not an ASCII one
        b"\xff1",
        "sun, 06 nov 1994 08:49:37 gmt",  # HTTP-date is case-sensitive
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT x",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
    ],
)
def test_bad_values_are_ignored(value):
    assert retry_after(value, SUNDAY, cap=BIG) is None


@pytest.mark.parametrize("date", [IMF, RFC850, ASCTIME, IMF.encode()])
def test_the_three_http_date_forms(date):
    assert retry_after(date, SUNDAY - 10, cap=BIG) == 10.0
    assert retry_after(date, SUNDAY - 10, cap=4.0) == 4.0
    # A date in the past: at once.
    assert retry_after(date, SUNDAY + 3600, cap=BIG) == 0.0


def test_asctime_takes_a_two_digit_day_too():
    assert retry_after("Sun Nov 06 08:49:37 1994", SUNDAY - 1, cap=BIG) == 1.0
    assert retry_after("Wed Nov 16 08:49:37 1994", SUNDAY, cap=BIG) == 10 * 86400


def test_a_leap_second_is_the_next_second():
    new_year = calendar.timegm((2017, 1, 1, 0, 0, 0, 0, 0, 0))
    assert retry_after("Sat, 31 Dec 2016 23:59:60 GMT", new_year - 5, cap=BIG) == 5.0


def test_rfc850_two_digit_years_are_at_most_50_years_ahead():
    now = float(calendar.timegm((2025, 6, 1, 0, 0, 0, 0, 0, 0)))
    in_2070 = calendar.timegm((2070, 1, 1, 0, 0, 0, 0, 0, 0))
    assert retry_after("Wednesday, 01-Jan-70 00:00:00 GMT", now, cap=BIG) == in_2070 - now
    # 2080 would be 55 years ahead: it is 1980, in the past.
    assert retry_after("Tuesday, 01-Jan-80 00:00:00 GMT", now, cap=BIG) == 0.0


def test_the_default_cap_is_the_backoff_cap_and_settings_carry_it():
    assert retry_after("86400", 0.0) == HTTP_RETRY_AFTER_CAP == 30.0
    assert DrainSettings().http_retry_after_cap == HTTP_RETRY_AFTER_CAP
    assert retry_after("5", 0.0, cap=0.0) == 0.0


# -- an HTTP drain against a scripted receiver (MockClock) -----------------------------


def mymsg(i: int) -> bytes:
    # The ";" ends the number: b"mymsg1;" is not found in b"mymsg15;".
    return b"<134>1 2012-12-10T03:00:48Z erlang app web.1 - - mymsg%d;" % i


def slow_down(status: int, value: str) -> SinkAction:
    return (status, [("Retry-After", value)])


async def setup(
    nursery: trio.Nursery,
    script: list[SinkAction],
    *,
    default: SinkAction = 204,
    history: int = 1500,
    settings: DrainSettings | None = None,
):
    sink = HttpSink(script=script, default=default)
    port = await nursery.start(sink.serve)
    registry = Registry(history_messages=history)
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry, settings)
    manager.add_drain("app", 1, TOKEN, f"http://127.0.0.1:{port}/")
    return sink, channel, manager


def gaps(sink: HttpSink) -> list[float]:
    times = [r.at for r in sink.requests]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def waited(gap: float, asked: float) -> bool:
    """The drain waited what was asked (not less; the requests themselves take ~0 s)."""
    return asked - 1e-9 <= gap < asked + 0.05


async def test_503_retry_after_is_waited_and_the_batch_is_delivered_once(nursery, autojump_clock):
    # Five refusals: more than http_max_attempts (3), which they must not use up.
    sink, channel, manager = await setup(nursery, [slow_down(503, "2")] * 5)
    append(channel, [mymsg(i) for i in range(1, 6)])
    await sink.wait_for(lambda: len(sink.requests) == 6, timeout=60)
    await wait_until(lambda: stats_of(manager, 1).delivered == 5)
    # Each retry came when the receiver asked (the drain's own backoff would be 0.25-2 s).
    assert all(waited(gap, 2.0) for gap in gaps(sink)), gaps(sink)
    # The same request every time: the receiver can tell a duplicate by its Frame-Id.
    assert len({r.body for r in sink.requests}) == 1
    assert len({r.header("Logplex-Frame-Id") for r in sink.requests}) == 1
    assert sink.requests[0].header("Logplex-Msg-Count") == "5"
    assert all(r.header("Logplex-Msg-Loss-Count") is None for r in sink.requests)
    stats = stats_of(manager, 1)
    assert (stats.delivered, stats.dropped, stats.lost, stats.retried) == (5, 0, 0, 5)
    assert stats.pending_loss == 0 and stats.buffered == 0
    assert stats.last_error == "HTTP 503 (Retry-After: 2 s)"
    # Delivered once: what comes next goes alone, with no L10.
    append(channel, [mymsg(6)])
    await sink.wait_for(lambda: len(sink.requests) == 7)
    later = sink.requests[6]
    assert later.body.endswith(b"mymsg6;") and b"mymsg5;" not in later.body
    assert b"L10" not in later.body and later.header("Logplex-Msg-Loss-Count") is None


async def test_429_keeps_the_batch_with_or_without_retry_after(nursery, autojump_clock):
    script: list[SinkAction] = [slow_down(429, "1"), 429, slow_down(429, "3"), 429, 429]
    sink, channel, manager = await setup(nursery, script)
    append(channel, [mymsg(1), mymsg(2)])
    await sink.wait_for(lambda: len(sink.requests) == 6, timeout=60)
    await wait_until(lambda: stats_of(manager, 1).delivered == 2)
    found = gaps(sink)
    assert waited(found[0], 1.0)
    assert 0.5 <= found[1] <= 1.0  # no Retry-After: the backoff after 2 failures
    assert waited(found[2], 3.0)
    assert 2.0 <= found[3] <= 4.0 and 4.0 <= found[4] <= 8.0  # backoff, growing
    assert len({r.header("Logplex-Frame-Id") for r in sink.requests}) == 1
    stats = stats_of(manager, 1)
    assert (stats.delivered, stats.dropped, stats.lost, stats.retried) == (2, 0, 0, 5)


async def test_retry_after_is_capped(nursery, autojump_clock):
    a_day_ahead = email.utils.formatdate(time.time() + 86400, usegmt=True)
    script: list[SinkAction] = [
        slow_down(503, "86400"),
        slow_down(503, a_day_ahead),
        slow_down(429, "0"),  # at once
        slow_down(503, "soon"),  # ignored: the backoff after 4 failures (2-4 s)
    ]
    settings = DrainSettings(http_retry_after_cap=7.0)
    sink, channel, manager = await setup(nursery, script, settings=settings)
    append(channel, [mymsg(1)])
    await sink.wait_for(lambda: len(sink.requests) == 5, timeout=60)
    found = gaps(sink)
    assert waited(found[0], 7.0) and waited(found[1], 7.0), found
    assert waited(found[2], 0.0)
    assert 2.0 <= found[3] <= 4.0
    await wait_until(lambda: stats_of(manager, 1).delivered == 1)
    assert stats_of(manager, 1).dropped == 0


async def test_the_default_cap_holds_a_receiver_asking_for_a_day(nursery, autojump_clock):
    sink, channel, manager = await setup(nursery, [slow_down(503, "86400")])
    append(channel, [mymsg(1)])
    await sink.wait_for(lambda: len(sink.requests) == 2, timeout=60)
    assert waited(gaps(sink)[0], 30.0)
    await wait_until(lambda: stats_of(manager, 1).delivered == 1)


async def test_other_failures_still_use_up_the_attempts(nursery, autojump_clock):
    # 503s in between do not count: the batch is dropped at its third 500, not its third try.
    script: list[SinkAction] = [500, slow_down(503, "1"), 500, slow_down(503, "1"), 500]
    sink, channel, manager = await setup(nursery, script)
    append(channel, [mymsg(i) for i in range(1, 4)])
    await sink.wait_for(lambda: len(sink.requests) == 5, timeout=60)
    await wait_until(lambda: stats_of(manager, 1).dropped == 3)
    assert len({r.header("Logplex-Frame-Id") for r in sink.requests}) == 1
    append(channel, [mymsg(4)])
    await sink.wait_for(lambda: len(sink.requests) == 6, timeout=60)
    assert sink.requests[5].header("Logplex-Msg-Loss-Count") == "3"
    assert b"3 messages dropped" in sink.requests[5].body
    await wait_until(lambda: stats_of(manager, 1).delivered == 1)
    stats = stats_of(manager, 1)
    assert (stats.delivered, stats.dropped, stats.retried) == (1, 3, 4)


async def test_a_held_batch_is_dropped_when_the_ring_laps_the_drain(nursery, autojump_clock):
    sink, channel, manager = await setup(nursery, [], default=slow_down(503, "2"), history=10)
    append(channel, [mymsg(i) for i in range(1, 6)])
    await sink.wait_for(lambda: len(sink.requests) == 1)
    # Turned back, but the ring still holds messages newer than the batch: re-sent.
    await sink.wait_for(lambda: len(sink.requests) == 2, timeout=60)
    assert sink.requests[1].body == sink.requests[0].body
    assert stats_of(manager, 1).dropped == 0
    # 20 more through a ring of 10: the drain is lapped, so the held batch is the oldest of
    # all and goes too. What the receiver gets next says exactly how many: 5 + 10.
    append(channel, [mymsg(i) for i in range(6, 26)])
    sink.default = 204
    await sink.wait_for(lambda: len(sink.requests) == 3, timeout=60)
    last = sink.requests[2]
    assert waited(last.at - sink.requests[1].at, 2.0)  # the asked wait, and no more
    assert last.header("Logplex-Msg-Loss-Count") == "15"
    assert last.header("Logplex-Msg-Count") == "11"
    assert b"Error L10 (output buffer overflow): 15 messages dropped since " in last.body
    assert b"mymsg15;" not in last.body and b"mymsg16;" in last.body
    assert last.body.endswith(b"mymsg25;")
    await wait_until(lambda: stats_of(manager, 1).delivered == 10)
    stats = stats_of(manager, 1)
    assert (stats.delivered, stats.dropped, stats.lost, stats.pending_loss) == (10, 5, 10, 0)
