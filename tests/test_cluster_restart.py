"""A Redis-mode node restarted on its data dir (``kill -9``, then the same node id, as
systemd's ``Restart=on-failure`` does) takes its drains back at once: the incarnations
earlier processes recorded there are dead for certain, since the new process holds the
data dir's lock (``lease.Incarnations``, ``cluster.NodeDir``). An incarnation of the same
node id that the data dir never recorded is another process's, maybe alive: it is waited
for, as any other node's. A second process on a data dir in use refuses to start."""

from __future__ import annotations

import logging
import signal
import tempfile
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from logplexd.cluster import Incarnations, Keys, Lease, LeaseEvent, NodeDir
from logplexd.daemon import Daemon
from logplexd.store import StoreLocked
from tests.helpers.child import DaemonProcess
from tests.helpers.cluster import (
    Sink,
    channel_with_drain,
    expected,
    hold_lease,
    is_alive,
    next_drain_id,
    node_settings,
    recorded_incarnations,
    send_numbered,
)
from tests.helpers.daemon import serve_in
from tests.helpers.metrics import scrape, value
from tests.helpers.peers import needs_curl
from tests.helpers.redis import RedisCluster, RedisServer, eventually, integer, running
from tests.helpers.wait import wait_until

# A liveness key lives this long (s): a restart that waited for the killed process's key to
# expire would take 6 to 12.5 s.
LONG_TTL = 10
# What a restarted node may take to run its drain again, from when it is ready.
AT_ONCE = 3.0


# -- the decision, without I/O -------------------------------------------------------------------
BOOT = "boot-1"
# An incarnation as a node makes one: a node id (no space, no line break), "/", a random part.
INCARNATION = st.builds(
    "{}/{}".format,
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12),
    st.text("0123456789abcdef", min_size=1, max_size=12),
)


def test_what_earlier_processes_recorded_under_this_boot_is_dead_and_nothing_else() -> None:
    incarnations = Incarnations("A", ["A/1", "A/2", "A/1", "B/9"], BOOT, BOOT)
    # Every recorded one (a node id changed since included), each once.
    assert incarnations.dead == {"A/1", "A/2", "B/9"} and not incarnations.unproven
    # Recorded with the new one until their keys are deleted in Redis...
    assert incarnations.record("A/3") == ["A/1", "A/2", "B/9", "A/3"]
    incarnations.buried()
    # ...then forgotten there, and dead still.
    assert incarnations.record("A/3") == ["A/3"]
    assert incarnations.dead == {"A/1", "A/2", "B/9"}
    # One this process gave up (its key was gone) is dead, with nothing left to delete.
    incarnations.left("A/3")
    assert incarnations.record("A/4") == ["A/4"] and "A/3" in incarnations.dead

    # A lease held by one of them is taken at once; one held by an incarnation of this node
    # id the data dir never recorded is not: it may be another process's, alive.
    recorded, stranger = Lease(), Lease()
    recorded.apply(LeaseEvent.HELD_ELSEWHERE, "A/1")
    stranger.apply(LeaseEvent.HELD_ELSEWHERE, "A/x")
    assert recorded.wants(incarnations.dead) and not stranger.wants(incarnations.dead)
    assert incarnations.stranger("A/x", "A/4")
    assert not incarnations.stranger("A/x", "A/4")  # told once
    assert not incarnations.stranger("A/4", "A/4")  # itself
    assert not incarnations.stranger("A/1", "A/4")  # recorded
    assert not incarnations.stranger("B/x", "A/4")  # another node's
    # A node id may hold a "/": the incarnation is what follows the last one.
    slashed = Incarnations("n/1")
    assert slashed.stranger("n/1/ab", "n/1/cd") and not slashed.stranger("n/ab", "n/1/cd")


@pytest.mark.parametrize(
    ("recorded_on", "boot"),
    [
        ("boot-0", BOOT),  # before a reboot, or on the machine the directory was copied from
        (None, BOOT),  # by a version that recorded no boot
        (BOOT, None),  # this kernel's boot not known
        (None, None),
    ],
)
def test_what_was_recorded_under_another_boot_proves_nothing(
    recorded_on: str | None, boot: str | None
) -> None:
    incarnations = Incarnations("A", ["A/1", "A/2"], recorded_on, boot)
    assert not incarnations.dead and not incarnations.unburied
    assert incarnations.unproven == {"A/1", "A/2"}
    # Alive until their keys expire; not recorded again (they never will be proven dead);
    # known to the directory, so not told of as strangers.
    assert not Lease(holder="A/1").wants(incarnations.dead)
    assert incarnations.record("A/3") == ["A/3"]
    assert not incarnations.stranger("A/1", "A/3")


def test_a_data_dir_records_incarnations_for_the_next_process_and_has_one_at_a_time(
    tmp_path: Path,
) -> None:
    first = NodeDir(tmp_path / "data")
    assert first.open() == [] and first.recorded_on is None
    first.record(["A/1", "A/2"])
    with pytest.raises(StoreLocked, match="in use by another process"):
        NodeDir(tmp_path / "data").open()
    # Killed: the kernel lets go of its lock (here: closed), what it recorded stays.
    first.close()
    second = NodeDir(tmp_path / "data")
    assert second.open() == ["A/1", "A/2"]
    assert second.recorded_on == second.boot == first.boot and second.boot
    second.close()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), holders=st.lists(INCARNATION, max_size=5))
def test_a_damaged_record_is_read_without_error_and_a_new_one_replaces_it(
    data: bytes, holders: list[str]
) -> None:
    """Whatever the file holds (a torn write of an older version, a stray edit), the next
    process starts: it reads what lines look like incarnations, and what it records next
    is read back exactly."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "data"
        directory.mkdir()
        (directory / "redis-incarnations").write_bytes(data)
        node = NodeDir(directory)
        found = node.open()
        assert all("/" in holder and holder.isprintable() for holder in found)
        node.record(holders)
        node.close()
        again = NodeDir(directory)
        assert again.open() == holders and again.recorded_on == again.boot
        again.close()


# -- whole daemons on a real Redis ----------------------------------------------------------------
def node_process(tmp_path: Path, server: RedisServer) -> DaemonProcess:
    return DaemonProcess(
        tmp_path / "A",
        ("--store-url", server.url, "--node-id", "A", "--drain-lease-ttl", str(LONG_TTL)),
    )


def pttl(server: RedisServer, key: str) -> int:
    return integer(server.command("PTTL", key))


@pytest.mark.integration
@needs_curl
async def test_a_node_killed_and_restarted_on_its_data_dir_takes_its_drain_back_at_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    keys = Keys()
    sink = Sink()
    async with trio.open_nursery() as nursery:
        sink_port = await nursery.start(sink.serve)
        first = node_process(tmp_path, redis_server)
        ports = await trio.to_thread.run_sync(first.start)
        try:
            token, drain_id = await channel_with_drain(ports, sink_port)
            await send_numbered(ports.syslog, token, "A", range(5))
            await wait_until(lambda: set(sink.counts()) >= expected("A", range(5)), 10)
        finally:
            status = await trio.to_thread.run_sync(first.kill, signal.SIGKILL)
        assert status == -signal.SIGKILL, first.log
        (old,) = recorded_incarnations(tmp_path / "A")
        assert redis_server.command("GET", keys.lease("app", drain_id)).endswith(
            f"{old}\r\n".encode()
        )
        # Waiting for the killed process's liveness key would take seconds yet.
        assert pttl(redis_server, keys.alive(old)) > AT_ONCE * 1000

        second = node_process(tmp_path, redis_server)
        ports = await trio.to_thread.run_sync(second.start)
        try:
            with trio.fail_after(AT_ONCE):
                await send_numbered(ports.syslog, token, "B", range(5))
                await wait_until(lambda: set(sink.counts()) >= expected("B", range(5)), AT_ONCE)
            # Its old liveness key is deleted (other nodes see it dead too), the lease names
            # the new incarnation, the only one the data dir still records.
            assert not is_alive(redis_server, keys, old)
            (new,) = recorded_incarnations(tmp_path / "A")
            assert new != old and new.startswith("A/")
            assert redis_server.command("GET", keys.lease("app", drain_id)).endswith(
                f"{new}\r\n".encode()
            )
            found = await scrape(ports.api)
            assert value(found, "logplexd_redis_drain_takeovers_total") == 1
            assert "1 earlier incarnations of this node (1 still alive in Redis)" in second.log
            assert "never recorded" not in second.log
        finally:
            await trio.to_thread.run_sync(second.kill, signal.SIGTERM)
        nursery.cancel_scope.cancel()
    # At least once: what the first delivered after its last checkpoint may come again.
    assert set(sink.counts()) == expected("A", range(5)) | expected("B", range(5))


def test_a_daemon_that_could_not_be_made_leaves_its_data_dir_free(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A daemon whose making fails after it took its data dir (here: the kill -9 ledger
    cannot be mapped) lets it go: the next one on it starts, even while the failure (and
    with it the half-made daemon) is still held by whoever caught it."""
    data_dir = tmp_path / "A"
    (data_dir / "redis-unsent.bin").mkdir(parents=True)
    with pytest.raises(OSError) as failed:
        Daemon(node_settings(tmp_path, "A", redis_server))
    (data_dir / "redis-unsent.bin").rmdir()
    again = Daemon(node_settings(tmp_path, "A", redis_server))
    assert again.node_dir is not None
    again.node_dir.close()
    assert failed.value is not None


@pytest.mark.integration
async def test_a_second_process_on_a_data_dir_in_use_refuses_to_start(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    running_node = Daemon(node_settings(tmp_path, "A", redis_server))
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_in, running_node, trio.CancelScope())
        assert running_node.cluster_drains is not None
        holder = running_node.cluster_drains.liveness.holder
        second = node_process(tmp_path, redis_server)
        status = await trio.to_thread.run_sync(second.run)
        assert status != 0, second.log
        assert f"cannot start: {tmp_path / 'A'} is in use by another process" in second.log
        assert "redis-node.lock" in second.log
        # It took nothing of the first's: the data dir records the first's incarnation.
        assert recorded_incarnations(tmp_path / "A") == [holder]
        nursery.cancel_scope.cancel()
    # Stopped, the data dir is free again.
    again = NodeDir(tmp_path / "A")
    assert again.open() == [holder]
    again.close()


@pytest.mark.integration
async def test_an_incarnation_of_this_node_id_the_data_dir_never_recorded_is_waited_for(
    tmp_path: Path, redis_any: RedisServer | RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Two drains held by incarnations of node id A, both with a live liveness key: one the
    data dir recorded (a process before this one: taken at once), one it never did (another
    process given the same id by mistake: taken only once its key expired). Two more
    recorded incarnations, alive in Redis too, lose their keys with the first (on a
    cluster, keys on several shards: deleted in one round trip all the same)."""
    redis_server = redis_any
    caplog.set_level(logging.INFO, "logplexd")
    keys = Keys()
    sink = Sink()
    async with trio.open_nursery() as nursery:
        sink_port = await nursery.start(sink.serve)
        url = f"syslog://127.0.0.1:{sink_port}/"
        ids = []
        async with running(redis_server.url) as store:
            for channel in ("mine", "other"):
                await store.create_channel(channel, token_names=["web"])
                ids.append(next_drain_id(redis_server))
                await store.create_drain(channel, url, max_drains=1)
        mine, strangers = ids
        earlier = NodeDir(tmp_path / "A")
        earlier.open()
        others = [f"A/before-{k}" for k in range(6)]
        earlier.record(["A/before", *others])
        earlier.close()
        for holder in others:
            redis_server.command("SET", keys.alive(holder), "1", "PX", "60000")
        if isinstance(redis_server, RedisCluster):
            shards = {redis_server.owner_of(keys.alive(h)) for h in ["A/before", *others]}
            assert len(shards) > 1
        hold_lease(redis_server, keys, "mine", mine, 60_000, "A/before")
        hold_lease(redis_server, keys, "other", strangers, 2_000, "A/stranger")

        node = Daemon(node_settings(tmp_path, "A", redis_server, drain_lease_ttl=1.0))
        drains = node.cluster_drains
        assert drains is not None
        await nursery.start(serve_in, node, trio.CancelScope())
        await eventually(lambda: mine in drains.owned(), AT_ONCE)
        assert not any(is_alive(redis_server, keys, h) for h in ["A/before", *others])
        # Not taken while its key lives, however many ticks go by.
        ticks = drains.ticks
        with trio.fail_after(5):
            while is_alive(redis_server, keys, "A/stranger"):
                assert strangers not in drains.owned()
                await trio.sleep(0.01)
        assert drains.ticks >= ticks + 2
        await eventually(lambda: strangers in drains.owned(), 2.0)
        assert drains.takeovers == 2
        told = [r.getMessage() for r in caplog.records if "never recorded" in r.getMessage()]
        assert len(told) == 1 and "A/stranger" in told[0], told
        nursery.cancel_scope.cancel()
