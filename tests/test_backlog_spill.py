"""Drain backlogs on disk (issue 19), in one process: real receivers, a real disk.

A drain whose receiver is down spills past half its ring and, once the receiver is back,
delivers everything in order, once, with no L10; a budget drops the oldest with an exact
L10; a disk that refuses says so and counts; a healthy drain of the same channel is never
held up; SIGTERM-like shutdown moves what is only in memory to disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio
import trio.testing

from logplexd.backlog import BacklogStore, SpillSettings
from logplexd.drains import DrainSettings
from logplexd.router import Registry
from tests.helpers.drains import (
    TOKEN,
    HeldWrites,
    HttpSink,
    SyslogSink,
    append,
    delivered,
    l10_count,
    manager_with_sinks,
    message,
    shut_down_during_a_held_write,
    start_manager,
    stats_of,
)
from tests.helpers.net import free_port
from tests.helpers.syslog import frame
from tests.helpers.wait import wait_until

FAST = DrainSettings(
    syslog_connect_timeout=0.5,
    syslog_send_timeout=10.0,
    syslog_backoff_cap=0.05,
    http_backoff_cap=0.05,
    http_backoff_base=0.01,
)
TEXT = "drain test message"
SMALL_RING = {"history_messages": 100, "buffer_messages": 1000, "buffer_bytes": 1 << 20}


def backlogs(tmp_path: Path, *, ephemeral: bool = False, **changes: object) -> BacklogStore:
    options: dict[str, object] = {"segment_bytes": 64 * 1024, "flush_interval": 0.01, **changes}
    settings = SpillSettings(**options)  # type: ignore[arg-type]
    store = BacklogStore(tmp_path / "backlog", settings, ephemeral=ephemeral)
    store.open()
    return store


def disk_use(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.seg"))


async def feed(channel, first: int, last: int, step: int = 400, text: str = TEXT) -> None:
    """Route messages first..last-1 in batches, letting every task run in between (as the
    inputs' reads do)."""
    for start in range(first, last, step):
        append(channel, [message(i, text) for i in range(start, min(last, start + step))])
        await trio.testing.wait_all_tasks_blocked(cushion=0.0005)


def expected(first: int, last: int, text: str = TEXT) -> list[bytes]:
    return [delivered(i, text).partition(b" ")[2] for i in range(first, last)]


async def test_receiver_down_spills_then_everything_arrives_in_order_once(nursery, tmp_path):
    registry = Registry(**SMALL_RING)
    channel = registry.ensure_channel("app")
    store = backlogs(tmp_path)
    up = SyslogSink()
    await nursery.start(up.serve)
    manager = await start_manager(nursery, registry, FAST, backlogs=store)
    down_port = free_port()
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{down_port}")
    manager.add_drain("app", 2, TOKEN, f"syslog://127.0.0.1:{up.port}")
    n = 20_000  # twenty rings' worth
    await feed(channel, 0, n)
    # The healthy drain got everything while the other's receiver was down.
    await up.wait_for(lambda: up.messages() >= n)
    assert up.frames() == expected(0, n)
    stats = stats_of(manager, 1)
    assert stats.spilling and stats.lost == 0 and stats.buffered == n
    assert stats.spilled_bytes > 0
    assert any((store.directory / "drains" / "1").glob("*.seg"))
    down = SyslogSink()
    await nursery.start(down.serve, down_port)
    await down.wait_for(lambda: down.messages() >= n, timeout=30)
    await feed(channel, n, n + 10)
    await down.wait_for(lambda: down.messages() >= n + 10)
    assert down.frames() == expected(0, n + 10)  # in order, once, no L10
    await wait_until(lambda: not stats_of(manager, 1).spilling)
    stats = stats_of(manager, 1)
    assert (stats.delivered, stats.lost, stats.dropped) == (n + 10, 0, 0)
    # Delivered segments are deleted.
    assert disk_use(store.directory / "drains" / "1") <= 64 * 1024


async def test_a_receiver_down_while_100_mb_flows_loses_nothing(nursery, tmp_path):
    # Default-sized ring (16,384 messages / 16 MiB), 2 KB messages: about seven rings.
    registry = Registry(history_messages=100, buffer_messages=16384, buffer_bytes=16 << 20)
    channel = registry.ensure_channel("app")
    store = backlogs(tmp_path, segment_bytes=8 << 20)
    up = SyslogSink()
    await nursery.start(up.serve)
    manager = await start_manager(nursery, registry, FAST, backlogs=store)
    down_port = free_port()
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{down_port}")
    manager.add_drain("app", 2, TOKEN, f"syslog://127.0.0.1:{up.port}")
    text = "x" * 2000
    n = 50_000
    for start in range(0, n, 2000):
        await feed(channel, start, start + 2000, step=2000, text=text)
        # This producer appends past any hold (a real input stops at the healthy drain's
        # mark): it stays within a quarter of the ring (~8,000 messages) of that drain, so
        # that a worker thread stalled on a loaded machine cannot let it lap the witness.
        await up.wait_for(lambda: up.messages() >= start - 2000, timeout=60)  # noqa: B023
    await up.wait_for(lambda: up.messages() >= n, timeout=60)
    assert stats_of(manager, 1).spilled == n
    down = SyslogSink()
    await nursery.start(down.serve, down_port)
    await down.wait_for(lambda: down.messages() >= n, timeout=60)
    assert len(down.data) > 100_000_000
    assert down.frames() == expected(0, n, text)
    assert up.frames() == expected(0, n, text)
    stats = stats_of(manager, 1)
    assert (stats.delivered, stats.lost) == (n, 0)


async def test_past_the_budget_the_oldest_are_dropped_with_an_exact_l10(nursery, tmp_path):
    registry = Registry(**SMALL_RING)
    channel = registry.ensure_channel("app")
    budget, segment = 256 * 1024, 64 * 1024
    store = backlogs(tmp_path, drain_budget_bytes=budget)
    manager = await start_manager(nursery, registry, FAST, backlogs=store)
    port = free_port()
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    n = 20_000  # ~1.5 MB of frames for a 256 KiB budget
    for start in range(0, n, 2000):
        await feed(channel, start, start + 2000)
        await store.write_round()
        assert disk_use(store.directory) <= budget + segment
    sink = SyslogSink()
    await nursery.start(sink.serve, port)
    await wait_until(lambda: not stats_of(manager, 1).spilling, timeout=30)
    await sink.wait_for(lambda: sink.data.endswith(delivered(n - 1)), timeout=30)
    frames = sink.frames()
    lost = l10_count(frames[0])
    assert lost is not None and lost > 0
    # Exactly the oldest are missing: what arrived is the newest, contiguous, in order.
    assert frames[1:] == expected(lost, n)
    stats = stats_of(manager, 1)
    assert (stats.lost, stats.delivered) == (lost, n - lost)


async def test_a_full_disk_is_logged_and_announced_not_a_crash(nursery, tmp_path, caplog):
    registry = Registry(**SMALL_RING)
    channel = registry.ensure_channel("app")
    # Asks to leave more free space than any disk has: every chunk is refused.
    store = backlogs(tmp_path, min_free_bytes=1 << 62)
    manager = await start_manager(nursery, registry, FAST, backlogs=store)
    port = free_port()
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    with caplog.at_level(logging.ERROR, logger="logplexd.backlog"):
        await feed(channel, 0, 5000)
        await store.write_round()
    assert any("free space" in r.getMessage() for r in caplog.records)
    assert store.refused_messages > 0
    sink = SyslogSink()
    await nursery.start(sink.serve, port)
    await feed(channel, 5000, 5001)
    await sink.wait_for(lambda: sink.data.endswith(delivered(5000)), timeout=30)
    frames = sink.frames()
    # Whatever the disk refused is announced, exactly: every message is either delivered
    # or counted, never both, never neither.
    counted = sum(l10_count(f) or 0 for f in frames)
    received = [f for f in frames if l10_count(f) is None]
    # Refused by the disk, or (the drain back on its ring while the disk refuses) lapped.
    assert counted >= store.refused_messages > 0
    assert counted + len(received) == 5001 and received[-1].endswith(b" 5000\n")
    assert received == sorted(received, key=lambda f: int(f.rsplit(b" ", 1)[1]))


async def test_http_drain_failing_for_a_while_spills_and_resends_until_delivered(nursery, tmp_path):
    registry = Registry(**SMALL_RING)
    channel = registry.ensure_channel("app")
    store = backlogs(tmp_path)
    sink = HttpSink(script=[500] * 40)
    await nursery.start(sink.serve)
    manager = await start_manager(nursery, registry, FAST, backlogs=store)
    manager.add_drain("app", 1, TOKEN, f"http://127.0.0.1:{sink.port}/logs")
    n = 5000
    await feed(channel, 0, n)
    await wait_until(lambda: stats_of(manager, 1).delivered == n, timeout=30)
    lines = [line for body in sink.bodies()[40:] for line in split_http(body)]
    assert lines == [f"drain test message {i}" for i in range(n)]
    stats = stats_of(manager, 1)
    assert (stats.lost, stats.dropped) == (0, 0) and stats.retried >= 40


def split_http(body: bytes) -> list[str]:
    out = []
    i = 0
    while i < len(body):
        sp = body.index(b" ", i)
        size = int(body[i:sp])
        frame = body[sp + 1 : sp + 1 + size]
        out.append(frame.rstrip(b"\n").rsplit(b" - ", 1)[1].decode())
        i = sp + 1 + size
    return out


async def test_shutdown_moves_what_is_only_in_memory_to_disk(nursery, tmp_path):
    registry = Registry(**SMALL_RING)
    channel = registry.ensure_channel("app")
    store = backlogs(tmp_path)
    manager = await start_manager(
        nursery,
        registry,
        DrainSettings(syslog_backoff_cap=0.05, shutdown_grace=0.2),
        backlogs=store,
    )
    port = free_port()
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    await feed(channel, 0, 300)  # under the share: only in the ring
    assert not stats_of(manager, 1).spilling
    await manager.shutdown()
    # A new process (here: a new store on the same directory) finds all 300 on disk.
    registry2 = Registry(**SMALL_RING)
    registry2.ensure_channel("app")
    store2 = backlogs(tmp_path)
    manager2 = await start_manager(nursery, registry2, FAST, backlogs=store2)
    sink = SyslogSink()
    await nursery.start(sink.serve, port)
    manager2.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    await sink.wait_for(lambda: sink.messages() >= 300, timeout=30)
    assert sink.frames() == expected(0, 300)


async def test_an_ephemeral_backlog_spills_as_ever_and_outlives_neither_its_drain_nor_the_process(
    nursery, tmp_path
):
    """Redis mode's backlogs (``ephemeral``: the drain's checkpoint in Redis is its position,
    so a restart resumes from there): a drain whose receiver is down spills as on one node;
    the next process starts with an empty directory and a backlog that owes nothing; a
    drain stopped here (its lease moved) leaves no files."""
    registry = Registry(**SMALL_RING)
    channel = registry.ensure_channel("app")
    store = backlogs(tmp_path, ephemeral=True)
    manager = await start_manager(
        nursery, registry, DrainSettings(syslog_backoff_cap=0.05, shutdown_grace=0.2),
        backlogs=store,
    )  # fmt: skip
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{free_port()}")
    await feed(channel, 0, 900)
    await wait_until(lambda: store.written_messages > 0 and disk_use(tmp_path) > 0, 10)
    assert stats_of(manager, 1).spilling
    # A drain stopped here (replaced: its lease moved and came back) leaves no files.
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{free_port()}")
    assert disk_use(tmp_path / "backlog" / "drains" / "1") == 0
    await feed(channel, 900, 1800)
    await wait_until(lambda: stats_of(manager, 1).spilling and disk_use(tmp_path) > 0, 10)
    await manager.shutdown()
    store2 = backlogs(tmp_path, ephemeral=True)
    assert disk_use(tmp_path) == 0
    backlog = store2.attach(1, "app")
    assert backlog.prior_lost == 0 and not backlog.active


async def test_after_a_restart_an_http_drain_resends_its_batch_with_the_same_frame_id(
    nursery, tmp_path
):
    registry = Registry(**SMALL_RING)
    channel = registry.ensure_channel("app")
    store = backlogs(tmp_path)
    refusing = HttpSink(default=500)
    await nursery.start(refusing.serve)
    manager = await start_manager(
        nursery,
        registry,
        DrainSettings(http_backoff_cap=0.05, http_backoff_base=0.01, shutdown_grace=0.2),
        backlogs=store,
    )
    url = f"http://127.0.0.1:{refusing.port}/logs"
    manager.add_drain("app", 1, TOKEN, url)
    await feed(channel, 0, 3000)  # three shares: read back from disk
    await refusing.wait_for(lambda: len(refusing.requests) >= 3)
    first_id = refusing.requests[-1].header("Logplex-Frame-Id")
    assert stats_of(manager, 1).spilling
    await manager.shutdown()
    # The next process: the receiver now takes everything.
    sink = HttpSink()
    await nursery.start(sink.serve)
    registry2 = Registry(**SMALL_RING)
    registry2.ensure_channel("app")
    manager2 = await start_manager(nursery, registry2, FAST, backlogs=backlogs(tmp_path))
    manager2.add_drain("app", 1, TOKEN, f"http://127.0.0.1:{sink.port}/logs")
    await wait_until(lambda: stats_of(manager2, 1).delivered == 3000, timeout=30)
    # The batch the receiver may have seen goes out again as it was: it can drop it.
    assert sink.requests[0].header("Logplex-Frame-Id") == first_id
    lines = [line for body in sink.bodies() for line in split_http(body)]
    assert lines == [f"drain test message {i}" for i in range(3000)]


async def _shutdown_with_a_pump_write_in_flight(
    nursery: trio.Nursery, tmp_path: Path, held: HeldWrites
) -> list[SyslogSink]:
    """Eight drains with disk backlogs, shut down while the pump's worker thread has a
    write of theirs in flight (``shut_down_during_a_held_write``). Returns the sinks."""
    registry = Registry(**SMALL_RING)
    manager, sinks = await manager_with_sinks(
        nursery,
        registry,
        8,
        DrainSettings(shutdown_grace=0.2),
        backlogs=backlogs(tmp_path),
        pump_writes=held,
    )
    await shut_down_during_a_held_write(nursery, registry, manager, sinks, held)
    return sinks


async def _after_restart(nursery: trio.Nursery, tmp_path: Path) -> list[SyslogSink]:
    """The next process: the same eight drains on the same directory, each channel with one
    new message (11); returns the new sinks once each has that one."""
    registry = Registry(**SMALL_RING)
    _, sinks = await manager_with_sinks(nursery, registry, 8, FAST, backlogs=backlogs(tmp_path))
    for n in range(8):
        append(registry.channels[f"app{n}"], [message(11)])
    for sink in sinks:
        await sink.wait_for(lambda sink=sink: expected(11, 12)[0] in sink.frames(arriving=True))
    return sinks


async def test_shutdown_settles_the_write_in_flight_before_closing_the_ledger(nursery, tmp_path):
    # CI once failed here: the ledger was closed under a write the pump's worker still had
    # in flight, and settling it afterwards raised in the pump and took the daemon down.
    held = HeldWrites()
    sinks = await _shutdown_with_a_pump_write_in_flight(nursery, tmp_path, held)
    for sink in sinks:
        await sink.wait_for(lambda sink=sink: sink.messages() == 11)
        assert sink.frames() == expected(0, 11)
    # The ledger says they were delivered: the next process sends only what is new, no L10.
    for sink in await _after_restart(nursery, tmp_path):
        assert sink.frames() == expected(11, 12)


async def test_a_write_in_flight_cut_short_at_shutdown_goes_to_the_backlog(nursery, tmp_path):
    held = HeldWrites(partial_at=5)  # the round's first drain: five bytes taken, no more
    sinks = await _shutdown_with_a_pump_write_in_flight(nursery, tmp_path, held)
    first = len(delivered(0))
    whole = first + len(b"".join(delivered(i) for i in range(1, 11)))
    for sink in sinks:
        await sink.wait_for(lambda sink=sink: len(sink.data) in (first + 5, whole))
    short = [n for n, sink in enumerate(sinks) if len(sink.data) == first + 5]
    assert len(short) == 1, [len(sink.data) for sink in sinks]
    # Its ten messages were moved to its backlog: the next process sends them whole, once.
    after = await _after_restart(nursery, tmp_path)
    for n, sink in enumerate(after):
        want = expected(1, 12) if n == short[0] else expected(11, 12)
        await sink.wait_for(lambda sink=sink, want=want: sink.messages() == len(want))
        assert sink.frames() == want


async def test_what_a_killed_process_queued_and_never_wrote_is_not_lost_if_read_elsewhere(
    tmp_path: Path,
) -> None:
    """Redis mode after a kill -9 (``ClusterDrains._start``): ``written_end`` says where a
    drain's backlog on disk stops. The chunk the process queued past it and never wrote
    is then not counted lost once attached: its messages are read from the channel's
    stream instead. Read back: the 20 messages written, and no gap."""
    first = backlogs(tmp_path, ephemeral=True)
    backlog = first.attach(7, "app")
    chunk = b"".join(frame("t", f"m{i}") for i in range(10))
    assert backlog.enqueue(10, chunk, 0.0) and backlog.enqueue(10, chunk, 0.0)
    await first.write_round()
    assert backlog.enqueue(10, chunk, 0.0)  # queued; the process is killed before a round
    assert backlog.queued_end == 30
    second = BacklogStore(tmp_path / "backlog", SpillSettings(), ephemeral=True)
    second.open(keep={7})
    assert second.written_end(7) == 20
    resumed = second.attach(7, "app")
    assert resumed.queued_end == 20
    payloads, first_seq, count, lost = resumed.read(1 << 20)
    assert (first_seq, count, lost) == (0, 20, 0)
    assert b"".join(payloads) == chunk + chunk
    assert resumed.read(1 << 20)[1:] == (20, 0, 0)


class _TaskSteps(trio.abc.Instrument):
    """How many times the tasks whose name ends with ``suffix`` ran a step."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self.steps += 1


async def test_a_refused_drains_spill_task_sleeps_until_its_mark_or_the_receiver_is_back(
    nursery, tmp_path, autojump_clock
):
    """Redis mode (``only_refused``): while the receiver refuses, the spill task waits for
    its mark or for the receiver to take data again, not on a timer. It looked every
    ``flush_interval``: a node whose 1,000 drains' receivers were down spent 96 % of a core
    on it."""
    registry = Registry(**SMALL_RING)
    channel = registry.ensure_channel("app")
    store = backlogs(tmp_path, ephemeral=True, only_refused=True)
    manager = await start_manager(
        nursery, registry, DrainSettings(syslog_backoff_cap=1.0), backlogs=store
    )
    port = free_port()
    manager.add_drain("app", 1, TOKEN, f"syslog://127.0.0.1:{port}")
    append(channel, [message(i) for i in range(10)])  # under the share: the ring keeps them
    await wait_until(lambda: stats_of(manager, 1).state == "backoff", 10)
    steps = _TaskSteps("_spill_guard")
    trio.lowlevel.add_instrument(steps)
    try:
        await trio.sleep(60)  # of the autojump clock: a look every 10 ms would be 6,000
        assert steps.steps == 0
        # The receiver is back: the spill task lifts its mark at once (nothing new routed).
        sink = SyslogSink()
        await nursery.start(sink.serve, port)
        await sink.wait_for(lambda: sink.messages() >= 10, timeout=30)
        await trio.testing.wait_all_tasks_blocked()
        assert steps.steps >= 1
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert sink.frames() == expected(0, 10)
    assert store.written_messages == 0 and not stats_of(manager, 1).spilling
