"""The store interface: everything the API, the CLI and the data plane may ask of a backend.

Reads are synchronous and O(1): every backend keeps a full in-memory replica (the embedded
store is one; a shared backend would mirror its server the way the original mirrored Redis
into ETS with nsync). Writes are ``async`` and return only once the change is durable; then
subscribers get the change events, in commit order, in the caller's trio thread.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .model import (
    SESSION_TTL_SECONDS,
    Channel,
    Credential,
    Drain,
    Session,
    StoreEvent,
    Token,
)

Subscriber = Callable[[StoreEvent], None]


@dataclass(frozen=True, slots=True)
class ChannelPut:
    """Result of a v3 create-or-update."""

    created: bool
    channel: Channel
    tokens: list[Token]


class Store(abc.ABC):
    # -- reads ---------------------------------------------------------------------------
    @abc.abstractmethod
    def channel(self, name: str) -> Channel | None: ...

    @abc.abstractmethod
    def channels(self) -> Iterator[Channel]: ...

    @abc.abstractmethod
    def token(self, token_id: str) -> Token | None: ...

    @abc.abstractmethod
    def tokens(self) -> Iterator[Token]: ...

    @abc.abstractmethod
    def tokens_of(self, channel: str) -> list[Token]:
        """In creation order."""

    @abc.abstractmethod
    def drain(self, drain_id: int) -> Drain | None: ...

    @abc.abstractmethod
    def drains(self) -> Iterator[Drain]: ...

    @abc.abstractmethod
    def drains_of(self, channel: str) -> list[Drain]:
        """Ordered by id; reservations (url None) included."""

    @abc.abstractmethod
    def credential(self, cred_id: str) -> Credential | None: ...

    @abc.abstractmethod
    def credentials(self) -> Iterator[Credential]: ...

    @abc.abstractmethod
    def session(self, session_id: str) -> Session | None:
        """None when unknown or expired."""

    @property
    @abc.abstractmethod
    def failure(self) -> str | None:
        """Why the store takes no writes any more, or None while it is healthy."""

    # -- writes (each returns after the change is durable) --------------------------------
    @abc.abstractmethod
    async def create_channel(
        self,
        name: str | None = None,
        *,
        label: str | None = None,
        token_names: Sequence[str] = (),
    ) -> tuple[Channel, list[Token]]:
        """A new channel; ``name=None`` allocates the next free numeric (v2) id.

        Raises ChannelExists when ``name`` is taken.
        """

    @abc.abstractmethod
    async def put_channel(self, name: str, token_names: Sequence[str]) -> ChannelPut:
        """Create or update: afterwards the channel's token names are exactly ``token_names``
        (duplicates folded); tokens whose name stays keep their ids."""

    @abc.abstractmethod
    async def delete_channel(self, name: str) -> bool:
        """Delete the channel with its tokens and drains; False if it did not exist."""

    @abc.abstractmethod
    async def create_token(self, channel: str, name: str) -> Token:
        """Raises ChannelNotFound."""

    @abc.abstractmethod
    async def create_drain(self, channel: str, url: str | None, *, max_drains: int) -> Drain:
        """A drain, or a reservation when ``url`` is None.

        Raises ChannelNotFound, DrainLimitReached (only drains with a URL count),
        DrainExists (same destination already on the channel). The URL must have been
        validated with ``drain_url.parse_drain_url``.
        """

    @abc.abstractmethod
    async def update_drain(
        self, channel: str, drain_id: int, url: str, *, max_drains: int
    ) -> Drain:
        """Set a drain's URL (filling a reservation counts against the limit).

        Raises DrainNotFound (also when the drain belongs to another channel),
        DrainLimitReached, DrainExists.
        """

    @abc.abstractmethod
    async def delete_drain(self, channel: str, drain_id: int) -> Drain | None:
        """The deleted drain, or None if the channel has no such drain."""

    @abc.abstractmethod
    async def create_session(
        self, body: Mapping[str, Any], *, ttl: float = SESSION_TTL_SECONDS
    ) -> Session: ...

    @abc.abstractmethod
    async def delete_session(self, session_id: str) -> bool: ...

    @abc.abstractmethod
    async def add_credential(self, credential: Credential) -> None:
        """Raises CredentialExists."""

    @abc.abstractmethod
    async def revoke_credential(self, cred_id: str) -> bool: ...

    # -- change feed and life cycle ---------------------------------------------------------
    @abc.abstractmethod
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` after every durable change; returns an unsubscribe."""

    @abc.abstractmethod
    async def compact(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...
