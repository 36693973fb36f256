"""Durable records of the Platform API: accounts, apps and log-drain timestamps.

The Logplex store knows channels, tokens and drains only. What the Platform API adds lives
in its own small journal in the data dir, written with the store's framing helpers
(``store/files.py``):

    platform.lock   flock()ed for the length of each read-modify-write (never held long)
    platform.lpj    journal header, then one framed msgpack record per transaction

Both the daemon and ``logplexd accounts create`` write it, so every transaction takes the
lock, reloads the file if another process changed it since (inode or size differ), builds
its operations against that state, appends and fsyncs. The daemon also reloads when an
unknown API token is presented, so an account created while it runs works at once. A torn
record at the end (a crash mid-append) is cut off by the next writer. When the journal has
grown well past the state it holds it is rewritten as one record (by rename, never torn).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import trio

from . import files
from .model import StoreCorrupt, StoreUnavailable

JOURNAL_FILE = "platform.lpj"
LOCK_FILE = "platform.lock"
# Rewrite the journal once it is this large and four times the size of its state.
COMPACT_MIN_BYTES = 256 * 1024

Op = list[Any]


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
    name: str  # also the name of its Logplex channel
    owner_id: str
    owner_email: str
    region_id: str
    region_name: str
    stack_id: str
    stack_name: str
    maintenance: bool
    created_at: str
    updated_at: str

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
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
        return cls(**{name: record[name] for name in cls.__slots__})  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class DrainMeta:
    """What the Platform API remembers of a store drain (keyed by the store's int id)."""

    drain_id: int
    app_id: str
    created_at: str
    updated_at: str


class _State:
    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.accounts_by_email: dict[str, Account] = {}
        self.accounts_by_token: dict[str, Account] = {}
        self.apps: dict[str, App] = {}
        self.apps_by_name: dict[str, App] = {}
        self.drains: dict[int, DrainMeta] = {}

    def apply(self, op: Op) -> None:
        code = op[0]
        if code == "A":
            self._drop_account(op[1])
            account = Account(op[1], op[2], op[3], op[4], op[5])
            self.accounts[account.id] = account
            self.accounts_by_email[account.email.lower()] = account
            self.accounts_by_token[account.token_hash] = account
        elif code == "a":
            self._drop_account(op[1])
        elif code == "P":
            app = App.from_record(op[1])
            self._drop_app(app.id)
            self.apps[app.id] = app
            self.apps_by_name[app.name] = app
        elif code == "p":
            self._drop_app(op[1])
        elif code == "R":
            self.drains[op[1]] = DrainMeta(op[1], op[2], op[3], op[4])
        elif code == "r":
            self.drains.pop(op[1], None)
        else:
            raise StoreCorrupt(f"platform records: unknown operation {code!r}")

    def _drop_account(self, account_id: str) -> None:
        old = self.accounts.pop(account_id, None)
        if old is not None:
            self.accounts_by_email.pop(old.email.lower(), None)
            self.accounts_by_token.pop(old.token_hash, None)

    def _drop_app(self, app_id: str) -> None:
        old = self.apps.pop(app_id, None)
        if old is not None and self.apps_by_name.get(old.name) is old:
            del self.apps_by_name[old.name]

    def ops(self) -> list[Op]:
        """The whole state as operations (what a compacted journal holds)."""
        result: list[Op] = [
            ["A", a.id, a.email, a.token_hash, a.created_at, a.updated_at]
            for a in self.accounts.values()
        ]
        result.extend(["P", app.to_record()] for app in self.apps.values())
        result.extend(
            ["R", d.drain_id, d.app_id, d.created_at, d.updated_at] for d in self.drains.values()
        )
        return result


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


class PlatformRecords:
    """Accounts, apps and drain metadata; reads from memory, writes durable on return."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = os.path.abspath(os.fspath(data_dir))
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(self.data_dir, JOURNAL_FILE)
        self._lock_path = os.path.join(self.data_dir, LOCK_FILE)
        # Open only while a transaction holds the lock: no descriptor is kept between them.
        self._lock_fd: int | None = None
        self._closed = False
        self._state = _State()
        # (inode, size) of the journal as of our state: anything else means reload.
        self._seen: tuple[int, int] | None = None
        self._mutex = trio.Lock()
        self._lock()
        try:
            fresh = self._read_if_changed()
            if fresh is not None:
                self._state = fresh
        finally:
            self._unlock()

    # -- reads ---------------------------------------------------------------------------
    def account(self, account_id: str) -> Account | None:
        return self._state.accounts.get(account_id)

    def account_by_email(self, email: str) -> Account | None:
        return self._state.accounts_by_email.get(email.lower())

    def account_by_token(self, token: str) -> Account | None:
        return self._state.accounts_by_token.get(hash_api_token(token))

    def accounts(self) -> Iterator[Account]:
        return iter(list(self._state.accounts.values()))

    def app(self, app_id: str) -> App | None:
        return self._state.apps.get(app_id)

    def app_by_name(self, name: str) -> App | None:
        return self._state.apps_by_name.get(name)

    def apps(self) -> Iterator[App]:
        return iter(list(self._state.apps.values()))

    def drain_meta(self, drain_id: int) -> DrainMeta | None:
        return self._state.drains.get(drain_id)

    # -- writes --------------------------------------------------------------------------
    async def transact(self, build: Callable[[], list[Op]]) -> None:
        """Catch up with the file, ``build()`` the operations, make them durable, apply.

        ``build`` runs with the file locked against the state as of now; it may raise to
        abort (nothing is written then).
        """
        async with self._mutex:
            await trio.to_thread.run_sync(self._lock)
            try:
                fresh = await trio.to_thread.run_sync(self._read_if_changed)
                if fresh is not None:
                    self._state = fresh
                ops = build()
                if ops:
                    payload = _pack(ops)
                    # Once written, memory must follow even if the caller is cancelled.
                    with trio.CancelScope(shield=True):
                        try:
                            await trio.to_thread.run_sync(self._append, payload)
                        except OSError as exc:
                            raise StoreUnavailable(
                                f"platform records: write failed: {exc.strerror or exc}"
                            ) from None
                        for op in ops:
                            self._state.apply(op)
                        if self._wants_compaction():
                            whole = _pack(self._state.ops())
                            with contextlib.suppress(OSError):
                                await trio.to_thread.run_sync(self._compact, whole)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._unlock)

    async def refresh(self) -> None:
        """Pick up changes another process (``logplexd accounts create``) made."""
        if self._seen is not None and self._identity() == self._seen:
            return  # the common case (e.g. a wrong token): one stat, no lock, no thread
        await self.transact(list)

    async def create_account(self, email: str) -> tuple[Account, str]:
        """A new account and its API token in clear (shown once, never stored).

        Raises ValueError when the email is taken.
        """
        token = new_api_token()
        now = utc_timestamp()
        account = Account(str(uuid.uuid4()), email, hash_api_token(token), now, now)

        def build() -> list[Op]:
            if self.account_by_email(email) is not None:
                raise ValueError(f"an account with email {email} exists")
            return [["A", account.id, account.email, account.token_hash, now, now]]

        await self.transact(build)
        return account, token

    async def delete_account(self, email: str) -> bool:
        found: list[Account] = []

        def build() -> list[Op]:
            account = self.account_by_email(email)
            if account is None:
                return []
            found.append(account)
            return [["a", account.id]]

        await self.transact(build)
        return bool(found)

    async def put_app(self, app: App, *, unless_name_taken: bool = False) -> None:
        """Store ``app``; with ``unless_name_taken`` raise ValueError if another app has
        its name."""

        def build() -> list[Op]:
            other = self.app_by_name(app.name)
            if unless_name_taken and other is not None and other.id != app.id:
                raise ValueError(f"name {app.name} is taken")
            return [["P", app.to_record()]]

        await self.transact(build)

    async def delete_app(self, app_id: str, drain_ids: list[int]) -> None:
        def build() -> list[Op]:
            ops: list[Op] = [["r", d] for d in drain_ids if d in self._state.drains]
            return [*ops, ["p", app_id]] if app_id in self._state.apps else ops

        await self.transact(build)

    async def put_drain_meta(self, meta: DrainMeta) -> None:
        op = ["R", meta.drain_id, meta.app_id, meta.created_at, meta.updated_at]
        await self.transact(lambda: [op])

    async def delete_drain_meta(self, drain_id: int) -> None:
        await self.transact(lambda: [["r", drain_id]] if drain_id in self._state.drains else [])

    def close(self) -> None:
        """Refuse further transactions (nothing is held open between them)."""
        self._closed = True

    # -- file work (worker threads, with the lock held) --------------------------------------
    def _lock(self) -> None:
        if self._closed:
            raise StoreUnavailable("platform records are closed")
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the lock

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size

    def _read_if_changed(self) -> _State | None:
        """A new state read from the file, or None when it is what we last saw."""
        identity = self._identity()
        if identity is not None and identity == self._seen:
            return None
        try:
            scan = files.read_journal(self.path)
        except files.FormatError as exc:
            raise StoreCorrupt(str(exc)) from None
        if scan is None or scan.valid_length == 0:
            files.write_atomically(self.path, files.header(files.JOURNAL_MAGIC))
            self._seen = self._identity()
            return _State()
        state = _State()
        for payload in scan.records:
            for op in msgpack.unpackb(payload, raw=False, strict_map_key=False):
                state.apply(op)
        if scan.ignored_bytes:
            # A torn append of a writer that crashed: it was never acknowledged.
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, scan.valid_length)
                os.fsync(fd)
            finally:
                os.close(fd)
        self._seen = self._identity()
        return state

    def _append(self, payload: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            files.write_all(fd, files.frame(payload))
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._seen = self._identity()

    def _wants_compaction(self) -> bool:
        size = self._seen[1] if self._seen is not None else 0
        if size < COMPACT_MIN_BYTES:
            return False
        return size > 4 * len(_pack(self._state.ops()))

    def _compact(self, payload: bytes) -> None:
        files.write_atomically(self.path, files.header(files.JOURNAL_MAGIC) + files.frame(payload))
        self._seen = self._identity()


def open_platform_records(data_dir: str | os.PathLike[str]) -> PlatformRecords:
    return PlatformRecords(data_dir)


__all__ = [
    "Account",
    "App",
    "DrainMeta",
    "PlatformRecords",
    "hash_api_token",
    "open_platform_records",
    "utc_timestamp",
]
