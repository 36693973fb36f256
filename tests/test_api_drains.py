"""Drains, v2 and v3: creation, reservation, update, delete, limits, duplicates, events."""

from __future__ import annotations

import pytest

from logplexd.store import DrainAdded, DrainRemoved, DrainUpdated
from tests.helpers.api import PUBLIC_URL, assert_error, call, is_token, make_api


@pytest.fixture
async def api(tmp_path):
    api = make_api(str(tmp_path), max_drains_per_channel=2)
    await call(api, "POST", "/channels", {"name": "legacy"})  # channel 1
    await call(api, "PUT", "/v3/channels/app", {})
    yield api
    api.store.close()


@pytest.fixture
def events(api):
    seen: list[object] = []
    api.store.subscribe(seen.append)
    return seen


# -- v2 ------------------------------------------------------------------------------------------


async def test_v2_create_drain(api, events):
    reply = await call(api, "POST", "/v2/channels/1/drains", {"url": "syslog://logs.example:601"})
    assert reply.status == 201
    body = reply.json
    assert body == {"id": 1, "token": body["token"], "url": "syslog://logs.example:601"}
    assert is_token(body["token"], "d.")
    assert [type(e) for e in events] == [DrainAdded]
    assert events[0].channel == "1" and events[0].drain.url == "syslog://logs.example:601"


async def test_v2_create_drain_host_port_form(api):
    reply = await call(api, "POST", "/v2/channels/1/drains", {"host": "h.example", "port": 1514})
    assert (reply.status, reply.json["url"]) == (201, "syslog://h.example:1514")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"url": "ftp://h.example/"}, "Invalid drain destination: unsupported scheme 'ftp'"),
        (
            {"url": "udpsyslog://h.example"},
            "Invalid drain destination: unsupported scheme 'udpsyslog'",
        ),
        ({"url": "syslog://"}, "Invalid drain destination: missing host"),
        ({"url": "https://h:99999/"}, "Invalid drain destination: unparsable URL (bad port)"),
        (
            {"url": "not a url"},
            "Invalid drain destination: URL contains whitespace or control characters",
        ),
        ({}, "Invalid drain destination: missing url"),
        ({"url": 5}, "Invalid drain destination: missing url"),
    ],
)
async def test_v2_create_drain_invalid_url(api, body, message):
    assert_error(await call(api, "POST", "/v2/channels/1/drains", body), 422, message)


async def test_v2_create_drain_unknown_channel(api):
    reply = await call(api, "POST", "/v2/channels/99/drains", {"url": "syslog://h"})
    assert_error(reply, 404, "No such channel")


async def test_v2_drain_limit_and_duplicates(api):
    assert (await call(api, "POST", "/v2/channels/1/drains", {"url": "syslog://a"})).status == 201
    # Same destination spelled with its default port: a duplicate.
    dup = await call(api, "POST", "/v2/channels/1/drains", {"url": "syslog://A:601"})
    assert_error(dup, 409, "Already exists")
    assert (await call(api, "POST", "/v2/channels/1/drains", {"url": "syslog://b"})).status == 201
    full = await call(api, "POST", "/v2/channels/1/drains", {"url": "syslog://c"})
    assert_error(full, 422, "You have already added the maximum number of drains allowed")


async def test_v2_update_drain(api, events):
    drain = (await call(api, "POST", "/v2/channels/1/drains", {"url": "syslog://a"})).json
    reply = await call(api, "POST", f"/v2/channels/1/drains/{drain['id']}", {"url": "https://b/"})
    assert (reply.status, reply.json) == (200, {**drain, "url": "https://b/"})
    assert isinstance(events[-1], DrainUpdated)
    assert (events[-1].previous.url, events[-1].drain.url) == ("syslog://a", "https://b/")


async def test_v2_update_fills_a_reservation(api):
    reserved = (await call(api, "POST", "/v3/channels/1/drains", {})).json
    reply = await call(
        api, "POST", f"/v2/channels/1/drains/{reserved['id']}", {"url": "syslog://a"}
    )
    assert (reply.status, reply.json) == (200, {**reserved, "url": "syslog://a"})


async def test_v2_update_drain_errors(api):
    first = (await call(api, "POST", "/v2/channels/1/drains", {"url": "syslog://a"})).json
    second = (await call(api, "POST", "/v2/channels/1/drains", {"url": "syslog://b"})).json
    path = f"/v2/channels/1/drains/{second['id']}"
    assert_error(await call(api, "POST", path, {"url": "syslog://a"}), 409, "Already exists")
    assert_error(
        await call(api, "POST", path, {"url": "gopher://a"}),
        422,
        "Invalid drain destination: unsupported scheme 'gopher'",
    )
    assert_error(
        await call(api, "POST", "/v2/channels/1/drains/77", {"url": "syslog://c"}),
        404,
        "Unknown drain.",
    )
    assert_error(
        await call(api, "POST", f"/v2/channels/9/drains/{first['id']}", {"url": "syslog://c"}),
        404,
        "No such channel",
    )
    reserved = (await call(api, "POST", "/v3/channels/1/drains", {})).json
    full = await call(api, "POST", f"/v2/channels/1/drains/{reserved['id']}", {"url": "syslog://c"})
    assert_error(full, 422, "You have already added the maximum number of drains allowed")


async def test_v2_delete_drain(api, events):
    drain = (await call(api, "POST", "/v2/channels/1/drains", {"url": "syslog://a"})).json
    reply = await call(api, "DELETE", f"/v2/channels/1/drains/{drain['id']}")
    assert (reply.status, reply.body) == (200, b"")
    assert isinstance(events[-1], DrainRemoved)
    assert_error(
        await call(api, "DELETE", f"/v2/channels/1/drains/{drain['id']}"), 404, "Not found"
    )


async def test_v2_delete_drain_of_another_channel(api):
    drain = (await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://a"})).json
    assert_error(
        await call(api, "DELETE", f"/v2/channels/1/drains/{drain['id']}"), 404, "Not found"
    )


# -- v3 ------------------------------------------------------------------------------------------


async def test_v3_create_drain(api):
    reply = await call(
        api, "POST", "/v3/channels/app/drains", {"url": "syslog+tls://h:6514#insecure"}
    )
    assert reply.status == 201
    drain = reply.json
    assert drain == {"id": 1, "token": drain["token"], "url": "syslog+tls://h:6514#insecure"}
    assert reply.headers["location"] == f"{PUBLIC_URL}/v3/channels/app/drains/1"
    channel = (await call(api, "GET", "/v3/channels/app")).json
    assert channel["drains"] == [drain]


async def test_v3_reserve_drain(api, events):
    for request_body in ({}, None):
        reply = await call(api, "POST", "/v3/channels/app/drains", request_body)
        assert reply.status == 201
        assert set(reply.json) == {"id", "token"}
        assert reply.headers["location"].endswith(f"/drains/{reply.json['id']}")
    assert all(isinstance(e, DrainAdded) and e.drain.url is None for e in events)
    # Reservations are not counted against the limit nor listed.
    assert (await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://a"})).status == 201
    assert (await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://b"})).status == 201
    assert "drains" in (await call(api, "GET", "/v3/channels/app")).json


async def test_v3_create_drain_errors(api):
    assert_error(
        await call(api, "POST", "/v3/channels/zzz/drains", {"url": "syslog://a"}),
        404,
        "channel not found",
    )
    assert_error(
        await call(api, "POST", "/v3/channels/app/drains", {"url": 1}), 400, "url must be a string"
    )
    assert_error(
        await call(api, "POST", "/v3/channels/app/drains", {"url": "ftp://x"}),
        422,
        "invalid drain url: unsupported scheme 'ftp'",
    )
    await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://a"})
    assert_error(
        await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://a"}),
        409,
        "already exists",
    )
    await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://b"})
    assert_error(
        await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://c"}),
        422,
        "maximum number of drains reached",
    )


async def test_v3_update_drain(api, events):
    drain = (await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://a"})).json
    reply = await call(
        api, "PUT", f"/v3/channels/app/drains/{drain['id']}", {"url": "https://u:p@b/"}
    )
    assert (reply.status, reply.json) == (200, {**drain, "url": "https://u:p@b/"})
    assert isinstance(events[-1], DrainUpdated)
    # Same URL again: nothing changes, nothing is published.
    count = len(events)
    again = await call(
        api, "PUT", f"/v3/channels/app/drains/{drain['id']}", {"url": "https://u:p@b/"}
    )
    assert again.status == 200 and len(events) == count


async def test_v3_update_drain_errors(api):
    a = (await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://a"})).json
    b = (await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://b"})).json
    path = f"/v3/channels/app/drains/{b['id']}"
    assert_error(await call(api, "PUT", path, {"url": "syslog://a"}), 409, "already exists")
    assert_error(await call(api, "PUT", path, {}), 400, "url is required (a string)")
    assert_error(
        await call(api, "PUT", path, {"url": "xyz"}), 422, "invalid drain url: missing scheme"
    )
    assert_error(
        await call(api, "PUT", "/v3/channels/app/drains/999", {"url": "syslog://c"}),
        404,
        "drain not found",
    )
    assert_error(
        await call(api, "PUT", f"/v3/channels/1/drains/{a['id']}", {"url": "syslog://c"}),
        404,
        "drain not found",
    )
    assert_error(
        await call(api, "PUT", f"/v3/channels/nope/drains/{a['id']}", {"url": "syslog://c"}),
        404,
        "channel not found",
    )
    reserved = (await call(api, "POST", "/v3/channels/app/drains", {})).json
    full = await call(
        api, "PUT", f"/v3/channels/app/drains/{reserved['id']}", {"url": "syslog://c"}
    )
    assert_error(full, 422, "maximum number of drains reached")


async def test_v3_delete_drain(api, events):
    drain = (await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://a"})).json
    reply = await call(api, "DELETE", f"/v3/channels/app/drains/{drain['id']}")
    assert (reply.status, reply.body) == (204, b"")
    assert isinstance(events[-1], DrainRemoved) and events[-1].drain.id == drain["id"]
    assert_error(
        await call(api, "DELETE", f"/v3/channels/app/drains/{drain['id']}"), 404, "drain not found"
    )
    assert_error(await call(api, "DELETE", "/v3/channels/nope/drains/1"), 404, "channel not found")


async def test_v3_drain_routes_wrong_methods(api):
    reply = await call(api, "GET", "/v3/channels/app/drains")
    assert_error(reply, 405, "Method Not Allowed")
    assert reply.headers["allow"] == "POST"
    reply = await call(api, "GET", "/v3/channels/app/drains/1")
    assert reply.headers["allow"] == "PUT, DELETE"
    assert_error(await call(api, "DELETE", "/v3/channels/app/drains/abc"), 404, "Not Found")


async def test_deleting_a_channel_removes_its_drains_first(api, events):
    await call(api, "POST", "/v3/channels/app/drains", {"url": "syslog://a"})
    await call(api, "PUT", "/v3/channels/app", {"tokens": ["t"]})
    del events[:]
    await call(api, "DELETE", "/v3/channels/app")
    names = [type(e).__name__ for e in events]
    assert names == ["DrainRemoved", "TokenRemoved", "ChannelRemoved"]
