"""The store in memory, and the operations that change it: one copy for both backends.

Every backend keeps the whole store in a ``State`` (reads are dictionary look-ups) and plans
each write against it (``base.Store``): a plan checks the change (names taken, drain limits,
the same destination twice) and returns the operations that make it, each setting or
deleting one key, and a function that computes the write's result once they are applied.
The backend makes the operations durable its own way (the embedded store's journal, the
Redis store's commit script), applies them, and publishes the events ``State.event_of``
derives from them, so that both backends publish the same events for the same change.

Operations (journal records and Redis change entries hold them, so their form is fixed)::

    ["C", name, label, flags(, overflow)]  ["c", name]     a channel (``c`` drops its children)
    ["T", id, channel, name]           ["t", id]           a token
    ["D", id, channel, token, url]     ["d", id]           a drain (url None: a reservation)
    ["K", id, hash, permissions, name] ["k", id]           a credential
    ["S", id, body, expires_at]        ["s", id]           a session
    ["N", counter, value]                                  raise an id counter to ``value``

and the Platform API's records (the codes its own journal, ``platform.lpj``, used)::

    ["A", id, email, token_hash, created_at, updated_at]  ["a", id]   an account
    ["P", app record (a map, ``App.to_record``)]           ["p", id]   an app
    ["R", drain id, app id, created_at, updated_at]        ["r", id]   a drain's timestamps

A channel's overflow mode is a fifth element only when set, so a channel without one is
written exactly as before the field existed, and records without it read as None. The
Platform records cause no events: nothing but the Platform API reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, TypeAlias, TypeVar

from .model import (
    Account,
    App,
    ChannelAdded,
    ChannelRecord,
    ChannelRemoved,
    ChannelUpdated,
    CredentialRecord,
    DrainAdded,
    DrainMeta,
    DrainRecord,
    DrainRemoved,
    DrainUpdated,
    SessionRecord,
    StoreCorrupt,
    StoreEvent,
    TokenAdded,
    TokenRecord,
    TokenRemoved,
)

CHANNEL_COUNTER = "channel"
DRAIN_COUNTER = "drain"

Op = list[Any]
T = TypeVar("T")
# Reads the state, raises when the change is refused; returns the operations and the result.
Plan: TypeAlias = Callable[[], tuple[list[Op], Callable[[], T]]]

_by_id = attrgetter("id")


def channel_op(channel: ChannelRecord) -> Op:
    """The operation that stores ``channel`` (creates it, or sets its own fields)."""
    op: Op = ["C", channel.name, channel.label, list(channel.flags)]
    if channel.overflow is not None:
        op.append(channel.overflow)
    return op


def _channel_of(op: Op) -> ChannelRecord:
    return ChannelRecord(op[1], op[2], tuple(op[3]), op[4] if len(op) > 4 else None)


class State:
    """The whole store in memory, changed only through ``apply``."""

    def __init__(self) -> None:
        self.channels: dict[str, ChannelRecord] = {}
        self.tokens: dict[str, TokenRecord] = {}
        self.tokens_by_channel: dict[str, dict[str, TokenRecord]] = {}
        self.drains: dict[int, DrainRecord] = {}
        self.drains_by_channel: dict[str, dict[int, DrainRecord]] = {}
        self.credentials: dict[str, CredentialRecord] = {}
        self.sessions: dict[str, SessionRecord] = {}
        self.counters: dict[str, int] = {CHANNEL_COUNTER: 0, DRAIN_COUNTER: 0}
        # The Platform API's records, with the indexes its look-ups need.
        self.accounts: dict[str, Account] = {}
        self.accounts_by_email: dict[str, Account] = {}  # lower-cased email
        self.accounts_by_token: dict[str, Account] = {}  # token hash
        self.apps: dict[str, App] = {}
        self.apps_by_name: dict[str, App] = {}
        self.apps_by_channel: dict[str, App] = {}
        self.drain_meta: dict[int, DrainMeta] = {}

    def tokens_of(self, channel: str) -> list[TokenRecord]:
        return list(self.tokens_by_channel.get(channel, {}).values())

    def drains_of(self, channel: str) -> list[DrainRecord]:
        return sorted(self.drains_by_channel.get(channel, {}).values(), key=_by_id)

    def apply(self, op: Op, now: float) -> None:
        code = op[0]
        if code == "C":
            self.channels[op[1]] = _channel_of(op)
        elif code == "c":
            self.channels.pop(op[1], None)
            self.tokens_by_channel.pop(op[1], None)
            self.drains_by_channel.pop(op[1], None)
        elif code == "T":
            self.put_token(TokenRecord(op[1], op[2], op[3]))
        elif code == "t":
            self.drop_token(op[1])
        elif code == "D":
            self.put_drain(DrainRecord(op[1], op[2], op[3], op[4]))
        elif code == "d":
            self.drop_drain(op[1])
        elif code == "K":
            self.credentials[op[1]] = CredentialRecord(op[1], op[2], tuple(op[3]), op[4])
        elif code == "k":
            self.credentials.pop(op[1], None)
        elif code == "S":
            if op[3] > now:
                self.sessions[op[1]] = SessionRecord(op[1], op[2], op[3])
        elif code == "s":
            self.sessions.pop(op[1], None)
        elif code == "N":
            self.counters[op[1]] = max(self.counters.get(op[1], 0), op[2])
        elif code == "A":
            self.put_account(Account(op[1], op[2], op[3], op[4], op[5]))
        elif code == "a":
            self.drop_account(op[1])
        elif code == "P":
            self.put_app(App.from_record(op[1]))
        elif code == "p":
            self.drop_app(op[1])
        elif code == "R":
            self.drain_meta[op[1]] = DrainMeta(op[1], op[2], op[3], op[4])
        elif code == "r":
            self.drain_meta.pop(op[1], None)
        else:
            raise StoreCorrupt(f"unknown operation {code!r} (written by a newer logplexd?)")

    def event_of(self, op: Op) -> StoreEvent | None:
        """The event an operation causes, judged on the state before it is applied."""
        code = op[0]
        if code == "C":
            channel = _channel_of(op)
            previous_channel = self.channels.get(op[1])
            if previous_channel is None:
                return ChannelAdded(channel)
            if previous_channel != channel:
                return ChannelUpdated(channel, previous_channel)
        if code == "c" and op[1] in self.channels:
            return ChannelRemoved(op[1])
        if code == "T" and op[1] not in self.tokens:
            return TokenAdded(TokenRecord(op[1], op[2], op[3]))
        if code == "t" and op[1] in self.tokens:
            return TokenRemoved(self.tokens[op[1]])
        if code == "D":
            drain = DrainRecord(op[1], op[2], op[3], op[4])
            previous = self.drains.get(op[1])
            if previous is None:
                return DrainAdded(drain.channel, drain)
            if previous != drain:
                return DrainUpdated(drain.channel, drain, previous)
        if code == "d" and op[1] in self.drains:
            drain = self.drains[op[1]]
            return DrainRemoved(drain.channel, drain)
        return None

    def apply_all(self, ops: Sequence[Op], now: float) -> list[StoreEvent]:
        """Apply a committed change; returns its events, in order."""
        events: list[StoreEvent] = []
        for op in ops:
            event = self.event_of(op)
            self.apply(op, now)
            if event is not None:
                events.append(event)
        return events

    def put_token(self, token: TokenRecord) -> None:
        self.drop_token(token.id)
        self.tokens[token.id] = token
        self.tokens_by_channel.setdefault(token.channel, {})[token.id] = token

    def drop_token(self, token_id: str) -> None:
        old = self.tokens.pop(token_id, None)
        if old is not None:
            siblings = self.tokens_by_channel.get(old.channel)
            if siblings is not None:
                siblings.pop(token_id, None)

    def put_drain(self, drain: DrainRecord) -> None:
        old = self.drains.get(drain.id)
        if old is not None and old.channel != drain.channel:
            self.drop_drain(drain.id)
        self.drains[drain.id] = drain
        self.drains_by_channel.setdefault(drain.channel, {})[drain.id] = drain

    def drop_drain(self, drain_id: int) -> None:
        old = self.drains.pop(drain_id, None)
        if old is not None:
            siblings = self.drains_by_channel.get(old.channel)
            if siblings is not None:
                siblings.pop(drain_id, None)

    def put_account(self, account: Account) -> None:
        self.drop_account(account.id)
        self.accounts[account.id] = account
        self.accounts_by_email[account.email.lower()] = account
        self.accounts_by_token[account.token_hash] = account

    def drop_account(self, account_id: str) -> None:
        old = self.accounts.pop(account_id, None)
        if old is not None:
            if self.accounts_by_email.get(old.email.lower()) is old:
                del self.accounts_by_email[old.email.lower()]
            if self.accounts_by_token.get(old.token_hash) is old:
                del self.accounts_by_token[old.token_hash]

    def put_app(self, app: App) -> None:
        self.drop_app(app.id)
        self.apps[app.id] = app
        self.apps_by_name[app.name] = app
        self.apps_by_channel[app.channel] = app

    def drop_app(self, app_id: str) -> None:
        old = self.apps.pop(app_id, None)
        if old is not None:
            if self.apps_by_name.get(old.name) is old:
                del self.apps_by_name[old.name]
            if self.apps_by_channel.get(old.channel) is old:
                del self.apps_by_channel[old.channel]


def account_op(account: Account) -> Op:
    """The operation that stores ``account``."""
    a = account
    return ["A", a.id, a.email, a.token_hash, a.created_at, a.updated_at]


def drain_meta_op(meta: DrainMeta) -> Op:
    """The operation that stores ``meta``."""
    return ["R", meta.drain_id, meta.app_id, meta.created_at, meta.updated_at]


def difference(old: State, new: State) -> list[StoreEvent]:
    """Events that turn a subscriber's view of ``old`` into ``new``, in a valid order."""
    events: list[StoreEvent] = []
    for name in old.channels:
        if name not in new.channels:
            events.extend(DrainRemoved(name, d) for d in old.drains_of(name))
            events.extend(TokenRemoved(t) for t in old.tokens_of(name))
            events.append(ChannelRemoved(name))
    for drain_id, drain in old.drains.items():
        if drain.channel in new.channels and drain_id not in new.drains:
            events.append(DrainRemoved(drain.channel, drain))
    for token_id, token in old.tokens.items():
        if token.channel in new.channels and token_id not in new.tokens:
            events.append(TokenRemoved(token))
    for name, channel in new.channels.items():
        previous_channel = old.channels.get(name)
        if previous_channel is None:
            events.append(ChannelAdded(channel))
        elif previous_channel != channel:
            events.append(ChannelUpdated(channel, previous_channel))
    for token_id, token in new.tokens.items():
        if token_id not in old.tokens:
            events.append(TokenAdded(token))
    for drain_id, drain in sorted(new.drains.items()):
        previous = old.drains.get(drain_id)
        if previous is None:
            events.append(DrainAdded(drain.channel, drain))
        elif previous != drain:
            events.append(DrainUpdated(drain.channel, drain, previous))
    return events
