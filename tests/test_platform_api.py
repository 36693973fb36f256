"""Platform API routes, sans-IO: every route and convention with exact statuses and bodies."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
import trio.testing

from logplexd.api import ControlApi
from logplexd.api.platform import (
    OPERATOR_EMAIL,
    OPERATOR_ID,
    PlatformApi,
    drain_uuid,
    mount_platform,
)
from logplexd.api.platform.conventions import NOT_ACCEPTABLE_MESSAGE, RATE_LIMIT_MESSAGE
from logplexd.store import EmbeddedStore, open_store
from logplexd.web.messages import Request, Response
from tests.helpers.http import basic_auth as basic

KEY = "k"
V3 = "application/vnd.heroku+json; version=3"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


OPERATOR_AUTH = basic("", KEY)


@dataclass
class Env:
    api: ControlApi
    store: EmbeddedStore
    platform: PlatformApi
    data_dir: Path

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: str | None = OPERATOR_AUTH,
        accept: str | None = V3,
        headers: dict[str, str] | None = None,
    ) -> Response:
        sent: dict[str, str] = {"content-type": "application/json"}
        if auth is not None:
            sent["authorization"] = auth
        if accept is not None:
            sent["accept"] = accept
        sent.update({k.lower(): v for k, v in (headers or {}).items()})
        raw = (
            body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        )
        request = Request(method, path, tuple(sent.items()), raw, request_id="req-1")
        return await self.api.handle(request)


def payload(response: Response) -> Any:
    assert isinstance(response.body, bytes)
    return json.loads(response.body)


def error(response: Response) -> tuple[int, str]:
    body = payload(response)
    assert set(body) == {"id", "message"} and body["message"]
    return response.status, body["id"]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = open_store(str(tmp_path))
    api = ControlApi(store, None, auth_key=KEY, public_url="http://logplex.test")
    platform = mount_platform(api, store)
    try:
        yield Env(api, store, platform, tmp_path)
    finally:
        api.close()
        store.close()


async def new_account(env: Env, email: str) -> tuple[str, str]:
    # In the store, as `logplexd accounts create` makes it.
    account, token = await env.store.create_account(email)
    return account.id, token


# -- Accept, authentication, Request-Id, method override -------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "application/json",
        "*/*",
        "application/vnd.heroku+json",
        "application/vnd.heroku+json; version=2",
        "application/vnd.heroku+json; version=31",
    ],
)
async def test_accept_without_version_3_is_406(env: Env, accept: str | None) -> None:
    response = await env.call("GET", "/apps", accept=accept)
    assert error(response) == (406, "not_acceptable")
    assert payload(response)["message"] == NOT_ACCEPTABLE_MESSAGE


@pytest.mark.parametrize(
    "accept",
    [
        V3,
        "application/vnd.heroku+json; version=3.cedar-acm",
        'text/html, application/vnd.heroku+json;version="3"',
    ],
)
async def test_accept_version_3_and_variants(env: Env, accept: str) -> None:
    response = await env.call("GET", "/apps", accept=accept)
    assert response.status == 200 and payload(response) == []


async def test_authentication_forms(env: Env) -> None:
    _, token = await new_account(env, "dev@example.com")
    accepted = [
        f"Basic {KEY}",  # the raw auth key, as the Logplex API takes it
        basic("", KEY),
        basic("dev@example.com", token),
        basic("DEV@example.com", token),
        basic("", token),  # heroku3 and heroku-client
        f"Bearer {token}",
    ]
    for auth in accepted:
        response = await env.call("GET", "/account/rate-limits", auth=auth)
        assert response.status == 200, auth
    refused: list[str | None] = [
        None,
        "Basic",
        "Basic !!!",
        basic("dev@example.com", "wrong"),
        basic("other@example.com", token),
        basic("", "wrong"),
        basic("", ""),
        f"Bearer {KEY}x",
        f"Digest {token}",
    ]
    for refused_auth in refused:
        response = await env.call("GET", "/apps", auth=refused_auth)
        assert error(response) == (401, "unauthorized"), refused_auth
        assert response.header("RateLimit-Remaining") is None


async def test_account_created_after_start_is_picked_up(env: Env) -> None:
    response = await env.call("GET", "/account", auth=basic("", "not-yet"))
    assert response.status == 401
    account_id, token = await new_account(env, "late@example.com")
    response = await env.call("GET", "/account", auth=basic("late@example.com", token))
    assert response.status == 200
    body = payload(response)
    assert (body["id"], body["email"]) == (account_id, "late@example.com")
    assert TIMESTAMP.fullmatch(body["created_at"])
    response = await env.call("GET", "/account")
    assert (payload(response)["id"], payload(response)["email"]) == (OPERATOR_ID, OPERATOR_EMAIL)


async def test_every_response_has_request_id_etag_and_json(env: Env) -> None:
    for response in [
        await env.call("GET", "/apps"),
        await env.call("POST", "/apps", {"name": "hdrs"}),
        await env.call("GET", "/apps/nope"),
        await env.call("GET", "/apps", auth=None),
        await env.call("GET", "/apps", accept=None),
    ]:
        assert response.header("Request-Id") == "req-1"
        assert re.fullmatch(r'"[0-9a-f]{32}"', response.header("ETag") or "")
        assert response.header("Content-Type") == "application/json"


async def test_method_override_and_405(env: Env) -> None:
    await env.call("POST", "/apps", {"name": "over"})
    response = await env.call(
        "POST", "/apps/over", {"maintenance": True}, headers={"X-Http-Method-Override": "PATCH"}
    )
    assert response.status == 200 and payload(response)["maintenance"] is True
    response = await env.call("POST", "/apps/over", headers={"X-Http-Method-Override": "get"})
    assert response.status == 200 and payload(response)["name"] == "over"
    response = await env.call("PUT", "/apps")
    assert error(response) == (405, "method_not_allowed")
    assert response.header("Allow") == "GET, POST, HEAD"
    response = await env.call("POST", "/apps/over", headers={"X-Http-Method-Override": "PUT"})
    assert error(response) == (405, "method_not_allowed")
    response = await env.call("POST", "/apps/over", headers={"X-Http-Method-Override": "DELETE"})
    assert response.status == 200
    assert env.store.channel("over") is None


async def test_head_is_get(env: Env) -> None:
    response = await env.call("HEAD", "/apps")
    assert response.status == 200 and response.header("Content-Range") == "ids ..; max=200"


async def test_bad_bodies(env: Env) -> None:
    response = await env.call("POST", "/apps", b"{nope")
    assert error(response) == (400, "bad_request")
    response = await env.call("POST", "/apps", [1])
    assert error(response) == (422, "invalid_params")
    # An empty body with Content-Type: application/json (heroku3 on GET and DELETE).
    response = await env.call("POST", "/apps", b"")
    assert response.status == 201 and re.fullmatch(r"app-[0-9a-f]{8}", payload(response)["name"])


# -- apps --------------------------------------------------------------------------------------


async def test_app_create_get_update_delete(env: Env) -> None:
    account_id, token = await new_account(env, "dev@example.com")
    auth = basic("dev@example.com", token)
    response = await env.call(
        "POST", "/apps", {"name": "my-app", "region": "eu", "stack": "cedar"}, auth=auth
    )
    assert response.status == 201
    app = payload(response)
    assert UUID.fullmatch(app["id"]) and TIMESTAMP.fullmatch(app["created_at"])
    region_id, stack_id = app["region"]["id"], app["stack"]["id"]
    assert UUID.fullmatch(region_id) and UUID.fullmatch(stack_id)
    assert app == {
        "acm": False,
        "archived_at": None,
        "build_stack": {"id": stack_id, "name": "cedar"},
        "buildpack_provided_description": None,
        "created_at": app["created_at"],
        "git_url": None,
        "id": app["id"],
        "maintenance": False,
        "name": "my-app",
        "owner": {"email": "dev@example.com", "id": account_id},
        "region": {"id": region_id, "name": "eu"},
        "released_at": None,
        "repo_size": 0,
        "slug_size": 0,
        "stack": {"id": stack_id, "name": "cedar"},
        "updated_at": app["created_at"],
        "web_url": "http://my-app.herokuapp.com",
    }
    # The app is a channel with a token named `app`.
    assert [t.name for t in env.store.tokens_of("my-app")] == ["app"]
    # By name and by id (heroku3 addresses the app by its id once it has it).
    for ident in ("my-app", app["id"]):
        response = await env.call("GET", f"/apps/{ident}", auth=auth)
        assert response.status == 200 and payload(response) == app
    response = await env.call("PATCH", f"/apps/{app['id']}", {"maintenance": True}, auth=auth)
    assert response.status == 200
    assert payload(response) == {**app, "maintenance": True}
    response = await env.call("PATCH", "/apps/my-app", {"name": "my-app"}, auth=auth)
    assert response.status == 200
    response = await env.call("PATCH", "/apps/my-app", {"name": "Renamed"}, auth=auth)
    assert error(response) == (422, "invalid_params")
    response = await env.call("PATCH", "/apps/my-app", {"maintenance": "yes"}, auth=auth)
    assert error(response) == (422, "invalid_params")
    response = await env.call("DELETE", "/apps/my-app", auth=auth)
    assert response.status == 200 and payload(response)["name"] == "my-app"
    assert env.store.channel("my-app") is None
    assert error(await env.call("GET", "/apps/my-app", auth=auth)) == (404, "not_found")
    assert error(await env.call("DELETE", f"/apps/{app['id']}", auth=auth)) == (404, "not_found")


async def test_app_create_parameters(env: Env) -> None:
    region = "01234567-89ab-cdef-0123-456789abcdef"
    response = await env.call(
        "POST",
        "/apps",
        {"name": "objs", "region": {"id": region}, "stack": {"name": "heroku-24"}},
    )
    body = payload(response)
    assert body["region"] == {"id": region, "name": region}
    assert body["stack"]["name"] == "heroku-24"
    assert body["owner"] == {"email": OPERATOR_EMAIL, "id": OPERATOR_ID}
    response = await env.call("POST", "/apps", {"name": "defaults"})
    body = payload(response)
    assert (body["region"]["name"], body["stack"]["name"]) == ("us", "cedar")
    same = payload(await env.call("POST", "/apps", {"name": "defaults-2", "region": "us"}))
    assert same["region"] == body["region"]
    for bad in [
        {"name": "Caps"},
        {"name": "a"},
        {"name": "1abc"},
        {"name": "ends-"},
        {"name": 5},
        {"name": "x" * 31},
        {"name": "okname", "region": 5},
        {"name": "okname", "stack": {"id": 5}},
    ]:
        assert error(await env.call("POST", "/apps", bad)) == (422, "invalid_params"), bad
    response = await env.call("POST", "/apps", {"name": "objs"})
    assert error(response) == (422, "invalid_params")
    assert payload(response)["message"] == "Name is already taken"


async def test_apps_belong_to_their_owner(env: Env) -> None:
    _, token_a = await new_account(env, "a@example.com")
    _, token_b = await new_account(env, "b@example.com")
    auth_a, auth_b = basic("", token_a), basic("", token_b)
    assert (await env.call("POST", "/apps", {"name": "app-a"}, auth=auth_a)).status == 201
    assert (await env.call("POST", "/apps", {"name": "app-b"}, auth=auth_b)).status == 201
    names = [a["name"] for a in payload(await env.call("GET", "/apps", auth=auth_a))]
    assert names == ["app-a"]
    for method, path in [
        ("GET", "/apps/app-b"),
        ("PATCH", "/apps/app-b"),
        ("DELETE", "/apps/app-b"),
        ("GET", "/apps/app-b/log-drains"),
        ("POST", "/apps/app-b/log-sessions"),
    ]:
        assert error(await env.call(method, path, auth=auth_a)) == (403, "forbidden")
    # The operator (auth key) sees every app.
    names = sorted(a["name"] for a in payload(await env.call("GET", "/apps")))
    assert names == ["app-a", "app-b"]


async def test_existing_channel(env: Env) -> None:
    await env.store.put_channel("legacy", ["web"])
    _, token = await new_account(env, "dev@example.com")
    response = await env.call("POST", "/apps", {"name": "legacy"}, auth=basic("", token))
    assert error(response) == (422, "invalid_params")
    # The operator adopts it; it gets its `app` token and keeps the others.
    response = await env.call("POST", "/apps", {"name": "legacy"})
    assert response.status == 201
    assert sorted(t.name for t in env.store.tokens_of("legacy")) == ["app", "web"]


async def test_records_survive_a_restart(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    api = ControlApi(store, None, auth_key=KEY, public_url="http://x")
    mount_platform(api, store)
    env = Env(api, store, None, tmp_path)  # type: ignore[arg-type]
    app = payload(await env.call("POST", "/apps", {"name": "durable"}))
    drain = payload(await env.call("POST", "/apps/durable/log-drains", {"url": "syslog://h:1"}))
    store.close()
    store = open_store(str(tmp_path))
    api = ControlApi(store, None, auth_key=KEY, public_url="http://x")
    mount_platform(api, store)
    env = Env(api, store, None, tmp_path)  # type: ignore[arg-type]
    assert payload(await env.call("GET", f"/apps/{app['id']}")) == app
    assert payload(await env.call("GET", "/apps/durable/log-drains")) == [drain]
    store.close()


# -- rename ----------------------------------------------------------------------------------------


async def test_app_rename(env: Env) -> None:
    _, token = await new_account(env, "dev@example.com")
    auth = basic("", token)
    app = payload(await env.call("POST", "/apps", {"name": "before"}, auth=auth))
    drain = payload(
        await env.call("POST", "/apps/before/log-drains", {"url": "syslog://h:1"}, auth=auth)
    )
    (app_token,) = env.store.tokens_of("before")
    response = await env.call("PATCH", "/apps/before", {"name": "after"}, auth=auth)
    assert response.status == 200
    renamed = payload(response)
    assert renamed["name"] == "after" and renamed["id"] == app["id"]
    assert TIMESTAMP.fullmatch(renamed["updated_at"])
    assert renamed == {
        **app,
        "name": "after",
        "updated_at": renamed["updated_at"],
        "web_url": "http://after.herokuapp.com",
    }
    # The old name is gone, in the Platform API's error format, on every route.
    for method, path in [
        ("GET", "/apps/before"),
        ("PATCH", "/apps/before"),
        ("DELETE", "/apps/before"),
        ("GET", "/apps/before/log-drains"),
        ("POST", "/apps/before/log-sessions"),
    ]:
        response = await env.call(method, path, auth=auth)
        assert error(response) == (404, "not_found"), path
        assert payload(response)["message"] == "Couldn't find that app."
    # The new name and the id answer; drains and the token stay with the app.
    for ident in ("after", app["id"]):
        assert payload(await env.call("GET", f"/apps/{ident}", auth=auth)) == renamed
    assert payload(await env.call("GET", "/apps/after/log-drains", auth=auth)) == [drain]
    assert [a["name"] for a in payload(await env.call("GET", "/apps", auth=auth))] == ["after"]
    # Its channel keeps its name: what producers, drains and readers hold is untouched.
    assert env.store.tokens_of("before") == [app_token]
    assert env.store.channel("after") is None
    body = payload(await env.call("POST", "/apps/after/log-sessions", {"lines": 5}, auth=auth))
    session = env.store.session(body["logplex_url"].rsplit("/", 1)[1])
    assert session is not None and session.body == {"channel_id": "before", "num": 5}
    # By id, with the method override heroku-client may use; the same name is a no-op.
    response = await env.call(
        "POST",
        f"/apps/{app['id']}",
        {"name": "again"},
        auth=auth,
        headers={"X-Http-Method-Override": "PATCH"},
    )
    assert response.status == 200 and payload(response)["name"] == "again"
    response = await env.call("PATCH", "/apps/again", {"name": "again"}, auth=auth)
    assert response.status == 200 and payload(response)["name"] == "again"
    # Deleting the renamed app deletes its channel.
    response = await env.call("DELETE", "/apps/again", auth=auth)
    assert response.status == 200 and payload(response)["name"] == "again"
    assert env.store.channel("before") is None
    assert error(await env.call("GET", f"/apps/{app['id']}", auth=auth)) == (404, "not_found")


async def test_app_rename_refused(env: Env) -> None:
    assert (await env.call("POST", "/apps", {"name": "first"})).status == 201
    assert (await env.call("POST", "/apps", {"name": "second"})).status == 201
    for bad in ["Caps", "a", "1abc", "ends-", "x" * 31, "under_score", "", 5, ["x"], True]:
        response = await env.call("PATCH", "/apps/first", {"name": bad})
        assert error(response) == (422, "invalid_params"), bad
        assert payload(response)["message"] == (
            "Name must start with a letter, end with a letter or digit and can only contain "
            "lowercase letters, digits, and dashes."
        )
    response = await env.call("PATCH", "/apps/first", {"name": "second"})
    assert error(response) == (422, "invalid_params")
    assert payload(response)["message"] == "Name is already taken"
    # Nothing changed by a refused rename, maintenance included.
    response = await env.call("PATCH", "/apps/first", {"name": "second", "maintenance": True})
    assert error(response) == (422, "invalid_params")
    first = payload(await env.call("GET", "/apps/first"))
    assert first["name"] == "first" and first["maintenance"] is False
    # A stale If-Match is 412 and renames nothing.
    response = await env.call(
        "PATCH", "/apps/first", {"name": "third"}, headers={"If-Match": '"stale"'}
    )
    assert response.status == 412
    assert error(await env.call("GET", "/apps/third")) == (404, "not_found")
    # Another account's app cannot be renamed.
    _, token = await new_account(env, "other@example.com")
    response = await env.call("PATCH", "/apps/first", {"name": "mine"}, auth=basic("", token))
    assert error(response) == (403, "forbidden")


async def test_old_name_is_free_after_a_rename(env: Env) -> None:
    old = payload(await env.call("POST", "/apps", {"name": "reused"}))
    assert (await env.call("PATCH", "/apps/reused", {"name": "moved"})).status == 200
    # The name is free again; the renamed app's channel is not: the new app gets its own,
    # named by its id (the operator would otherwise adopt the other app's channel).
    _, token = await new_account(env, "dev@example.com")
    for auth in (basic("", token), OPERATOR_AUTH):
        response = await env.call("POST", "/apps", {"name": "reused"}, auth=auth)
        assert response.status == 201
        new = payload(response)
        assert new["id"] != old["id"]
        assert [t.name for t in env.store.tokens_of(new["id"])] == ["app"]
        assert [t.name for t in env.store.tokens_of("reused")] == ["app"]
        assert env.store.tokens_of(new["id"]) != env.store.tokens_of("reused")
        response = await env.call("DELETE", "/apps/reused", auth=auth)
        assert response.status == 200 and env.store.channel(new["id"]) is None
    # Renamed back, the first app is what it was.
    assert (await env.call("PATCH", "/apps/moved", {"name": "reused"})).status == 200
    assert payload(await env.call("GET", "/apps/reused"))["id"] == old["id"]
    assert env.store.channel("reused") is not None


async def test_rename_is_durable(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    api = ControlApi(store, None, auth_key=KEY, public_url="http://x")
    mount_platform(api, store)
    env = Env(api, store, None, tmp_path)  # type: ignore[arg-type]
    app = payload(await env.call("POST", "/apps", {"name": "durable"}))
    drain = payload(await env.call("POST", "/apps/durable/log-drains", {"url": "syslog://h:1"}))
    renamed = payload(await env.call("PATCH", "/apps/durable", {"name": "still-durable"}))
    assert renamed["web_url"] == "http://still-durable.herokuapp.com"
    # On disk before the answer: a copy of the journal as it is now (a crash) has it.
    crashed = tmp_path / "copy"
    crashed.mkdir()
    (crashed / "journal.lpj").write_bytes((tmp_path / "journal.lpj").read_bytes())
    copy = open_store(str(crashed))
    assert copy.app(app["id"]) == copy.app_by_name("still-durable") is not None
    copy.close()
    store.close()
    store = open_store(str(tmp_path))
    api = ControlApi(store, None, auth_key=KEY, public_url="http://x")
    mount_platform(api, store)
    env = Env(api, store, None, tmp_path)  # type: ignore[arg-type]
    assert payload(await env.call("GET", f"/apps/{app['id']}")) == renamed
    assert payload(await env.call("GET", "/apps/still-durable/log-drains")) == [drain]
    assert error(await env.call("GET", "/apps/durable")) == (404, "not_found")
    store.close()


# -- conditional requests ------------------------------------------------------------------------


async def test_etag_if_none_match_and_if_match(env: Env) -> None:
    created = await env.call("POST", "/apps", {"name": "tagged"})
    response = await env.call("GET", "/apps/tagged")
    etag = response.header("ETag") or ""
    assert etag == created.header("ETag")
    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        cached = await env.call("GET", "/apps/tagged", headers={"If-None-Match": header})
        assert cached.status == 304 and cached.body == b""
        assert cached.header("ETag") == etag and cached.header("RateLimit-Remaining")
        assert cached.header("Content-Type") is None
    response = await env.call("GET", "/apps/tagged", headers={"If-None-Match": '"other"'})
    assert response.status == 200
    # Lists too.
    listed = await env.call("GET", "/apps")
    again = await env.call("GET", "/apps", headers={"If-None-Match": listed.header("ETag") or ""})
    assert again.status == 304
    # If-Match: a stale tag is 412 and changes nothing; the current tag or * goes through.
    stale = '"0123456789abcdef0123456789abcdef"'
    response = await env.call(
        "PATCH", "/apps/tagged", {"maintenance": True}, headers={"If-Match": stale}
    )
    assert error(response) == (412, "precondition_failed")
    response = await env.call("GET", "/apps/tagged", headers={"If-Match": stale})
    assert error(response) == (412, "precondition_failed")
    assert payload(await env.call("GET", "/apps/tagged"))["maintenance"] is False
    response = await env.call(
        "PATCH", "/apps/tagged", {"maintenance": True}, headers={"If-Match": etag}
    )
    assert response.status == 200
    new_etag = response.header("ETag")
    assert new_etag != etag
    response = await env.call("DELETE", "/apps/tagged", headers={"If-Match": etag})
    assert error(response) == (412, "precondition_failed")
    response = await env.call("DELETE", "/apps/tagged", headers={"If-Match": "*"})
    assert response.status == 200


# -- rate limit -----------------------------------------------------------------------------------


async def test_rate_limit_bucket(env: Env, mock_clock: trio.testing.MockClock) -> None:
    _, token = await new_account(env, "busy@example.com")
    busy, other = basic("", token), OPERATOR_AUTH
    response = await env.call("GET", "/account/rate-limits", auth=busy)
    assert payload(response) == {"remaining": 1200}
    assert response.header("RateLimit-Remaining") == "1200"
    for expected in range(1199, -1, -1):
        response = await env.call("GET", "/apps", auth=busy)
        assert response.status == 200
        assert response.header("RateLimit-Remaining") == str(expected)
    response = await env.call("GET", "/apps", auth=busy)
    assert response.status == 429 and response.header("RateLimit-Remaining") == "0"
    assert payload(response) == {"id": "rate_limit", "message": RATE_LIMIT_MESSAGE}
    # Not counted, and still answered when the bucket is empty.
    response = await env.call("GET", "/account/rate-limits", auth=busy)
    assert response.status == 200 and payload(response) == {"remaining": 0}
    # Per account.
    assert (await env.call("GET", "/apps", auth=other)).header("RateLimit-Remaining") == "1199"
    # 1200 an hour: one token every 3 s.
    mock_clock.jump(2.9)
    assert (await env.call("GET", "/apps", auth=busy)).status == 429
    mock_clock.jump(0.2)
    response = await env.call("GET", "/apps", auth=busy)
    assert response.status == 200 and response.header("RateLimit-Remaining") == "0"
    assert (await env.call("GET", "/apps", auth=busy)).status == 429
    mock_clock.jump(3600)
    response = await env.call("GET", "/account/rate-limits", auth=busy)
    assert payload(response) == {"remaining": 1200}


# -- ranges ------------------------------------------------------------------------------------


async def test_list_ranges(env: Env) -> None:
    names = ["delta", "alpha", "echo", "charlie", "bravo"]
    ids = {}
    for name in names:
        ids[name] = payload(await env.call("POST", "/apps", {"name": name}))["id"]
    response = await env.call("GET", "/apps")
    assert response.status == 200
    assert response.header("Accept-Ranges") == "id, name"
    by_id = sorted(ids.values())
    assert [a["id"] for a in payload(response)] == by_id
    assert response.header("Content-Range") == f"ids {by_id[0]}..{by_id[-1]}; max=200"
    assert response.header("Next-Range") is None

    response = await env.call("GET", "/apps", headers={"Range": "name ..; max=2"})
    assert response.status == 206
    assert [a["name"] for a in payload(response)] == ["alpha", "bravo"]
    assert response.header("Content-Range") == "names alpha..bravo; max=2"
    assert response.header("Next-Range") == "name ]bravo..; max=2"
    response = await env.call("GET", "/apps", headers={"Range": "name ]bravo..; max=2"})
    assert response.status == 206
    assert [a["name"] for a in payload(response)] == ["charlie", "delta"]
    response = await env.call(
        "GET", "/apps", headers={"Range": response.header("Next-Range") or ""}
    )
    # The last page is a 200 without Next-Range (clients follow it on a 206).
    assert response.status == 200 and response.header("Next-Range") is None
    assert [a["name"] for a in payload(response)] == ["echo"]

    response = await env.call("GET", "/apps", headers={"Range": "name ..; max=3, order=desc"})
    assert [a["name"] for a in payload(response)] == ["echo", "delta", "charlie"]
    assert response.header("Next-Range") == "name ]charlie..; max=3, order=desc"
    assert response.header("Content-Range") == "names echo..charlie; max=3, order=desc"
    response = await env.call("GET", "/apps", headers={"Range": "name bravo..delta["})
    assert [a["name"] for a in payload(response)] == ["bravo", "charlie"]
    response = await env.call("GET", "/apps", headers={"Range": "name zulu.."})
    assert response.status == 200 and payload(response) == []
    assert response.header("Content-Range") == "names ..; max=200"

    # What heroku3 and heroku-client send on every request.
    for lenient in ("id ..; ;", "id ..; max=1000", "id ..;", "id ..", "id ..; order=asc,max=10;"):
        response = await env.call("GET", "/apps", headers={"Range": lenient})
        assert response.status == 200 and len(payload(response)) == 5, lenient
    for bad in (
        "size ..",
        "name",
        "name ..; max=0",
        "name ..; max=1001",
        "name ..; max=ten",
        "name ..; order=sideways",
    ):
        response = await env.call("GET", "/apps", headers={"Range": bad})
        assert error(response) == (416, "requested_range_not_satisfiable"), bad
    # Only lists take a range: elsewhere it is ignored, even a bad one.
    response = await env.call("GET", "/apps/alpha", headers={"Range": "nonsense"})
    assert response.status == 200 and response.header("Content-Range") is None
    response = await env.call("POST", "/apps", {"name": "foxtrot"}, headers={"Range": "x"})
    assert response.status == 201


async def test_content_range_is_the_references_form(env: Env) -> None:
    """Every list in the reference answers ``Content-Range: ids <first id>..<last id>;
    max=200`` (the unit in the plural); Next-Range is a Range again (``id ]<last>..``)."""
    first = payload(await env.call("POST", "/apps", {"name": "ranged-one"}))
    second = payload(await env.call("POST", "/apps", {"name": "ranged-two"}))
    drain = payload(
        await env.call("POST", "/apps/ranged-one/log-drains", {"url": "syslog://logs.example:1"})
    )
    low, high = sorted([first["id"], second["id"]])
    seed_form = re.compile(rf"ids {UUID.pattern}\.\.{UUID.pattern}; max=200")
    for path, expected in (
        ("/apps", f"ids {low}..{high}; max=200"),
        ("/users/~/apps", f"ids {low}..{high}; max=200"),
        ("/apps/ranged-one/log-drains", f"ids {drain['id']}..{drain['id']}; max=200"),
    ):
        response = await env.call("GET", path)
        assert response.status == 200, path
        assert response.header("Content-Range") == expected, path
        assert seed_form.fullmatch(expected), path
    response = await env.call("GET", "/apps", headers={"Range": "id ..; max=1"})
    assert response.status == 206
    assert response.header("Content-Range") == f"ids {low}..{low}; max=1"
    assert response.header("Next-Range") == f"id ]{low}..; max=1"
    next_range = response.header("Next-Range") or ""
    response = await env.call("GET", "/apps", headers={"Range": next_range})
    assert response.status == 200 and [app["id"] for app in payload(response)] == [high]
    assert response.header("Content-Range") == f"ids {high}..{high}; max=1"


# -- log drains --------------------------------------------------------------------------------


async def test_log_drains(env: Env) -> None:
    app = payload(await env.call("POST", "/apps", {"name": "drained"}))
    url = "syslog://logs.example.com:514"
    response = await env.call("POST", "/apps/drained/log-drains", {"url": url})
    assert response.status == 201
    drain = payload(response)
    (stored,) = env.store.drains_of("drained")
    assert drain == {
        "addon": None,
        "created_at": drain["created_at"],
        "id": drain_uuid(stored),
        "token": stored.token,
        "updated_at": drain["created_at"],
        "url": url,
    }
    assert UUID.fullmatch(drain["id"]) and TIMESTAMP.fullmatch(drain["created_at"])
    assert stored.url == url and stored.token.startswith("d.")

    response = await env.call("GET", f"/apps/{app['id']}/log-drains")
    assert response.status == 200 and payload(response) == [drain]
    assert response.header("Accept-Ranges") == "id"
    assert response.header("Content-Range") == f"ids {drain['id']}..{drain['id']}; max=200"
    for ident in (drain["id"], quote(url, safe="")):
        response = await env.call("GET", f"/apps/drained/log-drains/{ident}")
        assert response.status == 200 and payload(response) == drain, ident

    for body in ({}, {"url": 5}, {"url": "ftp://x"}, {"url": url}):
        response = await env.call("POST", "/apps/drained/log-drains", body)
        assert error(response) == (422, "invalid_params"), body
    response = await env.call(
        "GET", "/apps/drained/log-drains/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12
    )
    assert error(response) == (404, "not_found")
    assert error(await env.call("GET", "/apps/nope/log-drains")) == (404, "not_found")

    # A drain added through the Logplex API is listed too, with the app's timestamps.
    response = await env.api.handle(
        Request(
            "POST",
            "/v3/channels/drained/drains",
            (("authorization", f"Basic {KEY}"), ("content-type", "application/json")),
            b'{"url":"https://logs.example.com/in"}',
        )
    )
    assert response.status == 201
    listed = payload(await env.call("GET", "/apps/drained/log-drains"))
    assert sorted(d["url"] for d in listed) == ["https://logs.example.com/in", url]
    other = next(d for d in listed if d["url"] != url)
    assert other["created_at"] == app["created_at"]

    response = await env.call("DELETE", f"/apps/drained/log-drains/{quote(url, safe='')}")
    assert response.status == 200 and payload(response) == drain
    assert [d.url for d in env.store.drains_of("drained")] == ["https://logs.example.com/in"]
    response = await env.call("DELETE", f"/apps/drained/log-drains/{drain['id']}")
    assert error(response) == (404, "not_found")
    stale = '"0123456789abcdef0123456789abcdef"'
    response = await env.call(
        "DELETE", f"/apps/drained/log-drains/{other['id']}", headers={"If-Match": stale}
    )
    assert error(response) == (412, "precondition_failed")
    response = await env.call("DELETE", f"/apps/drained/log-drains/{other['id']}")
    assert response.status == 200 and env.store.drains_of("drained") == []


async def test_drain_limit(env: Env) -> None:
    await env.call("POST", "/apps", {"name": "many"})
    for port in range(6):
        url = f"syslog://h:{1000 + port}"
        assert (await env.call("POST", "/apps/many/log-drains", {"url": url})).status == 201
    response = await env.call("POST", "/apps/many/log-drains", {"url": "syslog://h:2000"})
    assert error(response) == (422, "invalid_params")


async def test_drains_page(env: Env) -> None:
    await env.call("POST", "/apps", {"name": "paged"})
    for port in range(3):
        await env.call("POST", "/apps/paged/log-drains", {"url": f"syslog://h:{port + 1}"})
    response = await env.call("GET", "/apps/paged/log-drains", headers={"Range": "id ..; max=2"})
    assert response.status == 206 and len(payload(response)) == 2
    response = await env.call(
        "GET", "/apps/paged/log-drains", headers={"Range": response.header("Next-Range") or ""}
    )
    assert response.status == 200 and len(payload(response)) == 1
    response = await env.call("GET", "/apps/paged/log-drains", headers={"Range": "url .."})
    assert error(response) == (416, "requested_range_not_satisfiable")


# -- log sessions -------------------------------------------------------------------------------


async def test_log_sessions(env: Env) -> None:
    await env.call("POST", "/apps", {"name": "tailed"})
    response = await env.call(
        "POST",
        "/apps/tailed/log-sessions",
        {"dyno": "web.1", "lines": 10, "source": "app", "tail": True},
    )
    assert response.status == 201
    body = payload(response)
    match = re.fullmatch(
        r"http://logplex\.test/sessions/(" + UUID.pattern + ")", body["logplex_url"]
    )
    assert match is not None
    assert body == {
        "created_at": body["created_at"],
        "dyno": "web.1",
        "id": body["id"],
        "lines": 10,
        "logplex_url": body["logplex_url"],
        "source": "app",
        "tail": True,
        "updated_at": body["created_at"],
    }
    assert UUID.fullmatch(body["id"]) and body["id"] != match.group(1)
    session = env.store.session(match.group(1))
    assert session is not None
    assert session.body == {
        "channel_id": "tailed",
        "num": 10,
        "tail": True,
        "ps": "web.1",
        "source": "app",
        "max_duration": 3600.0,  # the tail ends after about an hour (tail_max_duration)
    }
    # heroku3's one-shot read: no tail, lines as a number.
    body = payload(await env.call("POST", "/apps/tailed/log-sessions", {"lines": 5}))
    session = env.store.session(body["logplex_url"].rsplit("/", 1)[1])
    assert session is not None and session.body == {"channel_id": "tailed", "num": 5}
    body = payload(await env.call("POST", "/apps/tailed/log-sessions", {"lines": "7"}))
    assert body["lines"] == 7
    for bad in ({"lines": -1}, {"lines": "x"}, {"lines": True}, {"dyno": 1}, {"tail": "yes"}):
        response = await env.call("POST", "/apps/tailed/log-sessions", bad)
        assert error(response) == (422, "invalid_params"), bad
    response = await env.call("POST", "/apps/gone/log-sessions", {})
    assert error(response) == (404, "not_found")
    # The Logplex channel deleted behind the app's back.
    await env.store.delete_channel("tailed")
    response = await env.call("POST", "/apps/tailed/log-sessions", {})
    assert error(response) == (422, "invalid_params")


# -- /users/{user}/apps, add-ons -------------------------------------------------------------------


async def test_user_apps_lists_what_the_caller_sees(env: Env) -> None:
    dev_id, token = await new_account(env, "dev@example.com")
    auth = basic("dev@example.com", token)
    await new_account(env, "idle@example.com")
    assert (await env.call("POST", "/apps", {"name": "dev-app"}, auth=auth)).status == 201
    assert (await env.call("POST", "/apps", {"name": "ops-app"})).status == 201
    mine = await env.call("GET", "/apps", auth=auth)
    for user in ("~", "dev@example.com", "DEV@example.com", dev_id):
        response = await env.call("GET", f"/users/{quote(user)}/apps", auth=auth)
        assert response.status == 200, user
        assert [app["name"] for app in payload(response)] == ["dev-app"]
        assert payload(response) == payload(mine)
        assert response.header("Content-Range") == mine.header("Content-Range")
        assert response.header("Accept-Ranges") == "id, name"
        assert response.header("Request-Id") == "req-1"
        assert response.header("RateLimit-Remaining")
    # `heroku apps` sends the tilde percent-encoded by some clients.
    response = await env.call("GET", "/users/%7E/apps", auth=auth)
    assert [app["name"] for app in payload(response)] == ["dev-app"]
    # Someone else's apps: not for an account.
    for user in ("idle@example.com", OPERATOR_ID, "nobody@example.com"):
        response = await env.call("GET", f"/users/{user}/apps", auth=auth)
        assert error(response) == (404, "not_found"), user
        assert response.header("RateLimit-Remaining")
    # The operator sees every app as its own, and any account's by id or email.
    response = await env.call("GET", "/users/~/apps")
    # In id order, as GET /apps: ids are random uuids.
    assert sorted(app["name"] for app in payload(response)) == ["dev-app", "ops-app"]
    for user in ("dev@example.com", dev_id):
        response = await env.call("GET", f"/users/{user}/apps")
        assert [app["name"] for app in payload(response)] == ["dev-app"], user
    assert payload(await env.call("GET", "/users/idle@example.com/apps")) == []
    assert error(await env.call("GET", "/users/nobody@example.com/apps")) == (404, "not_found")
    # The conventions hold: ranges, 406, 401, 405.
    response = await env.call("GET", "/users/~/apps", headers={"Range": "name ..; max=1"})
    assert response.status == 206 and [a["name"] for a in payload(response)] == ["dev-app"]
    assert response.header("Next-Range") == "name ]dev-app..; max=1"
    assert error(await env.call("GET", "/users/~/apps", accept=None)) == (406, "not_acceptable")
    assert error(await env.call("GET", "/users/~/apps", auth=None)) == (401, "unauthorized")
    response = await env.call("POST", "/users/~/apps")
    assert error(response) == (405, "method_not_allowed")
    assert response.header("Allow") == "GET, HEAD"


async def test_addons_of_an_app_are_an_empty_list(env: Env) -> None:
    _, token = await new_account(env, "dev@example.com")
    auth = basic("dev@example.com", token)
    created = payload(await env.call("POST", "/apps", {"name": "bare"}, auth=auth))
    for ident in ("bare", created["id"]):
        response = await env.call("GET", f"/apps/{ident}/addons", auth=auth)
        assert response.status == 200 and payload(response) == []
        assert response.header("Content-Range") == "ids ..; max=200"
        assert response.header("Accept-Ranges") == "id, name"
        assert response.header("Request-Id") == "req-1"
        assert response.header("RateLimit-Remaining")
        assert response.header("Last-Modified") is None  # nothing in the list to date
    response = await env.call("GET", "/apps/nope/addons", auth=auth)
    assert error(response) == (404, "not_found")
    assert payload(response)["message"] == "Couldn't find that app."
    assert response.header("Request-Id") == "req-1" and response.header("RateLimit-Remaining")
    await env.call("POST", "/apps", {"name": "theirs"})
    response = await env.call("GET", "/apps/theirs/addons", auth=auth)
    assert error(response) == (403, "forbidden")
    response = await env.call("DELETE", "/apps/bare/addons", auth=auth)
    assert error(response) == (405, "method_not_allowed")
    assert response.header("Allow") == "GET, HEAD"


# -- one error format ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/apps/x/nope",
        "/apps/x/log-drains/y/z",
        "/account/features",
        "/users",
        "/users/~",
        "/regions",
        "/oauth/clients",
        "/addon-services",
        "/apps/%ff",  # not UTF-8 once decoded
    ],
)
async def test_unknown_platform_paths_are_platform_404s(env: Env, path: str) -> None:
    response = await env.call("GET", path)
    assert error(response) == (404, "not_found")
    assert response.header("Content-Type") == "application/json"
    assert response.header("Request-Id") == "req-1"
    assert response.header("RateLimit-Remaining") == "1200"  # known caller, nothing spent
    assert re.fullmatch(r'"[0-9a-f]{32}"', response.header("ETag") or "")
    # Without credentials or the version: still a 404, without RateLimit-Remaining.
    response = await env.call("GET", path, auth=None, accept=None)
    assert error(response) == (404, "not_found")
    assert response.header("Request-Id") == "req-1"
    assert response.header("RateLimit-Remaining") is None


async def test_platform_405_for_any_method(env: Env) -> None:
    await env.call("POST", "/apps", {"name": "verbs"})
    for method, path, allowed in [
        ("OPTIONS", "/apps", "GET, POST, HEAD"),
        ("TRACE", "/apps/verbs", "GET, PATCH, DELETE, HEAD"),
        ("PROPFIND", "/apps/verbs/log-drains", "GET, POST, HEAD"),
        ("PUT", "/account", "GET, HEAD"),
    ]:
        response = await env.call(method, path)
        assert error(response) == (405, "method_not_allowed"), (method, path)
        assert response.header("Allow") == allowed
        assert response.header("Request-Id") == "req-1"
        assert response.header("RateLimit-Remaining")
    # The method is judged before the version, but nothing is told without credentials.
    response = await env.call("PUT", "/apps", accept=None)
    assert error(response) == (405, "method_not_allowed")
    response = await env.call("PUT", "/apps", auth=None, accept=None)
    assert error(response) == (401, "unauthorized")
    assert response.header("RateLimit-Remaining") is None
    # A 405 spends no token.
    before = (await env.call("GET", "/account/rate-limits")).header("RateLimit-Remaining")
    await env.call("OPTIONS", "/apps")
    after = (await env.call("GET", "/account/rate-limits")).header("RateLimit-Remaining")
    assert before == after


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v3/nope", 404),
        ("GET", "/appsx", 404),
        ("GET", "/", 404),
        ("OPTIONS", "/v3/channels/c", 405),
        ("GET", "/channels", 405),
    ],
)
async def test_logplex_paths_keep_their_error_format(
    env: Env, method: str, path: str, status: int
) -> None:
    response = await env.call(method, path)
    assert response.status == status
    assert set(payload(response)) == {"error"}
    assert response.header("RateLimit-Remaining") is None


# -- Last-Modified ---------------------------------------------------------------------------------


async def test_last_modified_follows_updated_at(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from logplexd.api.platform import api as platform_module

    monkeypatch.setattr(platform_module, "utc_timestamp", lambda: "2012-01-01T12:00:00Z")
    created = await env.call("POST", "/apps", {"name": "dated"})
    assert created.status == 201
    assert created.header("Last-Modified") == "Sun, 01 Jan 2012 12:00:00 GMT"
    response = await env.call("GET", "/apps/dated")
    assert response.header("Last-Modified") == "Sun, 01 Jan 2012 12:00:00 GMT"
    cached = await env.call(
        "GET", "/apps/dated", headers={"If-None-Match": response.header("ETag") or ""}
    )
    assert cached.status == 304
    assert cached.header("Last-Modified") == "Sun, 01 Jan 2012 12:00:00 GMT"
    monkeypatch.setattr(platform_module, "utc_timestamp", lambda: "2013-06-30T23:59:58Z")
    await env.call("POST", "/apps", {"name": "later"})
    drain = await env.call("POST", "/apps/dated/log-drains", {"url": "syslog://h.example:601"})
    assert drain.header("Last-Modified") == "Sun, 30 Jun 2013 23:59:58 GMT"
    # A list: its latest item.
    listed = await env.call("GET", "/apps")
    assert listed.header("Last-Modified") == "Sun, 30 Jun 2013 23:59:58 GMT"
    # A change moves it.
    monkeypatch.setattr(platform_module, "utc_timestamp", lambda: "2014-02-03T04:05:06Z")
    patched = await env.call("PATCH", "/apps/dated", {"maintenance": True})
    assert patched.header("Last-Modified") == "Mon, 03 Feb 2014 04:05:06 GMT"
    assert (await env.call("GET", "/apps/dated")).header("Last-Modified") == (
        "Mon, 03 Feb 2014 04:05:06 GMT"
    )
    # Nothing to date: errors, an empty list, the operator (no account record), rate limits.
    assert (await env.call("GET", "/apps/nope")).header("Last-Modified") is None
    assert (await env.call("GET", "/apps/later/log-drains")).header("Last-Modified") is None
    assert (await env.call("GET", "/account")).header("Last-Modified") is None
    assert (await env.call("GET", "/account/rate-limits")).header("Last-Modified") is None
    # An account's own record is dated.
    _, token = await new_account(env, "dated@example.com")
    account = await env.call("GET", "/account", auth=basic("", token))
    assert account.status == 200 and (account.header("Last-Modified") or "").endswith(" GMT")
