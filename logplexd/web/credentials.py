"""Credentials: ``id:password`` pairs with permissions, stored as scrypt hashes.

The original kept passwords in clear text in Redis; here only a salted scrypt hash is
stored and every comparison is constant-time. Checking a password costs tens of
milliseconds on purpose, so ``CredentialChecker`` runs it in a worker thread, bounds how
many run at once, and remembers recent successes (keyed by a keyed hash of the secret, never
the secret itself) so a client sending the same header on every request pays once.

``parse_authorization`` is the one reader of ``Authorization`` headers: it names the form
(Logplex's raw key after ``Basic``, Basic ``id:password``, Basic ``:token``, Bearer, or
invalid) and each listener keeps only its own policy: which forms it takes, and what it
compares them with (``key_matches`` for the auth key, ``CredentialChecker`` for stored ones).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from ..store import CredentialRecord, Store

FULL_API = "full_api"
ANY_CHANNEL = "any_channel"
PERMISSIONS = (FULL_API, ANY_CHANNEL)

SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
_SCHEME = "scrypt"
_KEY_BYTES = 32


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64 fields), self-describing so costs can change."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password.encode(), salt, n, r, p)
    return "$".join([_SCHEME, str(n), str(r), str(p), _b64(salt), _b64(digest)])


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
        if scheme != _SCHEME:
            return False
        digest = _scrypt(password.encode(), _unb64(salt), int(n), int(r), int(p))
        return hmac.compare_digest(digest, _unb64(expected))
    except (ValueError, binascii.Error):
        return False


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=_KEY_BYTES, maxmem=256 * 1024 * 1024
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def generate_credential_id() -> str:
    """32 upper-case hex characters, as the original's."""
    return secrets.token_hex(16).upper()


def generate_password() -> str:
    """64 hex characters, as the original's."""
    return secrets.token_hex(32)


def validate_permissions(permissions: Iterable[str]) -> tuple[str, ...]:
    result = tuple(dict.fromkeys(permissions))
    unknown = [p for p in result if p not in PERMISSIONS]
    if unknown:
        raise ValueError(f"unknown permission(s): {', '.join(unknown)}")
    return result


async def create_credential(
    store: Store,
    *,
    name: str = "",
    permissions: Iterable[str] = (FULL_API,),
    password: str | None = None,
) -> tuple[CredentialRecord, str]:
    """Store a new credential; returns it with its clear-text password (shown once)."""
    perms = validate_permissions(permissions)
    password = password if password is not None else generate_password()
    encoded = await trio.to_thread.run_sync(hash_password, password)
    credential = CredentialRecord(generate_credential_id(), encoded, perms, name)
    await store.add_credential(credential)
    return credential, password


# -- the Authorization header --------------------------------------------------------------
# One parser for every listener: it says which form a header is, each listener decides which
# forms it takes and what it checks them against. Secrets are kept out of every repr, and no
# result or reason ever quotes the header.


@dataclass(frozen=True, slots=True, kw_only=True)
class BasicAuth:
    """Any ``Basic <text>`` header. ``text`` (as sent, stripped) may be Logplex's raw auth
    key, which follows ``Basic`` as is, not base64: a listener that takes the key compares
    it before looking at what the text decodes to."""

    text: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RawKey(BasicAuth):
    """``Basic <text>`` whose text is not base64 of ``id:password``: only the raw key fits."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BasicPassword(BasicAuth):
    """``Basic base64(id:password)`` with a non-empty id (the password may be empty)."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class BasicToken(BasicAuth):
    """``Basic base64(:token)``: the empty user the Heroku CLI and Platform API clients send."""

    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class BearerToken:
    """``Bearer <token>`` (never empty)."""

    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class InvalidAuthorization:
    """No header, a scheme other than Basic or Bearer, or nothing after the scheme."""

    reason: str


Authorization = RawKey | BasicPassword | BasicToken | BearerToken | InvalidAuthorization


def parse_authorization(header: str | None) -> Authorization:
    """The form of an ``Authorization`` value; never raises.

    The scheme is case-insensitive and ends at the first space; what follows, stripped, is
    its value. A Basic value that is not base64 of UTF-8 ``user:password`` is a ``RawKey``.
    """
    if not header:
        return InvalidAuthorization("no credentials")
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme not in ("basic", "bearer"):
        # Not quoted: a client may have sent its secret with no scheme at all.
        return InvalidAuthorization("unsupported scheme")
    if not value:
        return InvalidAuthorization(f"nothing after {scheme.capitalize()}")
    if scheme == "bearer":
        return BearerToken(value)
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True).decode("utf-8")
    except ValueError:  # not ASCII, not base64 (binascii.Error), not UTF-8: all ValueErrors
        return RawKey(text=value)
    user, sep, password = decoded.partition(":")
    if not sep:
        return RawKey(text=value)
    if not user:
        return BasicToken(text=value, token=password)
    return BasicPassword(text=value, user=user, password=password)


def key_matches(presented: str, auth_key: str) -> bool:
    """Constant-time comparison with the raw ``LOGPLEX_AUTH_KEY``."""
    if not auth_key:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), auth_key.encode("utf-8"))


class CredentialChecker:
    def __init__(self, store: Store, *, cache_size: int = 1024, max_parallel: int = 2) -> None:
        self._store = store
        self._cache_size = cache_size
        # cache key -> the password hash the secret was verified against
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._cache_secret = secrets.token_bytes(32)
        self._limiter = trio.CapacityLimiter(max_parallel)

    async def check(self, cred_id: str, password: str) -> CredentialRecord | None:
        credential = self._store.credential(cred_id)
        if credential is None:
            return None
        cache_key = hmac.digest(self._cache_secret, f"{cred_id}\0{password}".encode(), "sha256")
        cached = self._verified.get(cache_key)
        if cached is not None and hmac.compare_digest(cached, credential.password_hash):
            self._verified.move_to_end(cache_key)
            return credential
        ok = await trio.to_thread.run_sync(
            verify_password, password, credential.password_hash, limiter=self._limiter
        )
        if not ok:
            return None
        self._verified[cache_key] = credential.password_hash
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        # Revoked while we were hashing?
        return credential if self._store.credential(cred_id) == credential else None
