"""Durable state of logplexd: channels, tokens, drains, credentials and sessions.

``Store`` is the interface; ``open_store`` opens the embedded msgpack implementation, or
the shared Redis one when given a ``redis://`` or ``redis+cluster://`` URL (``store_url``).
Both keep the whole store in memory and plan changes the same way (``Store`` holds that);
they differ only in how a change becomes durable. What they hold are records (``ChannelRecord``,
``DrainRecord``...), apart from the live objects the router and the drains make of them.
``parse_drain_url`` is the one drain-URL parser: the API and the store validate with it, the
drains deliver to the ``DrainTarget`` it returns. The Redis client helpers are shared with
the data plane (``cluster``). The Platform API's own records (``Account``, ``App``,
``DrainMeta``) are held by the same store; ``migrate_platform_journal`` imports the
``platform.lpj`` of earlier versions, and ``serve_accounts_socket`` lets ``logplexd accounts``
reach a running daemon's store. ``DirLock`` (a data directory held by one process) and
``write_atomically`` (a small file replaced whole, fsynced) serve the data plane's files in
the data dir too.
"""

from typing import Any, overload

from . import embedded
from ._redis_client import (
    DEFAULT_PREFIX,
    RedisTarget,
    channel_key,
    open_redis,
    parse_redis_url,
    redact_store_url,
)
from ._redis_client import URL_FORMS as REDIS_URL_FORMS
from ._redis_client import Client as RedisClient
from .accounts_socket import SOCKET_FILE as ACCOUNTS_SOCKET
from .accounts_socket import (
    answer_accounts_request,
    call_accounts_socket,
    serve_accounts_socket,
)
from .base import ChannelPut, PlatformImport, Store, Subscriber
from .dir_lock import DirLock
from .drain_url import (
    DrainKind,
    DrainTarget,
    InvalidDrainUrl,
    parse_drain_url,
    redact_url,
    syslog_url,
)
from .embedded import EmbeddedStore
from .files import write_atomically
from .model import (
    OVERFLOW_MODES,
    SESSION_TTL_SECONDS,
    Account,
    AccountExists,
    App,
    AppNameTaken,
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
    DrainMeta,
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
    hash_api_token,
    utc_timestamp,
)
from .platform_records import (
    JOURNAL_FILE as PLATFORM_JOURNAL,
)
from .platform_records import (
    migrate_platform_journal,
    read_platform_journal,
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
    "ACCOUNTS_SOCKET",
    "DEFAULT_PREFIX",
    "OVERFLOW_MODES",
    "PLATFORM_JOURNAL",
    "SESSION_TTL_SECONDS",
    "Account",
    "AccountExists",
    "App",
    "AppNameTaken",
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
    "DirLock",
    "EmbeddedStore",
    "InvalidDrainUrl",
    "PlatformImport",
    "RedisClient",
    "RedisStore",
    "REDIS_URL_FORMS",
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
    "answer_accounts_request",
    "call_accounts_socket",
    "channel_key",
    "hash_api_token",
    "migrate_platform_journal",
    "open_redis",
    "open_store",
    "parse_drain_url",
    "parse_redis_url",
    "redact_store_url",
    "read_platform_journal",
    "redact_url",
    "serve_accounts_socket",
    "syslog_url",
    "utc_timestamp",
    "write_atomically",
]
