"""The shared store: configuration in one Redis, mirrored in memory on every node.

Each node keeps the whole configuration in memory (the ``State`` the embedded store keeps too,
so reads are the same O(1) dictionary look-ups) and follows a change stream in Redis, the way the
original mirrored Redis into ETS with nsync.

Keys (``P`` is the prefix, ``logplex`` by default). Every configuration key carries the one
hash tag ``{cfg}``: a change touches records of several kinds plus the global change stream
and the id counters, and it must be a single atomic step, which Redis Cluster only allows
within one hash slot. Configuration is small (about 200 bytes a channel) and rarely written,
so one slot is no limit; the per-channel message history, which is what needs sharding,
uses one ``{ch:<name>}`` tag per channel (``logplexd/cluster``). On Redis Cluster
(``redis+cluster://``) every command below therefore goes to the one master of the
``{cfg}`` slot; coredis follows MOVED/ASK when that slot moves, and after a lost connection
(a failed master) a new client is built from the seed nodes (see ``maintain``)::

    P:{cfg}:channels       hash  name     -> msgpack [label, flags(, overflow mode if set)]
    P:{cfg}:tokens         hash  token id -> msgpack [channel, name, creation seq]
    P:{cfg}:drains         hash  drain id -> msgpack [channel, drain token, url or nil]
    P:{cfg}:creds          hash  cred id  -> msgpack [password hash, permissions, name]
    P:{cfg}:sessions       hash  uuid     -> msgpack [body, expires at (unix time)]
    P:{cfg}:accounts       hash  account id -> msgpack [email, API token hash, created_at,
                                 updated_at]                       (Platform API accounts)
    P:{cfg}:apps           hash  app id   -> msgpack map (``App.to_record``: name, channel,
                                 owner, region, stack, maintenance, timestamps)
    P:{cfg}:drain_meta     hash  drain id -> msgpack [app id, created_at, updated_at]
    P:{cfg}:channel_index  string  the v2 channel id counter (as Logplex's channel_index)
    P:{cfg}:drain_index    string  the drain id counter (drain_index)
    P:{cfg}:token_index    string  creation sequence of tokens (tokens_of keeps that order)
    P:{cfg}:changes        stream  one entry per change: ops (msgpack), node, rid
    P:{cfg}:version        string  id of the last change entry

Writes are optimistic: a node validates a change against its in-memory copy exactly as the
embedded store does and sends the resulting operations to a Lua script, which applies them
and appends the change entry only if ``version`` still equals the last entry the node has
applied. Otherwise the node reads the entries it missed, validates again and retries. So all
writes are serialised by Redis, and validation (drain limits, duplicate destinations, names
taken) never sees stale state. A write returns once the script has run: the change is in
Redis (2xx means stored), and the writer's own events are published at once.

Every node reads the change stream with a blocking XREAD and applies the entries to memory,
publishing the same events as the embedded store. At start and after every reconnection it
rebuilds memory from the hashes (HSCAN) plus the stream entries after the version it read
first, then publishes the difference between the old and new memory as events.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from ._redis_client import DEFAULT_PREFIX, open_target, parse_redis_url
from ._state import CHANNEL_COUNTER, DRAIN_COUNTER, Op, Plan, State, T, difference
from .base import Store
from .model import (
    Account,
    App,
    ChannelRecord,
    CredentialRecord,
    DrainMeta,
    DrainRecord,
    SessionRecord,
    StoreError,
    StoreUnavailable,
    TokenRecord,
)

if TYPE_CHECKING:
    from ._redis_client import Client

log = logging.getLogger("logplexd.store")

# Change entries kept in the stream (approximate trimming: cheaper, and a node only needs
# the entries since its last read, normally a handful).
CHANGES_MAXLEN = 100_000
# A write that Redis has not answered within this is reported as unavailable (503). It may
# still have been applied; the change stream then brings it to every node all the same.
WRITE_TIMEOUT = 5.0
# Writes retried after losing the optimistic race this often before giving up.
MAX_ATTEMPTS = 64
# How long one blocking XREAD waits: bounds how late a node notices a silent Redis.
READ_BLOCK_MS = 1000
READ_BATCH = 1000
SCAN_COUNT = 5000
CONNECT_TIMEOUT = 2.0
# Reconnection backoff: doubles from the first value up to the cap.
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 2.0

_HASHES = ("channels", "tokens", "drains", "creds", "sessions", "accounts", "apps", "drain_meta")
_COUNTER_KEYS = {CHANNEL_COUNTER: "channel_index", DRAIN_COUNTER: "drain_index"}

# KEYS: 1 version, 2 changes, 3 token_index, 4.. the hashes and counters named in mutations.
# ARGV: 1 expected version, 2 node id, 3 packed ops, 4 stream maxlen, 5 request id, then
# groups of (command, key index, field, value): H = HSET, X = HDEL, M = counter max,
# T = HSET of a token with its creation sequence appended.
_COMMIT_LUA = """
local current = redis.call('GET', KEYS[1]) or '0-0'
if current ~= ARGV[1] then
  return {0, current}
end
local i = 6
while i <= #ARGV do
  local cmd, key, field, value = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]
  if cmd == 'H' then
    redis.call('HSET', key, field, value)
  elseif cmd == 'X' then
    redis.call('HDEL', key, field)
  elseif cmd == 'M' then
    local old = tonumber(redis.call('GET', key) or '0')
    if tonumber(value) > old then
      redis.call('SET', key, value)
    end
  elseif cmd == 'T' then
    local record = cmsgpack.unpack(value)
    record[3] = redis.call('INCR', KEYS[3])
    redis.call('HSET', key, field, cmsgpack.pack(record))
  else
    return redis.error_reply('unknown mutation ' .. cmd)
  end
  i = i + 4
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
  'ops', ARGV[3], 'node', ARGV[2], 'rid', ARGV[5])
redis.call('SET', KEYS[1], id)
return {1, id}
"""


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(payload: bytes | str) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _redis_errors() -> tuple[type[BaseException], ...]:
    import coredis.exceptions

    return (coredis.exceptions.RedisError, OSError, trio.TooSlowError)


class _Lost(Exception):
    """Redis did not answer; the reader reconnects and rebuilds."""


class RedisStore(Store):
    """Configuration in Redis; needs ``maintain`` running (it owns the connection)."""

    def __init__(
        self,
        url: str,
        *,
        node_id: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        super().__init__(clock)
        self.url = url
        self._target = parse_redis_url(url)
        self.node_id = node_id or f"pid-{uuid.uuid4().hex[:8]}"
        self._write_timeout = write_timeout
        tag = f"{prefix}:{{cfg}}:"
        self._key_version = tag + "version"
        self._key_changes = tag + "changes"
        self._key_token_index = tag + "token_index"
        self._key_sweep = tag + "session_sweep"
        self._keys: dict[str, str] = {name: tag + name for name in _HASHES}
        self._keys.update({c: tag + k for c, k in _COUNTER_KEYS.items()})
        self._applied = "0-0"
        self._failure: str | None = "Redis not reached yet"
        self._closed = False
        self._client: Client | None = None
        self._script: Any = None
        self._write_lock = trio.Lock()
        # Request ids of writes in flight, and those of them seen in the change stream: a
        # write whose reply was lost but which did reach Redis counts as done.
        self._in_flight: dict[str, bool] = {}
        # Set when Redis comes (back), so that waiting code (tests, health) can tell.
        self.connected = trio.Event()
        self.rebuilds = 0
        # Set once the first load from Redis is done and published: every channel there is
        # is then known to the subscribers.
        self.loaded = trio.Event()
        self._backoff = BACKOFF_FIRST

    @property
    def failure(self) -> str | None:
        if self._closed:
            return "store is closed"
        return self._failure

    @property
    def applied_version(self) -> str:
        """Id of the last change entry applied to memory."""
        return self._applied

    # -- the optimistic commit -------------------------------------------------------------------
    def _check_writable(self) -> None:
        failure = self.failure
        if failure is not None:
            raise StoreUnavailable(failure)

    # Each write is a plan (see ``_state``): it runs again after the node has caught up
    # with changes it lost the race against.
    async def _write(self, plan: Plan[T]) -> T:
        self._check_writable()
        errors = _redis_errors()
        # As in the embedded store, a write whose request is cancelled still completes (it
        # may already be in Redis); it is bounded by the write timeout instead.
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(self._write_timeout):
                    async with self._write_lock:
                        result = await self._write_locked(plan)
            except _Lost as exc:
                raise StoreUnavailable(f"Redis unreachable: {exc}") from None
            except errors as exc:
                raise StoreUnavailable(f"Redis unreachable: {_describe(exc)}") from None
        return result

    async def _write_locked(self, plan: Plan[T]) -> T:
        rid = uuid.uuid4().hex
        self._in_flight[rid] = False
        try:
            for _ in range(MAX_ATTEMPTS):
                self._check_writable()
                ops, finish = plan()
                if not ops:
                    return finish()
                try:
                    payload = _pack(ops)
                except (TypeError, ValueError, OverflowError) as exc:
                    raise StoreError(f"value cannot be stored: {type(exc).__name__}") from None
                client = self._require_client()
                keys, args = self._mutations(ops)
                expected = self._applied
                reply = await self._script(
                    keys=keys,
                    args=[expected, self.node_id, payload, CHANGES_MAXLEN, rid, *args],
                    client=client,
                )
                ok, entry_id = int(reply[0]), _text(reply[1])
                if ok:
                    self._apply_entry(entry_id, ops)
                    return finish()
                if _stream_id(entry_id) < _stream_id(expected):
                    raise self._went_back(entry_id, expected)
                # Another node wrote first: read what we missed, then plan again.
                await self._catch_up()
                if self._in_flight[rid]:
                    return finish()
            raise StoreUnavailable("too many concurrent writers; try again")
        finally:
            del self._in_flight[rid]

    def _mutations(self, ops: list[Op]) -> tuple[list[str], list[Any]]:
        keys = [self._key_version, self._key_changes, self._key_token_index]
        index: dict[str, int] = {}

        def key(name: str) -> int:
            if name not in index:
                keys.append(self._keys[name])
                index[name] = len(keys)
            return index[name]

        args: list[Any] = []
        for op in ops:
            code = op[0]
            if code == "C":
                # The overflow mode (op[4]) only when set: older records have none.
                args += ["H", key("channels"), op[1], _pack([op[2], list(op[3]), *op[4:5]])]
            elif code == "c":
                args += ["X", key("channels"), op[1], ""]
            elif code == "T":
                args += ["T", key("tokens"), op[1], _pack([op[2], op[3]])]
            elif code == "t":
                args += ["X", key("tokens"), op[1], ""]
            elif code == "D":
                args += ["H", key("drains"), str(op[1]), _pack([op[2], op[3], op[4]])]
            elif code == "d":
                args += ["X", key("drains"), str(op[1]), ""]
            elif code == "K":
                args += ["H", key("creds"), op[1], _pack([op[2], op[3], op[4]])]
            elif code == "k":
                args += ["X", key("creds"), op[1], ""]
            elif code == "S":
                args += ["H", key("sessions"), op[1], _pack([op[2], op[3]])]
            elif code == "s":
                args += ["X", key("sessions"), op[1], ""]
            elif code == "N":
                args += ["M", key(op[1]), "", str(op[2])]
            elif code == "A":
                args += ["H", key("accounts"), op[1], _pack(op[2:6])]
            elif code == "a":
                args += ["X", key("accounts"), op[1], ""]
            elif code == "P":
                args += ["H", key("apps"), op[1]["id"], _pack(op[1])]
            elif code == "p":
                args += ["X", key("apps"), op[1], ""]
            elif code == "R":
                args += ["H", key("drain_meta"), str(op[1]), _pack(op[2:5])]
            elif code == "r":
                args += ["X", key("drain_meta"), str(op[1]), ""]
            else:  # pragma: no cover - the plans above only make these
                raise AssertionError(f"unknown operation {code!r}")
        return keys, args

    # -- applying change entries ---------------------------------------------------------------
    def _apply_entry(self, entry_id: str, ops: list[Op], rid: str | None = None) -> None:
        """Apply one change entry to memory and publish its events, once, in stream order."""
        if _stream_id(entry_id) <= _stream_id(self._applied):
            return
        self._applied = entry_id
        if rid is not None and rid in self._in_flight:
            self._in_flight[rid] = True
        self._publish(self._state.apply_all(ops, self._clock()))

    def _apply_stream_entries(self, entries: Sequence[Any]) -> None:
        for entry in entries:
            fields = entry.field_values
            rid = fields.get(b"rid")
            self._apply_entry(
                _text(entry.identifier),
                _unpack(fields[b"ops"]),
                _text(rid) if rid is not None else None,
            )

    async def refresh(self) -> None:
        """Apply the change entries this node has not read yet, now: a record another node
        or ``logplexd accounts create`` stored a moment ago is then known here (an unknown
        API token is looked up again after this). Quietly nothing while Redis is away."""
        if self.failure is not None or self._client is None:
            return
        errors: tuple[type[BaseException], ...] = (_Lost, *_redis_errors())
        with trio.move_on_after(self._write_timeout):
            async with self._write_lock:
                try:
                    await self._catch_up()
                except errors as exc:
                    log.debug("store: refresh failed: %s", _describe(exc))

    async def _catch_up(self) -> None:
        client = self._require_client()
        while True:
            entries = await client.xrange(
                self._key_changes, f"({self._applied}", "+", count=READ_BATCH
            )
            self._apply_stream_entries(entries)
            if len(entries) < READ_BATCH:
                return

    # -- rebuilding memory from Redis ------------------------------------------------------------
    async def rebuild(self) -> None:
        """Read the whole configuration from Redis, replace memory, publish the difference."""
        # Writes wait meanwhile: one committed during the scan would otherwise be applied
        # to the memory about to be replaced.
        async with self._write_lock:
            await self._rebuild_locked()

    async def _rebuild_locked(self) -> None:
        client = self._require_client()
        started = time.monotonic()
        now = self._clock()
        version = _text(await client.get(self._key_version) or b"0-0")
        state = State()
        for counter in (CHANNEL_COUNTER, DRAIN_COUNTER):
            value = await client.get(self._keys[counter])
            state.counters[counter] = int(value) if value else 0
        tokens: list[tuple[int, TokenRecord]] = []
        drains: list[DrainRecord] = []
        # Page by page, each page decoded in a plain loop (the client's hscan_iter takes an
        # async step per field: 3.1 -> 2.9 s for 100,000 channels, bench_nodes store load).
        async for page in _hash_pages(client, self._keys["channels"]):
            for field, value in page.items():
                label, flags, *rest = _unpack(value)
                name = field.decode()
                overflow = rest[0] if rest else None
                state.channels[name] = ChannelRecord(name, label, tuple(flags), overflow)
        async for page in _hash_pages(client, self._keys["tokens"]):
            for field, value in page.items():
                channel, name, seq = _unpack(value)
                tokens.append((seq, TokenRecord(field.decode(), channel, name)))
        async for page in _hash_pages(client, self._keys["drains"]):
            for field, value in page.items():
                channel, token, url = _unpack(value)
                drains.append(DrainRecord(int(field), channel, token, url))
        async for page in _hash_pages(client, self._keys["creds"]):
            for field, value in page.items():
                password_hash, permissions, name = _unpack(value)
                cred_id = field.decode()
                state.credentials[cred_id] = CredentialRecord(
                    cred_id, password_hash, tuple(permissions), name
                )
        async for page in _hash_pages(client, self._keys["sessions"]):
            for field, value in page.items():
                body, expires_at = _unpack(value)
                if expires_at > now:
                    session_id = field.decode()
                    state.sessions[session_id] = SessionRecord(session_id, body, expires_at)
        async for page in _hash_pages(client, self._keys["accounts"]):
            for field, value in page.items():
                email, token_hash, created_at, updated_at = _unpack(value)
                state.put_account(
                    Account(field.decode(), email, token_hash, created_at, updated_at)
                )
        async for page in _hash_pages(client, self._keys["apps"]):
            for value in page.values():
                state.put_app(App.from_record(_unpack(value)))
        async for page in _hash_pages(client, self._keys["drain_meta"]):
            for field, value in page.items():
                app_id, created_at, updated_at = _unpack(value)
                state.drain_meta[int(field)] = DrainMeta(int(field), app_id, created_at, updated_at)
        tokens.sort(key=lambda pair: pair[0])
        for _, token in tokens:
            state.put_token(token)
        for drain in sorted(drains, key=lambda d: d.id):
            state.put_drain(drain)
        # Changes made while scanning may or may not be in what was read: replaying every
        # entry after the version read first settles each key they touched (each operation
        # sets or deletes one key, so replaying one already seen changes nothing).
        applied = version
        while True:
            entries = await client.xrange(self._key_changes, f"({applied}", "+", count=READ_BATCH)
            for entry in entries:
                for op in _unpack(entry.field_values[b"ops"]):
                    state.apply(op, now)
                applied = _text(entry.identifier)
            if len(entries) < READ_BATCH:
                break
        old, self._state = self._state, state
        self._applied = applied
        self.rebuilds += 1
        events = difference(old, state)
        log.info(
            "store: loaded from Redis %s: %d channels, %d tokens, %d drains, %d apps in %.3f s"
            " (%d change events)",
            self._target_text(),
            len(state.channels),
            len(state.tokens),
            len(state.drains),
            len(state.apps),
            time.monotonic() - started,
            len(events),
        )
        self._publish(events)
        self.loaded.set()

    # -- the background task ---------------------------------------------------------------------
    def _target_text(self) -> str:
        return self._target.describe()

    def _require_client(self) -> Client:
        if self._client is None:
            raise _Lost("store is not running")
        return self._client

    def _new_client(self) -> Client:
        from coredis.retry import NoRetryPolicy

        return open_target(
            self._target,
            connect_timeout=CONNECT_TIMEOUT,
            stream_timeout=READ_BLOCK_MS / 1000 + self._write_timeout,
            decode_responses=False,
            client_name=f"logplexd:{self.node_id}",
            # A lost connection must surface: the Redis behind it may be a new one (restarted
            # without its data, failed over), after which memory is rebuilt, never trusted.
            retry_policy=NoRetryPolicy(),
        )

    async def maintain(
        self, *, interval: float = 60.0, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the Redis connection: load, then follow the change stream; run forever.

        Reports started once the first load is done, or once it has failed (then it keeps
        retrying with capped backoff, and writes fail with StoreUnavailable meanwhile).
        """
        started = False

        def report_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        self._backoff = BACKOFF_FIRST
        while True:
            # One client per turn: a cluster client is replaced after a lost connection,
            # because coredis refreshes its slot map only after many errors it sees itself
            # (a failed-over master would be retried for ever); a new client reads the map
            # from the seed nodes. A single Redis keeps its client (it reconnects by itself).
            async with contextlib.AsyncExitStack() as stack:
                client = await self._open_client(stack, report_started)
                self._client = client
                self._script = client.register_script(_COMMIT_LUA)
                try:
                    async with trio.open_nursery() as nursery:
                        await self._connect_once()
                        report_started()
                        nursery.start_soon(self._sweep_sessions, interval)
                        await self._follow()
                        nursery.cancel_scope.cancel()
                finally:
                    self._client = None
                    self._script = None

    async def _pause(self) -> None:
        """Wait before the next attempt to reach Redis: doubling, capped."""
        await trio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, BACKOFF_CAP)

    async def _open_client(
        self, stack: contextlib.AsyncExitStack, report_started: Callable[[], None]
    ) -> Client:
        """A client whose pool is initialised, retrying with capped backoff until one is.

        A single Redis connects lazily, so this returns at once; a cluster client reads the
        cluster layout (CLUSTER SLOTS) on entry and fails there when no seed node answers.
        """
        while True:
            client = self._new_client()
            try:
                # No deadline of ours around the entry: the client opens a task group there
                # that must close in the same scope; its connect_timeout bounds the wait.
                await stack.enter_async_context(client)
            except _redis_errors() as exc:
                self._lost(exc)
                report_started()
                await self._pause()
                continue
            return client

    async def _connect_once(self) -> bool:
        try:
            with trio.fail_after(CONNECT_TIMEOUT + self._write_timeout):
                await self.rebuild()
        except (_Lost, StoreError) as exc:
            self._lost(exc)
            return False
        except _redis_errors() as exc:
            self._lost(exc)
            return False
        if self._failure is not None:
            log.info("store: Redis %s reached (node %s)", self._target_text(), self.node_id)
        self._failure = None
        self._backoff = BACKOFF_FIRST
        self.connected.set()
        return True

    def _lost(self, exc: BaseException) -> None:
        how = "" if isinstance(exc, _Lost) else " unreachable"
        reason = f"Redis {self._target_text()}{how}: {_describe(exc)}"
        if self._failure is None or self._failure == "Redis not reached yet":
            log.error("store: %s; reconnecting, control API writes answer 503", reason)
        self._failure = reason
        if self.connected.is_set():
            self.connected = trio.Event()

    async def _follow(self) -> None:
        """Apply the change stream as it grows; return when the client must be replaced."""
        errors = _redis_errors()
        while True:
            if self._failure is not None:
                await self._pause()
                if self._target.cluster:
                    return
                if await self._connect_once():
                    self._backoff = BACKOFF_FIRST
                continue
            client = self._require_client()
            applied = self._applied
            try:
                with trio.fail_after(READ_BLOCK_MS / 1000 + self._write_timeout):
                    found = await client.xread(
                        {self._key_changes: applied},
                        count=READ_BATCH,
                        block=READ_BLOCK_MS,
                    )
                    # Far behind: the stream is trimmed to CHANGES_MAXLEN entries, so check
                    # that the last entry applied is still there (no entries cut out between).
                    entries = [e for batch in (found or {}).values() for e in batch]
                    behind = (
                        len(entries) >= READ_BATCH
                        and applied != "0-0"
                        and not await client.xrange(self._key_changes, applied, applied)
                    )
            except errors as exc:
                self._lost(exc)
                continue
            if behind:
                self._lost(_Lost("fell behind the trimmed change stream"))
                continue
            if entries:
                self._apply_stream_entries(entries)
                continue
            # Quiet for a whole read: check that this is still the Redis we loaded from.
            # (Every change applied here was in Redis before the GET is sent, so a lower
            # version can only mean lost data; compare with what was applied at sending.)
            applied = self._applied
            try:
                with trio.fail_after(self._write_timeout):
                    version = _text(await client.get(self._key_version) or b"0-0")
            except errors as exc:
                self._lost(exc)
                continue
            if _stream_id(version) < _stream_id(applied):
                self._went_back(version, applied)

    def _went_back(self, version: str, applied: str) -> _Lost:
        """Redis has fewer changes than this node applied: it lost data. Rebuild from it."""
        lost = _Lost(f"Redis is at change {version}, behind {applied}: it lost data")
        self._lost(lost)
        return lost

    async def _sweep_sessions(self, interval: float) -> None:
        """Delete expired sessions from Redis; one node per interval does it (a lease)."""
        errors: tuple[type[BaseException], ...] = (_Lost, StoreError, *_redis_errors())
        while True:
            await trio.sleep(interval)
            self.expire_sessions()
            try:
                client = self._require_client()
                if self._failure is None and await client.set(
                    self._key_sweep, self.node_id, px=max(1, int(interval * 900)), condition=_nx()
                ):
                    await self.sweep_expired_sessions()
            except errors as exc:
                log.warning("store: session sweep failed: %s", _describe(exc))

    async def sweep_expired_sessions(self) -> int:
        """Remove the sessions that have expired from Redis (and every node's memory)."""
        now = self._clock()

        def plan() -> tuple[list[Op], Callable[[], int]]:
            expired = [s.id for s in self._state.sessions.values() if s.expires_at <= now]
            return [["s", session_id] for session_id in expired], lambda: len(expired)

        return await self._write(plan)

    async def compact(self) -> None:
        """Nothing to compact: Redis persists (RDB/AOF) on its own."""

    def close(self) -> None:
        """Refuse further writes; the connection closes when ``maintain`` is cancelled."""
        self._closed = True


async def _hash_pages(client: Client, key: str) -> AsyncIterator[Mapping[bytes, bytes]]:
    """The fields of hash ``key``, one HSCAN page (about SCAN_COUNT fields) at a time.

    HSCAN rather than HGETALL: one call never blocks Redis for long on a big hash. A field
    may come twice (the hash was resized meanwhile); every use above is idempotent."""
    cursor = 0
    while True:
        cursor, page = await client.hscan(key, cursor, count=SCAN_COUNT)
        assert isinstance(page, dict)  # not the NOVALUES form
        yield page
        if not cursor:
            return


def _nx() -> Any:
    from coredis.tokens import PureToken

    return PureToken.NX


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    return str(exc) or type(exc).__name__
