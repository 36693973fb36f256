"""Drain destinations: which URLs are accepted, what "the same destination" means, redaction.

Accepted (REFERENCE part A): ``syslog://host[:port]`` (TCP, default port 601),
``syslog+tls://host[:port][#insecure]`` (default 6514), ``http://`` and ``https://`` with a
host. Everything else is rejected, on v2 and v3 alike.

``parse_drain_url`` is the one parser: the store validates with it before a URL is durable,
and the drains deliver to the ``DrainTarget`` it returns.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import SplitResult, quote, unquote, urlsplit


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
class DrainTarget:
    """A drain URL taken apart: where to connect, and for HTTP what to send."""

    kind: DrainKind
    host: str  # lower case
    port: int
    # syslog+tls only: skip certificate and hostname verification (``#insecure``).
    insecure: bool
    # Two drains of one channel with equal keys are the same destination (409). Left out of
    # ``==``, which tells a drain whether a new URL changes its delivery.
    key: str = field(compare=False)
    # HTTP only: request target (path and query; the fragment is never sent).
    request_target: bytes = b"/"
    # HTTP only: ``host[:port]``, the port only when the URL spells it out (as the original).
    host_header: bytes = b""
    # HTTP only: ``Basic ...`` when the URL has userinfo.
    authorization: bytes | None = None
    # For logs and stats: the URL with any password hidden.
    redacted: str = ""
    # Why the drains refuse to deliver to this URL though the store accepts it (a non-ASCII
    # host with no IDNA form, so no Host header), or None. ``drains`` raises it.
    undeliverable: str | None = None

    @property
    def is_http(self) -> bool:
        return self.kind in (DrainKind.HTTP, DrainKind.HTTPS)

    @property
    def uses_tls(self) -> bool:
        return self.kind in (DrainKind.SYSLOG_TLS, DrainKind.HTTPS)

    def __repr__(self) -> str:
        # Never print the credentials (the key and the authorization hold them).
        return f"DrainTarget({self.redacted!r})"


def parse_drain_url(url: str) -> DrainTarget:
    """Raises ``InvalidDrainUrl`` for anything the control API refuses."""
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
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    authorization = None
    if "@" in netloc:
        user, _, password = userinfo.partition(":")
        raw = f"{unquote(user)}:{unquote(password)}".encode()
        authorization = b"Basic " + base64.b64encode(raw)
    undeliverable = None
    try:
        host_header = hostport.encode("ascii") if hostport.isascii() else hostport.encode("idna")
    except UnicodeError:
        host_header, undeliverable = b"", "bad host"
    request_target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return DrainTarget(
        kind=kind,
        host=host.lower(),
        port=port,
        insecure=insecure,
        key=_key(kind, host, port, parts),
        # Percent-encode what a request line cannot carry; keep existing escapes as they are.
        request_target=quote(request_target, safe="!$%&'()*+,/:;=?@[]~").encode("ascii"),
        host_header=host_header,
        authorization=authorization,
        redacted=_redacted(url, parts),
        undeliverable=undeliverable,
    )


# A DNS name (RFC 1123 labels; "_" too, as DNS itself allows), after IDNA for a non-ASCII one.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def _is_hostname(host: str) -> bool:
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        return False
    # All digits and dots is an IPv4 address or nothing (never a name to resolve).
    return not all(label.isdigit() for label in labels) or _is_ipv4(name)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def syslog_url(host: str, port: int) -> str:
    """The ``syslog://`` URL of the v2 ``{"host", "port"}`` form of a drain.

    ``host`` must be a hostname or an IP literal (IPv6 with or without brackets); anything
    else (``"127.0.0.1:59569/"``, ``"h/x"``, a userinfo) raises ``InvalidDrainUrl`` rather
    than becoming part of a URL that means another host or port. The URL still goes through
    ``parse_drain_url`` (the port's range is checked there).
    """
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        if not _is_hostname(host):
            raise InvalidDrainUrl("host is not a hostname or an IP address") from None
        return f"syslog://{host}:{port}"
    if address.version == 6:
        if "%" in literal:  # a zone is local to this machine's interfaces
            raise InvalidDrainUrl("host is not a hostname or an IP address")
        return f"syslog://[{address.compressed}]:{port}"
    return f"syslog://{address.compressed}:{port}"


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
    return _redacted(url, parts)


def _redacted(url: str, parts: SplitResult) -> str:
    if "@" not in parts.netloc:
        return url
    netloc = "***@" + parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl()
