"""One error format per path family (issue 20): on the Platform API's paths every error is
``{"id", "message"}`` with ``Request-Id`` (and ``RateLimit-Remaining`` for good
credentials), including those no route writes: the HTTP server's 400, 408, 413, 431 and
500 and the control rods' 503. Logplex paths keep ``{"error": ...}``.

The server is the real one on a socket, wired as the daemon wires it
(``ApiListener(gate=rods.api_gate)``, ``serve_http(errors=api.error_response)``); the last
tests run the daemon itself.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from logplexd.api import ApiListener, ControlApi, Rods, RodState, mount_platform
from logplexd.api.platform import PlatformApi
from logplexd.daemon import Daemon
from logplexd.tails import TailSessions
from logplexd.web import Request, Response, serve_http
from tests.helpers.api import AUTH_KEY, make_api
from tests.helpers.daemon import KEY, settings_for
from tests.helpers.http import basic_auth, request
from tests.helpers.net import read_until_eof

SHORT = 0.2
MAX_BODY = 1024
MAX_HEADER = 1024
V3 = "application/vnd.heroku+json; version=3"


@dataclass
class Served:
    port: int
    api: ControlApi
    rods: Rods
    account_token: str


async def boom(request: Request, params: dict[str, str]) -> Response:
    raise RuntimeError("a handler bug")


@pytest.fixture
async def served(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Served]:
    api = make_api(str(tmp_path / "data"))
    mount_platform(api, api.store)
    _, token = await api.store.create_account("dev@example.com")
    # A route of each family whose handler fails unexpectedly.
    api.add_route("GET", "/apps/{app}/boom", boom, name="platform.boom", auth=False)
    api.add_route("GET", "/v3/boom", boom, name="v3.boom", auth=False)
    rods = Rods(RodState(), tails=TailSessions())
    listener = ApiListener(api, gate=rods.api_gate)
    port = await nursery.start(
        functools.partial(
            serve_http,
            listener.handle,
            "127.0.0.1",
            0,
            max_body=MAX_BODY,
            max_header_bytes=MAX_HEADER,
            header_timeout=SHORT,
            body_timeout=SHORT,
            errors=api.error_response,
        )
    )
    yield Served(port, api, rods, token)
    api.store.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


async def exchange(port: int, raw: bytes, *, limit: float = 5.0) -> Answer:
    """``raw`` on a fresh connection; the one response the server sends, then closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(raw)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    data = await read_until_eof(stream, limit)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return Answer(int(lines[0].split()[1]), headers, json.loads(body))


def auth_header(value: str) -> bytes:
    return f"Authorization: {value}\r\n".encode()


def operator() -> bytes:
    return auth_header(f"Basic {AUTH_KEY}")


def platform_error(answer: Answer, status: int, error_id: str, *, rate_limited: bool) -> None:
    assert answer.status == status, answer
    assert set(answer.body) == {"id", "message"} and answer.body["id"] == error_id, answer.body
    assert answer.body["message"]
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["request-id"]
    assert ("ratelimit-remaining" in answer.headers) is rate_limited, answer.headers
    if rate_limited:
        assert 0 < int(answer.headers["ratelimit-remaining"]) <= 1200


def logplex_error(answer: Answer, status: int, message: str) -> None:
    assert (answer.status, answer.body) == (status, {"error": message}), answer
    assert answer.headers["request-id"]
    assert "ratelimit-remaining" not in answer.headers


# -- 408 ----------------------------------------------------------------------------------------


async def test_408_slow_head(served: Served) -> None:
    # The head never ends: only the request line is known, so no credentials either.
    answer = await exchange(served.port, b"GET /apps/web HTTP/1.1\r\nHost: x\r\n")
    platform_error(answer, 408, "request_timeout", rate_limited=False)
    answer = await exchange(served.port, b"GET /v3/channels/web HTTP/1.1\r\nHost: x\r\n")
    logplex_error(answer, 408, "Request timeout")


async def test_408_slow_body(served: Served) -> None:
    body = b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: 10\r\n\r\n123"
    answer = await exchange(served.port, body % (b"/apps", operator()))
    platform_error(answer, 408, "request_timeout", rate_limited=True)
    answer = await exchange(served.port, body % (b"/v3/channels/web", operator()))
    logplex_error(answer, 408, "Request timeout")


# -- 413 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
async def test_413_body_too_large(served: Served, chunked: bool) -> None:
    account = auth_header(basic_auth("", served.account_token))
    if chunked:
        framing = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % (MAX_BODY * 2)
    else:
        framing = b"Content-Length: %d\r\n\r\n" % (MAX_BODY * 2)
    head = b"POST %s HTTP/1.1\r\nHost: x\r\n%s" + framing
    answer = await exchange(served.port, head % (b"/apps", account))
    platform_error(answer, 413, "request_entity_too_large", rate_limited=True)
    answer = await exchange(served.port, head % (b"/v3/channels/web", account))
    logplex_error(answer, 413, "Request body too large")


# -- 431 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("whole", [True, False])
async def test_431_header_too_large(served: Served, whole: bool) -> None:
    filler = b"X-Filler: " + b"a" * (MAX_HEADER * 4) + b"\r\n"
    if whole:  # a head that ends, measured once whole; its credentials are known
        end, rate_limited = b"\r\n", True
    else:  # a head that never ends within the limit (h11's own 431): only its request line
        end, rate_limited = b"", False
    for path, family in ((b"/apps", "platform"), (b"/v3/channels/web", "logplex")):
        raw = b"GET %s HTTP/1.1\r\nHost: x\r\n%s%s%s" % (path, operator(), filler, end)
        answer = await exchange(served.port, raw)
        if family == "platform":
            platform_error(
                answer, 431, "request_header_fields_too_large", rate_limited=rate_limited
            )
        else:
            logplex_error(answer, 431, "Request header too large")


# -- 400 ----------------------------------------------------------------------------------------


async def test_400_malformed_framing(served: Served) -> None:
    raw = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = await exchange(served.port, raw % b"/apps")
    platform_error(answer, 400, "bad_request", rate_limited=False)
    answer = await exchange(served.port, raw % b"/v3/channels/web")
    logplex_error(answer, 400, "Malformed HTTP request: Content-Length with Transfer-Encoding")


# -- 500 ----------------------------------------------------------------------------------------


async def test_500_unexpected_exception(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="logplexd.web")
    account = basic_auth("", served.account_token)
    raw = b"GET %s?api_key=q-secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n"
    answer = await exchange(served.port, raw % (b"/apps/web/boom", auth_header(account)))
    platform_error(answer, 500, "internal_server_error", rate_limited=True)
    answer = await exchange(served.port, raw % (b"/v3/boom", operator()))
    logplex_error(answer, 500, "Internal Server Error")
    # Logged with its traceback, without the credentials or the target.
    records = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert len(records) == 2
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in records)
    assert "a handler bug" in caplog.text and "Traceback" in caplog.text
    for secret in (AUTH_KEY, served.account_token, account, "q-secret", "/boom"):
        assert secret not in caplog.text


# -- 503 (control rods) -------------------------------------------------------------------------


async def test_503_control_rods(served: Served) -> None:
    account = [("Authorization", basic_auth("", served.account_token)), ("Accept", V3)]
    served.rods.set({"api_status": "disabled"})
    status, headers, body = await request(served.port, "GET", "/apps", auth=None, headers=account)
    assert status == 503
    assert json.loads(body) == {
        "id": "unavailable",
        "message": "API is disabled (control rod api_status)",
    }
    assert headers["request-id"] and 0 < int(headers["ratelimit-remaining"]) <= 1200
    status, headers, body = await request(served.port, "GET", "/v3/channels/web", auth=AUTH_KEY)
    assert (status, json.loads(body)) == (
        503,
        {"error": "API is disabled (control rod api_status)"},
    )
    assert "ratelimit-remaining" not in headers

    served.rods.set({"api_status": "read_only"})
    status, headers, body = await request(
        served.port, "POST", "/apps", body={"name": "web"}, auth=None, headers=account
    )
    assert (status, json.loads(body)["id"]) == (503, "unavailable")
    status, _, body = await request(
        served.port, "PUT", "/v3/channels/web", body={"tokens": []}, auth=AUTH_KEY
    )
    assert (status, json.loads(body)) == (
        503,
        {"error": "API is read-only (control rod api_status)"},
    )
    # What the rods leave open still answers, in its own format.
    status, _, body = await request(served.port, "GET", "/apps/nope", auth=None, headers=account)
    assert (status, json.loads(body)["id"]) == (404, "not_found")

    served.rods.set({"api_status": "normal", "deny_tail_sessions": True})
    status, _, body = await request(
        served.port, "POST", "/v3/sessions", body={"channel_id": "web"}, auth=AUTH_KEY
    )
    assert (status, json.loads(body)) == (
        503,
        {"error": "tail sessions are denied (control rod deny_tail_sessions)"},
    )


async def test_only_platform_prefixes_are_platform_paths(served: Served) -> None:
    for path, platform in (
        (b"/apps", True),
        (b"/apps/x/log-drains", True),
        (b"/account", True),
        (b"/users/~/apps", True),
        (b"/appsx", False),
        (b"/v2/channels/1", False),
        (b"/sessions/abc", False),
        (b"/healthcheck", False),
        (b"/channels", False),
    ):
        raw = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (path, MAX_BODY + 1)
        answer = await exchange(served.port, raw)
        assert answer.status == 413
        assert ("id" in answer.body) is platform, (path, answer.body)


# -- the daemon, wired for real -----------------------------------------------------------------


async def test_daemon_answers_server_and_rod_errors_by_path_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(self: PlatformApi, call: Any) -> Any:
        raise KeyError("unexpected")

    monkeypatch.setattr(PlatformApi, "_list_apps", broken)
    daemon = Daemon(settings_for(tmp_path, api_max_body=1024), environ={})
    operator_v3 = [("Accept", V3)]
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(daemon.serve)
        big = b"x" * 2048
        status, headers, body = await request(
            ports.api, "POST", "/apps", body=big, headers=operator_v3
        )
        assert (status, json.loads(body)["id"]) == (413, "request_entity_too_large")
        assert headers["ratelimit-remaining"] and headers["request-id"]
        status, _, body = await request(ports.api, "PUT", "/v3/channels/web", body=big)
        assert (status, json.loads(body)) == (413, {"error": "Request body too large"})

        with caplog.at_level(logging.ERROR, logger="logplexd.web"):
            status, headers, body = await request(ports.api, "GET", "/apps", headers=operator_v3)
        assert (status, json.loads(body)["id"]) == (500, "internal_server_error")
        assert headers["ratelimit-remaining"] and headers["request-id"]
        assert "KeyError" in caplog.text and KEY not in caplog.text

        daemon.rods.set({"api_status": "disabled"})
        status, headers, body = await request(ports.api, "GET", "/apps", headers=operator_v3)
        assert (status, json.loads(body)["id"]) == (503, "unavailable")
        assert headers["ratelimit-remaining"] and headers["request-id"]
        status, _, body = await request(ports.api, "GET", "/v3/channels/web")
        assert (status, json.loads(body)) == (
            503,
            {"error": "API is disabled (control rod api_status)"},
        )
        nursery.cancel_scope.cancel()
