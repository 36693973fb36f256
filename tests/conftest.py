"""Fixtures every test module may use; shared code lives in tests/helpers."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """One redis-server with an fsync-always AOF (kill -9 loses no acknowledged write)."""
    require_redis()
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_unix_server(tmp_path: Path) -> Iterator[RedisServer]:
    """One redis-server with no TCP port: only a Unix socket (``url`` is ``unix://...``)."""
    require_redis()
    server = RedisServer(tmp_path, unix_only=True)
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """Three masters, no replicas, AOF fsync always on each."""
    require_redis()
    cluster = RedisCluster(tmp_path, persistent=True)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture(params=["single", "cluster"])
def redis_any(request: pytest.FixtureRequest) -> RedisServer | RedisCluster:
    """The same test on one Redis and on a Redis Cluster."""
    name = "redis_server" if request.param == "single" else "redis_cluster"
    server: RedisServer | RedisCluster = request.getfixturevalue(name)
    return server
