"""One place that turns a store URL into a coredis client (issue 11).

``redis://[[user]:password@]HOST[:PORT][/DB]`` is one Redis; ``unix://[[user]:password@]/PATH
[?db=DB]`` is one Redis on this host, reached through its Unix socket (redis-py's form; several
nodes on one machine share a local Redis so, and skip the TCP stack); ``redis+cluster://
[[user]:password@]HOST:PORT[,HOST:PORT...]`` is a Redis Cluster reached through any of the
listed seed nodes (coredis discovers the others with CLUSTER SLOTS and follows MOVED/ASK
redirections and failovers itself). Both the configuration store and the history/tail/drain
code open their connections here, so the two accept exactly the same URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import SplitResult, unquote, urlsplit

from .model import StoreError

if TYPE_CHECKING:
    import coredis

# One Redis or a Redis Cluster: callers use only commands both serve alike. A string at run
# time, so that coredis is imported only when a Redis store or plane is opened.
Client: TypeAlias = "coredis.Redis[bytes] | coredis.RedisCluster[bytes]"

# Every key logplexd writes starts with this (configurable per store and plane).
DEFAULT_PREFIX = "logplex"

SCHEME_SINGLE = "redis"
SCHEME_CLUSTER = "redis+cluster"
SCHEME_UNIX = "unix"
DEFAULT_PORT = 6379

# Options of coredis.Redis that RedisCluster (coredis 6.x) does not take: dropped for a
# cluster rather than refused, so callers can pass one set of options for both.
_SINGLE_ONLY = frozenset({"client_name", "db", "max_idle_time", "unix_socket_path"})


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a store URL names; ``nodes`` has one entry for a single Redis. For one reached
    through a Unix socket (``socket_path``) that entry is ``(socket_path, 0)``: the one
    server's name wherever servers are told apart by address."""

    cluster: bool
    nodes: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None
    socket_path: str | None = None

    def describe(self) -> str:
        """For log lines: never includes the credentials."""
        if self.socket_path is not None:
            return f"unix:{self.socket_path}/{self.db}"
        where = ",".join(f"{host}:{port}" for host, port in self.nodes)
        return f"cluster {where}" if self.cluster else f"{where}/{self.db}"


def _port(text: str, url: str) -> int:
    if not text:
        return DEFAULT_PORT
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise _invalid(url, f"port {text!r} is not 1-65535")
    return int(text)


def _host_port(item: str, url: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [v6 address]:port
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _invalid(url, f"bad address {item!r}")
        return host, _port(rest[1:], url)
    host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise _invalid(url, "a node has no host")
    return host, _port(port, url)


def _invalid(url: str, reason: str) -> StoreError:
    return StoreError(f"invalid store URL {redact_store_url(url)}: {reason}")


def redact_store_url(url: str) -> str:
    """The URL with any password replaced, for error messages; without its query (other
    clients take ``?password=``, refused here but not to be echoed)."""
    url, query, _ = url.partition("?")
    if query:
        url += "?..."
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, tail = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}"


# What a store URL may be, for error messages (the configuration's too).
URL_FORMS = (
    "redis://HOST:PORT/DB, unix:///PATH/TO/redis.sock?db=DB or "
    "redis+cluster://HOST:PORT[,HOST:PORT...]"
)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a store URL; raises StoreError saying what is wrong."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in (SCHEME_SINGLE, SCHEME_CLUSTER, SCHEME_UNIX):
        raise _invalid(url, f"expected {URL_FORMS}")
    cluster = scheme.lower() == SCHEME_CLUSTER
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _invalid(url, str(exc)) from None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    if scheme.lower() == SCHEME_UNIX:
        return _unix_target(url, parts, hosts, username, password)
    if parts.query or parts.fragment:
        raise _invalid(url, "no query or fragment allowed")
    if not hosts:
        raise _invalid(url, "the URL has no host")
    path = parts.path.strip("/")
    if cluster:
        # Redis Cluster has only database 0.
        if path not in ("", "0"):
            raise _invalid(url, "a cluster has only database 0")
        nodes = tuple(_host_port(item, url) for item in hosts.split(","))
        return RedisTarget(True, nodes, 0, username, password)
    if "," in hosts:
        raise _invalid(url, "several hosts need redis+cluster://")
    if path and not (path.isdigit() and path.isascii()):
        raise _invalid(url, "the database (the path) must be a number")
    return RedisTarget(False, (_host_port(hosts, url),), int(path or 0), username, password)


def _unix_target(
    url: str, parts: SplitResult, host: str, username: str | None, password: str | None
) -> RedisTarget:
    """``unix://[[user]:password@]/PATH[?db=DB]``: the socket's absolute path, and the
    database in the query (redis-py's form), 0 without one."""
    if host:
        raise _invalid(
            url, "a unix:// URL names a socket's path, not a host (unix:///PATH/TO/redis.sock)"
        )
    path = unquote(parts.path)
    if not path.startswith("/") or path.endswith("/") or "\0" in path:
        raise _invalid(url, "the socket's path must be absolute (unix:///PATH/TO/redis.sock)")
    if parts.fragment:
        raise _invalid(url, "no fragment allowed")
    db = 0
    if parts.query:
        name, eq, value = parts.query.partition("=")
        if name != "db" or not eq or "&" in value:
            raise _invalid(url, "the only query is db=DB")
        if not (value.isdigit() and value.isascii()):
            raise _invalid(url, "the database must be a number")
        db = int(value)
    return RedisTarget(False, ((path, 0),), db, username, password, path)


def open_redis(url: str, **options: Any) -> coredis.Redis[Any] | coredis.RedisCluster[Any]:
    """A coredis client for ``url`` (not connected yet: use it as ``async with client``).

    ``options`` go to the coredis constructor (``connect_timeout``, ``stream_timeout``,
    ``decode_responses``, ``retry_policy``, ...); those only a single Redis takes, such as
    ``client_name``, are dropped for a cluster.
    """
    return open_target(parse_redis_url(url), **options)


def open_target(
    target: RedisTarget, **options: Any
) -> coredis.Redis[Any] | coredis.RedisCluster[Any]:
    """Same as ``open_redis`` for an already parsed URL."""
    import coredis

    options.setdefault("username", target.username)
    options.setdefault("password", target.password)
    if target.cluster:
        for name in _SINGLE_ONLY:
            options.pop(name, None)
        return coredis.RedisCluster(
            startup_nodes=[coredis.connection.TCPLocation(h, p) for h, p in target.nodes],
            **options,
        )
    if target.socket_path is not None:
        return coredis.Redis(unix_socket_path=target.socket_path, db=target.db, **options)
    host, port = target.nodes[0]
    return coredis.Redis(host, port, target.db, **options)


def channel_key(prefix: str, channel: str, part: str) -> str:
    """``P:{ch:<channel>}:<part>``: every key of one channel (history ``log``, checkpoints,
    leases) carries the hash tag ``{ch:<channel>}``, so Redis Cluster keeps a channel's keys
    on one shard while different channels spread over all of them. (A channel name holding
    ``}`` ends the tag early; all keys of that channel still share it, so they stay together.)
    The configuration keys instead share the single tag ``{cfg}`` (see redis_store).
    """
    return f"{prefix}:{{ch:{channel}}}:{part}"
