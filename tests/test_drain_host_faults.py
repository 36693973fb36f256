"""Drain hosts that misbehave: a name that does not resolve, a refused port, a receiver that
resets the connection in the middle of a write; and how fast a drain comes back.

Names under ``.invalid`` (RFC 2606) never resolve, so no network is needed: the resolver
answers "not found" (or fails outright), which is the point.
"""

from __future__ import annotations

import dataclasses
import random
import re
import socket
import struct

import pytest
import trio

from logplexd.drains import DrainSettings
from logplexd.drains.policy import (
    SYSLOG_BACKOFF_CAP,
    SYSLOG_STABLE_CONNECTION,
    syslog_failures_after_drop,
    syslog_reconnect_backoff,
    unresolved_name,
)
from logplexd.router.registry import Registry
from tests.helpers.drains import (
    TOKEN,
    HttpSink,
    SyslogSink,
    append,
    message,
    start_manager,
    stats_of,
)
from tests.helpers.net import free_port
from tests.helpers.wait import wait_until

# Retry every few tens of ms instead of every 2, 4, 8 ... s.
FAST = DrainSettings(
    syslog_connect_timeout=3.0,
    syslog_backoff_cap=0.05,
    http_connect_timeout=3.0,
    http_backoff_base=0.01,
    http_backoff_cap=0.05,
)


def l10_count(frame: bytes) -> int | None:
    found = re.search(rb"Error L10 \(output buffer overflow\): (\d+) messages dropped", frame)
    return None if found is None else int(found.group(1))


# -- a host name that resolves to nothing -----------------------------------------------------


@pytest.mark.parametrize("kind", ["syslog", "http"])
async def test_unresolvable_host_backs_off_counts_loss_and_announces_it_once_back(nursery, kind):
    # A ring of 20 messages: what the dead drain cannot deliver is lapped, and counted.
    registry = Registry(history_messages=20)
    dead, alive = registry.ensure_channel("dead"), registry.ensure_channel("alive")
    healthy = SyslogSink()
    healthy_port = await nursery.start(healthy.serve)
    manager = await start_manager(nursery, registry, FAST, seed=11)
    bad_url = "syslog://nohost.invalid:601" if kind == "syslog" else "http://nohost.invalid/logs"
    manager.add_drain("dead", 1, TOKEN, bad_url)
    manager.add_drain("alive", 2, TOKEN, f"syslog://127.0.0.1:{healthy_port}")

    append(dead, [message(0)])
    await wait_until(lambda: stats_of(manager, 1).last_error is not None)
    stats = stats_of(manager, 1)
    assert stats.last_error is not None
    assert stats.last_error.startswith("nohost.invalid did not resolve ("), stats.last_error
    await wait_until(lambda: stats_of(manager, 1).state == "backoff")

    # Meanwhile: 50 more for the dead drain, and the other drain delivers all of its own.
    for i in range(1, 51):
        append(dead, [message(i)])
        append(alive, [message(i)])
        await healthy.wait_for(lambda i=i: healthy.messages() == i)
    assert stats_of(manager, 2).delivered == 50

    # 51 messages reached the dead drain's channel; its ring keeps the newest 20. An HTTP
    # drain builds its request before it connects, so it also holds message 0 (a syslog
    # drain takes nothing until it is connected).
    held = [0] if kind == "http" else []
    lost = 51 - 20 - len(held)
    stats = stats_of(manager, 1)
    assert (stats.delivered, stats.dropped, stats.lost, stats.buffered) == (
        0,
        0,
        lost,
        20 + len(held),
    )
    assert stats.pending_loss == lost

    # Pointed at a receiver that works: what it held, then one L10 for exactly the lost
    # messages, then the 20 the ring kept.
    if kind == "syslog":
        sink = SyslogSink()
        port = await nursery.start(sink.serve)
        manager.update_drain(1, f"syslog://127.0.0.1:{port}")
        await sink.wait_for(lambda: sink.messages() == 21)
        frames = sink.frames()
    else:
        http_sink = HttpSink()
        port = await nursery.start(http_sink.serve)
        manager.update_drain(1, f"http://127.0.0.1:{port}/logs")
        await http_sink.wait_for(lambda: len(http_sink.requests) >= 2)
        first, second = http_sink.requests[:2]
        assert (first.header("Logplex-Msg-Count"), first.header("Logplex-Msg-Loss-Count")) == (
            "1",
            None,
        )
        assert (second.header("Logplex-Msg-Count"), second.header("Logplex-Msg-Loss-Count")) == (
            "21",
            str(lost),
        )
        frames = parse_frames_of(first.body) + parse_frames_of(second.body)
    numbers = [f.rstrip(b"\n").rsplit(b" ", 1)[1] for f in frames]
    assert [l10_count(f) for f in frames] == [None] * len(held) + [lost] + [None] * 20
    assert numbers[: len(held)] + numbers[len(held) + 1 :] == [
        b"%d" % i for i in [*held, *range(31, 51)]
    ]
    delivered = 20 + len(held)
    await wait_until(lambda: stats_of(manager, 1).delivered == delivered)
    stats = stats_of(manager, 1)
    assert (stats.delivered, stats.dropped, stats.lost, stats.buffered) == (delivered, 0, lost, 0)
    assert stats.pending_loss == 0 and stats.state in ("connected", "disconnected")

    # A later message goes out without another L10.
    append(dead, [message(99)])
    if kind == "syslog":
        await sink.wait_for(lambda: sink.messages() == 22)
        assert l10_count(sink.frames()[-1]) is None
    else:
        await http_sink.wait_for(lambda: len(http_sink.requests) == 3)
        assert http_sink.requests[2].header("Logplex-Msg-Loss-Count") is None
    assert stats_of(manager, 1).lost == lost


def parse_frames_of(body: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(body):
        sp = body.index(b" ", i)
        n = int(body[i:sp])
        out.append(body[sp + 1 : sp + 1 + n])
        i = sp + 1 + n
    return out


def test_unresolved_name_is_told_apart():
    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert unresolved_name(gai) == "Name or service not known"
    wrapped = OSError("all attempts failed")
    wrapped.__cause__ = gai
    assert unresolved_name(wrapped) == "Name or service not known"
    for other in (ConnectionRefusedError(111, "refused"), trio.TooSlowError(), "HTTP 500"):
        assert unresolved_name(other) is None


# -- a refused port -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["syslog", "http"])
async def test_refused_port_keeps_messages_until_a_receiver_listens(nursery, kind):
    port = free_port()  # nothing listens here (yet)
    registry = Registry()
    channel = registry.ensure_channel("app")
    manager = await start_manager(nursery, registry, FAST, seed=11)
    url = f"syslog://127.0.0.1:{port}" if kind == "syslog" else f"http://127.0.0.1:{port}/"
    manager.add_drain("app", 1, TOKEN, url)
    append(channel, [message(i) for i in range(5)])
    await wait_until(lambda: stats_of(manager, 1).last_error is not None)
    stats = stats_of(manager, 1)
    assert (stats.last_error or "").endswith("failed: Connection refused"), stats.last_error
    await trio.sleep(0.3)  # many refused attempts: nothing is dropped or used up
    stats = stats_of(manager, 1)
    assert (stats.delivered, stats.dropped, stats.lost, stats.buffered) == (0, 0, 0, 5)

    if kind == "syslog":
        sink = SyslogSink()
        await nursery.start(sink.serve, port)
        await sink.wait_for(lambda: sink.messages() == 5)
    else:
        http_sink = HttpSink()
        await nursery.start(http_sink.serve, port)
        await http_sink.wait_for(lambda: len(http_sink.requests) == 1)
        assert http_sink.requests[0].header("Logplex-Msg-Count") == "5"
    await wait_until(lambda: stats_of(manager, 1).delivered == 5)
    stats = stats_of(manager, 1)
    assert (stats.dropped, stats.lost, stats.buffered, stats.pending_loss) == (0, 0, 0, 0)


# -- a receiver that resets the connection in the middle of a write -------------------------


class ResettingSink:
    """Reads part of the first connection, then closes it with SO_LINGER 0 (an RST); reads
    every later connection whole. A small receive buffer keeps the drain's write in progress
    when the RST lands: a write the kernel had taken whole would count as delivered (TCP gives
    no receipt, REFERENCE §5.3) and is not what this test is about."""

    def __init__(self, read_before_reset: int) -> None:
        self.read_before_reset = read_before_reset
        self.connections: list[bytearray] = []
        self.resets = 0

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        task_status.started(listener.getsockname()[1])
        async with trio.open_nursery() as nursery:
            while True:
                sock, _ = await listener.accept()
                nursery.start_soon(self._handle, sock)

    async def _handle(self, sock: trio.socket.SocketType) -> None:
        data = bytearray()
        self.connections.append(data)
        first = len(self.connections) == 1
        with sock:
            while True:
                chunk = await sock.recv(4096)
                if not chunk:
                    break
                data += chunk
                if first and len(data) >= self.read_before_reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.resets += 1
                    return  # closing with linger 0 sends RST, discarding what is unread

    def messages(self) -> list[int]:
        """Message numbers in complete frames, across every connection (repeats included)."""
        out = []
        for data in self.connections:
            i = 0
            while True:
                sp = data.find(b" ", i)
                if sp < 0:
                    break
                n = int(data[i:sp])
                if sp + 1 + n > len(data):
                    break  # cut by the reset
                out.append(int(bytes(data[sp + 1 : sp + 1 + n]).split()[-1]))
                i = sp + 1 + n
        return out


async def test_reset_mid_write_reconnects_and_every_message_arrives(nursery):
    # 2,000 messages of ~8 KB: one 16 MB write, more than both socket buffers can hold.
    n, filler = 2000, "x" * 8000
    registry = Registry(buffer_messages=n, history_bytes=64 << 20)
    channel = registry.ensure_channel("app")
    sink = ResettingSink(read_before_reset=100_000)
    port = await nursery.start(sink.serve)
    settings = dataclasses.replace(FAST, syslog_batch_bytes=32 << 20, syslog_send_timeout=10.0)
    manager = await start_manager(nursery, registry, settings, seed=11)
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    append(channel, [message(i, filler) for i in range(n)])

    with trio.fail_after(30):
        while set(sink.messages()) != set(range(n)):
            await trio.sleep(0.1)  # parsing 16 MB per 4 KB read would be quadratic
    assert sink.resets == 1 and len(sink.connections) >= 2
    # The write the reset cut short was written again, whole: some messages arrived twice,
    # but each counts once.
    received = sink.messages()
    assert len(received) > n
    await wait_until(lambda: stats_of(manager, 1).delivered == n)
    stats = stats_of(manager, 1)
    assert (stats.delivered, stats.dropped, stats.lost, stats.buffered) == (n, 0, 0, 0)
    assert stats.last_error is not None and (
        "Reset" in stats.last_error or "Broken" in stats.last_error
    ), stats.last_error


# -- how long a drain waits before reconnecting ------------------------------------------------


def test_syslog_reconnect_backoff_doubles_up_to_the_cap():
    rng = random.Random(3)
    assert syslog_reconnect_backoff(0, rng) == 0  # the first attempt is immediate
    for failures, step in [(1, 2), (2, 4), (3, 8), (8, 256), (9, 300), (30, 300), (500, 300)]:
        for _ in range(50):
            assert step <= syslog_reconnect_backoff(failures, rng) <= step * 1.1
    assert SYSLOG_BACKOFF_CAP == 300 == DrainSettings().syslog_backoff_cap


@pytest.mark.parametrize(
    ("failures", "lived", "delivered", "after"),
    [
        (7, SYSLOG_STABLE_CONNECTION, False, 0),  # up long enough: reconnect at once
        (7, 1.0, True, 1),  # took writes: the receiver is alive, reconnect in ~2 s
        (7, 1.0, False, 8),  # accepted then dropped, nothing written: keep backing off
        (0, 0.0, False, 1),
    ],
)
def test_failures_after_a_dropped_connection(failures, lived, delivered, after):
    assert syslog_failures_after_drop(failures, lived=lived, delivered=delivered) == after


def longest_wait_for_a_flapping_receiver(rule, seconds: float = 600, seed: int = 1) -> float:
    """A model of the soak's drain sinks (bench/soak.py): phases of 5 s, up, slow, down; every
    phase change drops the connections, and a down sink refuses. Drive the reconnect policy
    against it; return the longest time from a drop to the next connection, not counting
    a down phase (nothing can connect then)."""
    phase = 5.0
    rng = random.Random(seed)
    t, failures, last_drop, longest = 0.0, 0, 0.0, 0.0
    while t < seconds:
        t += syslog_reconnect_backoff(failures, rng)
        if int(t // phase) % 3 == 2:
            failures += 1  # refused
            continue
        down_phases = sum(1 for k in range(int(last_drop // phase), int(t // phase)) if k % 3 == 2)
        longest = max(longest, t - last_drop - phase * down_phases)
        drop = (t // phase + 1) * phase
        failures = rule(failures, drop - t)
        t = last_drop = drop
    return longest


def test_a_flapping_receiver_is_not_left_waiting_for_minutes():
    """The 42 s delivery pause seen in a 60 s soak: the failure count was reset only by a
    connection that lived 30 s, which a sink dropping connections every 5 s never allows, so
    the wait grew 2, 4 ... 300 s while the sink was up. Now a connection counts as good after
    SYSLOG_STABLE_CONNECTION or after any completed write (``syslog_failures_after_drop``, as
    SyslogDrain.run uses it): the drain is back within a few seconds of every drop."""

    def lived_only(limit: float):
        return lambda failures, lived: 0 if lived >= limit else failures + 1

    def written(failures: int, lived: float) -> int:
        return syslog_failures_after_drop(failures, lived=lived, delivered=True)

    for seed in range(5):
        # Before: minutes without a connection while the sink was reachable.
        assert longest_wait_for_a_flapping_receiver(lived_only(30.0), seed=seed) > 100
        # Now: the lived-only rule with the new threshold, and the written-to rule.
        now = longest_wait_for_a_flapping_receiver(lived_only(SYSLOG_STABLE_CONNECTION), seed=seed)
        assert now < 5, now
        assert longest_wait_for_a_flapping_receiver(written, seed=seed) < 5
