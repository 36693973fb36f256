"""Fixtures every test module may use; shared code lives in tests/helpers."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trustme

from tests.helpers.redis import RedisCluster, RedisServer, require_redis

# helpers/strict.py: under LOGPLEXD_TEST_STRICT=1 (.ci/run) a skip is a failure.
# pytester: the strict mode's own test runs pytest on generated test files.
pytest_plugins = ("tests.helpers.strict", "pytester")


@pytest.fixture
def rng() -> random.Random:
    return random.Random(0x10991E)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The runner's own logplexd settings and credentials stay out of the CLI and config
    tests (they must not point them at a real data dir or server): no LOGPLEX* or
    FIREHOSE_* variable (the original's names, read too), no ~/.netrc, no NO_COLOR; the
    working directory is the test's tmp dir."""
    for name in list(os.environ):
        if name.startswith(("LOGPLEX", "FIREHOSE_")) or name in ("NETRC", "NO_COLOR"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A test certificate authority (helpers/tls.py issues server certificates from it)."""
    return trustme.CA()


S = TypeVar("S", RedisServer, RedisCluster)


def _running(make: Callable[[], S], stop: Callable[[S], None]) -> Iterator[S]:
    """A server made (once redis-server is known to be there) and started for a test,
    then stopped with ``stop`` whatever the test did."""
    require_redis()
    server = make()
    server.start()
    try:
        yield server
    finally:
        stop(server)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """One redis-server with an fsync-always AOF (kill -9 loses no acknowledged write)."""
    yield from _running(lambda: RedisServer(tmp_path, persistent=True), RedisServer.kill)


@pytest.fixture
def redis_unix_server(tmp_path: Path) -> Iterator[RedisServer]:
    """One redis-server with no TCP port: only a Unix socket (``url`` is ``unix://...``)."""
    yield from _running(lambda: RedisServer(tmp_path, unix_only=True), RedisServer.remove)


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """Three masters, no replicas, AOF fsync always on each."""
    yield from _running(lambda: RedisCluster(tmp_path, persistent=True), RedisCluster.kill)


@pytest.fixture(params=["single", "cluster"])
def redis_any(request: pytest.FixtureRequest) -> RedisServer | RedisCluster:
    """The same test on one Redis and on a Redis Cluster."""
    name = "redis_server" if request.param == "single" else "redis_cluster"
    server: RedisServer | RedisCluster = request.getfixturevalue(name)
    return server
