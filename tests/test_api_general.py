"""Sessions, health checks, authentication, and the errors every route shares."""

from __future__ import annotations

import json
import re

import pytest

from logplexd.store import CredentialRecord
from logplexd.web.credentials import ANY_CHANNEL, FULL_API, hash_password
from tests.helpers.api import (
    AUTH,
    AUTH_KEY,
    JSON,
    PUBLIC_URL,
    assert_error,
    basic,
    call,
    make_api,
)

UUID_RE = "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


@pytest.fixture
async def api(tmp_path):
    api = make_api(str(tmp_path))
    await call(api, "PUT", "/v3/channels/app-123", {})
    yield api
    api.store.close()


# -- sessions ----------------------------------------------------------------------------------


async def test_v2_session(api):
    reply = await call(
        api, "POST", "/v2/sessions", {"channel_id": "app-123", "num": "5", "tail": True}
    )
    assert reply.status == 201
    assert re.fullmatch(f"{re.escape(PUBLIC_URL)}/sessions/({UUID_RE})", reply.json["url"])
    assert "location" not in reply.headers
    session_id = reply.json["url"].rsplit("/", 1)[1]
    session = api.store.session(session_id)
    assert session is not None
    assert session.body == {"channel_id": "app-123", "num": "5", "tail": True}


async def test_v2_session_does_not_check_the_channel(api):
    reply = await call(api, "POST", "/v2/sessions", {"channel_id": "unknown"})
    assert reply.status == 201


async def test_v3_session(api):
    reply = await call(api, "POST", "/v3/sessions", {"channel_id": "app-123", "num": 10})
    assert reply.status == 201
    assert reply.headers["location"] == reply.json["url"]
    assert reply.json["url"].startswith(f"{PUBLIC_URL}/sessions/")


@pytest.mark.parametrize("path", ["/v2/sessions", "/v3/sessions"])
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "channel_id is required and must be a string"),
        ({"channel_id": 123}, "channel_id is required and must be a string"),
        ({"channel_id": "app-123", "num": "x"}, "num must be a non-negative integer"),
        ({"channel_id": "app-123", "num": -1}, "num must be a non-negative integer"),
        ({"channel_id": "app-123", "num": True}, "num must be a non-negative integer"),
        ({"channel_id": "app-123", "ps": 1}, "ps must be a string"),
    ],
)
async def test_session_bad_bodies(api, path, body, message):
    assert_error(await call(api, "POST", path, body), 400, message)


async def test_v3_session_unknown_channel(api):
    assert_error(
        await call(api, "POST", "/v3/sessions", {"channel_id": "nope"}), 422, "channel not found"
    )


async def test_sessions_expire(tmp_path):
    api = make_api(str(tmp_path), session_ttl=0.0)
    reply = await call(api, "POST", "/v2/sessions", {"channel_id": "x"})
    assert api.store.session(reply.json["url"].rsplit("/", 1)[1]) is None
    api.store.close()


# -- health and description --------------------------------------------------------------------


async def test_healthcheck(api):
    reply = await call(api, "GET", "/healthcheck")
    assert (reply.status, reply.json) == (200, {"status": "normal"})
    unauthorized = await call(api, "GET", "/healthcheck", headers=())
    assert_error(unauthorized, 401, "Unauthorized")


async def test_v3_healthcheck_needs_no_auth(api):
    reply = await call(api, "GET", "/v3/healthcheck", headers=())
    assert (reply.status, reply.body) == (200, b"OK")
    assert reply.headers["content-type"].startswith("text/plain")


async def test_healthcheck_reports_a_failed_store(api):
    api.store._fail("disk full")
    assert_error(await call(api, "GET", "/healthcheck"), 503, "store unavailable")
    assert_error(await call(api, "PUT", "/v3/channels/x", {}), 503, "store unavailable")


async def test_openapi_document(api):
    reply = await call(api, "GET", "/openapi.json", headers=())
    assert reply.status == 200
    document = reply.json
    assert document["openapi"].startswith("3.")
    assert "/v3/channels/{channel}" in document["paths"]


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        (),
        (("Authorization", "Basic"),),
        (("Authorization", "Basic wrong"),),
        (("Authorization", f"Bearer {AUTH_KEY}"),),
        (("Authorization", f"Basic {AUTH_KEY}x"),),
        (basic("nobody", "nothing"),),
        (("Authorization", "Basic !!!notbase64"),),
    ],
)
async def test_unauthorized(api, headers):
    reply = await call(api, "GET", "/v3/channels/app-123", headers=headers)
    assert_error(reply, 401, "Unauthorized")
    assert reply.headers["www-authenticate"] == "Basic realm=Logplex"


async def test_scheme_is_case_insensitive(api):
    reply = await call(
        api, "GET", "/v3/channels/app-123", headers=(("Authorization", f"basic {AUTH_KEY}"),)
    )
    assert reply.status == 200


async def test_stored_credentials(api):
    full = CredentialRecord("A" * 32, hash_password("pw-full", n=2**4), (FULL_API,), "ops")
    ingest_only = CredentialRecord(
        "B" * 32, hash_password("pw-any", n=2**4), (ANY_CHANNEL,), "shuttle"
    )
    await api.store.add_credential(full)
    await api.store.add_credential(ingest_only)
    ok = await call(api, "GET", "/v3/channels/app-123", headers=(basic("A" * 32, "pw-full"),))
    assert ok.status == 200
    # Cached after the first check, still right.
    assert (
        await call(api, "GET", "/healthcheck", headers=(basic("A" * 32, "pw-full"),))
    ).status == 200
    wrong = await call(api, "GET", "/healthcheck", headers=(basic("A" * 32, "pw-other"),))
    assert wrong.status == 401
    no_permission = await call(api, "GET", "/healthcheck", headers=(basic("B" * 32, "pw-any"),))
    assert no_permission.status == 401
    await api.store.revoke_credential("A" * 32)
    revoked = await call(api, "GET", "/healthcheck", headers=(basic("A" * 32, "pw-full"),))
    assert revoked.status == 401


async def test_auth_is_checked_before_the_body(api):
    reply = await call(api, "PUT", "/v3/channels/x", raw=b"{", headers=(JSON,))
    assert reply.status == 401


# -- shared errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/v3/channels", "/v3/channels/a/b", "/v4/channels/a", "/v2/channels/1x"]
)
async def test_unknown_route(api, path):
    assert_error(await call(api, "GET", path), 404, "Not Found")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/v3/channels/app-123", "PUT, GET, DELETE"),
        ("HEAD", "/v3/channels/app-123", "PUT, GET, DELETE"),
        ("OPTIONS", "/v3/channels/app-123", "PUT, GET, DELETE"),
        ("GET", "/channels", "POST"),
        ("PUT", "/v2/channels/1", "GET, DELETE"),
        ("GET", "/v3/sessions", "POST"),
        ("POST", "/healthcheck", "GET"),
    ],
)
async def test_wrong_method(api, method, path, allow):
    reply = await call(api, method, path, headers=())
    assert_error(reply, 405, "Method Not Allowed")
    assert reply.headers["allow"] == allow


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_body_is_415(api, content_type):
    headers = [AUTH] if content_type is None else [AUTH, ("Content-Type", content_type)]
    reply = await call(api, "PUT", "/v3/channels/x", raw=b'{"tokens":[]}', headers=tuple(headers))
    assert_error(reply, 415, "Content-Type must be application/json")


async def test_json_with_charset_is_accepted(api):
    headers = (AUTH, ("Content-Type", "application/json; charset=utf-8"))
    reply = await call(api, "PUT", "/v3/channels/x", raw=b'{"tokens":["a"]}', headers=headers)
    assert reply.status == 201


@pytest.mark.parametrize(
    "raw",
    [b"{", b"{'a': 1}", b"\xff\xfe", b'{"a": NaN}', b"[" * 100000, b'{"tokens": ["a"]} x'],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/channels"),
        ("PUT", "/v3/channels/x"),
        ("POST", "/v3/channels/app-123/drains"),
        ("POST", "/v3/sessions"),
        ("POST", "/v2/channels/1/tokens"),
    ],
)
async def test_bad_json_is_400(api, raw, method, path):
    await call(api, "POST", "/channels", {"name": "one"})
    assert_error(await call(api, method, path, raw=raw), 400, "invalid JSON")


async def test_big_integers_are_not_a_crash(api):
    body = json.dumps({"channel_id": "app-123", "num": 10**40}).encode()
    assert_error(
        await call(api, "POST", "/v3/sessions", raw=body), 400, "num must be a non-negative integer"
    )
    body = json.dumps({"channel_id": "app-123", "extra": 10**40}).encode()
    assert (await call(api, "POST", "/v3/sessions", raw=body)).status == 201
