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
from logplexd.ingest.logs import LogsIngest, LogsListener
from logplexd.router.registry import Registry
from logplexd.store import SESSION_TTL_SECONDS, InvalidDrainUrl, parse_drain_url
from logplexd.web import InvalidJson, parse_json
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


# -- issue 22: hostile input ---------------------------------------------------------------------


async def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    return received


async def test_request_smuggling_is_refused_on_every_listener(tmp_path: Path) -> None:
    """Content-Length with Transfer-Encoding: 400 and close on the API and the logs listener;
    the request is not processed and the one pipelined behind it is not answered."""
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        status, _, body = await request(
            ports.api, "PUT", "/v3/channels/c", body={"tokens": ["app"]}
        )
        token = json.loads(body)["tokens"]["app"]
        logs_body = frame(token, "smuggled")
        smuggled = b"GET /v3/channels/c HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\n\r\n"
        cases = {
            ports.api: b"PUT /v3/channels/made HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
            + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" + smuggled % KEY.encode(),
            ports.logs: b"POST /logs HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
            + credentials("token", token).encode()
            + b"\r\nContent-Type: application/logplex-1\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (len(logs_body), len(logs_body), logs_body)
            + b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n",
        }
        for port, data in cases.items():
            answer = await _raw_exchange(port, data)
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert answer.count(b"HTTP/1.1 ") == 1, answer
            assert b"\r\nConnection: close\r\n" in answer
        assert daemon.store.channel("made") is None
        assert len(daemon.registry.channel("c").ring) == 0
        nursery.cancel_scope.cancel()


SURROGATE = "\ud800"


def _surrogate_bodies(value: dict[str, object]) -> list[bytes]:
    """``value`` as JSON with each lone surrogate escaped (``"\\ud800"``), and raw
    (``\\xed\\xa0\\x80``: what ``json.loads`` of bytes lets through as "surrogatepass")."""
    escaped = json.dumps(value).encode()
    return [escaped, escaped.replace(b"\\ud800", b"\xed\xa0\x80")]


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # an escaped pair is one character
        ('{"a": "\U0001f600"}'.encode(), {"a": "\U0001f600"}),
        ('{"a": "\u00e9"}'.encode("utf-16"), {"a": "\u00e9"}),  # json's detection, as before
        (b'{"a": "\\\\ud800"}', {"a": "\\ud800"}),  # an escaped backslash, then text
        (b'\xef\xbb\xbf{"a": 1}', {"a": 1}),  # a UTF-8 BOM
    ],
)
def test_parse_json_reads_what_json_means(body: bytes, value: object) -> None:
    assert parse_json(body) == value


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": "\\ud800"}',
        b'{"a": "\\uDFFF x"}',
        b'{"\\ud800": 1}',
        b'[[[{"a": ["\\ude00\\ud83d"]}]]]',  # a pair in the wrong order is two lone ones
        b'{"a": "\xed\xa0\x80"}',
        b'{"a": "\xff"}',
        b'{"a": NaN}',
        b"[" * 100_000 + b"]" * 100_000,
        b"",
    ],
)
def test_parse_json_refuses(body: bytes) -> None:
    with pytest.raises(InvalidJson):
        parse_json(body)


async def test_lone_surrogates_in_json_are_refused_on_every_route(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """They passed validation and made the store raise UnicodeEncodeError: 500 and a
    traceback. Now every route parses JSON through web.parse_json and answers 4xx."""
    daemon = Daemon(settings_for(tmp_path))
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        assert daemon.api is not None
        await request(ports.api, "PUT", "/v3/channels/x", body={})
        status, _, body = await request(ports.api, "POST", "/channels", body={"name": "v2"})
        v2 = json.loads(body)["channel_id"]
        headers = [ACCEPT_V3, ("Content-Type", "application/json")]

        # The cases of the report: a v2 channel name, a drain URL on v2 and v3.
        for method, path, value in (
            ("POST", "/channels", {"name": "a" + SURROGATE}),
            ("POST", f"/v2/channels/{v2}/drains", {"url": "syslog://h" + SURROGATE}),
            ("POST", f"/v2/channels/{v2}/drains", {"host": "h" + SURROGATE}),
            ("POST", "/v3/channels/x/drains", {"url": "syslog://h" + SURROGATE + ":1/"}),
            ("PUT", "/v3/channels/y", {"tokens": ["a" + SURROGATE]}),
            ("POST", "/apps", {"name": "a" + SURROGATE}),
        ):
            for raw in _surrogate_bodies(value):
                status, _, body = await request(ports.api, method, path, body=raw, headers=headers)
                assert status == 400, (method, path, raw, status, body)

        # Every route, whatever it expects: never 5xx.
        everything = {
            key: "a" + SURROGATE
            for key in ("name", "url", "host", "channel_id", "channel", "email", "token")
        }
        everything.update({"port": 514, "tokens": ["a" + SURROGATE], "a" + SURROGATE: 1})
        checked = 0
        for route in daemon.api.router._routes:
            for method in route.endpoints:
                path = _fill(route.template).replace("/1/", f"/{v2}/")
                for raw in _surrogate_bodies(everything):
                    status, _, body = await request(
                        ports.api, method, path, body=raw, headers=headers
                    )
                    assert status < 500, (method, path, status, body)
                    checked += 1
        assert checked >= 80
        assert daemon.store.channel("y") is None
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:59569/",  # was stored as syslog://127.0.0.1:59569/:47815 (port 59569)
        "127.0.0.1/x",  # connected to port 601
        "h.example:1",
        "user@h.example",
        "h.example/",
        "h.example?x",
        "h.example#x",
        "[::1]:514",
        "999.1.1.1",
        "-h.example",
        "h..example",
        "fe80::1%eth0",
        "a" * 64 + ".example",
    ],
)
async def test_v2_drain_host_must_be_a_hostname_or_an_ip(tmp_path: Path, host: str) -> None:
    api = make_api(str(tmp_path))
    v2 = (await call(api, "POST", "/channels", {"name": "x"})).json["channel_id"]
    made = await call(api, "POST", f"/v2/channels/{v2}/drains", {"host": host, "port": 47815})
    assert made.status == 422, made.body
    assert made.json["error"].startswith("Invalid drain destination: ")
    assert api.store.drains_of(str(v2)) == []


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("logs.example.com", "syslog://logs.example.com:47815"),
        ("logs.example.com.", "syslog://logs.example.com.:47815"),
        ("my_host-1", "syslog://my_host-1:47815"),
        ("127.0.0.1", "syslog://127.0.0.1:47815"),
        ("::1", "syslog://[::1]:47815"),
        ("[2001:db8::1]", "syslog://[2001:db8::1]:47815"),
    ],
)
async def test_v2_drain_host_forms_that_stay_accepted(tmp_path: Path, host: str, url: str):
    api = make_api(str(tmp_path))
    v2 = (await call(api, "POST", "/channels", {"name": "x"})).json["channel_id"]
    made = await call(api, "POST", f"/v2/channels/{v2}/drains", {"host": host, "port": 47815})
    assert (made.status, made.json.get("url")) == (201, url), made.body


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        (["2", "5"], 400),  # was 204: the first line won
        (["5", "2"], 400),
        (["2, 5"], 400),
        (["2", "2, 5"], 400),
        (["2", "x"], 400),
        (["\u00b2"], 400),  # a Latin-1 superscript two: isdigit(), but not a count (was 500)
        ([""], 400),
        (["2", "2"], 204),  # one count, stated twice (RFC 9110 8.6 reads "42, 42" as 42)
        (["2, 2"], 204),  # was 400
        (["2,,2 "], 204),  # empty list members are ignored (RFC 9110 5.6.1)
        (["2"], 204),
    ],
)
async def test_duplicate_msg_count_lines_mean_their_joined_value(lines, status) -> None:
    registry = Registry()
    token = f"t.{uuid.uuid4()}"
    registry.add_token("A", token, "app")
    listener = LogsListener(LogsIngest(registry))
    headers = [
        ("authorization", "Basic " + credentials("token", token)),
        ("content-type", "application/logplex-1"),
        *(("logplex-msg-count", line) for line in lines),
    ]
    body = frame(token, "one") + frame(token, "two")
    response = await listener.handle(Request("POST", "/logs", tuple(headers), body))
    assert response.status == status, (lines, response.body)
    assert len(registry.channel("A").ring) == (2 if status == 204 else 0)
