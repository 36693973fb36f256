"""Drain destinations: which URLs are accepted, what "the same destination" means, redaction.

Accepted (REFERENCE part A): ``syslog://host[:port]`` (TCP, default port 601),
``syslog+tls://host[:port][#insecure]`` (default 6514), ``http://`` and ``https://`` with a
host. Everything else is rejected, on v2 and v3 alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from urllib.parse import SplitResult, urlsplit


class DrainKind(Enum):
    SYSLOG = "syslog"
    SYSLOG_TLS = "syslog+tls"
    HTTP = "http"
    HTTPS = "https"


DEFAULT_PORTS: dict[DrainKind, int] = {
    DrainKind.SYSLOG: 601,
    DrainKind.SYSLOG_TLS: 6514,
    DrainKind.HTTP: 80,
    DrainKind.HTTPS: 443,
}

MAX_URL_LENGTH = 4096


class InvalidDrainUrl(ValueError):
    """``str(error)`` is a client-facing reason, free of the URL's userinfo."""


@dataclass(frozen=True, slots=True)
class DrainUrl:
    kind: DrainKind
    host: str
    port: int
    # For syslog+tls: skip certificate verification (``#insecure``).
    insecure: bool
    # Two drains of one channel with equal keys are the same destination (409).
    key: str


def parse_drain_url(url: str) -> DrainUrl:
    if not url:
        raise InvalidDrainUrl("empty URL")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidDrainUrl("URL too long")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidDrainUrl("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise InvalidDrainUrl(f"unparsable URL ({_without_url(exc)})") from None
    scheme = parts.scheme.lower()
    try:
        kind = DrainKind(scheme)
    except ValueError:
        if not scheme:
            raise InvalidDrainUrl("missing scheme") from None
        raise InvalidDrainUrl(f"unsupported scheme {scheme!r}") from None
    if not host:
        raise InvalidDrainUrl("missing host")
    if port is None:
        port = DEFAULT_PORTS[kind]
    if not 1 <= port <= 65535:
        raise InvalidDrainUrl("port out of range")
    insecure = False
    if kind is DrainKind.SYSLOG_TLS:
        if parts.fragment not in ("", "insecure"):
            raise InvalidDrainUrl("unknown fragment (only #insecure is allowed)")
        insecure = parts.fragment == "insecure"
    return DrainUrl(kind, host.lower(), port, insecure, _key(kind, host, port, parts))


def _key(kind: DrainKind, host: str, port: int, parts: SplitResult) -> str:
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    path = parts.path or "/"
    return f"{kind.value}://{userinfo}@{host.lower()}:{port}{path}?{parts.query}#{parts.fragment}"


def _without_url(exc: ValueError) -> str:
    # urllib's messages may quote the netloc, which can hold a password.
    return "bad port" if "port" in str(exc).lower() else "bad host"


def redact_url(url: str | None) -> str:
    """The URL with any userinfo (drain passwords) replaced, safe to log."""
    if url is None:
        return "-"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable>"
    if "@" not in parts.netloc:
        return url
    netloc = "***@" + parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl()
