"""Durable state of logplexd: channels, tokens, drains, credentials and sessions.

``Store`` is the interface; ``open_store`` opens the embedded msgpack implementation, or
the shared Redis one when given a ``redis://`` or ``redis+cluster://`` URL (``store_url``).
"""

from typing import TYPE_CHECKING, Any, overload

from . import embedded
from ._redis_client import DEFAULT_PREFIX, RedisTarget, channel_key, open_redis, parse_redis_url
from .base import ChannelPut, Store, Subscriber
from .drain_url import DrainKind, DrainUrl, InvalidDrainUrl, parse_drain_url, redact_url
from .embedded import EmbeddedStore
from .model import (
    SESSION_TTL_SECONDS,
    Channel,
    ChannelAdded,
    ChannelExists,
    ChannelNotFound,
    ChannelRemoved,
    Credential,
    CredentialExists,
    Drain,
    DrainAdded,
    DrainExists,
    DrainLimitReached,
    DrainNotFound,
    DrainRemoved,
    DrainUpdated,
    Session,
    StoreCorrupt,
    StoreError,
    StoreEvent,
    StoreLocked,
    StoreUnavailable,
    Token,
    TokenAdded,
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

if TYPE_CHECKING:
    # One Redis or a Redis Cluster (a type only: coredis is imported when a store opens).
    from ._redis_client import Client as RedisClient  # noqa: F401


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
    "Account",
    "App",
    "DrainMeta",
    "PlatformRecords",
    "open_platform_records",
    "utc_timestamp",
    "DEFAULT_PREFIX",
    "RedisTarget",
    "channel_key",
    "open_redis",
    "parse_redis_url",
    "SESSION_TTL_SECONDS",
    "Channel",
    "ChannelAdded",
    "ChannelExists",
    "ChannelNotFound",
    "ChannelPut",
    "ChannelRemoved",
    "Credential",
    "CredentialExists",
    "Drain",
    "DrainAdded",
    "DrainExists",
    "DrainKind",
    "DrainLimitReached",
    "DrainNotFound",
    "DrainRemoved",
    "DrainUpdated",
    "DrainUrl",
    "EmbeddedStore",
    "InvalidDrainUrl",
    "RedisStore",
    "Session",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreEvent",
    "StoreLocked",
    "StoreUnavailable",
    "Subscriber",
    "Token",
    "TokenAdded",
    "TokenRemoved",
    "open_store",
    "parse_drain_url",
    "redact_url",
]
