"""The API client commands (``logplexd channels|tokens|drains|tail|send|rods``) against a
real daemon. The commands are synchronous, so they run in a worker thread while the daemon
runs on the trio loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from logplexd import cli
from logplexd.cli.client import (
    colour_line,
    human_age,
    human_bytes,
    status_table,
    syslog_frame,
)
from logplexd.daemon import Daemon
from tests.helpers.daemon import KEY, settings_for
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await trio.to_thread.run_sync(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("logplexd: ")
    return lines[0]


async def test_channels_tokens_drains_send_tail_rods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        monkeypatch.setenv("LOGPLEXD_URL", f"http://127.0.0.1:{ports.api}")
        monkeypatch.setenv("LOGPLEX_AUTH_KEY", KEY)
        monkeypatch.setenv("LOGPLEXD_LOGS_URL", f"http://127.0.0.1:{ports.logs}")

        code, out, _ = await run(capsys, "channels", "create", "app", "--token", "web")
        assert code == 0
        created = json.loads(out)
        assert created["channel"] == "app" and set(created["tokens"]) == {"web"}
        code, _, err = await run(capsys, "channels", "create", "app")
        assert code == 1
        assert one_line(err) == "logplexd: channel 'app' already exists"

        code, out, _ = await run(capsys, "tokens", "create", "app", "worker")
        assert code == 0 and json.loads(out)["name"] == "worker"

        code, out, _ = await run(capsys, "drains", "add", "app", "syslog://127.0.0.1:1/")
        assert code == 0
        drain_id = json.loads(out)["id"]
        code, out, _ = await run(
            capsys, "drains", "update", "app", str(drain_id), "syslog://127.0.0.1:2/"
        )
        assert code == 0 and json.loads(out)["url"] == "syslog://127.0.0.1:2/"
        code, out, _ = await run(capsys, "drains", "list", "app")
        assert code == 0
        assert out.split("\t")[0] == str(drain_id) and out.rstrip().endswith("127.0.0.1:2/")
        code, _, err = await run(capsys, "drains", "add", "app", "ftp://nope/")
        assert code == 1 and one_line(err).startswith("logplexd: 422 invalid drain url")
        code, out, _ = await run(capsys, "drains", "remove", "app", str(drain_id))
        assert code == 0
        code, out, _ = await run(capsys, "drains", "list", "app")
        assert (code, out) == (0, "")

        code, out, _ = await run(capsys, "send", "app", "hello from the cli", "--token", "worker")
        assert (code, out) == (0, "sent 1 message to app\n")
        code, out, _ = await run(capsys, "send", "app", "second", "--ps", "web.2")
        assert code == 0
        code, out, _ = await run(capsys, "tail", "app", "-n", "10")
        assert code == 0
        lines = out.splitlines()
        assert len(lines) == 2
        assert lines[0].endswith(" worker[cli]: hello from the cli")
        assert "\x1b[" not in out  # not a terminal: no colours
        code, out, _ = await run(capsys, "tail", "app", "--ps", "web")
        assert code == 0 and out.splitlines()[0].endswith(" web[web.2]: second")
        code, out, _ = await run(capsys, "tail", "app", "-n", "1", "--color", "always")
        assert "\x1b[" in out and "second" in out

        code, out, _ = await run(capsys, "rods", "deny_logs_ingress=true", "api_status=read_only")
        assert code == 0
        assert "deny_logs_ingress = true" in out.splitlines()
        assert "api_status = read_only" in out.splitlines()
        code, _, err = await run(capsys, "send", "app", "refused")
        assert code == 1 and one_line(err).startswith("logplexd: 503 Service Unavailable")
        code, _, err = await run(capsys, "channels", "delete", "app")
        assert code == 1
        assert one_line(err) == "logplexd: 503 API is read-only (control rod api_status)"
        code, _, err = await run(capsys, "rods", "api_status=sideways")
        assert code == 1 and "api_status must be one of" in one_line(err)
        code, out, _ = await run(capsys, "rods", "api_status=normal")
        assert code == 0
        code, out, _ = await run(capsys, "rods")
        assert "api_status = normal" in out.splitlines()

        code, out, _ = await run(capsys, "channels", "delete", "app")
        assert (code, out) == (0, "deleted channel app\n")
        code, _, err = await run(capsys, "channels", "show", "app")
        assert code == 1
        assert one_line(err) == "logplexd: 404 channel not found"
        nursery.cancel_scope.cancel()


async def test_tail_follow_streams_until_the_tail_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        url = f"http://127.0.0.1:{ports.api}"
        key_file = tmp_path / "key"
        key_file.write_text(KEY + "\n")
        common = ["--url", url, "--key-file", str(key_file)]
        code, out, _ = await run(capsys, "channels", "create", "app", "--token", "app", *common)
        assert code == 0
        token = json.loads(out)["tokens"]["app"]

        capsys.readouterr()
        done = trio.Event()
        result: list[int] = []

        async def follow() -> None:
            result.append(
                await trio.to_thread.run_sync(cli.main, ["tail", "app", "--follow", *common])
            )
            done.set()

        nursery.start_soon(follow)
        await wait_until(lambda: daemon.tails.active == 1)
        daemon.syslog.ingest(_framer(), syslog_frame(token, "web.1", "live line", host="h"))
        await trio.sleep(0.1)
        daemon.rods.kill_tail_sessions()
        with trio.fail_after(10):
            await done.wait()
        out, _ = capsys.readouterr()
        assert result == [0]
        assert out.rstrip().endswith("app[web.1]: live line")
        nursery.cancel_scope.cancel()


async def test_drains_status_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        monkeypatch.setenv("LOGPLEXD_URL", f"http://127.0.0.1:{ports.api}")
        monkeypatch.setenv("LOGPLEX_AUTH_KEY", KEY)
        code, out, _ = await run(capsys, "channels", "create", "app", "--token", "web")
        token = json.loads(out)["tokens"]["web"]
        code, out, _ = await run(capsys, "drains", "status", "app")
        assert (code, out) == (0, "channel app has no drains\n")

        # Nothing listens on port 1: the drain backs off and the two messages wait for it.
        code, out, _ = await run(capsys, "drains", "add", "app", "syslog://u:hunter22@127.0.0.1:1/")
        drain_id = json.loads(out)["id"]
        lines = syslog_frame(token, "web.1", "one", host="h") + syslog_frame(
            token, "web.1", "two", host="h"
        )
        daemon.syslog.ingest(_framer(), lines)

        def backing_off() -> bool:
            stats = daemon.drains.drain_stats(drain_id)
            return stats is not None and stats.state == "backoff" and stats.buffered == 2

        await wait_until(backing_off)
        code, out, _ = await run(capsys, "drains", "status", "app")
        assert code == 0 and "hunter22" not in out
        header, row, error = out.splitlines()
        assert header.split() == [
            "ID", "STATE", "BACKLOG", "BYTES", "OLDEST", "DELIVERED", "DROPPED", "RETRIED",
            "LOST", "URL",
        ]  # fmt: skip
        cells = row.split()
        assert cells[:3] == [str(drain_id), "backoff", "2"]
        assert cells[3].endswith("B") and cells[4].endswith("s")
        assert cells[5:] == ["0", "0", "0", "0", "syslog://***@127.0.0.1:1/"]
        assert error.startswith("    last error ") and "ago): " in error

        code, out, _ = await run(capsys, "drains", "status", "app", "--json")
        assert code == 0
        [shown] = json.loads(out)["drains"]
        assert (shown["id"], shown["state"], shown["buffered"]) == (drain_id, "backoff", 2)
        assert shown["buffered_bytes"] > 0 and 0 <= shown["oldest_age"] < 60
        assert shown["last_error"] and shown["url"] == "syslog://***@127.0.0.1:1/"

        code, _, err = await run(capsys, "drains", "status", "nope")
        assert code == 1 and one_line(err) == "logplexd: 404 channel not found"
        nursery.cancel_scope.cancel()


def test_status_table_formats() -> None:
    now = 1_700_000_000.0
    table = status_table(
        [
            {
                "id": 3,
                "state": "backoff",
                "url": "https://***@logs.example/",
                "buffered": 1200,
                "buffered_bytes": 3 * 1024 * 1024 + 512 * 1024,
                "oldest_age": 312.7,
                "delivered": 10,
                "dropped": 1,
                "retried": 4,
                "lost": 0,
                "last_error": "HTTP 503",
                "last_error_at": now - 12,
            },
            {"id": 14, "state": "not_running", "url": "syslog://h:1/"},
        ],
        now,
    )
    assert table.splitlines() == [
        "ID  STATE        BACKLOG  BYTES   OLDEST  DELIVERED  DROPPED  RETRIED  LOST  URL",
        "3   backoff      1200     3.5MiB  5m12s   10         1        4        0     "
        "https://***@logs.example/",
        "    last error 2023-11-14 22:13:08Z (12s ago): HTTP 503",
        "14  not_running  -        -       -       -          -        -        -     syslog://h:1/",
    ]
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 << 30, 1 << 50)] == [
        "0B", "1023B", "1.5KiB", "5.0GiB", "1048576.0GiB",
    ]  # fmt: skip
    assert [human_age(s) for s in (0.4, 59, 312, 11100, 187200)] == [
        "0s", "59s", "5m12s", "3h05m", "2d04h",
    ]  # fmt: skip


def _framer():  # type: ignore[no-untyped-def]
    from logplexd.native import OctetFramer

    return OctetFramer(10240)


async def test_credentials_from_netrc_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        url = f"http://127.0.0.1:{ports.api}"
        code, _, err = await run(capsys, "channels", "show", "x", "--url", url)
        assert code == 1
        assert one_line(err) == (
            "logplexd: 401 Unauthorized (set LOGPLEX_AUTH_KEY, --key-file or ~/.netrc)"
        )
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine 127.0.0.1 login key password {KEY}\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        code, _, err = await run(capsys, "channels", "show", "x", "--url", url)
        assert code == 1 and one_line(err) == "logplexd: 404 channel not found"
        monkeypatch.setenv("LOGPLEXD_URL", url)
        code, out, _ = await run(capsys, "rods")
        assert code == 0 and "api_status = normal" in out
        nursery.cancel_scope.cancel()

    # Nothing listens there any more.
    code, _, err = await run(capsys, "channels", "show", "x", "--url", url)
    assert code == 1
    assert one_line(err).startswith(f"logplexd: cannot reach {url}: ")
    code, _, err = await run(capsys, "rods", "--url", "ftp://x")
    assert (
        code == 1 and one_line(err) == "logplexd: URL 'ftp://x' is not an http:// or https:// URL"
    )
    code, _, err = await run(capsys, "rods", "nonsense", "--url", url)
    assert code == 1 and one_line(err) == "logplexd: expected NAME=VALUE, got 'nonsense'"
    code, _, _ = await run(capsys, "drains", "remove", "app", "not-a-number")
    assert code == 2  # usage error


def test_colour_line() -> None:
    line = "2012-12-10T03:00:48.123456Z app[web.1]: hello: world"
    coloured = colour_line(line)
    assert coloured.startswith("\x1b[2m2012-12-10T03:00:48.123456Z\x1b[0m \x1b[")
    assert coloured.endswith("app[web.1]:\x1b[0m hello: world")
    assert colour_line("Error L11 (Tail buffer overflow)") == "Error L11 (Tail buffer overflow)"
