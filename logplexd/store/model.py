"""What the store holds, the change events it publishes and the errors it raises.

The records are named ``...Record`` to keep them apart from the live objects made from them
(``router.Channel``, ``drains.Drain``). The Platform API's own records (``Account``, ``App``,
``DrainMeta``) are held by the same store, beside the channels they refer to.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

SESSION_TTL_SECONDS = 360.0
# A channel's overflow modes (``ChannelRecord.overflow``), as the daemon's ``drain_overflow``:
# "pushback" holds the inputs feeding the channel while a drain that takes every write whole
# is behind (the router is the bottleneck); "drop" never does, the drain is lapped (L10).
OVERFLOW_MODES = ("pushback", "drop")


def new_token_id() -> str:
    return f"t.{uuid.uuid4()}"


def new_drain_token() -> str:
    return f"d.{uuid.uuid4()}"


def new_session_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """A log stream. v2 channels have a numeric ``name`` allocated from a counter."""

    name: str
    # The ``name`` a v2 client gave POST /channels: a label only, never an identifier.
    label: str | None = None
    # Console-only flags of the original (``no_tail``, ``no_redis``), kept across updates.
    flags: tuple[str, ...] = ()
    # One of OVERFLOW_MODES, set by the operator for this channel; None: the daemon's
    # ``drain_overflow`` applies.
    overflow: str | None = None

    @property
    def numeric_id(self) -> int | None:
        return int(self.name) if self.name.isdigit() and self.name.isascii() else None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str  # t.<uuid4>
    channel: str
    name: str


@dataclass(frozen=True, slots=True)
class DrainRecord:
    id: int
    channel: str
    token: str  # d.<uuid4>
    # None while the drain is only a reservation (id and token handed out, no destination).
    url: str | None


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    id: str
    password_hash: str
    permissions: tuple[str, ...]
    name: str = ""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    body: dict[str, Any]
    expires_at: float  # wall clock (time.time()), so that expiry survives a restart


# -- Platform API records ---------------------------------------------------------------------


def utc_timestamp(when: float | None = None) -> str:
    """ISO 8601 in UTC with a ``Z``, to the second (``2012-01-01T12:00:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if when is None else when))


def hash_api_token(token: str) -> str:
    """API tokens are 122 random bits: a plain SHA-256 is enough to keep them off the disk."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_api_token() -> str:
    return str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))


@dataclass(frozen=True, slots=True)
class Account:
    """A Platform API account: what ``{email}:{api-token}`` authenticates as."""

    id: str
    email: str
    token_hash: str
    created_at: str
    updated_at: str

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(self.token_hash, hash_api_token(token))


@dataclass(frozen=True, slots=True)
class App:
    id: str
    name: str
    owner_id: str
    owner_email: str
    region_id: str
    region_name: str
    stack_id: str
    stack_name: str
    maintenance: bool
    created_at: str
    updated_at: str
    # The name of its Logplex channel, fixed for the app's life: the app's name when it was
    # created (empty here means that), or its id when that channel belonged to another app.
    # Renaming the app changes ``name`` only, so its tokens, drains, history and sessions,
    # all held by the channel, follow it without being moved.
    channel: str = ""

    def __post_init__(self) -> None:
        if not self.channel:
            object.__setattr__(self, "channel", self.name)

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "channel": self.channel,
            "owner_id": self.owner_id,
            "owner_email": self.owner_email,
            "region_id": self.region_id,
            "region_name": self.region_name,
            "stack_id": self.stack_id,
            "stack_name": self.stack_name,
            "maintenance": self.maintenance,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> App:
        # Records written before apps could be renamed have no "channel": it is the name.
        fields = cls.__slots__  # type: ignore[attr-defined]
        return cls(**{name: record[name] for name in fields if name in record})


@dataclass(frozen=True, slots=True)
class DrainMeta:
    """What the Platform API remembers of a store drain (keyed by the store's int id)."""

    drain_id: int
    app_id: str
    created_at: str
    updated_at: str


# -- change events: published in commit order, after the change is durable ---------------


@dataclass(frozen=True, slots=True)
class ChannelAdded:
    channel: ChannelRecord


@dataclass(frozen=True, slots=True)
class ChannelUpdated:
    """A stored channel's own fields changed (its overflow mode); not its tokens or drains."""

    channel: ChannelRecord
    previous: ChannelRecord


@dataclass(frozen=True, slots=True)
class ChannelRemoved:
    """Sent after the DrainRemoved and TokenRemoved events of the channel's children."""

    channel: str


@dataclass(frozen=True, slots=True)
class TokenAdded:
    token: TokenRecord


@dataclass(frozen=True, slots=True)
class TokenRemoved:
    token: TokenRecord


@dataclass(frozen=True, slots=True)
class DrainAdded:
    """A new drain; ``drain.url`` is None for a reservation, which delivers nothing."""

    channel: str
    drain: DrainRecord


@dataclass(frozen=True, slots=True)
class DrainUpdated:
    channel: str
    drain: DrainRecord
    previous: DrainRecord


@dataclass(frozen=True, slots=True)
class DrainRemoved:
    channel: str
    drain: DrainRecord


StoreEvent = (
    ChannelAdded
    | ChannelUpdated
    | ChannelRemoved
    | TokenAdded
    | TokenRemoved
    | DrainAdded
    | DrainUpdated
    | DrainRemoved
)


# -- errors ---------------------------------------------------------------------------------


class StoreError(Exception):
    """Base of every error the store raises."""


class ChannelNotFound(StoreError):
    pass


class ChannelExists(StoreError):
    pass


class DrainNotFound(StoreError):
    pass


class DrainLimitReached(StoreError):
    pass


class DrainExists(StoreError):
    """The channel already has a drain with the same destination."""


class CredentialExists(StoreError):
    pass


class AccountExists(StoreError):
    """A Platform API account with that email exists."""


class AppNameTaken(StoreError):
    """Another Platform API app has that name."""


class StoreUnavailable(StoreError):
    """A write could not be made durable; the store takes no more writes until restarted."""


class StoreCorrupt(StoreError):
    """The data files cannot be read (bad header, unknown version, damaged snapshot)."""


class StoreLocked(StoreError):
    """Another process has the data directory open."""
