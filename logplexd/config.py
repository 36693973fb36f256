"""Settings for logplexd: defaults, a TOML file, the environment and flags, validated in one place.

Precedence is flags > environment > TOML file > defaults. Every value of every layer is
validated, not only the winning one, so a typo in the file is reported even while an
environment variable happens to override it (``logplexd config check`` would otherwise pass
a file that breaks as soon as the override goes away).

Errors are a single line naming the setting and where its value came from, because they are
read in a terminal or a journal, usually by someone who did not write the configuration.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import secrets
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = [
    "API_STATUSES",
    "AUTH_KEY_FILE",
    "CONFIG_ENV",
    "Address",
    "ConfigError",
    "ENV_PREFIX",
    "LEGACY_AUTH_KEY_ENV",
    "SETTING_NAMES",
    "Settings",
    "TLS_PAIRS",
    "default_of",
    "ensure_auth_key",
    "env_var",
    "flag_name",
    "load_settings",
    "parse_address",
    "parse_bool",
    "render_effective",
    "setting_help",
]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

ENV_PREFIX = "LOGPLEXD_"
# The name Logplex itself reads; kept so existing deployments can switch without edits.
LEGACY_AUTH_KEY_ENV = "LOGPLEX_AUTH_KEY"
CONFIG_ENV = "LOGPLEXD_CONFIG"
# The names the original Logplex reads (no prefix), accepted beside LOGPLEXD_*.
LEGACY_ENV = {
    "firehose_channel_ids": "FIREHOSE_CHANNEL_IDS",
    "firehose_filter_tokens": "FIREHOSE_FILTER_TOKENS",
}
AUTH_KEY_FILE = "auth_key"
MASK = "****"

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
API_STATUSES = ("normal", "read_only", "disabled")


class ConfigError(Exception):
    """A configuration problem, described in one line that starts with ``logplexd:``."""

    def __init__(self, message: str) -> None:
        # Printed verbatim to stderr and often read from a journal: keep it to one line.
        super().__init__(message.replace("\r", " ").replace("\n", " "))


class Address(NamedTuple):
    """A listen address. ``host`` holds IPv6 addresses without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """The effective configuration. Build it with :func:`load_settings`.

    Constructing it directly (tests, embedding) skips validation; the defaults are the
    documented ones, so ``dataclasses.replace(Settings(), max_frame=128)`` is a good start.
    ``dataclasses.asdict`` includes ``auth_key``: never log its result.
    """

    api_addr: Address = Address("127.0.0.1", 8001)
    logs_addr: Address = Address("127.0.0.1", 8601)
    syslog_addr: Address = Address("127.0.0.1", 6001)
    tls_syslog_addr: Address = Address("127.0.0.1", 6514)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # HTTPS on the control API and on the /logs input (issue 20): both files of a pair, or
    # neither (plain HTTP). Re-read on SIGHUP like the syslog listener's.
    api_tls_cert: Path | None = None
    api_tls_key: Path | None = None
    logs_tls_cert: Path | None = None
    logs_tls_key: Path | None = None
    data_dir: Path = Path("logplexd-data")
    # None means "http://<api_addr>" ("https://" with api_tls_cert and api_tls_key); see
    # resolved_public_url() for the port-0 case.
    public_url: str | None = None
    auth_key: str | None = field(default=None, repr=False)
    max_frame: int = 10240
    history_messages: int = 1500
    history_bytes: int = 4 * MIB
    channel_buffer_messages: int = 16384
    channel_buffer_bytes: int = 16 * MIB
    max_syslog_connections: int = 1024
    ingest_threads: int = 0
    # What a drain that takes every write whole but falls behind does (issue 18):
    # "pushback" holds the inputs that feed its channel; "drop" is lapped (L10), as Logplex.
    drain_overflow: str = "pushback"
    logs_hold_timeout: float = 5.0
    # Durable drain backlogs (issue 19): a drain a share of its ring behind spills to
    # segment files in <data_dir>/backlog, within these budgets (embedded store only).
    drain_spill: bool = True
    drain_spill_budget: int = 256 * MIB
    drain_spill_total: int = 8 * GIB
    drain_spill_min_free: int = 256 * MIB
    drain_spill_fsync: str = "interval"
    drain_spill_fsync_interval: float = 1.0
    syslog_idle_timeout: float = 300.0
    # A syslog connection that sends nothing this long after it is accepted is closed.
    syslog_first_byte_timeout: float = 10.0
    max_drains_per_channel: int = 6
    # Platform log-sessions (issue 20): a URL not yet connected expires after this long; a
    # connected tail ends after tail_max_duration. Logplex's /v2 and /v3 sessions keep 360 s
    # and tails that last until the client leaves.
    session_url_ttl: float = 300.0
    tail_max_duration: float = 3600.0
    # A session streamed as server-sent events (Accept: text/event-stream, the heroku CLI)
    # sends a keep-alive comment after this long without a line.
    sse_keepalive: float = 15.0
    api_max_body: int = 1 * MIB
    api_max_connections: int = 1024
    shutdown_timeout: float = 5.0
    log_level: str = "info"
    # Control rods at start (REFERENCE.md section 8); they can change at run time.
    api_status: str = "normal"
    deny_tail_sessions: bool = False
    deny_drain_forwarding: bool = False
    deny_logs_ingress: bool = False
    # The firehose (REFERENCE.md section 7): every message of a token whose name is in
    # firehose_filter_tokens is also copied raw to one of firehose_channel_ids, in turn.
    # Both empty (the default): no firehose.
    firehose_channel_ids: tuple[str, ...] = ()
    firehose_filter_tokens: tuple[str, ...] = ()
    # Shared state (issue 11): None = the embedded store in data_dir; redis://HOST:PORT/DB;
    # unix:///PATH/TO/redis.sock?db=DB; redis+cluster://HOST:PORT[,HOST:PORT...].
    store_url: str | None = None
    # This node's name in Redis; None = "<hostname>:<api port>" (see resolved_node_id()).
    node_id: str | None = None
    # Redis mode only (issue 11): the outbound buffer between ingestion and Redis, and the
    # drain lease TTL (a dead owner's drains move within TTL * 1.25; at most 12 s -> < 15 s).
    redis_buffer_messages: int = 200_000
    redis_buffer_bytes: int = 64 * MIB
    # Redis mode: a channel's ring on each node is a cache of its stream, this deep at
    # first (0: as deep as channel_buffer_messages; at least history_messages), deepened up
    # to channel_buffer_messages for a channel of large stream entries; drains it laps read
    # on from the stream, which keeps channel_buffer_messages (docs/SCALING.md). 8192: a
    # drain holds its channel's inputs a quarter of its ring behind, and at 2048 the drains
    # of 1,000 busy channels held every input a third of a flood (bench/RESULTS.md).
    redis_ring_messages: int = 8192
    # Redis mode: a drain whose receiver refuses data for longer than its stream keeps for
    # it spills to the disk of the node that owns it (drain_spill_* budgets; SCALING.md).
    redis_drain_spill: bool = True
    # Redis mode: the TCP congestion control of the data plane's own connections to Redis
    # ("": the system's). Not BBR's pacing: a flush is megabytes sent at once over a
    # short, fast path, and pacing it cost one kernel timer per few packets
    # (docs/SCALING.md, "The links to Redis: no pacing").
    redis_tcp_congestion: str = "cubic"
    drain_lease_ttl: float = 10.0
    # Where the values came from; not configuration itself.
    config_file: Path | None = None
    sources: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def api_tls_enabled(self) -> bool:
        return self.api_tls_cert is not None and self.api_tls_key is not None

    @property
    def logs_tls_enabled(self) -> bool:
        return self.logs_tls_cert is not None and self.logs_tls_key is not None

    @property
    def log_level_number(self) -> int:
        return int(getattr(logging, self.log_level.upper()))

    @property
    def auth_key_path(self) -> Path:
        return self.data_dir / AUTH_KEY_FILE

    def resolved_node_id(self) -> str:
        if self.node_id is not None:
            return self.node_id
        import socket

        return f"{socket.gethostname()}:{self.api_addr.port}"

    def resolved_public_url(self, api_bound: Address | tuple[str, int] | None = None) -> str:
        """The URL clients reach the API at, without a trailing slash: ``public_url``, else
        ``http://`` (``https://`` when the API has a certificate) and the API's address.

        Pass the address the API listener actually bound: with ``api_addr`` port 0 only the
        daemon knows the real port.
        """
        if self.public_url is not None:
            return self.public_url
        bound = Address(*api_bound) if api_bound is not None else self.api_addr
        scheme = "https" if self.api_tls_enabled else "http"
        return f"{scheme}://{bound}"


# --- parsing single values -------------------------------------------------------------------


class _Invalid(ValueError):
    """A value failed validation; the text is the reason, without the value or its source."""


_HOSTNAME = re.compile(
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?"
)


def parse_address(text: str) -> Address:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT``; port 0 means "any free port"."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise _Invalid("expected [IPV6]:PORT")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise _Invalid("expected HOST:PORT")
        if ":" in host:
            raise _Invalid("expected HOST:PORT (write IPv6 addresses as [ADDR]:PORT)")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise _Invalid(f"{host!r} is not an IPv4 address") from None
        elif len(host) > 253 or not _HOSTNAME.fullmatch(host):
            raise _Invalid(f"{host!r} is not a valid host name")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise _Invalid("the port must be a number from 0 to 65535")
    return Address(host, int(port_text))


def _address(raw: object) -> Address:
    if not isinstance(raw, str):
        raise _Invalid("expected a string HOST:PORT")
    return parse_address(raw)


def _path(raw: object) -> Path:
    if not isinstance(raw, str) or not raw.strip():
        raise _Invalid("expected a non-empty path")
    return Path(raw).expanduser()


def _url(raw: object) -> str:
    from urllib.parse import urlsplit

    if not isinstance(raw, str):
        raise _Invalid("expected a string URL")
    url = raw.strip().rstrip("/")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _Invalid("expected an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid("expected an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise _Invalid("the URL must not have a query or fragment")
    return url


def _store_url(raw: object) -> str | None:
    from .store import REDIS_URL_FORMS, StoreError, parse_redis_url

    if not isinstance(raw, str):
        raise _Invalid("expected a string URL")
    url = raw.strip()
    if not url:
        return None
    try:
        parse_redis_url(url)  # the same parser the store uses: one set of accepted URLs
    except StoreError:
        # The parser's text quotes the URL (password masked); the value stays out of here.
        raise _Invalid(f"expected {REDIS_URL_FORMS}") from None
    return url


def _node_id(raw: object) -> str:
    if not isinstance(raw, str):
        raise _Invalid("expected a string")
    name = raw.strip()
    if not name or len(name) > 200 or not name.isascii() or not name.isprintable():
        raise _Invalid("expected 1 to 200 printable ASCII characters")
    if " " in name:
        raise _Invalid("must not contain spaces")
    return name


def _congestion(raw: object) -> str:
    # A name as the kernel knows it (TCP_CA_NAME_MAX is 16 with its NUL), or "".
    if not isinstance(raw, str):
        raise _Invalid("expected a string")
    name = raw.strip()
    if len(name) > 15 or not all(c.isascii() and (c.isalnum() or c == "_") for c in name):
        raise _Invalid("expected a TCP congestion control name (e.g. cubic), or empty")
    return name


def _int_in(lo: int, hi: int) -> Callable[[object], int]:
    expected = f"expected an integer from {lo} to {hi}"

    def parse(raw: object) -> int:
        if isinstance(raw, str):
            try:
                value = int(raw.strip(), 10)
            except ValueError:
                raise _Invalid(expected) from None
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        else:
            raise _Invalid(expected)
        if not lo <= value <= hi:
            raise _Invalid(expected)
        return value

    return parse


def _seconds_in(lo: float, hi: float) -> Callable[[object], float]:
    expected = f"expected a number of seconds from {lo:g} to {hi:g}"

    def parse(raw: object) -> float:
        if isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                raise _Invalid(expected) from None
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        else:
            raise _Invalid(expected)
        if not math.isfinite(value) or not lo <= value <= hi:
            raise _Invalid(expected)
        return value

    return parse


def _log_level(raw: object) -> str:
    if isinstance(raw, str) and raw.strip().lower() in LOG_LEVELS:
        return raw.strip().lower()
    raise _Invalid("expected one of " + ", ".join(LOG_LEVELS))


OVERFLOW_MODES = ("pushback", "drop")


def _overflow(raw: object) -> str:
    if isinstance(raw, str) and raw.strip().lower() in OVERFLOW_MODES:
        return raw.strip().lower()
    raise _Invalid("expected one of " + ", ".join(OVERFLOW_MODES))


FSYNC_POLICIES = ("interval", "always", "never")


def _fsync_policy(raw: object) -> str:
    if isinstance(raw, str) and raw.strip().lower() in FSYNC_POLICIES:
        return raw.strip().lower()
    raise _Invalid("expected one of " + ", ".join(FSYNC_POLICIES))


def _api_status(raw: object) -> str:
    if isinstance(raw, str) and raw.strip().lower() in API_STATUSES:
        return raw.strip().lower()
    raise _Invalid("expected one of " + ", ".join(API_STATUSES))


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def parse_bool(raw: object) -> bool:
    """TOML booleans, or (flags, environment) true/false, 1/0, yes/no, on/off."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Invalid("expected true or false")


def _names(raw: object) -> tuple[str, ...]:
    """Names separated by commas (flags, environment, TOML) or a TOML array of strings;
    blanks around names and empty names are dropped, duplicates folded."""
    expected = "expected names separated by commas, or a list of strings"
    if isinstance(raw, str):
        items: list[object] = list(raw.split(","))
    elif isinstance(raw, list):
        items = list(raw)
    else:
        raise _Invalid(expected)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _Invalid(expected)
        name = item.strip()
        if not name:
            continue
        if len(name) > 256 or not name.isprintable() or "," in name:
            raise _Invalid("each name must be 1 to 256 printable characters, without a comma")
        names.append(name)
    return tuple(dict.fromkeys(names))


def _auth_key(raw: object) -> str:
    # Logplex compares the whole Authorization header value with the key, so spaces inside
    # are legitimate; surrounding whitespace would be stripped by any HTTP stack.
    if not isinstance(raw, str):
        raise _Invalid("expected a string")
    key = raw.strip()
    if not key:
        raise _Invalid("must not be empty")
    if not key.isprintable() or not key.isascii():
        raise _Invalid("must be printable ASCII")
    return key


@dataclass(frozen=True)
class _Spec:
    parse: Callable[[object], Any]
    help: str
    metavar: str
    flag: bool = True


# One entry per configurable Settings field, in the order they are documented and printed.
_SPECS: dict[str, _Spec] = {
    "api_addr": _Spec(_address, "control API listen address", "HOST:PORT"),
    "logs_addr": _Spec(_address, "HTTP log input (POST /logs) listen address", "HOST:PORT"),
    "syslog_addr": _Spec(_address, "TCP syslog input listen address", "HOST:PORT"),
    "tls_syslog_addr": _Spec(
        _address, "TLS syslog input listen address (needs tls_cert and tls_key)", "HOST:PORT"
    ),
    "tls_cert": _Spec(_path, "PEM certificate chain for the TLS syslog listener", "FILE"),
    "tls_key": _Spec(_path, "PEM private key for the TLS syslog listener", "FILE"),
    "api_tls_cert": _Spec(
        _path, "PEM certificate chain: the control API speaks HTTPS (needs api_tls_key)", "FILE"
    ),
    "api_tls_key": _Spec(_path, "PEM private key for the control API's HTTPS", "FILE"),
    "logs_tls_cert": _Spec(
        _path, "PEM certificate chain: POST /logs speaks HTTPS (needs logs_tls_key)", "FILE"
    ),
    "logs_tls_key": _Spec(_path, "PEM private key for the HTTP log input's HTTPS", "FILE"),
    "data_dir": _Spec(_path, "directory for durable state and the generated auth key", "DIR"),
    "public_url": _Spec(_url, "URL clients reach the API at (default http[s]://<api_addr>)", "URL"),
    "auth_key": _Spec(_auth_key, "API auth key (env or config file only)", "KEY", flag=False),
    "max_frame": _Spec(_int_in(64, 65000), "largest syslog frame accepted, bytes", "BYTES"),
    "history_messages": _Spec(_int_in(1, 100_000), "messages kept per channel", "N"),
    "channel_buffer_messages": _Spec(
        _int_in(1, 1_000_000),
        "messages a channel buffers for its drains and tails to catch up (>= history)",
        "N",
    ),
    "history_bytes": _Spec(
        _int_in(2 * 64 + 1024, 1 * GIB), "bytes of history kept per channel", "BYTES"
    ),
    "channel_buffer_bytes": _Spec(
        _int_in(2 * 64 + 1024, 4 * GIB),
        "bytes a channel buffers for its drains and tails to catch up (>= history_bytes)",
        "BYTES",
    ),
    "max_syslog_connections": _Spec(
        _int_in(1, 1_000_000), "open syslog connections (plain + TLS)", "N"
    ),
    "ingest_threads": _Spec(
        _int_in(0, 64), "worker threads that read and frame busy syslog connections (0: none)", "N"
    ),
    "drain_overflow": _Spec(
        _overflow,
        "a drain that takes every write but falls behind: pushback (hold the inputs of its "
        "channel) or drop (L10)",
        "MODE",
    ),
    "logs_hold_timeout": _Spec(
        _seconds_in(0, 300),
        "longest a POST /logs waits for a held channel before 503 + Retry-After",
        "SECONDS",
    ),
    "drain_spill": _Spec(
        parse_bool, "drains that fall behind keep their backlog on disk (embedded store)", "BOOL"
    ),
    "drain_spill_budget": _Spec(
        _int_in(16 * MIB, 1024 * GIB),
        "disk one drain's backlog may use; past it the oldest are dropped (L10)",
        "BYTES",
    ),
    "drain_spill_total": _Spec(
        _int_in(16 * MIB, 64 * 1024 * GIB),
        "disk all drain backlogs together may use; past it new messages are dropped (L10)",
        "BYTES",
    ),
    "drain_spill_min_free": _Spec(
        _int_in(0, 1024 * GIB),
        "free disk space drain backlogs always leave; under it they take nothing more",
        "BYTES",
    ),
    "drain_spill_fsync": _Spec(
        _fsync_policy, "when backlog segments are fsynced: interval, always or never", "POLICY"
    ),
    "drain_spill_fsync_interval": _Spec(
        _seconds_in(0.01, 3600), "fsync interval of drain backlogs (drain_spill_fsync)", "SECONDS"
    ),
    "syslog_idle_timeout": _Spec(
        _seconds_in(0.01, 86400), "close syslog connections idle this long", "SECONDS"
    ),
    "syslog_first_byte_timeout": _Spec(
        _seconds_in(0.01, 86400),
        "close syslog connections that send nothing this long after they are accepted",
        "SECONDS",
    ),
    "max_drains_per_channel": _Spec(_int_in(0, 1000), "drains one channel may have", "N"),
    "session_url_ttl": _Spec(
        _seconds_in(1, 86400),
        "a Platform log-session URL not connected within this long expires",
        "SECONDS",
    ),
    "tail_max_duration": _Spec(
        _seconds_in(1, 604800),
        "a connected Platform log-session tail ends after this long",
        "SECONDS",
    ),
    "sse_keepalive": _Spec(
        _seconds_in(1, 3600),
        "an idle session streamed as server-sent events sends a keep-alive comment this often",
        "SECONDS",
    ),
    "api_max_body": _Spec(
        _int_in(1 * KIB, 256 * MIB), "largest HTTP request body accepted, bytes", "BYTES"
    ),
    "api_max_connections": _Spec(_int_in(1, 1_000_000), "open HTTP connections", "N"),
    "shutdown_timeout": _Spec(
        _seconds_in(0, 3600), "grace period to flush drains on shutdown", "SECONDS"
    ),
    "log_level": _Spec(_log_level, "one of " + ", ".join(LOG_LEVELS), "LEVEL"),
    "api_status": _Spec(
        _api_status, "control rod: API " + ", ".join(API_STATUSES) + " at start", "STATUS"
    ),
    "deny_tail_sessions": _Spec(parse_bool, "control rod: no new tail sessions", "BOOL"),
    "deny_drain_forwarding": _Spec(parse_bool, "control rod: no drain delivery", "BOOL"),
    "deny_logs_ingress": _Spec(parse_bool, "control rod: POST /logs answers 503", "BOOL"),
    "firehose_channel_ids": _Spec(
        _names,
        "firehose: channels that get a raw copy of every message of a filtered token, in turn",
        "CHANNEL,...",
    ),
    "firehose_filter_tokens": _Spec(
        _names, "firehose: names of the tokens whose messages are copied (e.g. heroku)", "NAME,..."
    ),
    "store_url": _Spec(
        _store_url,
        "shared store, redis://HOST:PORT/DB, unix:///PATH?db=DB or redis+cluster://HOST:PORT,... "
        "(default: embedded)",
        "URL",
    ),
    "node_id": _Spec(_node_id, "this node's name in the shared store", "NAME"),
    "redis_buffer_messages": _Spec(
        _int_in(1, 100_000_000),
        "Redis mode: messages buffered for Redis while it is slow or away (oldest dropped)",
        "N",
    ),
    "redis_buffer_bytes": _Spec(
        _int_in(64 * KIB, 64 * GIB),
        "Redis mode: bytes buffered for Redis while it is slow or away (oldest dropped)",
        "BYTES",
    ),
    "redis_ring_messages": _Spec(
        _int_in(0, 1_000_000),
        "Redis mode: messages of a channel each node keeps in memory for its tails and "
        "drains at first (0: channel_buffer_messages; drains further behind read the stream)",
        "N",
    ),
    "redis_drain_spill": _Spec(
        parse_bool,
        "Redis mode: drains further behind than the stream keeps spill to this node's disk",
        "BOOL",
    ),
    "redis_tcp_congestion": _Spec(
        _congestion,
        "Redis mode: TCP congestion control of the data plane's connections to Redis "
        "(empty: the system's)",
        "NAME",
    ),
    "drain_lease_ttl": _Spec(
        _seconds_in(0.05, 12),
        "Redis mode: drain lease TTL; a dead node's drains move within 1.25 x this",
        "SECONDS",
    ),
}

SETTING_NAMES: tuple[str, ...] = tuple(_SPECS)
SECRET_NAMES = frozenset({"auth_key"})


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def setting_help(name: str) -> tuple[str, str, bool]:
    """(help text, metavar, has a flag) for one setting; the CLI builds its options from it."""
    spec = _SPECS[name]
    return spec.help, spec.metavar, spec.flag


def default_of(name: str) -> Any:
    return getattr(Settings(), name)


# --- loading ---------------------------------------------------------------------------------


def _show(raw: object) -> str:
    # repr() escapes newlines and quotes; long values are cut so the line stays readable.
    text = repr(raw)
    return text if len(text) <= 200 else text[:196] + "...'"


def _invalid(name: str, raw: object, source: str, reason: str) -> ConfigError:
    shown = "" if name in SECRET_NAMES else f" {_show(raw)}"
    if name == "store_url" and isinstance(raw, str):
        from .store import redact_store_url  # a Redis password in the userinfo or the query

        shown = f" {_show(redact_store_url(raw))}"
    return ConfigError(f"logplexd: invalid {name}{shown} (from {source}): {reason}")


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    where = f"config file {_show(str(path))} (from {source})"
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"logplexd: cannot read {where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"logplexd: invalid {where}: not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"logplexd: invalid {where}: {exc}") from None


def _env_layer(env: Mapping[str, str]) -> list[tuple[str, object, str]]:
    # Empty variables count as unset: systemd and shells make "set but empty" easy to hit.
    layer: list[tuple[str, object, str]] = [
        (name, env[env_var(name)], env_var(name))
        for name in SETTING_NAMES
        if env.get(env_var(name), "") != "" and name != "auth_key"
    ]
    new, legacy = env.get(env_var("auth_key"), ""), env.get(LEGACY_AUTH_KEY_ENV, "")
    if new and legacy and new.strip() != legacy.strip():
        raise ConfigError(
            f"logplexd: {LEGACY_AUTH_KEY_ENV} and {env_var('auth_key')} are both set and differ;"
            " set only one"
        )
    if new:
        layer.append(("auth_key", new, env_var("auth_key")))
    elif legacy:
        layer.append(("auth_key", legacy, LEGACY_AUTH_KEY_ENV))
    for name, legacy_name in LEGACY_ENV.items():
        new, legacy = env.get(env_var(name), ""), env.get(legacy_name, "")
        if new and legacy and new.strip() != legacy.strip():
            raise ConfigError(
                f"logplexd: {legacy_name} and {env_var(name)} are both set and differ; set only one"
            )
        if legacy and not new:
            layer.append((name, legacy, legacy_name))
    return layer


def load_settings(
    flags: Mapping[str, object] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    config_source: str = "--config",
) -> Settings:
    """Merge defaults, the TOML file, the environment and ``flags``; raise ConfigError.

    ``flags`` maps setting names to raw values (strings, as argparse gives them); absent or
    None means "not given". ``config_file`` overrides ``LOGPLEXD_CONFIG``; ``config_source``
    is how errors name where that path came from.
    """
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    for name in flags:
        if name not in _SPECS or not _SPECS[name].flag:
            raise TypeError(f"{name!r} cannot be given as a flag")

    path: Path | None = None
    if config_file is not None and str(config_file) != "":
        path = Path(config_file).expanduser()
    elif env.get(CONFIG_ENV, ""):
        path, config_source = Path(env[CONFIG_ENV]).expanduser(), CONFIG_ENV

    layers: list[list[tuple[str, object, str]]] = []
    if path is not None:
        file_label = str(path)
        data = _read_toml(path, config_source)
        for key in data:
            if key not in _SPECS:
                close = difflib.get_close_matches(key, SETTING_NAMES, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"logplexd: unknown setting {key!r} (from {file_label}){hint}")
        layers.append([(key, value, file_label) for key, value in data.items()])
    layers.append(_env_layer(env))
    layers.append([(name, raw, flag_name(name)) for name, raw in flags.items()])

    values: dict[str, Any] = {}
    sources: dict[str, str] = {name: "default" for name in SETTING_NAMES}
    for layer in layers:  # lowest precedence first, so later layers overwrite
        for name, raw, source in layer:
            try:
                values[name] = _SPECS[name].parse(raw)
            except _Invalid as exc:
                raise _invalid(name, raw, source, str(exc)) from None
            sources[name] = source

    settings = Settings(**values, config_file=path, sources=MappingProxyType(sources))
    _check_combinations(settings)
    return settings


# (certificate setting, key setting, what the pair enables): set both or neither.
TLS_PAIRS = (
    ("tls_cert", "tls_key", "the TLS syslog listener"),
    ("api_tls_cert", "api_tls_key", "HTTPS on the control API"),
    ("logs_tls_cert", "logs_tls_key", "HTTPS on the HTTP log input"),
)


def _check_combinations(s: Settings) -> None:
    src = s.sources

    def where(name: str) -> str:
        return src.get(name, "default")

    floor = 2 * s.max_frame + 1024
    if s.history_bytes < floor:
        raise ConfigError(
            f"logplexd: invalid history_bytes {s.history_bytes} (from {where('history_bytes')}):"
            f" must be at least 2*max_frame+1024 = {floor}"
            f" (max_frame {s.max_frame} from {where('max_frame')})"
        )

    for cert, key, purpose in TLS_PAIRS:
        if (getattr(s, cert) is None) != (getattr(s, key) is None):
            have, missing = (cert, key) if getattr(s, key) is None else (key, cert)
            raise ConfigError(
                f"logplexd: {have} is set (from {where(have)}) but {missing} is not;"
                f" set both to enable {purpose}, or neither"
            )
    for name in (name for pair in TLS_PAIRS for name in pair[:2]):
        tls_path: Path | None = getattr(s, name)
        if tls_path is not None and not (tls_path.is_file() and os.access(tls_path, os.R_OK)):
            raise _invalid(name, str(tls_path), where(name), "not a readable file")

    if bool(s.firehose_channel_ids) != bool(s.firehose_filter_tokens):
        have, missing = (
            ("firehose_channel_ids", "firehose_filter_tokens")
            if s.firehose_channel_ids
            else ("firehose_filter_tokens", "firehose_channel_ids")
        )
        raise ConfigError(
            f"logplexd: {have} is set (from {where(have)}) but {missing} is not;"
            " set both to enable the firehose, or neither"
        )

    # Two listeners on one port fail at bind time with a less helpful message; port 0 is
    # always distinct.
    listeners = ["api_addr", "logs_addr", "syslog_addr"]
    if s.tls_enabled:
        listeners.append("tls_syslog_addr")
    wildcard = {"0.0.0.0", "::"}
    for first, second in itertools.combinations(listeners, 2):
        a, b = getattr(s, first), getattr(s, second)
        if a.port and a.port == b.port and (a.host == b.host or {a.host, b.host} & wildcard):
            raise _invalid(
                second, str(b), where(second), f"same port as {first} (from {where(first)})"
            )


# --- the auth key ----------------------------------------------------------------------------


def _announce(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_auth_key(settings: Settings, *, announce: Callable[[str], None] = _announce) -> Settings:
    """Return ``settings`` with ``auth_key`` set, generating and storing one on first start.

    A configured key wins. Otherwise the key lives in ``<data_dir>/auth_key`` (mode 0600,
    the data dir is created 0700); a newly generated key is announced by its path only, so
    it never reaches a terminal scrollback or a journal.
    """
    if settings.auth_key:
        return settings
    data_dir, path = settings.data_dir, settings.auth_key_path
    dir_source = settings.sources.get("data_dir", "default")

    created_dir = not data_dir.exists()
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if created_dir:
            data_dir.chmod(0o700)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise ConfigError(
            f"logplexd: cannot create data_dir {_show(str(data_dir))} (from {dir_source}):"
            f" {exc.strerror or exc}"
        ) from None

    key = secrets.token_urlsafe(32)
    try:
        # O_EXCL: a concurrent first start must not replace a key someone already copied.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_auth_key(settings, path)
    except OSError as exc:
        raise ConfigError(
            f"logplexd: cannot create auth key file {_show(str(path))}: {exc.strerror or exc}"
        ) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (key + "\n").encode("ascii"))
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise ConfigError(
            f"logplexd: cannot write auth key file {_show(str(path))}: {exc.strerror or exc}"
        ) from None
    os.close(fd)
    announce(
        f"logplexd: generated a new API auth key; it is in {path.resolve()}"
        " (readable by this user only)"
    )
    return _with_key(settings, key, str(path))


def _read_auth_key(settings: Settings, path: Path) -> Settings:
    try:
        raw = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII"
        raise ConfigError(
            f"logplexd: cannot read auth key file {_show(str(path))}: {reason or exc}"
        ) from None
    try:
        key = _auth_key(raw)
    except _Invalid as exc:
        raise _invalid("auth_key", raw, str(path), str(exc)) from None
    return _with_key(settings, key, str(path))


def _with_key(settings: Settings, key: str, source: str) -> Settings:
    sources = MappingProxyType({**settings.sources, "auth_key": source})
    return dataclasses.replace(settings, auth_key=key, sources=sources)


# --- showing the effective configuration ----------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if type(value) is tuple:  # a list of names (an Address is a tuple too, shown as text)
        return "[" + ", ".join(json.dumps(item, ensure_ascii=False) for item in value) + "]"
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)


def render_effective(settings: Settings) -> str:
    """The configuration as TOML ``key = value`` lines, secrets masked, sources as comments.

    Safe to print or log: ``auth_key`` is always shown as ``"****"``.
    """
    src = settings.sources
    lines = [
        "# logplexd effective configuration"
        + (f" (config file {settings.config_file})" if settings.config_file else ""),
        "# precedence: flags > environment > config file > defaults",
    ]
    for name in SETTING_NAMES:
        value = getattr(settings, name)
        source = src.get(name, "default")
        comment = "default" if source == "default" else f"from {source}"
        if name == "auth_key":
            if value:
                lines.append(f'auth_key = "{MASK}"  # {comment}')
            elif settings.auth_key_path.exists():
                lines.append(f"# auth_key: not configured; read from {settings.auth_key_path}")
            else:
                lines.append(
                    "# auth_key: not configured; generated on first start in"
                    f" {settings.auth_key_path}"
                )
            continue
        if name == "public_url" and value is None:
            scheme = "https" if settings.api_tls_enabled else "http"
            value, comment = settings.resolved_public_url(), f"default: {scheme}://<api_addr>"
        if value is None:
            lines.append(f"# {name}: not set")
            continue
        if name == "store_url" and "@" in value:
            value = value.split("://", 1)[0] + "://****@" + value.rpartition("@")[2]
        lines.append(f"{name} = {_toml_value(value)}  # {comment}")
    if not settings.tls_enabled:
        lines.append("# TLS syslog listener disabled (tls_cert and tls_key not set)")
    if not settings.api_tls_enabled:
        lines.append("# control API speaks plain HTTP (api_tls_cert and api_tls_key not set)")
    if not settings.logs_tls_enabled:
        lines.append("# HTTP log input speaks plain HTTP (logs_tls_cert and logs_tls_key not set)")
    return "\n".join(lines) + "\n"
