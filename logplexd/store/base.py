"""The store: everything the API, the CLI and the data plane may ask of it, and the rules
every write keeps, the same for every backend.

Reads are synchronous and O(1): every backend keeps a full in-memory replica, a ``State``
(the embedded store is one; the Redis store mirrors its server the way the original
mirrored Redis into ETS with nsync). Writes are ``async`` and return only once the change is
durable; then subscribers get the change events, in commit order, in the caller's trio
thread. A write is planned against the replica (see ``_state``); how the plan's operations
become durable is all a backend adds.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import trio

from ._state import CHANNEL_COUNTER, DRAIN_COUNTER, Op, Plan, State, T, channel_op
from .drain_url import parse_drain_url
from .model import (
    OVERFLOW_MODES,
    SESSION_TTL_SECONDS,
    ChannelExists,
    ChannelNotFound,
    ChannelRecord,
    CredentialExists,
    CredentialRecord,
    DrainExists,
    DrainLimitReached,
    DrainNotFound,
    DrainRecord,
    SessionRecord,
    StoreEvent,
    TokenRecord,
    new_drain_token,
    new_session_id,
    new_token_id,
)

log = logging.getLogger("logplexd.store")

Subscriber = Callable[[StoreEvent], None]


@dataclass(frozen=True, slots=True)
class ChannelPut:
    """Result of a v3 create-or-update."""

    created: bool
    channel: ChannelRecord
    tokens: list[TokenRecord]


class Store(abc.ABC):
    """The store over its in-memory ``State``: the reads, the rules every write must keep
    and the change feed are the same for every backend. A backend supplies ``_write`` (how
    a change becomes durable), ``failure`` and its life cycle (``compact``, ``close``)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._state = State()
        self._subscribers: list[Subscriber] = []
        # Awaited, in order, once a drain got its destination (created with a URL, or a
        # reservation given one) and the change is durable, before the write returns: in
        # Redis mode the data plane stores the drain's start point there (``cluster.birth``;
        # the store does not know the data plane). A hook must bound its own time and not
        # raise; one that does is logged, since the change it follows is already stored.
        self.drain_birth_hooks: list[Callable[[DrainRecord], Awaitable[None]]] = []

    # -- what a backend supplies ---------------------------------------------------------------
    @property
    @abc.abstractmethod
    def failure(self) -> str | None:
        """Why the store takes no writes any more, or None while it is healthy."""

    @abc.abstractmethod
    async def compact(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    async def _write(self, plan: Plan[T]) -> T:
        """Refuse with StoreUnavailable when the store takes no writes; run ``plan``, make
        its operations durable, apply them to ``_state`` (``apply_all``), publish their
        events and return the plan's result; with no operations, just the result.

        A backend may run ``plan`` more than once (the Redis store does after catching up
        with a change it raced against), so a plan only reads the state.
        """

    async def _drain_born(self, drain: DrainRecord) -> None:
        """Run ``drain_birth_hooks`` for a stored drain; shielded (like the write it
        follows: a request cancelled now must not leave the drain without its start point)
        and bounded by each hook's own timeout."""
        with trio.CancelScope(shield=True):
            for hook in self.drain_birth_hooks:
                try:
                    await hook(drain)
                except Exception as exc:  # the change is stored: report, do not fail it
                    log.warning("drain %d: birth hook failed: %s", drain.id, type(exc).__name__)

    # -- reads ---------------------------------------------------------------------------------
    def channel(self, name: str) -> ChannelRecord | None:
        return self._state.channels.get(name)

    def channels(self) -> Iterator[ChannelRecord]:
        return iter(list(self._state.channels.values()))

    def token(self, token_id: str) -> TokenRecord | None:
        return self._state.tokens.get(token_id)

    def tokens(self) -> Iterator[TokenRecord]:
        return iter(list(self._state.tokens.values()))

    def tokens_of(self, channel: str) -> list[TokenRecord]:
        """In creation order."""
        return self._state.tokens_of(channel)

    def drain(self, drain_id: int) -> DrainRecord | None:
        return self._state.drains.get(drain_id)

    def drains(self) -> Iterator[DrainRecord]:
        return iter(list(self._state.drains.values()))

    def drains_of(self, channel: str) -> list[DrainRecord]:
        """Ordered by id; reservations (url None) included."""
        return self._state.drains_of(channel)

    def credential(self, cred_id: str) -> CredentialRecord | None:
        return self._state.credentials.get(cred_id)

    def credentials(self) -> Iterator[CredentialRecord]:
        return iter(list(self._state.credentials.values()))

    def session(self, session_id: str) -> SessionRecord | None:
        """None when unknown or expired."""
        session = self._state.sessions.get(session_id)
        if session is None or session.expires_at <= self._clock():
            return None
        return session

    # -- writes (each returns after the change is durable) --------------------------------------
    async def create_channel(
        self,
        name: str | None = None,
        *,
        label: str | None = None,
        token_names: Sequence[str] = (),
    ) -> tuple[ChannelRecord, list[TokenRecord]]:
        """A new channel; ``name=None`` allocates the next free numeric (v2) id.

        Raises ChannelExists when ``name`` is taken.
        """

        def plan() -> tuple[list[Op], Callable[[], tuple[ChannelRecord, list[TokenRecord]]]]:
            state = self._state
            ops: list[Op] = []
            chosen = name
            if chosen is None:
                number = state.counters[CHANNEL_COUNTER]
                while True:
                    number += 1
                    # A v3 client may have taken the name already: v2 and v3 share one namespace.
                    if str(number) not in state.channels:
                        break
                chosen = str(number)
                ops.append(["N", CHANNEL_COUNTER, number])
            elif chosen in state.channels:
                raise ChannelExists(chosen)
            channel = ChannelRecord(chosen, label)
            tokens = [TokenRecord(new_token_id(), chosen, t) for t in token_names]
            ops.append(channel_op(channel))
            ops.extend(["T", t.id, t.channel, t.name] for t in tokens)
            return ops, lambda: (channel, tokens)

        return await self._write(plan)

    async def put_channel(
        self, name: str, token_names: Sequence[str], *, overflow: str | None = None
    ) -> ChannelPut:
        """Create or update: afterwards the channel's token names are exactly ``token_names``
        (duplicates folded); tokens whose name stays keep their ids. Its overflow mode is
        ``overflow`` (one of OVERFLOW_MODES; None: the daemon's default); label and flags
        stay. Raises ValueError for another mode."""
        if overflow is not None and overflow not in OVERFLOW_MODES:
            raise ValueError(f"unknown overflow mode {overflow!r}")
        wanted = list(dict.fromkeys(token_names))

        def plan() -> tuple[list[Op], Callable[[], ChannelPut]]:
            channel = self._state.channels.get(name)
            created = channel is None
            ops: list[Op] = []
            if channel is None:
                channel = ChannelRecord(name, overflow=overflow)
                ops.append(channel_op(channel))
            elif channel.overflow != overflow:
                channel = replace(channel, overflow=overflow)
                ops.append(channel_op(channel))
            existing = self.tokens_of(name)
            ops.extend(["t", token.id] for token in existing if token.name not in wanted)
            present = {token.name for token in existing}
            ops.extend(["T", new_token_id(), name, t] for t in wanted if t not in present)
            result_channel = channel
            return ops, lambda: ChannelPut(created, result_channel, self.tokens_of(name))

        return await self._write(plan)

    async def delete_channel(self, name: str) -> bool:
        """Delete the channel with its tokens and drains; False if it did not exist."""

        def plan() -> tuple[list[Op], Callable[[], bool]]:
            if name not in self._state.channels:
                return [], lambda: False
            # Children first: subscribers see DrainRemoved and TokenRemoved before ChannelRemoved.
            ops: list[Op] = [["d", drain.id] for drain in self.drains_of(name)]
            ops.extend(["t", token.id] for token in self.tokens_of(name))
            ops.append(["c", name])
            return ops, lambda: True

        return await self._write(plan)

    async def create_token(self, channel: str, name: str) -> TokenRecord:
        """Raises ChannelNotFound."""

        def plan() -> tuple[list[Op], Callable[[], TokenRecord]]:
            if channel not in self._state.channels:
                raise ChannelNotFound(channel)
            token = TokenRecord(new_token_id(), channel, name)
            return [["T", token.id, channel, name]], lambda: token

        return await self._write(plan)

    async def create_drain(self, channel: str, url: str | None, *, max_drains: int) -> DrainRecord:
        """A drain, or a reservation when ``url`` is None.

        Raises ChannelNotFound, DrainLimitReached (only drains with a URL count),
        DrainExists (same destination already on the channel). The URL must have been
        validated with ``parse_drain_url``.
        """
        token = new_drain_token()

        def plan() -> tuple[list[Op], Callable[[], DrainRecord]]:
            state = self._state
            if channel not in state.channels:
                raise ChannelNotFound(channel)
            if url is not None:
                self._check_drain_slot(channel, url, max_drains, replacing=None)
            drain = DrainRecord(state.counters[DRAIN_COUNTER] + 1, channel, token, url)
            ops: list[Op] = [
                ["N", DRAIN_COUNTER, drain.id],
                ["D", drain.id, channel, drain.token, url],
            ]
            return ops, lambda: drain

        drain = await self._write(plan)
        if drain.url is not None:
            await self._drain_born(drain)
        return drain

    async def update_drain(
        self, channel: str, drain_id: int, url: str, *, max_drains: int
    ) -> DrainRecord:
        """Set a drain's URL (filling a reservation counts against the limit).

        Raises DrainNotFound (also when the drain belongs to another channel),
        DrainLimitReached, DrainExists.
        """
        # Whether this write gave a reservation its first URL (set by the plan that commits).
        born = False

        def plan() -> tuple[list[Op], Callable[[], DrainRecord]]:
            nonlocal born
            previous = self._state.drains.get(drain_id)
            if previous is None or previous.channel != channel:
                raise DrainNotFound(drain_id)
            born = False
            if previous.url == url:
                return [], lambda: previous
            self._check_drain_slot(channel, url, max_drains, replacing=previous)
            drain = DrainRecord(drain_id, channel, previous.token, url)
            born = previous.url is None
            return [["D", drain.id, channel, drain.token, url]], lambda: drain

        drain = await self._write(plan)
        if born:
            await self._drain_born(drain)
        return drain

    async def delete_drain(self, channel: str, drain_id: int) -> DrainRecord | None:
        """The deleted drain, or None if the channel has no such drain."""

        def plan() -> tuple[list[Op], Callable[[], DrainRecord | None]]:
            drain = self._state.drains.get(drain_id)
            if drain is None or drain.channel != channel:
                return [], lambda: None
            return [["d", drain_id]], lambda: drain

        return await self._write(plan)

    async def create_session(
        self, body: Mapping[str, Any], *, ttl: float = SESSION_TTL_SECONDS
    ) -> SessionRecord:
        session = SessionRecord(new_session_id(), dict(body), self._clock() + ttl)

        def plan() -> tuple[list[Op], Callable[[], SessionRecord]]:
            return [["S", session.id, session.body, session.expires_at]], lambda: session

        return await self._write(plan)

    async def delete_session(self, session_id: str) -> bool:
        def plan() -> tuple[list[Op], Callable[[], bool]]:
            if session_id not in self._state.sessions:
                return [], lambda: False
            return [["s", session_id]], lambda: True

        return await self._write(plan)

    async def add_credential(self, credential: CredentialRecord) -> None:
        """Raises CredentialExists."""

        def plan() -> tuple[list[Op], Callable[[], None]]:
            if credential.id in self._state.credentials:
                raise CredentialExists(credential.id)
            c = credential
            return [["K", c.id, c.password_hash, list(c.permissions), c.name]], lambda: None

        await self._write(plan)

    async def revoke_credential(self, cred_id: str) -> bool:
        def plan() -> tuple[list[Op], Callable[[], bool]]:
            if cred_id not in self._state.credentials:
                return [], lambda: False
            return [["k", cred_id]], lambda: True

        return await self._write(plan)

    def _check_drain_slot(
        self, channel: str, url: str, max_drains: int, *, replacing: DrainRecord | None
    ) -> None:
        others = [
            d.url
            for d in self._state.drains_by_channel.get(channel, {}).values()
            if d.url is not None and (replacing is None or d.id != replacing.id)
        ]
        if len(others) >= max_drains:
            raise DrainLimitReached(channel)
        key = parse_drain_url(url).key
        for other in others:
            try:
                if parse_drain_url(other).key == key:
                    raise DrainExists(channel)
            except ValueError:
                continue

    def expire_sessions(self) -> int:
        """Forget expired sessions in memory (reads ignore them anyway; replaying the
        journal or the change stream drops them too, so no record of this is needed)."""
        now = self._clock()
        expired = [s.id for s in self._state.sessions.values() if s.expires_at <= now]
        for session_id in expired:
            del self._state.sessions[session_id]
        return len(expired)

    # -- change feed ---------------------------------------------------------------------------
    def _publish(self, events: list[StoreEvent]) -> None:
        for event in events:
            for subscriber in list(self._subscribers):
                try:
                    subscriber(event)
                except Exception:
                    log.exception("store: subscriber failed on %s", type(event).__name__)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` after every durable change; returns an unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe
