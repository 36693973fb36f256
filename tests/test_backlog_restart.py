"""Drain backlogs across restarts (issue 19): the daemon in a child process, killed.

Channel "big" gets more than its drain's share of the ring while the receiver is down, so
it spills to disk; channel "small" gets less, so it stays in memory. After SIGTERM every
message of both arrives once the receivers are back. After ``kill -9`` every message that
was on disk arrives, and what was only in memory is announced by one L10 with the exact
count: nothing is missing that is not counted.
"""

from __future__ import annotations

import json
import signal

import pytest
import trio

from tests.helpers.child import DaemonProcess
from tests.helpers.curl import AUTH, JSON, api, curl
from tests.helpers.drains import SyslogSink, l10_count
from tests.helpers.net import free_port
from tests.helpers.syslog import frame
from tests.helpers.wait import wait_until

ARGS = ("--channel-buffer-messages", "2000", "--history-messages", "100")
BIG, SMALL = 6000, 400  # the share of a 2,000-message ring is 1,000


async def setup_channel(ports, name: str, receiver: int) -> str:
    _, _, body = await curl(
        "-X", "PUT", *AUTH, *JSON, "-d", '{"tokens":["app"]}', api(ports, f"/v3/channels/{name}")
    )
    token = json.loads(body)["tokens"]["app"]
    status, _, _ = await curl(
        "-X",
        "POST",
        *AUTH,
        *JSON,
        "-d",
        json.dumps({"url": f"syslog://127.0.0.1:{receiver}/"}),
        api(ports, f"/v3/channels/{name}/drains"),
    )
    assert status == 201
    return token


async def drain_status(ports, name: str) -> dict:
    _, _, body = await curl(*AUTH, api(ports, f"/v3/channels/{name}/drains/status"))
    return json.loads(body)["drains"][0]


async def send(ports, token: str, name: str, n: int) -> None:
    data = b"".join(frame(token, f"{name} {i}") for i in range(n))
    stream = await trio.open_tcp_stream("127.0.0.1", ports.syslog)
    await stream.send_all(data)
    await stream.aclose()


def numbers(frames: list[bytes], name: str) -> tuple[list[int], int]:
    """(message numbers in arrival order, messages the L10 frames announce)."""
    seen, lost = [], 0
    for f in frames:
        count = l10_count(f)
        if count is not None:
            lost += count
            continue
        text = f.rstrip(b"\n").rsplit(b" - - ", 1)[1].decode()
        label, number = text.split()
        assert label == name
        seen.append(int(number))
    return seen, lost


async def fill_and_stop(tmp_path, signum: int, big_port: int, small_port: int) -> None:
    daemon = DaemonProcess(tmp_path / "data", ARGS)
    ports = await trio.to_thread.run_sync(daemon.start)
    try:
        big = await setup_channel(ports, "big", big_port)
        small = await setup_channel(ports, "small", small_port)
        await send(ports, big, "big", BIG)
        await send(ports, small, "small", SMALL)

        async def routed() -> bool:
            b, s = await drain_status(ports, "big"), await drain_status(ports, "small")
            return b["buffered"] == BIG and s["buffered"] == SMALL and b["spilling"]

        with trio.fail_after(30):
            while not await routed():
                await trio.sleep(0.05)
        assert not (await drain_status(ports, "small"))["spilling"]
    finally:
        status = await trio.to_thread.run_sync(daemon.kill, signum)
    assert status == (-signal.SIGKILL if signum == signal.SIGKILL else 0), daemon.log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
async def test_restart_delivers_the_backlog_and_counts_what_was_only_in_memory(tmp_path, signum):
    big_port, small_port = free_port(), free_port()
    await fill_and_stop(tmp_path, signum, big_port, small_port)
    big_sink, small_sink = SyslogSink(), SyslogSink()
    daemon = DaemonProcess(tmp_path / "data", ARGS)
    async with trio.open_nursery() as nursery:
        await nursery.start(big_sink.serve, big_port)
        await nursery.start(small_sink.serve, small_port)
        await trio.to_thread.run_sync(daemon.start)
        try:

            def accounted(sink: SyslogSink, name: str, n: int) -> bool:
                seen, lost = numbers(sink.frames(arriving=True), name)
                return len(set(seen)) + lost >= n

            await wait_until(lambda: accounted(big_sink, "big", BIG), timeout=60)
            await wait_until(lambda: accounted(small_sink, "small", SMALL), timeout=60)
        finally:
            await trio.to_thread.run_sync(daemon.kill, signal.SIGTERM)
        nursery.cancel_scope.cancel()

    seen, lost = numbers(big_sink.frames(), "big")
    # Spilled before the stop: every one arrives, in order; a kill may repeat the last
    # batch (at least once), never skip one.
    assert sorted(set(seen)) == list(range(len(set(seen))))
    assert seen == sorted(seen)
    assert len(set(seen)) + lost == BIG
    seen_small, lost_small = numbers(small_sink.frames(), "small")
    if signum == signal.SIGTERM:
        # SIGTERM writes what was in memory to disk: nothing is lost at all.
        assert (lost, lost_small) == (0, 0)
        assert seen == list(range(BIG)) and seen_small == list(range(SMALL))
    else:
        # Only in memory at the kill: announced once, with the exact count.
        assert seen_small == [] and lost_small == SMALL
        assert [f for f in small_sink.frames() if l10_count(f)] == small_sink.frames()[:1]


async def test_a_torn_segment_tail_is_cut_counted_and_announced(tmp_path):
    big_port, small_port = free_port(), free_port()
    await fill_and_stop(tmp_path, signal.SIGTERM, big_port, small_port)
    segments = sorted((tmp_path / "data" / "backlog" / "drains" / "1").glob("*.seg"))
    assert segments
    # A write the machine did not finish: the last record loses its end.
    last = segments[-1]
    with last.open("r+b") as f:
        f.truncate(last.stat().st_size - 10)
    sink = SyslogSink()
    daemon = DaemonProcess(tmp_path / "data", ARGS)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve, big_port)
        await trio.to_thread.run_sync(daemon.start)
        try:
            await wait_until(
                lambda: (
                    len(set(numbers(sink.frames(arriving=True), "big")[0]))
                    + numbers(sink.frames(arriving=True), "big")[1]
                    >= BIG
                ),
                timeout=60,
            )
        finally:
            await trio.to_thread.run_sync(daemon.kill, signal.SIGTERM)
        nursery.cancel_scope.cancel()
    seen, lost = numbers(sink.frames(), "big")
    # The torn record held the newest messages: they are announced, the rest arrive.
    assert lost > 0 and seen == list(range(BIG - lost))
    assert "damaged bytes" in daemon.log
