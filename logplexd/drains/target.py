"""Where a drain delivers: the parts of a drain URL the delivery code needs.

Validation (accepted schemes, ports, ``#insecure``) is the store's, in
``logplexd.store.drain_url``; this adds what only delivery cares about: the HTTP request
target, the ``Host`` header as written in the URL, and Basic credentials from userinfo.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from ..store import DrainKind, InvalidDrainUrl, redact_url
from ..store import parse_drain_url as _validate

__all__ = ["DrainKind", "DrainTarget", "InvalidDrainUrl", "parse_drain_url"]


@dataclass(frozen=True, slots=True)
class DrainTarget:
    kind: DrainKind
    host: str
    port: int
    # syslog+tls only: skip certificate and hostname verification.
    insecure: bool
    # HTTP only: request target (path and query; the fragment is never sent).
    request_target: bytes = b"/"
    # HTTP only: ``host[:port]``, the port only when the URL spells it out (as the original).
    host_header: bytes = b""
    # HTTP only: ``Basic ...`` when the URL has userinfo.
    authorization: bytes | None = None
    # For logs and stats: the URL with any password hidden.
    redacted: str = ""

    @property
    def is_http(self) -> bool:
        return self.kind in (DrainKind.HTTP, DrainKind.HTTPS)

    @property
    def uses_tls(self) -> bool:
        return self.kind in (DrainKind.SYSLOG_TLS, DrainKind.HTTPS)

    def __repr__(self) -> str:
        # Never print the credentials.
        return f"DrainTarget({self.redacted!r})"


def parse_drain_url(url: str) -> DrainTarget:
    """Raises ``InvalidDrainUrl`` for anything the control API would refuse."""
    valid = _validate(url)
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    authorization = None
    if "@" in netloc:
        user, _, password = userinfo.partition(":")
        raw = f"{unquote(user)}:{unquote(password)}".encode()
        authorization = b"Basic " + base64.b64encode(raw)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        host_header = hostport.encode("ascii") if hostport.isascii() else hostport.encode("idna")
    except UnicodeError:
        raise InvalidDrainUrl("bad host") from None
    return DrainTarget(
        kind=valid.kind,
        host=valid.host,
        port=valid.port,
        insecure=valid.insecure,
        # Percent-encode what a request line cannot carry; keep existing escapes as they are.
        request_target=quote(target, safe="!$%&'()*+,/:;=?@[]~").encode("ascii"),
        host_header=host_header,
        authorization=authorization,
        redacted=redact_url(url),
    )
