"""Durable state of logplexd: channels, tokens, drains, credentials and sessions.

``Store`` is the interface; ``open_store`` opens the embedded msgpack implementation, or
the shared Redis one when given a ``redis://`` or ``redis+cluster://`` URL (``store_url``).
Both keep the whole store in memory and plan changes the same way (``Store`` holds that);
they differ only in how a change becomes durable. What they hold are records (``ChannelRecord``,
``DrainRecord``...), apart from the live objects the router and the drains make of them.
``parse_drain_url`` is the one drain-URL parser: the API and the store validate with it, the
drains deliver to the ``DrainTarget`` it returns. The Redis client helpers are shared with
the data plane (``cluster``), and ``PlatformRecords`` holds the Platform API's own records.
"""

from typing import Any, overload

from . import embedded
from ._redis_client import DEFAULT_PREFIX, RedisTarget, channel_key, open_redis, parse_redis_url
from ._redis_client import Client as RedisClient
from .base import ChannelPut, Store, Subscriber
from .drain_url import (
    DrainKind,
    DrainTarget,
    InvalidDrainUrl,
    parse_drain_url,
    redact_url,
    syslog_url,
)
from .embedded import EmbeddedStore
from .model import (
    OVERFLOW_MODES,
    SESSION_TTL_SECONDS,
    ChannelAdded,
    ChannelExists,
    ChannelNotFound,
    ChannelRecord,
    ChannelRemoved,
    ChannelUpdated,
    CredentialExists,
    CredentialRecord,
    DrainAdded,
    DrainExists,
    DrainLimitReached,
    DrainNotFound,
    DrainRecord,
    DrainRemoved,
    DrainUpdated,
    SessionRecord,
    StoreCorrupt,
    StoreError,
    StoreEvent,
    StoreLocked,
    StoreUnavailable,
    TokenAdded,
    TokenRecord,
    TokenRemoved,
)
from .platform_records import (
    Account,
    App,
    DrainMeta,
    PlatformRecords,
    open_platform_records,
    utc_timestamp,
)
from .redis_store import RedisStore


@overload
def open_store(data_dir: str, url: None = None, **options: Any) -> EmbeddedStore: ...


@overload
def open_store(data_dir: str, url: str | None, **options: Any) -> EmbeddedStore | RedisStore: ...


def open_store(data_dir: str, url: str | None = None, **options: Any) -> EmbeddedStore | RedisStore:
    """The store ``url`` names: empty or None is the embedded store in ``data_dir``;
    ``redis://HOST:PORT/DB`` is one Redis and ``redis+cluster://HOST:PORT[,HOST:PORT...]`` a
    Redis Cluster (options: ``node_id``, ``prefix``, ``clock``). Anything else: StoreError.

    A RedisStore holds nothing until its ``maintain`` task runs (it connects and loads).
    """
    if not url:
        options.pop("node_id", None)
        return embedded.open_store(data_dir, **options)
    return RedisStore(url, **options)  # parses the URL: StoreError when it is not valid


__all__ = [
    "DEFAULT_PREFIX",
    "OVERFLOW_MODES",
    "SESSION_TTL_SECONDS",
    "Account",
    "App",
    "ChannelAdded",
    "ChannelExists",
    "ChannelNotFound",
    "ChannelPut",
    "ChannelRecord",
    "ChannelRemoved",
    "ChannelUpdated",
    "CredentialExists",
    "CredentialRecord",
    "DrainAdded",
    "DrainExists",
    "DrainKind",
    "DrainLimitReached",
    "DrainMeta",
    "DrainNotFound",
    "DrainRecord",
    "DrainRemoved",
    "DrainTarget",
    "DrainUpdated",
    "EmbeddedStore",
    "InvalidDrainUrl",
    "PlatformRecords",
    "RedisClient",
    "RedisStore",
    "RedisTarget",
    "SessionRecord",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreEvent",
    "StoreLocked",
    "StoreUnavailable",
    "Subscriber",
    "TokenAdded",
    "TokenRecord",
    "TokenRemoved",
    "channel_key",
    "open_platform_records",
    "open_redis",
    "open_store",
    "parse_drain_url",
    "parse_redis_url",
    "redact_url",
    "syslog_url",
    "utc_timestamp",
]
