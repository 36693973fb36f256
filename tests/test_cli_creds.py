"""``logplexd creds create|list|revoke``: what they print, and that what they store works.

The CLI runs its store writes with ``trio.run``, so async tests call it from a worker thread
(a trio run cannot nest inside the test's own).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio

from logplexd import cli
from logplexd.daemon import BoundPorts, Daemon
from logplexd.store import open_store
from tests.helpers.api import basic, call, make_api
from tests.helpers.daemon import settings_for
from tests.helpers.http import credentials, request
from tests.helpers.syslog import frame

CREATED = re.compile(r"([0-9A-F]{32}):([0-9a-f]{64})")
pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def create(capsys: pytest.CaptureFixture[str], data_dir: Path, name: str, *perms: str):
    args = [arg for perm in perms for arg in ("--permission", perm)]
    status, out, err = run_cli(
        capsys, "creds", "create", "--data-dir", str(data_dir), "--name", name, *args
    )
    assert (status, err) == (0, ""), err
    match = CREATED.fullmatch(out.rstrip("\n"))
    assert match is not None and out.count("\n") == 1, out
    return match.group(1), match.group(2)


def list_rows(capsys: pytest.CaptureFixture[str], data_dir: Path) -> list[dict[str, object]]:
    status, out, err = run_cli(capsys, "creds", "list", "--data-dir", str(data_dir), "--json")
    assert (status, err) == (0, "")
    return json.loads(out)


# --- create and list -------------------------------------------------------------------------


def test_create_then_list(capsys, data_dir):
    ops_id, ops_pw = create(capsys, data_dir, "ops team")
    router_id, router_pw = create(capsys, data_dir, "router", "any_channel", "full_api")

    assert list_rows(capsys, data_dir) == [
        {"id": ops_id, "name": "ops team", "permissions": ["full_api"]},
        {"id": router_id, "name": "router", "permissions": ["any_channel", "full_api"]},
    ]
    status, out, err = run_cli(capsys, "creds", "list", "--data-dir", str(data_dir))
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "PERMISSIONS"]
    assert lines[1].split() == [ops_id, "ops", "team", "full_api"]
    assert lines[2].split() == [router_id, "router", "any_channel,full_api"]


def test_list_never_shows_passwords_or_hashes(capsys, data_dir):
    cred_id, password = create(capsys, data_dir, "ops")
    store = open_store(str(data_dir))
    try:
        stored_hash = store.credential(cred_id).password_hash
    finally:
        store.close()
    for extra in ([], ["--json"]):
        status, out, err = run_cli(capsys, "creds", "list", "--data-dir", str(data_dir), *extra)
        assert status == 0 and cred_id in out
        for secret in (password, stored_hash, stored_hash.split("$")[-1], "scrypt"):
            assert secret not in out + err


def test_settings_come_from_the_environment_as_for_serve(capsys, data_dir, monkeypatch):
    monkeypatch.setenv("LOGPLEXD_DATA_DIR", str(data_dir))
    status, out, _ = run_cli(capsys, "creds", "create", "--name", "env")
    assert status == 0 and CREATED.fullmatch(out.strip())
    status, out, _ = run_cli(capsys, "creds", "list")
    assert status == 0 and " env " in out


def test_list_of_an_empty_store_prints_nothing(capsys, data_dir):
    data_dir.mkdir()
    assert run_cli(capsys, "creds", "list", "--data-dir", str(data_dir)) == (0, "", "")


def test_list_and_revoke_do_not_create_a_missing_data_dir(capsys, data_dir):
    for argv in (["list"], ["revoke", "ABC"]):
        status, out, err = run_cli(capsys, "creds", *argv, "--data-dir", str(data_dir))
        assert (status, out) == (1, "")
        assert err == f"logplexd: no data dir at {str(data_dir)!r}\n"
    assert not data_dir.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "x", "--permission", "root"], "invalid choice: 'root'"),
        (["--name", "  "], "--name must be 1 to 256 printable characters"),
        (["--name", "two\nlines"], "--name must be 1 to 256 printable characters"),
        ([], "the following arguments are required: --name"),
    ],
)
def test_create_usage_errors(capsys, data_dir, argv, message):
    status, out, err = run_cli(capsys, "creds", "create", "--data-dir", str(data_dir), *argv)
    assert (status, out) == (2, "")
    assert message in err
    assert not (data_dir / "journal.lpj").exists()


def test_revoke(capsys, data_dir):
    keep_id, _ = create(capsys, data_dir, "keep")
    drop_id, _ = create(capsys, data_dir, "drop")
    status, out, err = run_cli(capsys, "creds", "revoke", "--data-dir", str(data_dir), drop_id)
    assert (status, out, err) == (0, "", f"revoked {drop_id}\n")
    assert [row["id"] for row in list_rows(capsys, data_dir)] == [keep_id]

    status, out, err = run_cli(capsys, "creds", "revoke", "--data-dir", str(data_dir), drop_id)
    assert (status, out, err) == (1, "", f"logplexd: no credential with id {drop_id!r}\n")


def test_locked_data_dir(capsys, data_dir):
    create(capsys, data_dir, "before")
    # What a running daemon holds: the store's flock on the data dir.
    store = open_store(str(data_dir))
    try:
        for argv in (["list"], ["create", "--name", "x"], ["revoke", "ABC"]):
            status, out, err = run_cli(capsys, "creds", *argv, "--data-dir", str(data_dir))
            assert (status, out) == (1, "")
            assert err == (
                f"logplexd: the data dir {str(data_dir)!r} is in use by a running logplexd;"
                " stop it first\n"
            )
    finally:
        store.close()
    assert len(list_rows(capsys, data_dir)) == 1


# --- the stored credentials authenticate -----------------------------------------------------


async def test_credentials_against_the_control_api(capsys, data_dir):
    full_id, full_pw = await trio.to_thread.run_sync(create, capsys, data_dir, "ops")
    router_id, router_pw = await trio.to_thread.run_sync(
        create, capsys, data_dir, "router", "any_channel"
    )
    api = make_api(str(data_dir))
    try:
        ok = await call(api, "GET", "/healthcheck", headers=(basic(full_id, full_pw),))
        assert (ok.status, ok.json) == (200, {"status": "normal"})
        for header in (basic(full_id, "wrong"), basic(router_id, router_pw)):
            denied = await call(api, "GET", "/healthcheck", headers=(header,))
            assert denied.status == 401
    finally:
        api.close()
        api.store.close()

    await trio.to_thread.run_sync(
        run_cli, capsys, "creds", "revoke", "--data-dir", str(data_dir), full_id
    )
    api = make_api(str(data_dir))
    try:
        revoked = await call(api, "GET", "/healthcheck", headers=(basic(full_id, full_pw),))
        assert revoked.status == 401
        assert revoked.headers["www-authenticate"] == "Basic realm=Logplex"
    finally:
        api.close()
        api.store.close()


async def test_credentials_on_the_running_daemon(capsys, tmp_path, data_dir):
    full_id, full_pw = await trio.to_thread.run_sync(create, capsys, data_dir, "ops")
    router_id, router_pw = await trio.to_thread.run_sync(
        create, capsys, data_dir, "router", "any_channel"
    )
    full, router = credentials(full_id, full_pw), credentials(router_id, router_pw)
    logplex_1 = [("Content-Type", "application/logplex-1")]

    async def post_logs(ports: BoundPorts, auth: str, token: str) -> int:
        status, _, _ = await request(
            ports.logs, "POST", "/logs", body=frame(token, "hello"), headers=logplex_1, auth=auth
        )
        return status

    with trio.fail_after(30):
        daemon = Daemon(settings_for(tmp_path, data_dir=data_dir))
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(daemon.serve)
            # full_api: the control API; a channel to route into.
            status, _, body = await request(
                ports.api, "PUT", "/v3/channels/app-1", body={"tokens": ["web"]}, auth=full
            )
            assert status == 201, body
            token = json.loads(body)["tokens"]["web"]
            # any_channel: /logs routes by APP-NAME; full_api alone may not post.
            assert await post_logs(ports, router, token) == 204
            channel = daemon.registry.channel("app-1")
            while len(channel.ring) < 1:  # routing may finish just after the 204
                await channel.wait_appended()
            assert await post_logs(ports, full, token) == 403
            assert (await request(ports.api, "GET", "/healthcheck", auth=router))[0] == 401

            # While the daemon holds the data dir the CLI refuses to touch it.
            status, out, err = await trio.to_thread.run_sync(
                run_cli, capsys, "creds", "revoke", "--data-dir", str(data_dir), router_id
            )
            assert (status, out) == (1, "") and "is in use by a running logplexd" in err
            nursery.cancel_scope.cancel()

        status, _, _ = await trio.to_thread.run_sync(
            run_cli, capsys, "creds", "revoke", "--data-dir", str(data_dir), router_id
        )
        assert status == 0

        daemon = Daemon(settings_for(tmp_path, data_dir=data_dir))
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(daemon.serve)
            assert await post_logs(ports, router, token) == 401
            assert (await request(ports.api, "GET", "/healthcheck", auth=full))[0] == 200
            nursery.cancel_scope.cancel()
