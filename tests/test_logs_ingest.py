"""POST /logs decisions, sans-IO: status lines, headers and what reaches the channel."""

import base64
import gzip

import pytest

from logplexd.ingest.logs import LogsIngest
from logplexd.router.registry import Registry
from tests.helpers.http import basic_auth
from tests.helpers.syslog import frame as syslog_frame

TOKEN = "t.d6799f88-4a77-402f-b197-2b722a02cdbc"
SIBLING = "t.11111111-4a77-402f-b197-2b722a02cdbc"
OTHER = "t.22222222-4a77-402f-b197-2b722a02cdbc"


def frame(app: str, text: str) -> bytes:
    # The body sizes below are counted on this timestamp and a newline after each message.
    return syslog_frame(app, text + "\n", ts="2012-12-10T03:51:41Z+00:00")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup():
    registry = Registry()
    registry.add_token("app-1", TOKEN, "app")
    registry.add_token("app-1", SIBLING, "worker")
    registry.add_token("app-2", OTHER, "other")
    creds = {"full": ("pw", frozenset({"full_api"})), "router": ("pw", frozenset({"any_channel"}))}

    async def check(user, password):
        entry = creds.get(user)
        return entry[1] if entry and entry[0] == password else None

    clock = Clock()
    return registry, LogsIngest(registry, check, clock=clock), clock


TOKEN_AUTH = basic_auth("token", TOKEN)


async def post(ingest, body, *, auth=TOKEN_AUTH, ctype="application/logplex-1", **extra):
    headers = {"content-type": ctype, **{k.replace("_", "-"): v for k, v in extra.items()}}
    if auth is not None:
        headers["authorization"] = auth
    return await ingest.handle("POST", headers, body)


def lines(registry, channel):
    return registry.channel(channel).ring.last(100).frames()


async def test_token_auth_routes_everything_to_the_token_channel(setup):
    registry, ingest, _ = setup
    body = frame(TOKEN, "one") + frame(SIBLING, "two") + frame(OTHER, "three") + frame("x", "4")
    resp = await post(ingest, body, logplex_msg_count="4")
    assert (resp.status, resp.body) == (204, b"")
    assert ("content-type", "text/plain") in resp.headers
    got = [line.split(b" ", 4)[3] for line in lines(registry, "app-1")]
    # Own and sibling tokens show their names; a foreign token or other APP-NAME is kept.
    assert got == [b"app", b"worker", OTHER.encode(), b"x"]
    assert len(registry.channel("app-2").ring) == 0


async def test_any_channel_credential_routes_by_app_name(setup):
    registry, ingest, _ = setup
    resp = await post(
        ingest, frame(TOKEN, "a") + frame(OTHER, "b"), auth=basic_auth("router", "pw")
    )
    assert resp.status == 204
    assert len(lines(registry, "app-1")) == 1 and len(lines(registry, "app-2")) == 1


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "Bearer x",
        "Basic !!!notbase64",
        basic_auth("token", "t.unknown"),
        basic_auth("router", "no"),
        basic_auth("nocolon", "")[:-4],
        "Basic " + base64.b64encode(b"no-colon").decode(),
    ],
)
async def test_unauthorized(setup, auth):
    _, ingest, _ = setup
    resp = await post(ingest, frame(TOKEN, "x"), auth=auth)
    assert resp.status == 401 and resp.body == b""
    assert ("www-authenticate", "Basic realm=Logplex") in resp.headers


async def test_credential_without_any_channel_is_forbidden(setup):
    _, ingest, _ = setup
    resp = await post(ingest, frame(TOKEN, "x"), auth=basic_auth("full", "pw"))
    assert resp.status == 403
    assert resp.reason == "Credential not permitted to write to any channel."
    assert resp.body == resp.reason.encode()


async def test_one_malformed_frame_rejects_the_whole_request(setup):
    registry, ingest, _ = setup
    for body in [
        frame(TOKEN, "ok") + b"garbage\n",
        frame(TOKEN, "ok") + b"500 short",
        frame(TOKEN, "ok")[:-3],
    ]:
        resp = await post(ingest, body)
        assert (resp.status, resp.reason, resp.body) == (
            400,
            "Malformed log messages",
            b"Malformed log messages",
        )
        assert ("www-authenticate", "Basic realm=Logplex") in resp.headers
    assert len(registry.channel("app-1").ring) == 0


@pytest.mark.parametrize("count", ["2", "abc", "-1", ""])
async def test_message_count_mismatch(setup, count):
    _, ingest, _ = setup
    resp = await post(ingest, frame(TOKEN, "x"), logplex_msg_count=count)
    assert (resp.status, resp.body) == (400, b"Message count mismatch")


@pytest.mark.parametrize("ctype", ["text/plain", "application/logplex-1; charset=utf-8", ""])
async def test_wrong_content_type(setup, ctype):
    _, ingest, _ = setup
    assert (await post(ingest, frame(TOKEN, "x"), ctype=ctype)).status == 415


async def test_x_logplex_content_type_is_accepted(setup):
    _, ingest, _ = setup
    assert (await post(ingest, frame(TOKEN, "x"), ctype="application/x-logplex-1")).status == 204


async def test_get_is_405_with_allow(setup):
    _, ingest, _ = setup
    resp = await ingest.handle("GET", {}, b"")
    assert resp.status == 405 and ("allow", "POST") in resp.headers


async def test_gzip_body_and_gzip_bomb(setup):
    registry, ingest, _ = setup
    body = b"".join(frame(TOKEN, f"m{i}") for i in range(5))
    assert (await post(ingest, gzip.compress(body), content_encoding="gzip")).status == 204
    assert len(lines(registry, "app-1")) == 5
    bomb = gzip.compress(b"0" * (ingest.max_decompressed + 10))
    assert (await post(ingest, bomb, content_encoding="gzip")).status == 413
    assert (await post(ingest, b"not gzip", content_encoding="gzip")).status == 400
    assert (await post(ingest, gzip.compress(body)[:-8], content_encoding="gzip")).status == 400


async def test_oversized_body_is_413(setup):
    _, ingest, _ = setup
    ingest.max_body = 100
    assert (await post(ingest, frame(TOKEN, "x" * 200))).status == 413


async def test_frame_id_dedup_within_the_window(setup):
    registry, ingest, clock = setup
    body = frame(TOKEN, "once")
    assert (await post(ingest, body, logplex_frame_id="ABC")).status == 204
    assert (await post(ingest, body, logplex_frame_id="ABC")).status == 204
    assert len(lines(registry, "app-1")) == 1
    clock.now += 601
    assert (await post(ingest, body, logplex_frame_id="ABC")).status == 204
    assert len(lines(registry, "app-1")) == 2
    # A rejected request is not remembered: its retry is routed.
    assert (await post(ingest, body + b"junk\n", logplex_frame_id="XYZ")).status == 400
    assert (await post(ingest, body, logplex_frame_id="XYZ")).status == 204
    assert len(lines(registry, "app-1")) == 3
