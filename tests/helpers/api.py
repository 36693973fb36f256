"""The control API without sockets: a ``ControlApi`` on a real store, requests in, replies out."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from logplexd.api import ControlApi
from logplexd.store import open_store
from logplexd.web import Request, Response

from .http import basic_auth

AUTH_KEY = "s3cret-key"
PUBLIC_URL = "http://logplex.example:8001"
AUTH = ("Authorization", f"Basic {AUTH_KEY}")
JSON = ("Content-Type", "application/json")


class FakeRegistry:
    """Same methods as logplexd.router.registry.Registry, recording what it was told."""

    def __init__(self) -> None:
        self.channels: dict[str, dict[str, str]] = {}
        self.token_channel: dict[str, str] = {}

    def ensure_channel(self, name: str) -> None:
        self.channels.setdefault(name, {})

    def drop_channel(self, name: str) -> None:
        for token in list(self.channels.pop(name, {})):
            self.token_channel.pop(token, None)

    def add_token(self, channel_name: str, token: str, name: str) -> None:
        self.ensure_channel(channel_name)
        self.channels[channel_name][token] = name
        self.token_channel[token] = channel_name

    def remove_token(self, token: str) -> None:
        channel = self.token_channel.pop(token, None)
        if channel is not None:
            self.channels.get(channel, {}).pop(token, None)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: Response = field(repr=False)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def make_api(data_dir: str, registry: Any = None, **options: Any) -> ControlApi:
    store = open_store(data_dir)
    return ControlApi(
        store,
        registry if registry is not None else FakeRegistry(),
        auth_key=AUTH_KEY,
        public_url=PUBLIC_URL,
        **options,
    )


def basic(user: str, password: str) -> tuple[str, str]:
    """An ``Authorization`` header for HTTP Basic, as ``call`` takes headers."""
    return ("Authorization", basic_auth(user, password))


async def call(
    api: ControlApi,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: tuple[tuple[str, str], ...] | None = None,
    raw: bytes | None = None,
) -> Reply:
    if headers is None:
        headers = (AUTH, JSON) if body is not None or raw is not None else (AUTH,)
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    request = Request(
        method=method,
        target=path,
        headers=tuple((k.lower(), v) for k, v in headers),
        body=payload,
        request_id=str(uuid.uuid4()),
    )
    response = await api.handle(request)
    assert isinstance(response.body, bytes)
    return Reply(
        response.status,
        {k.lower(): v for k, v in response.headers},
        response.body,
        response,
    )


def assert_error(reply: Reply, status: int, message: str) -> None:
    assert (reply.status, reply.json) == (status, {"error": message}), (reply.status, reply.body)
    assert reply.headers["content-type"] == "application/json"


def is_token(value: str, prefix: str = "t.") -> bool:
    if not value.startswith(prefix):
        return False
    return str(uuid.UUID(value[2:])) == value[2:]
