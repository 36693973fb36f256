"""Drain health (issue 19): the backlog figures of ``DrainStats`` and
``GET /v3/channels/{channel}/drains/status``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from logplexd.api import ControlApi, DrainStatusRoutes
from logplexd.api.drain_status import hide_credentials
from logplexd.drains import DrainEvent, DrainManager, GatedDrainManager, attach_drains
from logplexd.drains.drain import message_time
from logplexd.native import parse_frames
from logplexd.router import Registry
from tests.helpers.api import AUTH, assert_error, call, make_api
from tests.helpers.drains import TOKEN, append, stats_of
from tests.helpers.syslog import message

EPOCH_2024 = 1704067200.0  # 2024-01-01T00:00:00Z
NOW = EPOCH_2024 + 3600.0


def at(second: int, text: str = "x", ts: str | None = None) -> bytes:
    """A message stamped ``second`` seconds into 2024 (or with ``ts`` as its TIMESTAMP)."""
    return message("app", text, ts=ts or f"2024-01-01T00:00:{second:02d}Z")


# --- DrainStats: what waits, its bytes, its oldest ------------------------------------------


def test_backlog_bytes_and_oldest_age_follow_the_ring() -> None:
    registry = Registry(history_messages=5)
    channel = registry.ensure_channel("app")
    manager = DrainManager(registry, wall_clock=lambda: NOW)  # not run: nothing is taken
    manager.add_drain("app", 1, TOKEN, "syslog://127.0.0.1:1/")
    stats = stats_of(manager, 1)
    assert (stats.buffered, stats.buffered_bytes, stats.oldest_at, stats.oldest_age) == (
        0,
        0,
        None,
        None,
    )

    sizes = [at(1, "a"), at(2, "bb" * 50), at(3, "ccc" * 300)]
    append(channel, sizes)
    stats = stats_of(manager, 1)
    assert (stats.buffered, stats.in_flight) == (3, 0)
    # The whole ring waits for this drain: its bytes are exact.
    assert stats.buffered_bytes == sum(len(m) for m in sizes) == channel.ring.nbytes
    assert stats.oldest_at == EPOCH_2024 + 1
    assert stats.oldest_age == NOW - (EPOCH_2024 + 1)

    # Lapped: the two oldest are gone, the oldest waiting is the third.
    append(channel, [at(4), at(5), at(6), at(7)])
    stats = stats_of(manager, 1)
    assert (stats.buffered, stats.lost, stats.pending_loss) == (5, 2, 2)
    assert stats.oldest_at == EPOCH_2024 + 3
    assert stats.buffered_bytes == channel.ring.nbytes

    # A drain added now waits for nothing; then for the equal-sized newest two, exactly.
    manager.add_drain("app", 2, TOKEN, "syslog://127.0.0.1:1/")
    assert stats_of(manager, 2).buffered_bytes == 0
    same = [at(8, "same"), at(9, "same")]
    append(channel, same)
    late = stats_of(manager, 2)
    assert (late.buffered, late.oldest_at) == (2, EPOCH_2024 + 8)
    assert stats_of(manager, 1).oldest_at == EPOCH_2024 + 5  # lapped again, and re-read


def test_partial_backlog_bytes_are_estimated_from_the_ring_average() -> None:
    registry = Registry(history_messages=100)
    channel = registry.ensure_channel("app")
    manager = DrainManager(registry)
    append(channel, [at(1, "a" * 900)])
    manager.add_drain("app", 1, TOKEN, "syslog://127.0.0.1:1/")
    append(channel, [at(2, "b"), at(3, "c")])
    stats = stats_of(manager, 1)
    assert stats.buffered == 2
    assert stats.buffered_bytes == channel.ring.nbytes * 2 // 3


def test_oldest_without_a_timestamp_is_unknown() -> None:
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = DrainManager(registry, wall_clock=lambda: NOW)
    manager.add_drain("app", 1, TOKEN, "syslog://127.0.0.1:1/")
    append(channel, [at(0, ts="-"), at(5)])
    stats = stats_of(manager, 1)
    assert (stats.buffered, stats.oldest_at, stats.oldest_age) == (2, None, None)


def test_a_batch_in_flight_counts_first() -> None:
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = DrainManager(registry, wall_clock=lambda: NOW)
    manager.add_drain("app", 1, TOKEN, "syslog://127.0.0.1:1/")
    drain = manager.drain(1)
    assert drain is not None
    # What a node taking over a drain does: these go out before the ring's messages.
    taken = parse_frames([at(10), at(11, "yy")])
    drain.feed.resume_at(channel.ring.head, taken)
    append(channel, [at(20)])
    stats = stats_of(manager, 1)
    assert (stats.buffered, stats.in_flight) == (3, 2)
    assert stats.buffered_bytes == taken.nbytes + channel.ring.nbytes
    assert stats.oldest_at == EPOCH_2024 + 10
    drain.feed.pending_start = 1  # the first one settled
    assert stats_of(manager, 1).oldest_at == EPOCH_2024 + 11


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"2024-01-01T00:00:01Z", EPOCH_2024 + 1),
        (b"2024-01-01T00:00:01.5Z", EPOCH_2024 + 1.5),
        (b"2024-01-01T02:00:01.000001+02:00", EPOCH_2024 + 1.000001),
        (b"2024-01-01T00:00:01", EPOCH_2024 + 1),  # no offset: UTC
        (b"-", None),
        (b"", None),
        (None, None),
        (b"2024-13-01T00:00:00Z", None),
        (b"\xff\xfe", None),
    ],
)
def test_message_time(raw: bytes | None, expected: float | None) -> None:
    assert message_time(raw) == (pytest.approx(expected) if expected is not None else None)


# --- the route ------------------------------------------------------------------------------


@pytest.fixture
def status_api(tmp_path: Path) -> Iterator[tuple[ControlApi, GatedDrainManager]]:
    """A control API on a real store and registry with the status route, and the drains
    of that store in a (not running) manager."""
    registry = Registry()
    api = make_api(str(tmp_path / "data"), registry)
    manager = GatedDrainManager(registry, wall_clock=lambda: NOW)
    attach_drains(api.store, manager)
    DrainStatusRoutes(api.store, manager.channel_stats).mount(api.add_route)
    try:
        yield api, manager
    finally:
        api.store.close()


async def test_status_lists_each_drain_with_its_figures(
    status_api: tuple[ControlApi, GatedDrainManager],
) -> None:
    api, manager = status_api
    reply = await call(api, "PUT", "/v3/channels/app", {"tokens": ["web"]})
    assert reply.status == 201
    secret = "https://user:s3cretpass@127.0.0.1:1/logs"
    first = (await call(api, "POST", "/v3/channels/app/drains", {"url": secret})).json
    second = (
        await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://127.0.0.1:1/"})
    ).json
    await call(api, "POST", "/v3/channels/app/drains", {})  # no URL: not listed
    drain = manager.drain(first["id"])
    assert drain is not None
    # What a delivery adapter reports: a connection attempt, then its failure.
    drain.on(DrainEvent.CONNECT)
    drain.fail("refused by user:s3cretpass")
    channel = manager.registry.channel("app")
    assert channel is not None
    append(channel, [at(30, "one"), at(31, "two")])

    reply = await call(api, "GET", "/v3/channels/app/drains/status")
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    body = reply.json
    assert "s3cretpass" not in reply.body.decode()
    assert body["channel"] == "app"
    assert [d["id"] for d in body["drains"]] == sorted([first["id"], second["id"]])
    shown = {d["id"]: d for d in body["drains"]}
    failing = shown[first["id"]]
    assert failing == {
        "id": first["id"],
        "token": first["token"],
        "url": "https://***@127.0.0.1:1/logs",
        "state": "backoff",
        "last_error": "refused by ***",
        "last_error_at": NOW,
        "delivered": 0,
        "dropped": 0,
        "retried": 0,
        "lost": 0,
        "pending_loss": 0,
        "buffered": 2,
        "buffered_bytes": channel.ring.nbytes,
        "in_flight": 0,
        "oldest_at": EPOCH_2024 + 30,
        "oldest_age": NOW - (EPOCH_2024 + 30),
        "spilling": False,
        "spilled": 0,
        "spilled_bytes": 0,
        "judged_slow": 0,
    }
    assert shown[second["id"]]["state"] == "disconnected"
    assert shown[second["id"]]["url"] == "syslog://127.0.0.1:1/"
    assert shown[second["id"]]["last_error"] is None

    # Stopped by the control rod: still listed, not running here, no figures.
    manager.set_forwarding_denied(True)
    body = (await call(api, "GET", "/v3/channels/app/drains/status")).json
    assert [d["state"] for d in body["drains"]] == ["not_running", "not_running"]
    assert all(d["buffered"] is None and d["delivered"] is None for d in body["drains"])
    assert body["drains"][0]["url"] == "https://***@127.0.0.1:1/logs"


async def test_status_of_an_unknown_channel_is_404_and_needs_auth(
    status_api: tuple[ControlApi, GatedDrainManager],
) -> None:
    api, _ = status_api
    assert_error(
        await call(api, "GET", "/v3/channels/nope/drains/status"),
        404,
        "channel not found",
    )
    await call(api, "PUT", "/v3/channels/app", {"tokens": []})
    reply = await call(api, "GET", "/v3/channels/app/drains/status")
    assert (reply.status, reply.json) == (200, {"channel": "app", "drains": []})
    for headers in ((), (("Authorization", "Basic wrong-key"),)):
        reply = await call(api, "GET", "/v3/channels/app/drains/status", headers=headers)
        assert_error(reply, 401, "Unauthorized")
    reply = await call(api, "DELETE", "/v3/channels/app/drains/status", headers=(AUTH,))
    assert reply.status == 405 and reply.headers["allow"] == "GET"


def test_hide_credentials() -> None:
    url = "https://token-user:pa55word@logs.example/x"
    assert hide_credentials("bad token-user:pa55word and pa55word", url) == "bad *** and ***"
    assert hide_credentials("user token-user refused", url) == "user *** refused"
    # A short user name would mask ordinary words: left alone.
    assert hide_credentials("a b c", "https://a:longer-secret@h/") == "a b c"
    assert hide_credentials("no secrets", "syslog://h:1/") == "no secrets"
    assert json.dumps(hide_credentials("x", "http://[::1")) == '"x"'  # an unparsable URL
