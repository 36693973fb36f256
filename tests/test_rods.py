"""Control rods on a real daemon: every rod, from the configuration and at run time."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import trio

from logplexd.api.rods import RodError, parse_changes
from logplexd.config import load_settings
from logplexd.daemon import BoundPorts, Daemon
from tests.helpers.daemon import KEY, settings_for
from tests.helpers.drains import SyslogSink
from tests.helpers.http import Exchange, create_channel, credentials, request
from tests.helpers.metrics import scrape, value
from tests.helpers.syslog import frame, send_syslog
from tests.helpers.wait import wait_until

LOGPLEX = [("Content-Type", "application/logplex-1")]


async def put_rods(ports: BoundPorts, **rods: object) -> dict:
    status, _, body = await request(ports.api, "PUT", "/admin/rods", body=dict(rods))
    assert status == 200, body
    return json.loads(body)


async def test_api_status_read_only_and_disabled(tmp_path: Path) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        await create_channel(ports)
        state = await put_rods(ports, api_status="read_only")
        assert state["api_status"] == "read_only"
        status, _, body = await request(ports.api, "PUT", "/v3/channels/b", body={})
        assert (status, json.loads(body)["error"]) == (
            503,
            "API is read-only (control rod api_status)",
        )
        status, _, _ = await request(ports.api, "POST", "/channels", body={"name": "x"})
        assert status == 503  # legacy routes too
        status, _, _ = await request(ports.api, "POST", "/v2/sessions", body={"channel_id": "1"})
        assert status == 503
        status, _, _ = await request(ports.api, "GET", "/v3/channels/app")
        assert status == 200

        await put_rods(ports, api_status="disabled")
        for path, auth in [("/v3/channels/app", KEY), ("/v2/channels/1", KEY), ("/nope", KEY)]:
            status, _, _ = await request(ports.api, "GET", path, auth=auth)
            assert status == 503, path
        for path in ("/healthcheck", "/v3/healthcheck", "/metrics", "/admin/rods"):
            status, _, _ = await request(ports.api, "GET", path)
            assert status == 200, path
        found = await scrape(ports.api)
        assert value(found, "logplexd_api_status", logplexd_api_status="disabled") == 1
        assert value(found, "logplexd_control_rod_active", rod="api_status") == 1
        assert value(found, "logplexd_api_requests_total", route="v3.channel.get", method="GET",
                     status="503") == 1  # fmt: skip

        await put_rods(ports, api_status="normal")
        status, _, _ = await request(ports.api, "PUT", "/v3/channels/b", body={})
        assert status == 201
        nursery.cancel_scope.cancel()


async def test_rods_from_the_environment_at_start(tmp_path: Path) -> None:
    env = {
        "LOGPLEXD_API_STATUS": "read_only",
        "LOGPLEXD_DENY_LOGS_INGRESS": "true",
        "LOGPLEXD_DENY_TAIL_SESSIONS": "1",
        "LOGPLEXD_DENY_DRAIN_FORWARDING": "yes",
    }
    loaded = load_settings(env=env)
    assert loaded.api_status == "read_only" and loaded.deny_drain_forwarding
    settings = settings_for(
        tmp_path,
        api_status=loaded.api_status,
        deny_logs_ingress=loaded.deny_logs_ingress,
        deny_tail_sessions=loaded.deny_tail_sessions,
        deny_drain_forwarding=loaded.deny_drain_forwarding,
    )
    daemon = Daemon(settings)
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        status, _, body = await request(ports.api, "GET", "/admin/rods")
        assert json.loads(body) == {
            "api_status": "read_only",
            "deny_tail_sessions": True,
            "deny_drain_forwarding": True,
            "deny_logs_ingress": True,
            "tail_sessions": 0,
        }
        status, _, _ = await request(ports.logs, "POST", "/logs", body=b"", headers=LOGPLEX)
        assert status == 503
        found = await scrape(ports.api)
        for rod in ("deny_tail_sessions", "deny_drain_forwarding", "deny_logs_ingress"):
            assert value(found, "logplexd_control_rod_active", rod=rod) == 1
        nursery.cancel_scope.cancel()


async def test_admin_rods_needs_the_auth_key_and_valid_rods(tmp_path: Path) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        for auth in (None, "wrong", base64.b64encode(b"user:wrong").decode()):
            status, headers, _ = await request(ports.api, "GET", "/admin/rods", auth=auth)
            assert status == 401
            assert headers["www-authenticate"] == "Basic realm=Logplex"
        status, _, _ = await request(
            ports.api, "GET", "/admin/rods", auth=base64.b64encode(f":{KEY}".encode()).decode()
        )
        assert status == 200
        for bad in ({"api_status": "half"}, {"deny_everything": True}, {"deny_logs_ingress": 3}):
            status, _, body = await request(ports.api, "PUT", "/admin/rods", body=bad)
            assert status == 422, body
        status, _, _ = await request(ports.api, "PUT", "/admin/rods", body=b"[1]")
        assert status == 400
        assert daemon.rods.state.api_status == "normal"  # nothing half-applied
        nursery.cancel_scope.cancel()


def test_parse_changes() -> None:
    assert parse_changes({"api_status": "READ_ONLY", "deny_logs_ingress": "on"}) == (
        {"api_status": "read_only", "deny_logs_ingress": True},
        False,
    )
    assert parse_changes({"kill_tail_sessions": True}) == ({}, True)
    try:
        parse_changes({"nope": 1})
    except RodError as exc:
        assert "unknown control rod 'nope'" in str(exc)
    else:
        raise AssertionError("expected RodError")


async def test_deny_logs_ingress_leaves_syslog_input(tmp_path: Path) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        token = await create_channel(ports)
        await put_rods(ports, deny_logs_ingress=True)
        status, _, _ = await request(
            ports.logs, "POST", "/logs", body=frame(token, "x"), headers=LOGPLEX,
            auth=credentials("token", token),
        )  # fmt: skip
        assert status == 503
        await send_syslog(ports.syslog, frame(token, "tcp still works"))
        await wait_until(lambda: daemon.syslog.stats.routed == 1)
        await put_rods(ports, deny_logs_ingress=False)
        status, _, _ = await request(
            ports.logs, "POST", "/logs", body=frame(token, "x"), headers=LOGPLEX,
            auth=credentials("token", token),
        )  # fmt: skip
        assert status == 204
        nursery.cancel_scope.cancel()


async def new_session(ports: BoundPorts, version: str, **body: object) -> tuple[int, str]:
    status, _, raw = await request(
        ports.api, "POST", f"/{version}/sessions", body={"channel_id": "app", **body}
    )
    return status, json.loads(raw).get("url", "") if raw else ""


async def test_tail_session_rods(tmp_path: Path) -> None:
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        token = await create_channel(ports)
        await send_syslog(ports.syslog, frame(token, "history line"))
        await wait_until(lambda: daemon.syslog.stats.routed == 1)

        # Two live tails, then kill_tail_sessions ends both cleanly.
        tails = []
        for _ in range(2):
            status, url = await new_session(ports, "v3", tail=True)
            assert status == 201
            tail = await Exchange.open(ports.api, "GET", url.split(str(ports.api), 1)[1])
            assert b"history line" in (await tail.chunk() or b"")
            tails.append(tail)
        await wait_until(lambda: daemon.tails.active == 2)
        state = await put_rods(ports, kill_tail_sessions=True)
        assert state["killed_tail_sessions"] == 2
        with trio.fail_after(5):
            for tail in tails:
                assert await tail.chunk() is None  # the chunked body ended properly
                await tail.stream.aclose()
        assert daemon.tails.active == 0
        found = await scrape(ports.api)
        assert value(found, "logplexd_tail_sessions_killed_total") == 2

        # deny_tail_sessions: v3 refuses, v2 still creates; a tail sends history and ends.
        await put_rods(ports, deny_tail_sessions=True)
        status, _ = await new_session(ports, "v3", tail=True)
        assert status == 503
        status, url = await new_session(ports, "v2", tail=True)
        assert status == 201
        with trio.fail_after(5):
            status, _, body = await request(
                ports.api, "GET", url.split(str(ports.api), 1)[1], auth=None
            )
        assert status == 200 and b"history line" in body
        assert daemon.tails.active == 0
        await put_rods(ports, deny_tail_sessions=False)
        status, _ = await new_session(ports, "v3", tail=True)
        assert status == 201
        nursery.cancel_scope.cancel()


async def test_deny_drain_forwarding(tmp_path: Path) -> None:
    sink = SyslogSink()
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.serve)
        ports = await nursery.start(daemon.serve)
        token = await create_channel(ports)
        status, _, _ = await request(
            ports.api, "POST", "/v3/channels/app/drains",
            body={"url": f"syslog://127.0.0.1:{sink.port}/"},
        )  # fmt: skip
        assert status == 201
        await send_syslog(ports.syslog, frame(token, "one"))
        await sink.wait_for(lambda: sink.messages() == 1)

        await put_rods(ports, deny_drain_forwarding=True)
        assert len(daemon.drains) == 0 and daemon.drains.configured == 1
        await send_syslog(ports.syslog, frame(token, "not forwarded"))
        await wait_until(lambda: daemon.syslog.stats.routed == 2)
        # A drain added while denied is remembered, not started.
        status, _, _ = await request(
            ports.api, "POST", "/v3/channels/app/drains",
            body={"url": f"syslog://127.0.0.1:{sink.port}/second"},
        )  # fmt: skip
        assert status == 201
        assert len(daemon.drains) == 0 and daemon.drains.configured == 2
        await trio.sleep(0.05)
        assert sink.messages() == 1

        await put_rods(ports, deny_drain_forwarding=False)
        assert len(daemon.drains) == 2
        await send_syslog(ports.syslog, frame(token, "three"))
        await sink.wait_for(lambda: sink.messages() == 3)  # once to each drain
        assert b"not forwarded" not in bytes(sink.data)
        nursery.cancel_scope.cancel()
