"""The real heroku CLI (npm ``heroku`` 11.10.0, helpers/heroku_cli.py) against a daemon.

Pointed at the daemon by ``HEROKU_HOST``, with an account's API token, a throwaway HOME and
everything that keeps it from Heroku's own servers set before its first run. The CLI starts
slowly (about a second a run), so these tests run it few times: the steps of one walk-through
in order, the read-only ones side by side.

What the CLI asks for (seen on the daemon's side): ``apps`` GET /users/~/apps and /account;
``apps:info`` GET /apps/{app}, /apps/{app}/addons, and /dynos, /collaborators,
/pipeline-couplings, whose 404 it takes as "none"; ``drains:*`` /apps/{app}/log-drains;
``maintenance:*`` PATCH /apps/{app}; ``logs`` GET /apps/{app} (Accept ``version=3.sdk``),
POST /apps/{app}/log-sessions, then ``logplex_url`` as an EventSource (server-sent events).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from logplexd.daemon import BoundPorts, Daemon
from tests.helpers.daemon import settings_for
from tests.helpers.heroku_cli import NOTHING_CAN_INSTALL, HerokuCli, cli_env, heroku_cli
from tests.helpers.http import credentials, request
from tests.helpers.metrics import scrape
from tests.helpers.syslog import TS, frame
from tests.helpers.tls import write_ca, write_certificate
from tests.helpers.wait import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.may_skip(
        reason="node/npm not installed: nothing can install the heroku CLI",
        when=NOTHING_CAN_INSTALL,
    ),
]

EMAIL = "cli@example.com"
V3 = ("Accept", "application/vnd.heroku+json; version=3")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RUN_TIMEOUT = 60  # one CLI run: about a second, far more on a loaded machine


@pytest.fixture(scope="module")
def cli_script() -> Path:
    return heroku_cli()  # installed once (and kept between runs), or the module skips


@dataclass
class Running:
    daemon: Daemon
    ports: BoundPorts
    cli: HerokuCli
    token: str  # the account's API token
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    async def heroku(self, *args: str) -> str:
        """Run the CLI; its output (stdout, colours removed). Fails unless it exits 0."""
        with trio.fail_after(RUN_TIMEOUT):
            done = await trio.run_process(
                self.cli.argv(*args),
                env=self.cli.env,
                cwd=self.home,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        out, err = (ANSI.sub("", s.decode()) for s in (done.stdout, done.stderr))
        assert done.returncode == 0, f"heroku {' '.join(args)}: exit {done.returncode}\n{err}"
        return out

    async def platform(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The daemon's own answer, as the account (to check what a command did)."""
        status, _, raw = await request(
            self.ports.api,
            method,
            path,
            body=body,
            headers=[V3],
            auth=credentials("", self.token),
        )
        return status, json.loads(raw) if raw else None

    def app_token(self, app: str) -> str:
        store = self.daemon.store
        assert store is not None
        (token,) = [t.id for t in store.tokens_of(app) if t.name == "app"]
        return token

    async def send(self, app: str, *texts: str) -> None:
        """Lines into the app's channel through POST /logs, as a log shuttle sends them."""
        token = self.app_token(app)
        status, _, body = await request(
            self.ports.logs,
            "POST",
            "/logs",
            body=b"".join(frame(token, text, ps="web.1") for text in texts),
            headers=[("Content-Type", "application/logplex-1")],
            auth=credentials("token", token),
        )
        assert status == 204, body

    async def requests_served(self) -> dict[tuple[str, str, str], float]:
        """(route, method, status) -> count, from the daemon's /metrics."""
        found = await scrape(self.ports.api)
        return {
            (labels["route"], labels["method"], labels["status"]): count
            for (name, label_items), count in found.items()
            if name == "logplexd_api_requests_total"
            for labels in [dict(label_items)]
        }


async def create_account(data_dir: Path) -> str:
    """``logplexd accounts create`` while the daemon runs; the API token it prints."""
    code = "import sys; from logplexd.cli import main; sys.exit(main())"
    done = await trio.run_process(
        [sys.executable, "-c", code, "accounts", "create", EMAIL, "--data-dir", str(data_dir)],
        capture_stdout=True,
    )
    (token,) = re.findall(r"^api token: (\S+)$", done.stdout.decode(), re.MULTILINE)
    return str(token)


@pytest.fixture
async def running(tmp_path: Path, cli_script: Path) -> AsyncIterator[Running]:
    data_dir = tmp_path / "data"
    daemon = Daemon(settings_for(tmp_path, data_dir=data_dir))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        token = await create_account(data_dir)
        home = tmp_path / "home"
        env = cli_env(f"http://127.0.0.1:{ports.api}", token, home)
        yield Running(daemon, ports, HerokuCli(cli_script, env), token, home)
        nursery.cancel_scope.cancel()


def check_served(served: dict[tuple[str, str, str], float]) -> None:
    """Nothing the CLI asked for failed on the server's side, and every Platform route it
    used answered in the 2xx range, but for the sub-resources apps:info takes as absent."""
    assert all(int(status) < 500 for _, _, status in served), served
    failed = {key for key in served if key[0].startswith("platform.") and key[2][0] != "2"}
    assert not failed, failed


async def test_apps_and_drains(running: Running) -> None:
    app = "cli-app"
    await running.heroku("apps:create", app)
    status, created = await running.platform("GET", f"/apps/{app}")
    assert status == 200 and created["owner"]["email"] == EMAIL

    # The read-only commands side by side (each run is mostly node starting).
    outputs: dict[str, str] = {}

    async def run(name: str, *args: str) -> None:
        outputs[name] = await running.heroku(*args)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "apps", "apps")
        nursery.start_soon(run, "all", "apps", "--all")
        nursery.start_soon(run, "info", "apps:info", "-a", app)
    for name in ("apps", "all"):
        assert f"=== {EMAIL} Apps" in outputs[name]
        assert app in outputs[name].split()
    info = outputs["info"]
    assert f"=== {app}" in info
    assert re.search(rf"^Owner:\s+{re.escape(EMAIL)}$", info, re.MULTILINE), info
    assert re.search(r"^Region:\s+us$", info, re.MULTILINE), info
    assert re.search(r"^Stack:\s+cedar$", info, re.MULTILINE), info

    drain_url = "syslog://127.0.0.1:9"
    out = await running.heroku("drains:add", drain_url, "-a", app)
    assert f"Successfully added drain {drain_url}" in out
    status, drains = await running.platform("GET", f"/apps/{app}/log-drains")
    assert status == 200 and [d["url"] for d in drains] == [drain_url]
    out = await running.heroku("drains", "-a", app)
    assert f"{drain_url} ({drains[0]['token']})" in out

    await running.heroku("maintenance:on", "-a", app)
    assert (await running.platform("GET", f"/apps/{app}"))[1]["maintenance"] is True
    await running.heroku("maintenance:off", "-a", app)
    assert (await running.platform("GET", f"/apps/{app}"))[1]["maintenance"] is False

    # apps:rename prints the app's web_url (and reads ``web_url.includes(...)``).
    channel, app = app, "cli-app-renamed"
    out = await running.heroku("apps:rename", app, "-a", channel)
    assert f"http://{app}.herokuapp.com" in out
    status, renamed = await running.platform("GET", f"/apps/{app}")
    assert status == 200 and renamed["id"] == created["id"]

    out = await running.heroku("drains:remove", drain_url, "-a", app)
    assert f"Successfully removed drain {drain_url}" in out
    assert await running.platform("GET", f"/apps/{app}/log-drains") == (200, [])

    await running.heroku("apps:destroy", app, "--confirm", app)
    check_served(await running.requests_served())
    for name in (app, channel):  # the name it had before the rename too
        status, gone = await running.platform("GET", f"/apps/{name}")
        assert (status, gone["id"]) == (404, "not_found")
    store = running.daemon.store
    assert store is not None and store.channel(channel) is None


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


async def test_logs_and_logs_tail(running: Running) -> None:
    app = "cli-logs"
    status, _ = await running.platform("POST", "/apps", {"name": app})
    assert status == 201
    await running.send(app, "hello", "two\nlines", "third")
    expected = [f"{TS} app[web.1]: {text}" for text in ("hello", "two", "lines", "third")]
    expected[2] = "lines"  # a multi-line message is one event; the CLI prints each line

    # One-shot: the history, then the stream ends and the CLI exits 0.
    assert lines(await running.heroku("logs", "-a", app, "-n", "10")) == expected
    assert lines(await running.heroku("logs", "-a", app, "-n", "1")) == [expected[-1]]

    # --tail: the last line of history, then what is sent while it runs.
    tail = await trio.lowlevel.open_process(
        running.cli.argv("logs", "--tail", "-a", app, "-n", "1"),
        env=running.cli.env,
        cwd=running.home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = tail.stdout, tail.stderr
    assert stdout is not None and stderr is not None
    seen = ""

    async def read_until(text: str) -> None:
        nonlocal seen
        while text not in seen:
            data = await stdout.receive_some(65536)
            if not data:
                err = await stderr.receive_some(65536)
                pytest.fail(f"heroku logs --tail ended: {seen!r} {err!r}")
            seen += ANSI.sub("", data.decode())

    try:
        with trio.fail_after(RUN_TIMEOUT):
            await read_until(expected[-1])  # connected: its history has arrived
            await running.send(app, "live one")
            await read_until("app[web.1]: live one")
            tail.terminate()
            await tail.wait()
    finally:
        if tail.returncode is None:
            tail.kill()
        with trio.CancelScope(shield=True):
            await tail.wait()
            await stdout.aclose()
            await stderr.aclose()
    assert lines(seen) == [expected[-1], f"{TS} app[web.1]: live one"]
    # The daemon noticed the CLI leave: no tail is left open.
    await wait_until(lambda: running.daemon.tails.active == 0)

    served = await running.requests_served()
    check_served(served)
    assert served[("session.get", "GET", "200")] == 3
    assert ("session.get", "GET", "204") not in served  # the CLI does not reconnect


async def test_platform_errors_reach_the_cli_user(running: Running) -> None:
    """A refused request: the CLI shows the Platform error's message and exits non-zero."""
    with trio.fail_after(RUN_TIMEOUT):
        done = await trio.run_process(
            running.cli.argv("apps:info", "-a", "no-such-app"),
            env=running.cli.env,
            cwd=running.home,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode != 0
    err = ANSI.sub("", done.stderr.decode())
    assert "Couldn't find that app." in err and "not_found" in err, err


async def test_apps_and_logs_over_https(tmp_path: Path, cli_script: Path, ca: trustme.CA) -> None:
    """The API over HTTPS (``api_tls_cert``): the CLI, trusting the test CA through
    ``NODE_EXTRA_CA_CERTS``, creates an app and reads its logs from the https session URL."""
    cert, key = tmp_path / "api.pem", tmp_path / "api.key"
    write_certificate(ca, cert, key, "127.0.0.1", "localhost")
    data_dir = tmp_path / "data"
    settings = settings_for(tmp_path, data_dir=data_dir, api_tls_cert=cert, api_tls_key=key)
    daemon = Daemon(settings)
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        token = await create_account(data_dir)
        home = tmp_path / "home"
        env = cli_env(f"https://127.0.0.1:{ports.api}", token, home)
        env["NODE_EXTRA_CA_CERTS"] = str(write_ca(ca, tmp_path / "ca.pem"))
        running = Running(daemon, ports, HerokuCli(cli_script, env), token, home)
        app = "cli-tls"
        await running.heroku("apps:create", app)
        await running.send(app, "over tls")
        out = await running.heroku("logs", "-a", app, "-n", "5")
        assert lines(out) == [f"{TS} app[web.1]: over tls"]
        nursery.cancel_scope.cancel()
