"""Security review (issue 9): the claims of SECURITY.md, each shown by a test.

Auth on every route of the real daemon, channel isolation of tokens, session ids, secrets
kept out of logs and /metrics, and no injection into drain requests or routed frames.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path

import pytest
import trio

from logplexd.daemon import Daemon
from logplexd.drains.http import build_request
from logplexd.ingest.logs import LogsIngest
from logplexd.router.registry import Registry
from logplexd.store import SESSION_TTL_SECONDS, InvalidDrainUrl, parse_drain_url
from logplexd.web.messages import Request
from tests.helpers.api import AUTH_KEY, PUBLIC_URL, FakeRegistry, call, make_api
from tests.helpers.daemon import KEY, settings_for
from tests.helpers.http import credentials, request
from tests.helpers.syslog import frame

# Routes that answer without credentials, on purpose (SECURITY.md says why).
OPEN_ROUTES = {"session.get", "v3.healthcheck", "openapi", "metrics"}
ACCEPT_V3 = ("Accept", "application/vnd.heroku+json; version=3")
DRAIN_PASSWORD = "drainpass-9f1c"
BAD_URLS = [
    "http://h.example/a\r\nX-Injected: 1",
    "http://h.example/a\nb",
    "http://h.example/a b",
    "http://h.example\r\n/x",
    "https://h.example/\tx",
    "syslog://h.example\r\n:514",
    "http://h.example/\x00",
    "http://u:p@h.example/\x7f",
]


def _fill(template: str) -> str:
    path = re.sub(r"\{\w+:int\}", "1", template)
    return re.sub(r"\{\w+\}", "x", path)


async def _post_logs(port: int, token: str, body: bytes) -> int:
    headers = [("Content-Type", "application/logplex-1")]
    status, _, _ = await request(
        port, "POST", "/logs", body=body, headers=headers, auth=credentials("token", token)
    )
    return status


async def test_daemon_attack_surface(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    daemon = Daemon(settings_for(tmp_path, api_max_body=64 * 1024))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        assert daemon.api is not None

        # 1. Every route of the API listener, without and with wrong credentials.
        checked = 0
        for route in daemon.api.router._routes:
            for method, endpoint in route.endpoints.items():
                if endpoint.name in OPEN_ROUTES:
                    assert not endpoint.auth, endpoint.name
                    continue
                path = _fill(route.template)
                for auth in (
                    None,
                    "wrong-key",
                    credentials("", "wrong-key"),
                    credentials("x", KEY + "x"),
                ):
                    status, headers, body = await request(
                        ports.api, method, path, auth=auth, headers=[ACCEPT_V3]
                    )
                    assert status == 401, (method, path, auth, status, body)
                    assert "www-authenticate" in headers or endpoint.name.startswith("platform")
                checked += 1
        assert checked >= 40

        # 2. Two channels; A's token cannot write into B, whatever APP-NAME says.
        tokens = {}
        for name in ("chan-a", "chan-b"):
            status, _, body = await request(
                ports.api, "PUT", f"/v3/channels/{name}", body={"tokens": ["app"]}
            )
            assert status == 201
            tokens[name] = json.loads(body)["tokens"]["app"]
        token_a, token_b = tokens["chan-a"], tokens["chan-b"]
        body = frame(token_b, "forged-for-b") + frame(token_a, "own")
        assert await _post_logs(ports.logs, token_a, body) == 204
        assert await _post_logs(ports.logs, "t." + str(uuid.uuid4()), frame(token_b, "x")) == 401
        ring_b = daemon.registry.channel("chan-b").ring
        ring_a = daemon.registry.channel("chan-a").ring
        assert len(ring_b) == 0 and len(ring_a) == 2
        status, _, logs = await request(ports.api, "GET", "/v3/channels/chan-b/logs")
        assert status == 200 and b"forged" not in logs

        # 3. A drain URL with a password and an HTTP Basic credential.
        url = f"http://user:{DRAIN_PASSWORD}@127.0.0.1:1/path"
        status, _, _ = await request(
            ports.api, "POST", "/v3/channels/chan-a/drains", body={"url": url}
        )
        assert status == 201
        for bad in BAD_URLS:
            status, _, _ = await request(
                ports.api, "POST", "/v3/channels/chan-a/drains", body={"url": bad}
            )
            assert status == 422, bad

        # 4. Sessions: uuid4 ids, the URL is the only capability.
        status, _, body = await request(
            ports.api, "POST", "/v3/sessions", body={"channel_id": "chan-a", "num": 10}
        )
        assert status == 201
        session_id = json.loads(body)["url"].rsplit("/", 1)[1]
        assert uuid.UUID(session_id).version == 4
        status, _, _ = await request(ports.api, "GET", f"/sessions/{session_id}", auth=None)
        assert status == 200
        status, _, _ = await request(ports.api, "GET", f"/sessions/{uuid.uuid4()}", auth=None)
        assert status == 404

        # 5. Oversized bodies are refused before they are read.
        status, _, _ = await request(ports.api, "PUT", "/v3/channels/big", body=b"x" * (65 * 1024))
        assert status == 413

        # 6. Secrets are absent from /metrics (open on loopback) and from the logs.
        status, _, metrics = await request(ports.api, "GET", "/metrics", auth=None)
        assert status == 200
        text = metrics.decode()
        for secret in (KEY, DRAIN_PASSWORD, token_a, token_b, session_id):
            assert secret not in text, secret
        nursery.cancel_scope.cancel()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "api: created drain" in logged  # the drain was logged, redacted
    for secret in (KEY, DRAIN_PASSWORD, credentials("token", token_a), session_id):
        assert secret not in logged, secret


@pytest.mark.parametrize("bad", BAD_URLS)
async def test_drain_url_with_control_characters_rejected_v2_and_v3(tmp_path: Path, bad: str):
    api = make_api(str(tmp_path))
    v2 = (await call(api, "POST", "/channels", {"name": "x"})).json["channel_id"]
    await call(api, "PUT", "/v3/channels/c", {})
    assert (await call(api, "POST", f"/v2/channels/{v2}/drains", {"url": bad})).status == 422
    assert (await call(api, "POST", "/v3/channels/c/drains", {"url": bad})).status == 422
    made = (await call(api, "POST", "/v3/channels/c/drains", {"url": "http://ok/"})).json
    reply = await call(api, "PUT", f"/v3/channels/c/drains/{made['id']}", {"url": bad})
    assert reply.status == 422
    host = {"host": bad.split("//", 1)[1], "port": 514}
    assert (await call(api, "POST", f"/v2/channels/{v2}/drains", host)).status == 422
    with pytest.raises(InvalidDrainUrl):
        parse_drain_url(bad)


def test_encoded_crlf_stays_encoded_in_the_request_line() -> None:
    target = parse_drain_url("http://u:p%0D%0A@h.example/a%0d%0aX:%20y?q=%0a#frag")
    assert target.request_target == b"/a%0d%0aX:%20y?q=%0a"
    assert b"\r" not in target.host_header and b"\n" not in target.host_header
    assert DRAIN_PASSWORD not in repr(parse_drain_url(f"http://u:{DRAIN_PASSWORD}@h/"))

    class Payload:
        frames, loss_announced, frame_id, data = 1, 0, "ABC", b"x"

    head = build_request(target, Payload(), drain_token="d.x", user_agent="ua")  # type: ignore
    for name, value in head.headers:
        assert b"\r" not in value and b"\n" not in value, name


@pytest.mark.parametrize("name", ["a b", "a\r\nb", "a\nfake", "\x00", "tab\there", "\u2028"])
async def test_token_names_cannot_inject_into_frames(tmp_path: Path, name: str) -> None:
    # Regression: such names were accepted and then written into APP-NAME of routed frames.
    api = make_api(str(tmp_path))
    await call(api, "PUT", "/v3/channels/c", {})
    assert (await call(api, "POST", "/v3/channels/c/tokens", {"name": name})).status == 400
    assert (await call(api, "PUT", "/v3/channels/c", {"tokens": [name]})).status == 400
    assert (await call(api, "POST", "/channels", {"name": "x", "tokens": [name]})).status == 400
    v2 = (await call(api, "POST", "/channels", {"name": "y"})).json["channel_id"]
    assert (await call(api, "POST", f"/v2/channels/{v2}/tokens", {"name": name})).status == 422
    assert (await call(api, "POST", "/v3/channels/c/tokens", {"name": "web.1"})).status == 201


async def test_sessions_expire_after_360_seconds(tmp_path: Path) -> None:
    from logplexd.api import ControlApi
    from logplexd.store import open_store

    now = [1_000_000.0]
    api = ControlApi(
        open_store(str(tmp_path), clock=lambda: now[0]),
        FakeRegistry(),
        auth_key=AUTH_KEY,
        public_url=PUBLIC_URL,
    )
    assert SESSION_TTL_SECONDS == 360
    await call(api, "PUT", "/v3/channels/c", {})
    ids = set()
    for _ in range(20):
        url = (await call(api, "POST", "/v3/sessions", {"channel_id": "c"})).json["url"]
        ids.add(url.rsplit("/", 1)[1])
    assert len(ids) == 20 and all(uuid.UUID(i).version == 4 for i in ids)
    some = next(iter(ids))
    now[0] += SESSION_TTL_SECONDS - 1
    assert api.store.session(some) is not None
    now[0] += 1
    assert api.store.session(some) is None


async def test_logs_token_auth_never_reaches_another_channel() -> None:
    registry = Registry()
    a, b = f"t.{uuid.uuid4()}", f"t.{uuid.uuid4()}"
    registry.add_token("A", a, "app")
    registry.add_token("B", b, "app")
    ingest = LogsIngest(registry)
    auth = "Basic " + credentials("token", a)
    headers = {"authorization": auth, "content-type": "application/logplex-1"}
    body = b"".join(frame(t, "m") for t in (b, b, a, "x"))
    assert (await ingest.handle("POST", headers, body)).status == 204
    assert len(registry.channel("B").ring) == 0
    assert len(registry.channel("A").ring) == 4
    # B's token as user "token" with the wrong password shape, or a credential: refused.
    for header in (
        "Basic " + credentials("token", "x" + b),
        "Basic " + credentials(b, ""),
        "Bearer " + b,
    ):
        headers["authorization"] = header
        assert (await ingest.handle("POST", headers, body)).status == 401
    assert len(registry.channel("B").ring) == 0


async def test_api_auth_is_not_fooled_by_partial_or_encoded_keys(tmp_path: Path) -> None:
    api = make_api(str(tmp_path))

    for value in (
        "",
        "Basic",
        "Basic ",
        f"Bearer {AUTH_KEY}",
        f"Basic {AUTH_KEY[:-1]}",
        f"Basic {AUTH_KEY}x",
        f"Basic {credentials(AUTH_KEY, '')}",
        f"Basic {credentials('', AUTH_KEY)}",  # the key as a password is not a credential here
    ):
        reply = await call(api, "GET", "/healthcheck", headers=(("Authorization", value),))
        assert reply.status == 401, value
    request = Request("GET", "/healthcheck", (("authorization", f"basic {AUTH_KEY}"),), b"", "r")
    assert (await api.handle(request)).status == 200
