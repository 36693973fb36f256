"""The Platform API on a running daemon, driven by a real client library: heroku3 (PyPI).

heroku3 5.2.1 has no base-URL option (the URL is the private ``_heroku_url`` attribute), but
it takes a ``requests`` session: a transport adapter mounted on ``https://api.heroku.com``
sends its requests to the daemon instead, so the library itself runs unmodified.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from logplexd.daemon import BoundPorts, Daemon
from tests.helpers.daemon import KEY, settings_for
from tests.helpers.heroku_cli import NOTHING_CAN_INSTALL
from tests.helpers.syslog import frame

heroku3 = pytest.importorskip("heroku3")
requests = pytest.importorskip("requests")

pytestmark = pytest.mark.integration

HEROKU_URL = "https://api.heroku.com"


@dataclass
class Running:
    daemon: Daemon
    ports: BoundPorts
    data_dir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    daemon = Daemon(settings_for(tmp_path, data_dir=tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        yield Running(daemon, ports, tmp_path)
        nursery.cancel_scope.cancel()


class ToLogplexd(requests.adapters.HTTPAdapter):  # type: ignore[misc,name-defined]
    """Sends what heroku3 addresses to api.heroku.com to the daemon under test."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def send(self, request: Any, **kwargs: Any) -> Any:
        request.url = self.base + request.url[len(HEROKU_URL) :]
        return super().send(request, **kwargs)


def post_logs(running: Running, token: str, *texts: str) -> None:
    response = requests.post(
        f"http://127.0.0.1:{running.ports.logs}/logs",
        data=b"".join(frame(token, t, ps="web.1") for t in texts),
        auth=("token", token),
        headers={
            "Content-Type": "application/logplex-1",
            "Logplex-Msg-Count": str(len(texts)),
        },
        timeout=5,
    )
    assert response.status_code == 204


async def test_heroku3_walkthrough(running: Running) -> None:
    store = running.daemon.store
    assert store is not None
    # Created while the daemon runs, in its store (as `logplexd accounts create` does).
    account, api_token = await store.create_account("dev@example.com")

    def app_token(name: str) -> str:
        (token,) = [t.id for t in store.tokens_of(name) if t.name == "app"]
        return token

    def walk() -> dict[str, Any]:
        session = requests.Session()
        session.mount(HEROKU_URL, ToLogplexd(running.base))
        heroku = heroku3.from_key(api_token, session=session)
        seen: dict[str, Any] = {"verified": heroku.is_authenticated}

        app = heroku.create_app(name="walk-app", stack_id_or_name="cedar", region_id_or_name="eu")
        seen["created"] = (app.name, app.owner.email, app.region.name, app.stack.name)
        app = heroku.app("walk-app")  # from here heroku3 addresses it by id
        seen["apps"] = [a.name for a in heroku.apps()]
        seen["rate_limit"] = int(heroku.rate_limit.remaining)
        seen["header_remaining"] = heroku.ratelimit_remaining()
        seen["request_id"] = heroku.last_request_id

        drain = app.create_logdrain("syslog://127.0.0.1:9")
        seen["drain"] = (drain.id, drain.url, drain.token)
        seen["drains"] = [(d.id, d.url) for d in app.logdrains()]

        token = app_token("walk-app")
        post_logs(running, token, "hello", "world")
        # One-shot read (no tail): the whole body at once.
        seen["log"] = app.get_log(lines=10, timeout=10)
        # Live tail: the first line is history, the next arrives while we wait.
        lines = app.stream_log(lines=1, timeout=10)
        seen["tail"] = [next(lines)]
        post_logs(running, token, "live")
        seen["tail"].append(next(lines))

        app = app.update(maintenance=True)
        seen["maintenance"] = app.maintenance
        removed = app.remove_logdrain(drain.id)
        seen["removed"] = removed.url
        seen["drains_after"] = len(app.logdrains())
        seen["deleted"] = app.delete()
        seen["apps_after"] = [a.name for a in heroku.apps()]
        return seen

    with trio.fail_after(20):
        seen = await trio.to_thread.run_sync(walk, abandon_on_cancel=True)

    assert seen["verified"] is True
    assert seen["created"] == ("walk-app", "dev@example.com", "eu", "cedar")
    assert seen["apps"] == ["walk-app"]
    assert 1190 < seen["rate_limit"] <= 1200 and 1190 < seen["header_remaining"] <= 1200
    assert seen["request_id"]
    drain_id, drain_url, drain_token = seen["drain"]
    assert drain_url == "syslog://127.0.0.1:9" and drain_token.startswith("d.")
    assert seen["drains"] == [(drain_id, drain_url)]
    assert seen["log"] == (
        "2012-12-10T03:00:48.123456Z app[web.1]: hello\n"
        "2012-12-10T03:00:48.123456Z app[web.1]: world\n"
    )
    assert seen["tail"] == [
        b"2012-12-10T03:00:48.123456Z app[web.1]: world",
        b"2012-12-10T03:00:48.123456Z app[web.1]: live",
    ]
    assert seen["maintenance"] is True
    assert seen["removed"] == drain_url and seen["drains_after"] == 0
    assert seen["deleted"] is True and seen["apps_after"] == []
    assert store.channel("walk-app") is None
    assert account.email == "dev@example.com"


async def test_heroku3_rename(running: Running) -> None:
    """``app.rename()``: the app keeps its id, token, drains and logs under its new name."""
    store = running.daemon.store
    assert store is not None
    _, api_token = await store.create_account("rename@example.com")

    def walk() -> dict[str, Any]:
        session = requests.Session()
        session.mount(HEROKU_URL, ToLogplexd(running.base))
        heroku = heroku3.from_key(api_token, session=session)
        seen: dict[str, Any] = {}
        app = heroku.create_app(name="old-name")
        drain = app.create_logdrain("syslog://127.0.0.1:9")
        (token,) = [t.id for t in store.tokens_of("old-name") if t.name == "app"]
        post_logs(running, token, "before")
        renamed = app.rename("new-name")
        seen["renamed"] = (renamed.name, renamed.id == app.id)
        seen["apps"] = [a.name for a in heroku.apps()]
        app = heroku.app("new-name")
        seen["drains"] = [d.id for d in app.logdrains()] == [drain.id]
        post_logs(running, token, "after")
        seen["log"] = app.get_log(lines=10, timeout=10)
        v3 = {"Accept": "application/vnd.heroku+json; version=3"}
        response = session.get(
            f"{HEROKU_URL}/apps/old-name", headers=v3, auth=("", api_token), timeout=5
        )
        seen["old"] = (response.status_code, response.json())
        # heroku3 checks the name pattern itself before sending; the server does too.
        response = session.patch(
            f"{HEROKU_URL}/apps/new-name",
            json={"name": "Not Valid"},
            headers=v3,
            auth=("", api_token),
            timeout=5,
        )
        seen["invalid"] = (response.status_code, response.json()["id"])
        heroku.create_app(name="taken-name")
        try:
            heroku.app("new-name").rename("taken-name")
        except requests.HTTPError as exc:
            seen["taken"] = (exc.response.status_code, exc.response.json()["id"])
        return seen

    with trio.fail_after(20):
        seen = await trio.to_thread.run_sync(walk, abandon_on_cancel=True)

    assert seen["renamed"] == ("new-name", True)
    assert seen["apps"] == ["new-name"]
    assert seen["drains"] is True
    assert seen["log"] == (
        "2012-12-10T03:00:48.123456Z app[web.1]: before\n"
        "2012-12-10T03:00:48.123456Z app[web.1]: after\n"
    )
    assert seen["old"] == (404, {"id": "not_found", "message": "Couldn't find that app."})
    assert seen["invalid"] == (422, "invalid_params")
    assert seen["taken"] == (422, "invalid_params")


async def test_conventions_over_http(running: Running) -> None:
    """What the HTTP server adds: Request-Id on every answer, HEAD, 304 without a body."""

    def check() -> None:
        base = running.base
        v3 = {"Accept": "application/vnd.heroku+json; version=3"}
        auth = ("", KEY)
        response = requests.get(f"{base}/apps", timeout=5)
        assert response.status_code == 406 and response.json()["id"] == "not_acceptable"
        assert response.headers["Request-Id"]
        response = requests.post(f"{base}/apps", json={"name": "web"}, headers=v3, auth=auth)
        assert response.status_code == 201
        etag = response.headers["ETag"]
        first = requests.get(f"{base}/apps/web", headers=v3, auth=auth, timeout=5)
        second = requests.get(f"{base}/apps/web", headers=v3, auth=auth, timeout=5)
        assert first.headers["Request-Id"] != second.headers["Request-Id"]
        assert first.headers["ETag"] == etag
        cached = requests.get(
            f"{base}/apps/web", headers={**v3, "If-None-Match": etag}, auth=auth, timeout=5
        )
        assert cached.status_code == 304 and cached.content == b""
        assert cached.headers["ETag"] == etag and cached.headers["Request-Id"]
        head = requests.head(f"{base}/apps", headers=v3, auth=auth, timeout=5)
        assert head.status_code == 200 and head.headers["Accept-Ranges"] == "id, name"
        assert int(head.headers["RateLimit-Remaining"]) < 1200

    with trio.fail_after(10):
        await trio.to_thread.run_sync(check, abandon_on_cancel=True)


# -- heroku-client (npm) ---------------------------------------------------------------------

NODE_SCRIPT = r"""
const Heroku = require('heroku-client')
const http = require('http')
const [base, token, phase, logsUrl, appToken] = process.argv.slice(2)
const heroku = new Heroku({ token, host: base })

function fetch (url) {
  return new Promise((resolve, reject) => {
    http.get(url, res => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', d => { body += d })
      res.on('end', () => resolve(body))
    }).on('error', reject)
  })
}

// One octet-counted frame into the app's channel, as a log shuttle posts it.
function postLog (text) {
  const msg = `<134>1 2012-12-10T03:00:48.123456Z host ${appToken} web.1 - - ${text}`
  const body = `${Buffer.byteLength(msg)} ${msg}`
  const auth = Buffer.from(`token:${appToken}`).toString('base64')
  return new Promise((resolve, reject) => {
    const req = http.request(logsUrl, {
      method: 'POST',
      headers: { 'Content-Type': 'application/logplex-1', Authorization: `Basic ${auth}` }
    }, res => { res.resume(); res.on('end', () => resolve(res.statusCode)) })
    req.on('error', reject)
    req.end(body)
  })
}

// A tailing session: read until `until` arrived, sending `live` once the history is in.
function tail (url, live, until) {
  return new Promise((resolve, reject) => {
    let body = ''
    let sent = false
    const req = http.get(url, res => {
      res.setEncoding('utf8')
      res.on('data', d => {
        body += d
        if (!sent) { sent = true; postLog(live).catch(reject) }
        if (body.includes(until)) { req.destroy(); resolve(body) }
      })
      res.on('end', () => reject(new Error(`tail ended: ${body}`)))
    })
    req.on('error', err => { if (!body.includes(until)) reject(err) })
  })
}

async function main () {
  const out = {}
  if (phase === 'setup') {
    out.app = await heroku.post('/apps', { body: { name: 'node-app', region: 'us' } })
    out.info = await heroku.get('/apps/node-app')
    out.drain = await heroku.post('/apps/node-app/log-drains',
      { body: { url: 'syslog://127.0.0.1:9' } })
    out.drains = await heroku.get(`/apps/${out.app.id}/log-drains`)
    out.apps = await heroku.get('/apps')
    out.limits = await heroku.get('/account/rate-limits')
    out.maintenance = await heroku.patch('/apps/node-app', { body: { maintenance: true } })
    out.renamed = await heroku.patch('/apps/node-app', { body: { name: 'node-app-renamed' } })
  } else {
    const app = 'node-app-renamed'
    const session = await heroku.post(`/apps/${app}/log-sessions`, { body: { lines: 10 } })
    out.log = await fetch(session.logplex_url)
    const live = await heroku.post(`/apps/${app}/log-sessions`,
      { body: { lines: 1, tail: true } })
    out.tail = await tail(live.logplex_url, 'live from node', 'app[web.1]: live from node')
    const drains = await heroku.get(`/apps/${app}/log-drains`)
    out.removed = await heroku.delete(`/apps/${app}/log-drains/${drains[0].id}`)
    out.drainsAfter = await heroku.get(`/apps/${app}/log-drains`)
    out.deleted = await heroku.delete(`/apps/${app}`)
    out.appsAfter = await heroku.get('/apps')
  }
  process.stdout.write(JSON.stringify(out))
}
main().catch(err => { console.error(err.stack || String(err)); process.exit(1) })
"""


@pytest.fixture(scope="session")
def heroku_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with heroku-client 3.1.4 installed from npm, or skip."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("npm/node not installed")
    directory = tmp_path_factory.mktemp("heroku-client")
    try:
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", "heroku-client@3.1.4"],
            cwd=directory,
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot install heroku-client from npm: {exc}")
    (directory / "walk.js").write_text(NODE_SCRIPT)
    return directory


@pytest.mark.may_skip(
    reason="node/npm not installed: nothing can install heroku-client",
    when=NOTHING_CAN_INSTALL,  # .ci/run installs node and npm: there it must run
)
async def test_heroku_client_walkthrough(running: Running, heroku_client: Path) -> None:
    store = running.daemon.store
    assert store is not None
    _, api_token = await store.create_account("node@example.com")

    async def node(phase: str, *args: str) -> dict[str, Any]:
        done = await trio.run_process(
            ["node", str(heroku_client / "walk.js"), running.base, api_token, phase, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    with trio.fail_after(20):
        setup = await node("setup")
        # Renamed since: its channel (and token) kept the name it was created with.
        (token,) = [t.id for t in store.tokens_of("node-app") if t.name == "app"]
        await trio.to_thread.run_sync(post_logs, running, token, "from node")
        read = await node("read", f"http://127.0.0.1:{running.ports.logs}/logs", token)

    app, drain = setup["app"], setup["drain"]
    assert app["name"] == "node-app" and app["owner"]["email"] == "node@example.com"
    assert app["region"]["name"] == "us"
    assert setup["info"]["id"] == app["id"] and setup["info"]["web_url"] == (
        "http://node-app.herokuapp.com"
    )
    assert drain["url"] == "syslog://127.0.0.1:9"
    assert setup["drains"] == [drain]
    assert [a["id"] for a in setup["apps"]] == [app["id"]]
    assert setup["limits"]["remaining"] > 1190
    assert setup["maintenance"]["maintenance"] is True
    renamed = setup["renamed"]
    assert (renamed["id"], renamed["name"]) == (app["id"], "node-app-renamed")
    assert renamed["web_url"] == "http://node-app-renamed.herokuapp.com"
    line = "2012-12-10T03:00:48.123456Z app[web.1]: "
    assert read["log"] == f"{line}from node\n"
    assert read["tail"] == f"{line}from node\n{line}live from node\n"
    assert read["removed"]["id"] == drain["id"] and read["drainsAfter"] == []
    assert read["deleted"]["id"] == app["id"] and read["appsAfter"] == []
    assert store.channel("node-app") is None
