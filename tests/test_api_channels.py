"""Channels and tokens, v2 and v3: every route's success and documented errors."""

from __future__ import annotations

import pytest

from logplexd.router import Registry
from tests.helpers.api import (
    AUTH,
    FakeRegistry,
    assert_error,
    call,
    is_token,
    make_api,
)


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def api(tmp_path, registry):
    api = make_api(str(tmp_path), registry)
    yield api
    api.store.close()


# -- POST /channels (v2 create) ----------------------------------------------------------------


async def test_v2_create_channel(api, registry):
    reply = await call(api, "POST", "/channels", {"name": "my-app", "tokens": ["app", "web"]})
    assert reply.status == 201
    assert reply.headers["content-type"] == "application/json"
    body = reply.json
    assert body["channel_id"] == 1
    assert sorted(body["tokens"]) == ["app", "web"]
    assert all(is_token(t) for t in body["tokens"].values())
    assert registry.channels["1"] == {body["tokens"]["app"]: "app", body["tokens"]["web"]: "web"}


async def test_v2_create_channel_ids_count_up_and_skip_v3_names(api):
    await call(api, "PUT", "/v3/channels/2", {})
    first = await call(api, "POST", "/channels", {"name": "a"})
    second = await call(api, "POST", "/channels", {"name": "b"})
    assert (first.json, second.json) == (
        {"channel_id": 1, "tokens": {}},
        {"channel_id": 3, "tokens": {}},
    )


@pytest.mark.parametrize(
    "body",
    [{}, {"name": 5}, {"name": ""}, {"name": None}],
)
async def test_v2_create_channel_needs_a_name(api, body):
    assert_error(await call(api, "POST", "/channels", body), 400, "Channel name must be a string.")


@pytest.mark.parametrize("tokens", ["app", [1], [""], {"a": 1}])
async def test_v2_create_channel_rejects_bad_tokens(api, tokens):
    reply = await call(api, "POST", "/channels", {"name": "x", "tokens": tokens})
    assert_error(reply, 400, "Tokens must be a list of strings.")


# -- GET/DELETE /v2/channels/{id} --------------------------------------------------------------


async def test_v2_get_channel(api):
    created = (await call(api, "POST", "/channels", {"name": "x", "tokens": ["app"]})).json
    drain = (await call(api, "POST", "/v2/channels/1/drains", {"url": "syslog://h:514"})).json
    await call(api, "POST", "/v3/channels/1/drains", {})  # a reservation is not listed
    reply = await call(api, "GET", "/v2/channels/1")
    assert reply.status == 200
    assert reply.json == {
        "channel_id": 1,
        "tokens": created["tokens"],
        "drains": [{"id": drain["id"], "token": drain["token"], "url": "syslog://h:514"}],
    }


async def test_v2_get_unknown_channel(api):
    assert_error(await call(api, "GET", "/v2/channels/42"), 404, "Not Found")


async def test_v2_channel_ids_are_numeric(api):
    await call(api, "PUT", "/v3/channels/app-1", {})
    assert_error(await call(api, "GET", "/v2/channels/app-1"), 404, "Not Found")
    assert_error(await call(api, "GET", "/v2/channels/123bad"), 404, "Not Found")


async def test_v2_delete_channel(api, registry):
    await call(api, "POST", "/channels", {"name": "x", "tokens": ["app"]})
    reply = await call(api, "DELETE", "/v2/channels/1")
    assert (reply.status, reply.body) == (200, b"")
    assert registry.channels == {} and registry.token_channel == {}
    assert_error(await call(api, "GET", "/v2/channels/1"), 404, "Not Found")
    assert_error(await call(api, "DELETE", "/v2/channels/1"), 404, "Not Found")


# -- POST /v2/channels/{id}/tokens -------------------------------------------------------------


async def test_v2_create_token(api, registry):
    await call(api, "POST", "/channels", {"name": "x"})
    reply = await call(api, "POST", "/v2/channels/1/tokens", {"name": "app"})
    assert reply.status == 201
    assert set(reply.json) == {"name", "token"} and reply.json["name"] == "app"
    assert registry.token_channel[reply.json["token"]] == "1"


async def test_v2_create_token_errors(api):
    assert_error(await call(api, "POST", "/v2/channels/9/tokens", {"name": "a"}), 404, "Not Found")
    await call(api, "POST", "/channels", {"name": "x"})
    for body in ({}, {"name": 3}, {"name": ""}):
        reply = await call(api, "POST", "/v2/channels/1/tokens", body)
        assert_error(reply, 422, "NAME is a required field")


# -- PUT/GET/DELETE /v3/channels/{name} --------------------------------------------------------


async def test_v3_put_creates_then_updates(api, registry):
    reply = await call(api, "PUT", "/v3/channels/app-123", {"tokens": ["app", "web"]})
    assert reply.status == 201
    tokens = reply.json["tokens"]
    assert reply.json == {"channel": "app-123", "tokens": tokens}
    assert sorted(tokens) == ["app", "web"]

    again = await call(api, "PUT", "/v3/channels/app-123", {"tokens": ["web", "worker", "web"]})
    assert again.status == 200
    assert again.json["tokens"]["web"] == tokens["web"]  # kept its id
    assert sorted(again.json["tokens"]) == ["web", "worker"]
    assert tokens["app"] not in registry.token_channel
    assert set(registry.channels["app-123"].values()) == {"web", "worker"}


async def test_v3_put_without_tokens_removes_them(api):
    await call(api, "PUT", "/v3/channels/c", {"tokens": ["app"]})
    reply = await call(api, "PUT", "/v3/channels/c", {})
    assert (reply.status, reply.json) == (200, {"channel": "c"})


async def test_v3_put_with_empty_body(api):
    reply = await call(api, "PUT", "/v3/channels/c", headers=(AUTH,))
    assert (reply.status, reply.json) == (201, {"channel": "c"})


async def test_v3_put_keeps_drains(api):
    await call(api, "PUT", "/v3/channels/c", {})
    drain = (await call(api, "POST", "/v3/channels/c/drains", {"url": "https://x.example/"})).json
    reply = await call(api, "PUT", "/v3/channels/c", {"tokens": ["a"]})
    assert reply.json["drains"] == [drain]


@pytest.mark.parametrize("body", [[], "x", 3, None])
async def test_v3_put_non_object_is_invalid_payload(api, body):
    reply = await call(api, "PUT", "/v3/channels/c", raw=__import__("json").dumps(body).encode())
    assert_error(reply, 400, "invalid payload")


async def test_v3_put_bad_tokens(api):
    assert_error(await call(api, "PUT", "/v3/channels/c", {"tokens": "a"}), 400, "invalid payload")
    assert_error(await call(api, "PUT", "/v3/channels/c", {"tokens": [1]}), 400, "invalid payload")


async def test_v3_put_too_long_name(api):
    assert_error(
        await call(api, "PUT", "/v3/channels/" + "a" * 300, {}), 400, "invalid channel name"
    )


async def test_v3_put_sets_the_overflow_mode_and_get_shows_it(tmp_path):
    # A real routing index: the mode reaches the live channel the drains read it from.
    registry = Registry()
    api = make_api(str(tmp_path), registry)
    try:
        reply = await call(api, "PUT", "/v3/channels/c", {"tokens": ["app"], "overflow": "drop"})
        assert reply.status == 201 and reply.json["overflow"] == "drop"
        got = await call(api, "GET", "/v3/channels/c")
        assert got.json == reply.json
        live = registry.channel("c")
        assert live is not None and live.overflow == "drop"

        body = {"tokens": ["app"], "overflow": "pushback"}
        reply = await call(api, "PUT", "/v3/channels/c", body)
        assert reply.status == 200 and reply.json["overflow"] == "pushback"
        assert live.overflow == "pushback"

        # PUT sets the whole channel: without the field it follows the daemon's default again.
        reply = await call(api, "PUT", "/v3/channels/c", {"tokens": ["app"]})
        assert "overflow" not in reply.json
        assert "overflow" not in (await call(api, "GET", "/v3/channels/c")).json
        assert live.overflow is None
        assert api.store.channel("c").overflow is None
    finally:
        api.store.close()


async def test_v3_put_without_overflow_shows_none(api):
    await call(api, "PUT", "/v3/channels/c", {"tokens": ["app"], "overflow": None})
    assert "overflow" not in (await call(api, "GET", "/v3/channels/c")).json


@pytest.mark.parametrize("overflow", ["Drop", "block", "", 1, True, ["drop"], {"mode": "drop"}])
async def test_v3_put_rejects_an_unknown_overflow_mode(api, overflow):
    reply = await call(api, "PUT", "/v3/channels/c", {"tokens": ["app"], "overflow": overflow})
    assert_error(reply, 422, 'overflow must be "pushback" or "drop"')
    # Nothing was stored.
    assert (await call(api, "GET", "/v3/channels/c")).status == 404


async def test_v3_percent_encoded_name(api):
    reply = await call(api, "PUT", "/v3/channels/my%20app", {})
    assert reply.json == {"channel": "my app"}
    assert (await call(api, "GET", "/v3/channels/my%20app")).status == 200


async def test_v3_get_channel(api):
    put = (await call(api, "PUT", "/v3/channels/c", {"tokens": ["app"]})).json
    reply = await call(api, "GET", "/v3/channels/c")
    assert (reply.status, reply.json) == (200, put)
    assert_error(await call(api, "GET", "/v3/channels/nope"), 404, "channel not found")


async def test_v2_channel_is_v3_channel(api):
    created = (await call(api, "POST", "/channels", {"name": "x", "tokens": ["app"]})).json
    reply = await call(api, "GET", "/v3/channels/1")
    assert reply.json == {"channel": "1", "tokens": created["tokens"]}


async def test_v3_delete_channel(api, registry):
    await call(api, "PUT", "/v3/channels/c", {"tokens": ["app"]})
    await call(api, "POST", "/v3/channels/c/drains", {"url": "syslog://h"})
    reply = await call(api, "DELETE", "/v3/channels/c")
    assert (reply.status, reply.body) == (204, b"")
    assert "content-length" not in reply.headers or reply.headers["content-length"] == "0"
    assert registry.channels == {}
    assert list(api.store.drains()) == []
    assert_error(await call(api, "DELETE", "/v3/channels/c"), 404, "channel not found")


# -- POST /v3/channels/{name}/tokens -----------------------------------------------------------


async def test_v3_create_token(api, registry):
    await call(api, "PUT", "/v3/channels/c", {})
    reply = await call(api, "POST", "/v3/channels/c/tokens", {"name": "app"})
    assert reply.status == 201
    assert reply.json == {"token": reply.json["token"], "name": "app"}
    assert is_token(reply.json["token"])
    assert registry.channels["c"] == {reply.json["token"]: "app"}


async def test_v3_create_token_errors(api):
    assert_error(
        await call(api, "POST", "/v3/channels/x/tokens", {"name": "a"}), 404, "channel not found"
    )
    await call(api, "PUT", "/v3/channels/c", {})
    for body in ({}, {"name": 1}, {"name": None}):
        assert_error(
            await call(api, "POST", "/v3/channels/c/tokens", body), 400, "name is required"
        )
