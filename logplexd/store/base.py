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
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from ._state import (
    CHANNEL_COUNTER,
    DRAIN_COUNTER,
    Op,
    Plan,
    State,
    T,
    account_op,
    channel_op,
    drain_meta_op,
)
from .drain_url import parse_drain_url
from .model import (
    OVERFLOW_MODES,
    SESSION_TTL_SECONDS,
    Account,
    AccountExists,
    App,
    AppNameTaken,
    ChannelExists,
    ChannelNotFound,
    ChannelRecord,
    CredentialExists,
    CredentialRecord,
    DrainExists,
    DrainLimitReached,
    DrainMeta,
    DrainNotFound,
    DrainRecord,
    SessionRecord,
    StoreEvent,
    TokenRecord,
    hash_api_token,
    new_api_token,
    new_drain_token,
    new_session_id,
    new_token_id,
    utc_timestamp,
)

log = logging.getLogger("logplexd.store")

Subscriber = Callable[[StoreEvent], None]


@dataclass(frozen=True, slots=True)
class ChannelPut:
    """Result of a v3 create-or-update."""

    created: bool
    channel: ChannelRecord
    tokens: list[TokenRecord]


@dataclass(slots=True)
class PlatformImport:
    """What ``import_platform_records`` stored and what it left out, and why."""

    accounts: int = 0
    apps: int = 0
    drain_meta: int = 0
    # One line each: an app whose name or channel another app has, an account whose email
    # another account has (its apps go to that account, its token no longer works)...
    skipped: list[str] = field(default_factory=list)


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

    @abc.abstractmethod
    async def refresh(self) -> None:
        """Catch up now with changes other processes stored (the Redis store reads its
        change stream at once rather than waiting for its follower)."""

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

    # -- reads: the Platform API's records ---------------------------------------------------
    def account(self, account_id: str) -> Account | None:
        return self._state.accounts.get(account_id)

    def account_by_email(self, email: str) -> Account | None:
        """Emails compare without case."""
        return self._state.accounts_by_email.get(email.lower())

    def account_by_token(self, token: str) -> Account | None:
        return self._state.accounts_by_token.get(hash_api_token(token))

    def accounts(self) -> Iterator[Account]:
        return iter(list(self._state.accounts.values()))

    def app(self, app_id: str) -> App | None:
        return self._state.apps.get(app_id)

    def app_by_name(self, name: str) -> App | None:
        return self._state.apps_by_name.get(name)

    def app_by_channel(self, channel: str) -> App | None:
        """The app whose Logplex channel is ``channel`` (its name may differ)."""
        return self._state.apps_by_channel.get(channel)

    def apps(self) -> Iterator[App]:
        return iter(list(self._state.apps.values()))

    def drain_meta(self, drain_id: int) -> DrainMeta | None:
        return self._state.drain_meta.get(drain_id)

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
            return self._channel_deletion(name), lambda: True

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
            ops: list[Op] = [["d", drain_id]]
            if drain_id in self._state.drain_meta:
                ops.append(["r", drain_id])  # its Platform API timestamps go with it
            return ops, lambda: drain

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

    # -- writes: the Platform API's records ---------------------------------------------------
    async def create_account(self, email: str) -> tuple[Account, str]:
        """A new account and its API token in clear (returned this once: only its hash is
        stored). Raises AccountExists when an account has that email (in any case)."""
        token = new_api_token()
        now = utc_timestamp()
        account = Account(str(uuid.uuid4()), email, hash_api_token(token), now, now)

        def plan() -> tuple[list[Op], Callable[[], tuple[Account, str]]]:
            if self.account_by_email(email) is not None:
                raise AccountExists(email)
            return [account_op(account)], lambda: (account, token)

        return await self._write(plan)

    async def delete_account(self, email: str) -> bool:
        """False when no account has that email. Its apps stay (the operator sees them)."""

        def plan() -> tuple[list[Op], Callable[[], bool]]:
            account = self.account_by_email(email)
            if account is None:
                return [], lambda: False
            return [["a", account.id]], lambda: True

        return await self._write(plan)

    async def put_app(self, app: App) -> None:
        """Store ``app``: a new one, or a change of one (a rename is one such write).

        Raises AppNameTaken when another app has its name or its channel."""

        def plan() -> tuple[list[Op], Callable[[], None]]:
            self._check_app_slot(app)
            return [["P", app.to_record()]], lambda: None

        await self._write(plan)

    async def delete_app(self, app_id: str) -> App | None:
        """Delete the app with its Logplex channel (tokens, drains) and its drains'
        timestamps, in one change; the deleted app, or None when there was none."""

        def plan() -> tuple[list[Op], Callable[[], App | None]]:
            app = self._state.apps.get(app_id)
            if app is None:
                return [], lambda: None
            ops = self._channel_deletion(app.channel)
            gone = {op[1] for op in ops if op[0] == "r"}
            ops.extend(
                ["r", meta.drain_id]
                for meta in self._state.drain_meta.values()
                if meta.app_id == app_id and meta.drain_id not in gone
            )
            ops.append(["p", app_id])
            return ops, lambda: app

        return await self._write(plan)

    async def put_drain_meta(self, meta: DrainMeta) -> None:
        """A drain's Platform API timestamps (they go when the drain goes)."""

        def plan() -> tuple[list[Op], Callable[[], None]]:
            if meta.drain_id not in self._state.drains:
                return [], lambda: None  # deleted meanwhile
            return [drain_meta_op(meta)], lambda: None

        await self._write(plan)

    async def delete_drain_meta(self, drain_id: int) -> None:
        def plan() -> tuple[list[Op], Callable[[], None]]:
            if drain_id not in self._state.drain_meta:
                return [], lambda: None
            return [["r", drain_id]], lambda: None

        await self._write(plan)

    async def import_platform_records(
        self,
        accounts: Sequence[Account],
        apps: Sequence[App],
        drain_meta: Sequence[DrainMeta],
    ) -> PlatformImport:
        """Add records kept elsewhere (a node's ``platform.lpj``, see ``platform_records``)
        in one change, keeping what the store has where they clash.

        Records the store already has (same id) are left as they are, so importing twice
        changes nothing. An account whose email another account has is not added: its apps
        go to that account (the same person, by email); an app whose name or channel
        another app has is not added, nor its drains' timestamps.
        """

        def plan() -> tuple[list[Op], Callable[[], PlatformImport]]:
            state = self._state
            report = PlatformImport()
            ops: list[Op] = []
            owners: dict[str, Account] = {}
            emails: dict[str, Account] = {}
            for account in accounts:
                known = state.accounts.get(account.id)
                if known is not None:
                    owners[account.id] = known
                    continue
                taken = state.accounts_by_email.get(account.email.lower()) or emails.get(
                    account.email.lower()
                )
                if taken is not None:
                    owners[account.id] = taken
                    report.skipped.append(
                        f"account {account.email} ({account.id}): the email is taken by"
                        f" account {taken.id}, which gets its apps; its API token no longer"
                        " works"
                    )
                    continue
                owners[account.id] = emails[account.email.lower()] = account
                ops.append(account_op(account))
                report.accounts += 1
            names: set[str] = set()
            channels: set[str] = set()
            added: set[str] = set()
            for app in apps:
                if app.id in state.apps:
                    added.add(app.id)
                    continue
                owner = owners.get(app.owner_id)
                if owner is not None and owner.id != app.owner_id:
                    app = replace(app, owner_id=owner.id, owner_email=owner.email)
                clash = (
                    app.name in state.apps_by_name
                    or app.channel in state.apps_by_channel
                    or app.name in names
                    or app.channel in channels
                )
                if clash:
                    report.skipped.append(
                        f"app {app.name} ({app.id}): another app has its name or its channel"
                        f" {app.channel}"
                    )
                    continue
                names.add(app.name)
                channels.add(app.channel)
                added.add(app.id)
                ops.append(["P", app.to_record()])
                report.apps += 1
            for meta in drain_meta:
                if meta.app_id in added and meta.drain_id not in state.drain_meta:
                    ops.append(drain_meta_op(meta))
                    report.drain_meta += 1
            return ops, lambda: report

        return await self._write(plan)

    def _check_app_slot(self, app: App) -> None:
        for other in (self.app_by_name(app.name), self.app_by_channel(app.channel)):
            if other is not None and other.id != app.id:
                raise AppNameTaken(app.name)

    def _channel_deletion(self, name: str) -> list[Op]:
        """The operations that delete channel ``name`` with its tokens, its drains and their
        Platform API timestamps (none when there is no such channel)."""
        if name not in self._state.channels:
            return []
        # Children first: subscribers see DrainRemoved and TokenRemoved before ChannelRemoved.
        drains = self.drains_of(name)
        ops: list[Op] = [["d", drain.id] for drain in drains]
        ops.extend(["r", d.id] for d in drains if d.id in self._state.drain_meta)
        ops.extend(["t", token.id] for token in self.tokens_of(name))
        ops.append(["c", name])
        return ops

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
