"""The embedded store: in-memory state, a msgpack journal with group commit, snapshots.

Data dir layout:
    lock            flock()ed while a process has the store open
    snapshot.lps    the whole state as of the last compaction (replaced by rename only)
    journal.lpj     one framed record per committed transaction since that snapshot

Every journal record is a list of primitive operations that each set or delete one key.
Replaying a suffix of the journal on a state that already includes it changes nothing, so
a crash between writing a snapshot and resetting the journal is harmless.

A write applies its operations to memory at once (so concurrent requests validate against
each other without locks), then waits until a flush has written and fsynced its record.
Whoever flushes takes every pending record along (group commit), then publishes the
events of the whole batch in commit order.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import msgpack
import trio

from . import files
from .base import ChannelPut, Store, Subscriber
from .drain_url import parse_drain_url
from .model import (
    SESSION_TTL_SECONDS,
    Channel,
    ChannelAdded,
    ChannelExists,
    ChannelNotFound,
    ChannelRemoved,
    Credential,
    CredentialExists,
    Drain,
    DrainAdded,
    DrainExists,
    DrainLimitReached,
    DrainNotFound,
    DrainRemoved,
    DrainUpdated,
    Session,
    StoreCorrupt,
    StoreError,
    StoreEvent,
    StoreLocked,
    StoreUnavailable,
    Token,
    TokenAdded,
    TokenRemoved,
    new_drain_token,
    new_session_id,
    new_token_id,
)

log = logging.getLogger("logplexd.store")

SNAPSHOT_FILE = "snapshot.lps"
JOURNAL_FILE = "journal.lpj"
LOCK_FILE = "lock"
# Compact when the journal has grown past this and past the size of the last snapshot.
DEFAULT_COMPACT_MIN_BYTES = 4 << 20
# After a failed journal write (disk full, read-only, I/O error), ``maintain`` tries to
# recover this often; writes are refused (503) until it succeeds.
RECOVERY_INTERVAL = 1.0
# Free space a recovery reserves (then gives back) to know that writes can succeed again.
RECOVERY_PROBE_BYTES = 64 << 10

CHANNEL_COUNTER = "channel"
DRAIN_COUNTER = "drain"

Op = list[Any]


class _State:
    """The whole store in memory, changed only through ``apply``."""

    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        self.tokens: dict[str, Token] = {}
        self.tokens_by_channel: dict[str, dict[str, Token]] = {}
        self.drains: dict[int, Drain] = {}
        self.drains_by_channel: dict[str, dict[int, Drain]] = {}
        self.credentials: dict[str, Credential] = {}
        self.sessions: dict[str, Session] = {}
        self.counters: dict[str, int] = {CHANNEL_COUNTER: 0, DRAIN_COUNTER: 0}

    def apply(self, op: Op, now: float) -> None:
        code = op[0]
        if code == "C":
            self.channels[op[1]] = Channel(op[1], op[2], tuple(op[3]))
        elif code == "c":
            self.channels.pop(op[1], None)
            self.tokens_by_channel.pop(op[1], None)
            self.drains_by_channel.pop(op[1], None)
        elif code == "T":
            self._put_token(Token(op[1], op[2], op[3]))
        elif code == "t":
            self._drop_token(op[1])
        elif code == "D":
            self._put_drain(Drain(op[1], op[2], op[3], op[4]))
        elif code == "d":
            self._drop_drain(op[1])
        elif code == "K":
            self.credentials[op[1]] = Credential(op[1], op[2], tuple(op[3]), op[4])
        elif code == "k":
            self.credentials.pop(op[1], None)
        elif code == "S":
            if op[3] > now:
                self.sessions[op[1]] = Session(op[1], op[2], op[3])
        elif code == "s":
            self.sessions.pop(op[1], None)
        elif code == "N":
            self.counters[op[1]] = max(self.counters.get(op[1], 0), op[2])
        else:
            raise StoreCorrupt(f"unknown operation {code!r} (written by a newer logplexd?)")

    def _put_token(self, token: Token) -> None:
        self._drop_token(token.id)
        self.tokens[token.id] = token
        self.tokens_by_channel.setdefault(token.channel, {})[token.id] = token

    def _drop_token(self, token_id: str) -> None:
        old = self.tokens.pop(token_id, None)
        if old is not None:
            siblings = self.tokens_by_channel.get(old.channel)
            if siblings is not None:
                siblings.pop(token_id, None)

    def _put_drain(self, drain: Drain) -> None:
        old = self.drains.get(drain.id)
        if old is not None and old.channel != drain.channel:
            self._drop_drain(drain.id)
        self.drains[drain.id] = drain
        self.drains_by_channel.setdefault(drain.channel, {})[drain.id] = drain

    def _drop_drain(self, drain_id: int) -> None:
        old = self.drains.pop(drain_id, None)
        if old is not None:
            siblings = self.drains_by_channel.get(old.channel)
            if siblings is not None:
                siblings.pop(drain_id, None)

    # -- snapshot encoding -------------------------------------------------------------------
    # A snapshot payload is a stream of msgpack objects: the counters, then for each section
    # its name and row count followed by the rows one by one. Loading it row by row keeps
    # the decoded form of the whole snapshot from ever being in memory at once.
    def encode_snapshot(self) -> bytes:
        packer = msgpack.Packer(use_bin_type=True)
        sections: list[tuple[str, list[list[Any]]]] = [
            ("channels", [[c.name, c.label, list(c.flags)] for c in self.channels.values()]),
            ("tokens", [[t.id, t.channel, t.name] for t in self.tokens.values()]),
            ("drains", [[d.id, d.channel, d.token, d.url] for d in self.drains.values()]),
            (
                "credentials",
                [
                    [c.id, c.password_hash, list(c.permissions), c.name]
                    for c in self.credentials.values()
                ],
            ),
            ("sessions", [[s.id, s.body, s.expires_at] for s in self.sessions.values()]),
        ]
        parts = [packer.pack(self.counters)]
        for name, rows in sections:
            parts.append(packer.pack([name, len(rows)]))
            parts.extend(packer.pack(row) for row in rows)
        return b"".join(parts)

    def load_snapshot(self, payload: bytes, now: float) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
        unpacker.feed(payload)
        self.counters.update(next(unpacker))
        channels = self.channels
        # Share one string object per channel name and per token name: with hundreds of
        # thousands of tokens the duplicate strings would cost tens of megabytes.
        names: dict[str, str] = {}
        for name, count in unpacker:
            for _ in range(count):
                row = next(unpacker)
                if name == "channels":
                    channels[row[0]] = Channel(row[0], row[1], tuple(row[2]))
                elif name == "tokens":
                    channel = channels[row[1]].name if row[1] in channels else row[1]
                    self._put_token(Token(row[0], channel, names.setdefault(row[2], row[2])))
                elif name == "drains":
                    channel = channels[row[1]].name if row[1] in channels else row[1]
                    self._put_drain(Drain(row[0], channel, row[2], row[3]))
                elif name == "credentials":
                    self.credentials[row[0]] = Credential(row[0], row[1], tuple(row[2]), row[3])
                elif name == "sessions":
                    if row[2] > now:
                        self.sessions[row[0]] = Session(row[0], row[1], row[2])
                else:
                    raise StoreCorrupt(f"unknown snapshot section {name!r}")


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


class StateReads:
    """What every backend does the same way with its in-memory ``_State``: the Store's read
    methods, the drain-slot rule checked before a write, and publishing committed changes."""

    _state: _State
    _clock: Callable[[], float]
    _subscribers: list[Subscriber]

    def channel(self, name: str) -> Channel | None:
        return self._state.channels.get(name)

    def channels(self) -> Iterator[Channel]:
        return iter(list(self._state.channels.values()))

    def token(self, token_id: str) -> Token | None:
        return self._state.tokens.get(token_id)

    def tokens(self) -> Iterator[Token]:
        return iter(list(self._state.tokens.values()))

    def tokens_of(self, channel: str) -> list[Token]:
        return list(self._state.tokens_by_channel.get(channel, {}).values())

    def drain(self, drain_id: int) -> Drain | None:
        return self._state.drains.get(drain_id)

    def drains(self) -> Iterator[Drain]:
        return iter(list(self._state.drains.values()))

    def drains_of(self, channel: str) -> list[Drain]:
        return sorted(self._state.drains_by_channel.get(channel, {}).values(), key=_drain_id)

    def credential(self, cred_id: str) -> Credential | None:
        return self._state.credentials.get(cred_id)

    def credentials(self) -> Iterator[Credential]:
        return iter(list(self._state.credentials.values()))

    def session(self, session_id: str) -> Session | None:
        session = self._state.sessions.get(session_id)
        if session is None or session.expires_at <= self._clock():
            return None
        return session

    def _check_drain_slot(
        self, channel: str, url: str, max_drains: int, *, replacing: Drain | None
    ) -> None:
        others = [
            d
            for d in self._state.drains_by_channel.get(channel, {}).values()
            if d.url is not None and (replacing is None or d.id != replacing.id)
        ]
        if len(others) >= max_drains:
            raise DrainLimitReached(channel)
        key = parse_drain_url(url).key
        for other in others:
            try:
                if parse_drain_url(other.url).key == key:  # type: ignore[arg-type]
                    raise DrainExists(channel)
            except ValueError:
                continue

    def _publish(self, events: list[StoreEvent]) -> None:
        for event in events:
            for subscriber in list(self._subscribers):
                try:
                    subscriber(event)
                except Exception:
                    log.exception("store: subscriber failed on %s", type(event).__name__)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe


class EmbeddedStore(StateReads, Store):
    def __init__(
        self,
        data_dir: str,
        *,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.compact_min_bytes = compact_min_bytes
        self._clock = clock
        self._snapshot_path = os.path.join(self.data_dir, SNAPSHOT_FILE)
        self._journal_path = os.path.join(self.data_dir, JOURNAL_FILE)
        self._state = _State()
        self._subscribers: list[Subscriber] = []
        self._failure: str | None = None
        self._failed = trio.Event()  # set by _fail: wakes maintain() to recover
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None
        self._journal_bytes = 0
        self._snapshot_bytes = 0
        # Group commit: records applied to memory but not yet written, and their events.
        self._pending = bytearray()
        self._pending_events: list[StoreEvent] = []
        self._applied_seq = 0
        self._durable_seq = 0
        # (after, upto] ranges of commit seqs thrown away by recover(): never acknowledged.
        self._discarded: list[tuple[int, int]] = []
        self._commit_lock = trio.Lock()
        self._open()

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> None:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(
            os.path.join(self.data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreLocked(f"{self.data_dir} is in use by another process") from None
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        started = time.monotonic()
        now = self._clock()
        for leftover in (self._snapshot_path + ".tmp", self._journal_path + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        try:
            snapshot = files.read_snapshot(self._snapshot_path)
            scan = files.read_journal(self._journal_path)
        except files.FormatError as exc:
            raise StoreCorrupt(str(exc)) from None
        if snapshot is not None:
            self._snapshot_bytes = len(snapshot)
            self._state.load_snapshot(snapshot, now)
            del snapshot
        if scan is None or scan.valid_length == 0:
            # No journal yet, or one whose header never made it to disk.
            files.write_atomically(self._journal_path, files.header(files.JOURNAL_MAGIC))
            valid_length = files.HEADER.size
        else:
            for payload in scan.records:
                for op in _unpack(payload):
                    self._state.apply(op, now)
            valid_length = scan.valid_length
            if scan.ignored_bytes:
                log.warning(
                    "store: ignoring %d bytes at the end of %s (%s): a write that was never "
                    "acknowledged, cut short by a crash",
                    scan.ignored_bytes,
                    self._journal_path,
                    scan.ignored_reason,
                )
        fd = os.open(self._journal_path, os.O_WRONLY)
        if scan is not None and scan.ignored_bytes and scan.valid_length:
            # Later appends must follow the last good record, not the torn one.
            os.ftruncate(fd, valid_length)
            os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_END)
        self._journal_fd = fd
        self._journal_bytes = valid_length
        log.info(
            "store: opened %s: %d channels, %d tokens, %d drains in %.3f s",
            self.data_dir,
            len(self._state.channels),
            len(self._state.tokens),
            len(self._state.drains),
            time.monotonic() - started,
        )
        if self._wants_compaction():
            self._compact_files(self._encode_snapshot())

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def journal_bytes(self) -> int:
        return self._journal_bytes

    # -- writes ------------------------------------------------------------------------------
    async def create_channel(
        self,
        name: str | None = None,
        *,
        label: str | None = None,
        token_names: Sequence[str] = (),
    ) -> tuple[Channel, list[Token]]:
        self._check_writable()
        ops: list[Op] = []
        if name is None:
            number = self._state.counters[CHANNEL_COUNTER]
            while True:
                number += 1
                # A v3 client may have taken the name already: v2 and v3 share one namespace.
                if str(number) not in self._state.channels:
                    break
            name = str(number)
            ops.append(["N", CHANNEL_COUNTER, number])
        elif name in self._state.channels:
            raise ChannelExists(name)
        channel = Channel(name, label)
        tokens = [Token(new_token_id(), name, token_name) for token_name in token_names]
        ops.append(["C", name, label, []])
        ops.extend(["T", t.id, t.channel, t.name] for t in tokens)
        events: list[StoreEvent] = [ChannelAdded(channel)]
        events.extend(TokenAdded(t) for t in tokens)
        await self._commit(ops, events)
        return channel, tokens

    async def put_channel(self, name: str, token_names: Sequence[str]) -> ChannelPut:
        self._check_writable()
        wanted = list(dict.fromkeys(token_names))
        channel = self._state.channels.get(name)
        created = channel is None
        ops: list[Op] = []
        events: list[StoreEvent] = []
        if channel is None:
            channel = Channel(name)
            ops.append(["C", name, None, []])
            events.append(ChannelAdded(channel))
        existing = self.tokens_of(name)
        for token in existing:
            if token.name not in wanted:
                ops.append(["t", token.id])
                events.append(TokenRemoved(token))
        present = {token.name for token in existing}
        for token_name in wanted:
            if token_name not in present:
                token = Token(new_token_id(), name, token_name)
                ops.append(["T", token.id, name, token_name])
                events.append(TokenAdded(token))
        if ops:
            await self._commit(ops, events)
        return ChannelPut(created, channel, self.tokens_of(name))

    async def delete_channel(self, name: str) -> bool:
        self._check_writable()
        if name not in self._state.channels:
            return False
        ops: list[Op] = []
        events: list[StoreEvent] = []
        for drain in self.drains_of(name):
            ops.append(["d", drain.id])
            events.append(DrainRemoved(name, drain))
        for token in self.tokens_of(name):
            ops.append(["t", token.id])
            events.append(TokenRemoved(token))
        ops.append(["c", name])
        events.append(ChannelRemoved(name))
        await self._commit(ops, events)
        return True

    async def create_token(self, channel: str, name: str) -> Token:
        self._check_writable()
        if channel not in self._state.channels:
            raise ChannelNotFound(channel)
        token = Token(new_token_id(), channel, name)
        await self._commit([["T", token.id, channel, name]], [TokenAdded(token)])
        return token

    async def create_drain(self, channel: str, url: str | None, *, max_drains: int) -> Drain:
        self._check_writable()
        if channel not in self._state.channels:
            raise ChannelNotFound(channel)
        if url is not None:
            self._check_drain_slot(channel, url, max_drains, replacing=None)
        drain_id = self._state.counters[DRAIN_COUNTER] + 1
        drain = Drain(drain_id, channel, new_drain_token(), url)
        ops: list[Op] = [
            ["N", DRAIN_COUNTER, drain_id],
            ["D", drain.id, channel, drain.token, url],
        ]
        await self._commit(ops, [DrainAdded(channel, drain)])
        return drain

    async def update_drain(
        self, channel: str, drain_id: int, url: str, *, max_drains: int
    ) -> Drain:
        self._check_writable()
        previous = self._state.drains.get(drain_id)
        if previous is None or previous.channel != channel:
            raise DrainNotFound(drain_id)
        if previous.url == url:
            return previous
        self._check_drain_slot(channel, url, max_drains, replacing=previous)
        drain = Drain(drain_id, channel, previous.token, url)
        await self._commit(
            [["D", drain.id, channel, drain.token, url]],
            [DrainUpdated(channel, drain, previous)],
        )
        return drain

    async def delete_drain(self, channel: str, drain_id: int) -> Drain | None:
        self._check_writable()
        drain = self._state.drains.get(drain_id)
        if drain is None or drain.channel != channel:
            return None
        await self._commit([["d", drain_id]], [DrainRemoved(channel, drain)])
        return drain

    async def create_session(
        self, body: Mapping[str, Any], *, ttl: float = SESSION_TTL_SECONDS
    ) -> Session:
        self._check_writable()
        session = Session(new_session_id(), dict(body), self._clock() + ttl)
        await self._commit([["S", session.id, session.body, session.expires_at]], [])
        return session

    async def delete_session(self, session_id: str) -> bool:
        self._check_writable()
        if session_id not in self._state.sessions:
            return False
        await self._commit([["s", session_id]], [])
        return True

    async def add_credential(self, credential: Credential) -> None:
        self._check_writable()
        if credential.id in self._state.credentials:
            raise CredentialExists(credential.id)
        op = ["K", credential.id, credential.password_hash, list(credential.permissions)]
        await self._commit([[*op, credential.name]], [])

    async def revoke_credential(self, cred_id: str) -> bool:
        self._check_writable()
        if cred_id not in self._state.credentials:
            return False
        await self._commit([["k", cred_id]], [])
        return True

    # -- commit --------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._failure is not None:
            raise StoreUnavailable(self._failure)
        if self._journal_fd is None:
            raise StoreUnavailable("store is closed")

    async def _commit(self, ops: list[Op], events: list[StoreEvent]) -> None:
        try:
            payload = _pack(ops)
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"value cannot be stored: {type(exc).__name__}") from None
        now = self._clock()
        for op in ops:
            self._state.apply(op, now)
        self._pending += files.frame(payload)
        self._pending_events.extend(events)
        self._applied_seq += 1
        seq = self._applied_seq
        # Once applied in memory the record must reach the disk (or fail the store), even if
        # the request that made it is cancelled: otherwise memory and disk would disagree.
        with trio.CancelScope(shield=True):
            while self._durable_seq < seq or self._was_discarded(seq):
                if self._failure is not None or self._was_discarded(seq):
                    raise StoreUnavailable(self._failure or "store failed during the write")
                async with self._commit_lock:
                    if self._durable_seq < seq and self._failure is None:
                        await self._flush_locked()

    def _was_discarded(self, seq: int) -> bool:
        return any(lo < seq <= hi for lo, hi in self._discarded)

    async def _flush_locked(self) -> None:
        if not self._pending:
            return
        if self._failure is not None:
            # Never append after a failed write: it may have left a torn record behind.
            raise StoreUnavailable(self._failure)
        data = bytes(self._pending)
        events = self._pending_events
        upto = self._applied_seq
        self._pending = bytearray()
        self._pending_events = []
        fd = self._journal_fd
        try:
            if fd is None:
                raise OSError("journal is closed")
            await trio.to_thread.run_sync(_append_and_sync, fd, data)
        except OSError as exc:
            self._fail(f"journal write failed: {exc.strerror or exc}")
            raise StoreUnavailable(self._failure) from None
        self._durable_seq = upto
        self._journal_bytes += len(data)
        self._publish(events)

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            log.error("store: %s; refusing writes until it recovers", reason)
            self._failure = reason
            self._failed.set()

    async def recover(self) -> bool:
        """After a write failure: forget what was never acknowledged and accept writes again.

        A failed flush leaves memory ahead of the disk (writes apply to memory first) and
        maybe a torn record on disk. Recovery cuts the journal back to its last durable
        length, checks that there is room to write again, and reloads the state from disk,
        so only acknowledged changes remain. Returns False while the disk still fails.
        """
        if self._failure is None:
            return True
        if self._journal_fd is None:
            return False
        async with self._commit_lock:
            try:
                fd, state, length = await trio.to_thread.run_sync(self._reopen_from_disk)
            except (OSError, StoreCorrupt) as exc:
                log.warning("store: still failing (%s)", exc)
                return False
            old_fd, self._journal_fd = self._journal_fd, fd
            with contextlib.suppress(OSError):
                os.close(old_fd)
            self._state = state
            self._journal_bytes = length
            self._pending = bytearray()
            self._pending_events = []
            if self._applied_seq > self._durable_seq:
                self._discarded.append((self._durable_seq, self._applied_seq))
            self._durable_seq = self._applied_seq
            log.warning("store: recovered from %r; accepting writes again", self._failure)
            self._failure = None
            self._failed = trio.Event()
        return True

    def _reopen_from_disk(self) -> tuple[int, _State, int]:
        """A new journal fd cut to the durable length, and the state on disk (in a thread)."""
        now = self._clock()
        fd = os.open(self._journal_path, os.O_WRONLY)
        try:
            size = os.fstat(fd).st_size
            durable = min(size, self._journal_bytes)
            os.ftruncate(fd, durable)
            try:
                os.posix_fallocate(fd, durable, RECOVERY_PROBE_BYTES)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            os.ftruncate(fd, durable)
            os.fsync(fd)
            state = _State()
            try:
                snapshot = files.read_snapshot(self._snapshot_path)
                scan = files.read_journal(self._journal_path)
            except files.FormatError as exc:
                raise StoreCorrupt(str(exc)) from None
            if scan is None or scan.valid_length == 0:
                raise StoreCorrupt(f"{self._journal_path} has no header")
            if snapshot is not None:
                state.load_snapshot(snapshot, now)
            for payload in scan.records:
                for op in _unpack(payload):
                    state.apply(op, now)
            if scan.valid_length != durable:
                os.ftruncate(fd, scan.valid_length)
                os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)
            raise
        return fd, state, scan.valid_length

    # -- compaction and maintenance ----------------------------------------------------------------
    def _wants_compaction(self) -> bool:
        return self._journal_bytes > max(self.compact_min_bytes, self._snapshot_bytes)

    def _encode_snapshot(self) -> bytes:
        return self._state.encode_snapshot()

    def _compact_files(self, snapshot: bytes) -> None:
        """Write the snapshot, then start an empty journal. Runs with the commit lock held."""
        files.write_snapshot(self._snapshot_path, snapshot)
        # From here the snapshot holds everything; a crash before the journal is reset
        # just replays the old journal on top of it, which changes nothing.
        try:
            files.write_atomically(self._journal_path, files.header(files.JOURNAL_MAGIC))
            new_fd = os.open(self._journal_path, os.O_WRONLY)
            os.lseek(new_fd, 0, os.SEEK_END)
        except OSError as exc:
            self._fail(f"journal reset after compaction failed: {exc.strerror or exc}")
            raise
        old_fd, self._journal_fd = self._journal_fd, new_fd
        if old_fd is not None:
            os.close(old_fd)
        self._snapshot_bytes = len(snapshot)
        self._journal_bytes = files.HEADER.size

    async def compact(self) -> None:
        self._check_writable()
        async with self._commit_lock:
            await self._flush_locked()
            self.expire_sessions()
            # Encoded here, in the trio thread, so no request changes the state meanwhile.
            snapshot = self._encode_snapshot()
            started = time.monotonic()
            await trio.to_thread.run_sync(self._compact_files, snapshot)
            log.info(
                "store: compacted into a %d-byte snapshot in %.3f s",
                len(snapshot),
                time.monotonic() - started,
            )

    def expire_sessions(self) -> int:
        """Forget expired sessions (replay drops them too, so no journal record is needed)."""
        now = self._clock()
        expired = [s.id for s in self._state.sessions.values() if s.expires_at <= now]
        for session_id in expired:
            del self._state.sessions[session_id]
        return len(expired)

    async def maintain(
        self, *, interval: float = 60.0, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run forever: expire sessions, compact once the journal has grown."""
        task_status.started()
        next_run = trio.current_time() + interval
        while True:
            with trio.move_on_at(next_run):
                await self._failed.wait()
            if self._failure is not None:
                # Not at once: a disk that just filled up stays full for a while.
                await trio.sleep(RECOVERY_INTERVAL)
                await self.recover()
                continue
            next_run = trio.current_time() + interval
            self.expire_sessions()
            if self._failure is None and self._wants_compaction():
                try:
                    await self.compact()
                except (OSError, StoreError) as exc:
                    log.error("store: compaction failed: %s", exc)

    def close(self) -> None:
        if self._journal_fd is not None:
            if self._pending and self._failure is None:
                # Records of writes that were cancelled before any flush: keep them.
                with contextlib.suppress(OSError):
                    _append_and_sync(self._journal_fd, bytes(self._pending))
                self._pending = bytearray()
            os.close(self._journal_fd)
            self._journal_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _drain_id(drain: Drain) -> int:
    return drain.id


def _append_and_sync(fd: int, data: bytes) -> None:
    files.write_all(fd, data)
    os.fdatasync(fd)


def open_store(data_dir: str, **options: Any) -> EmbeddedStore:
    """Open (creating if needed) the embedded store in ``data_dir``; replays it into memory.

    Raises StoreLocked if another process has it open, StoreCorrupt if it cannot be read.
    """
    return EmbeddedStore(data_dir, **options)
