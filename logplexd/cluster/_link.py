"""The data plane's link to Redis: one client, whether Redis answers, round trips counted.

``Connection`` holds the client while the plane runs, and beside it the plane's own
connections for its frequent calls (``_direct``: scripts, the one-Redis follower's read);
it calls scripts by SHA1 (loading them where a server lost them), counts every round trip
by what it was for (``TRIP_KINDS``) and runs the probe.

Faults. Every failed Redis call marks the plane unreachable (``Link.failure``; the health
checks answer 503) with one log line per change of state, and the tasks retry with capped
backoff (``Backoff``), which a probe reaching Redis again ends at once. The outbound buffer
keeps accepting (and dropping the oldest, counted) meanwhile; reads of history fall back to
the local rings.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ..native import RespError
from ..store import open_redis, parse_redis_url
from ._direct import Address, CongestionControl, DirectLinks, RespUnreachable, parse_address
from ._stream import CLUSTER_SLOTS, SCRIPTS, Keys, Script, ScriptCall, StreamEntry, slot_of

if TYPE_CHECKING:
    from ..store import RedisClient

log = logging.getLogger("logplexd.cluster")

# A blocking XREAD (the followers' read on one Redis) waits this long; the client's stream
# timeout allows for it. It names every followed stream: idle, each read costs the node and
# Redis in proportion to the channels, and at 250 ms a node following 10,000 idle channels
# spent 8.8 % of a core on them and its Redis 4.7 %. A read ends at once when an entry
# lands, and is ended early for a follow it does not name (``Followers._unblocker``).
READ_BLOCK_MS = 2000
CONNECT_TIMEOUT = 2.0
# Any call Redis has not answered within this (beyond its own blocking time) counts as lost.
CALL_TIMEOUT = 5.0
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 2.0
# The slot map is searched for each node's lowest slot (its beacon's) at most this often.
BEACON_MAP_INTERVAL = 1.0
# Without traffic the link is still checked this often (health must notice a dead Redis),
# and a PING unanswered this long means Redis is unreachable (a silent partition too).
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 1.0
# How long the hooks run at shutdown may take (leases handed back) before the client closes.
CLOSE_GRACE = 1.0

# What round trips are counted under (``DataPlane.trips``, the metric
# ``logplexd_redis_round_trips_total{kind}``): stream writes, stream reads by followers,
# history reads for requests, drain leases, drain checkpoints, the health probe, and the
# rest (a stream's top when a follow starts, deletes, lease releases, script loads).
TRIP_KINDS = ("write", "follow", "history", "lease", "checkpoint", "probe", "other")

# Error replies that mean "not on this server" (a slot that moved, or is moving): the call
# goes again through the client, which follows the redirection and learns the new slot map.
REDIRECTIONS = frozenset({"MOVED", "ASK", "TRYAGAIN"})


def _owner(layout: Any, slot: int) -> str | None:
    """The name of the node serving ``slot`` in a cluster client's slot map (None: none)."""
    try:
        return str(layout.node_for_slot(slot).name)
    except Exception:  # a slot no node serves, or a map in flux
        return None


def _executed(result: Any, count: int) -> list[Any]:
    """The replies of a MULTI's ``count`` commands from its EXEC's ``result``; raises the
    error of a transaction Redis refused whole."""
    if isinstance(result, RespError):
        raise result
    if not isinstance(result, list) or len(result) != count:
        raise RespError(f"ERR MULTI answered {result!r}")
    return result


def redis_errors() -> tuple[type[BaseException], ...]:
    import coredis.exceptions

    return (coredis.exceptions.RedisError, RespError, OSError, trio.TooSlowError)


def error_replies() -> tuple[type[BaseException], ...]:
    """The errors that are Redis's answer to a call (not a lost connection): the same call
    sent again gets the same answer."""
    import coredis.exceptions

    return (coredis.exceptions.ResponseError, RespError)


def _no_script(result: Any) -> bool:
    """Whether a script call's result says the server does not know the script."""
    if isinstance(result, RespError):
        return result.kind == "NOSCRIPT"
    if not isinstance(result, BaseException):
        return False
    import coredis.exceptions

    return isinstance(result, coredis.exceptions.NoScriptError)


def describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


class Link:
    """Is Redis reachable? Failures are kept per source (the probe, the writer, each read
    lane, the leases), so on a Redis Cluster one shard down keeps the plane failing even
    while other shards answer the probe. One log line per change of the overall state.
    """

    START = "Redis not reached yet"

    def __init__(self, where: str) -> None:
        self.where = where
        self._failures: dict[str, str] = {"start": self.START}
        # The first failure still standing (None: Redis answers), kept up to date by ``ok``
        # and ``lost``: routing asks for it with every batch.
        self.failure: str | None = self.START
        self.changes = 0
        # Set while the probe reaches Redis: tasks backing off retry at once when it does.
        self.reached = trio.Event()

    def ok(self, source: str) -> None:
        if source == "probe":
            self._failures.pop("start", None)
            if not self.reached.is_set():
                self.reached.set()
        was = self._failures.pop(source, None)
        self.failure = next(iter(self._failures.values()), None)
        if was is not None and self.failure is None:
            log.info("data plane: Redis %s reached; history and drains follow it", self.where)
            self.changes += 1

    def lost(self, exc: BaseException, source: str) -> None:
        reason = f"Redis {self.where} unreachable: {describe(exc)}"
        if source == "probe" and self.reached.is_set():
            self.reached = trio.Event()
        healthy = not self._failures or list(self._failures) == ["start"]
        self._failures[source] = reason
        self.failure = next(iter(self._failures.values()))
        if healthy:
            log.error(
                "data plane: %s; buffering ingested messages, history from local rings", reason
            )
            self.changes += 1


@dataclass(slots=True)
class Backoff:
    first: float = BACKOFF_FIRST
    cap: float = BACKOFF_CAP
    current: float = BACKOFF_FIRST

    def next(self) -> float:
        value = self.current
        self.current = min(self.current * 2, self.cap)
        return value

    def reset(self) -> None:
        self.current = self.first


class Connection:
    """The Redis client of the data plane (while ``connected``), and what every task of the
    plane does with it: count round trips, call scripts, back off, probe."""

    def __init__(self, url: str, *, node_id: str, keys: Keys, tcp_congestion: str = "") -> None:
        self.url = url
        self._congestion = CongestionControl(tcp_congestion)
        self.target = parse_redis_url(url)
        self.cluster = self.target.cluster
        self.node_id = node_id
        self.keys = keys
        self.link = Link(self.target.describe())
        self._client: RedisClient | None = None
        # The plane's own connections for its frequent calls (``_direct``), while connected,
        # and how many such connections the ones before opened.
        self._direct: DirectLinks | None = None
        self._opened_before = 0
        # Round trips to Redis by what they were for (``TRIP_KINDS``): one request and its
        # reply, or one pipeline, per Redis server it went to. Metrics, tests and the
        # benchmark's round trips per 1,000 messages read them.
        self.trips: dict[str, int] = dict.fromkeys(TRIP_KINDS, 0)
        # Channels whose part of a per-shard call was refused (on a cluster: a slot that
        # moved): called alone, routed by their own key, until a call of theirs succeeds.
        self._alone: set[str] = set()
        # Each cluster node's lowest slot, where its beacon lies (``beacon``).
        self._beacon_slots: dict[str, int] = {}
        self._beacon_map_at = -float("inf")

    @property
    def client(self) -> RedisClient:
        if self._client is None:
            raise trio.TooSlowError()  # not running: callers treat it as unreachable
        return self._client

    # -- round trips ----------------------------------------------------------------------------
    def count_trip(self, kind: str, servers: int = 1) -> None:
        self.trips[kind] += servers

    def servers_of(self, channels: Iterable[str]) -> int:
        """How many Redis servers a pipeline naming these channels' keys goes to."""
        return self.servers_of_keys(self.keys.tag(channel) for channel in channels)

    def servers_of_keys(self, keys: Iterable[str]) -> int:
        """How many Redis servers a pipeline naming these keys goes to."""
        if not self.cluster:
            return 1
        layout = self._layout()
        if layout is None:
            return 1
        # A slot map in flux counts what it can: counting must never fail the call it counts.
        names = {_owner(layout, slot_of(key)) for key in keys} - {None}
        return max(1, len(names))

    async def call_scripts(
        self, calls: Sequence[ScriptCall], kind: str, channels: Sequence[str]
    ) -> list[Any]:
        """Run script calls in one pipeline by SHA1 and return their replies in order.

        ``channels[i]`` is the channel whose keys call ``i`` names (to count servers). A
        server that does not know a script (restarted, a new shard, ``SCRIPT FLUSH``)
        answers NOSCRIPT to those calls and nothing else happened for them: the scripts are
        loaded (``SCRIPT LOAD`` goes to every server) and just those calls are sent again,
        in their order. Any other error reply is raised (after the pipeline ran whole).
        """
        results = await self._evalsha(calls, kind, channels)
        missing = [i for i, r in enumerate(results) if _no_script(r)]
        if missing:
            for script in {calls[i][0].sha: calls[i][0] for i in missing}.values():
                await self.client.script_load(script.text)
                self.count_trip("other")
            again = await self._evalsha(
                [calls[i] for i in missing], kind, [channels[i] for i in missing]
            )
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def _layout(self) -> Any:
        """The cluster client's slot map (None: not known now)."""
        try:
            return self.client.connection_pool.cluster_layout  # type: ignore[union-attr]
        except Exception:  # not connected
            return None

    def shard_of(self, channel: str, layout: Any = None) -> str | None:
        """The name of the cluster node serving ``channel``'s keys (None: one Redis, or
        not known now)."""
        layout = layout if layout is not None else self._layout()
        if not self.cluster or layout is None:
            return None
        return _owner(layout, slot_of(self.keys.tag(channel)))

    def shards(self, channels: Iterable[str]) -> dict[str | None, list[str]]:
        """``channels`` by the cluster node serving them; under None the ones called alone
        (routed by their own key, so a redirection reaches the client and its slot map): a
        shard not known, or a part of a per-shard call refused. One Redis: all under None."""
        if not self.cluster:
            return {None: list(channels)}
        layout = self._layout()
        by_node: dict[str | None, list[str]] = {}
        for channel in channels:
            node = None if channel in self._alone else self.shard_of(channel, layout)
            by_node.setdefault(node, []).append(channel)
        return by_node

    def groups(self, channels: Iterable[str]) -> list[list[str]]:
        """Channels served by one script call each (``call_per_shard``): all of them on one
        Redis; per shard on a cluster, and alone those ``shards`` puts under None."""
        if not self.cluster:
            return [list(channels)]
        return [
            group
            for node, names in self.shards(channels).items()
            for group in ([[c] for c in names] if node is None else [names])
        ]

    def beacon(self, node: str | None) -> str | None:
        """The key of ``node``'s change counter (``Keys.beacon``: in the lowest slot it
        serves), None on one Redis or when the slot map does not say."""
        if not self.cluster or node is None:
            return None
        layout = self._layout()
        if layout is None:
            return None
        slot = self._beacon_slots.get(node)
        if slot is None or _owner(layout, slot) != node:
            # The map changed (or is new): find each node's lowest slot again, at most
            # once a second (a map in flux, or one with slots no node serves).
            now = time.monotonic()
            if now - self._beacon_map_at < BEACON_MAP_INTERVAL:
                return None  # meanwhile the shard has no beacon: its follows are polled
            self._beacon_map_at = now
            slots: dict[str, int] = {}
            for s in range(CLUSTER_SLOTS):
                owner = _owner(layout, s)
                if owner is not None:
                    slots.setdefault(owner, s)
            self._beacon_slots = slots
            slot = slots.get(node)
        return None if slot is None else self.keys.beacon(slot)

    async def call_per_shard(
        self,
        script: Script,
        head: Sequence[Any],
        parts: dict[str, list[Any]],
        kind: str,
        *,
        beacon: bool = False,
    ) -> dict[str, Any]:
        """Call ``script`` once per group of channels (``groups``: once in all on one
        Redis, once per shard on a cluster), whatever the number of channels; one pipeline.

        Its ARGV: ``head``, with ``beacon`` then the group's shard's beacon key ('' none),
        the number of channels, then each channel's ``parts`` in turn. KEYS[1] only routes
        the call (a key of the group's first channel): the scripts name every channel's
        keys in ARGV and run with ``allow-cross-slot-keys``. The script returns one reply
        per channel, in order; returns them by channel.
        """
        groups = self.groups(parts)
        calls: list[ScriptCall] = []
        for group in groups:
            args = [*head]
            if beacon:
                args.append(self.beacon(self.shard_of(group[0])) or "")
            args.append(len(group))
            for channel in group:
                args.extend(parts[channel])
            calls.append((script, [self.keys.tag(group[0]) + "log"], args))
        results = await self.call_scripts(calls, kind, [group[0] for group in groups])
        replies: dict[str, Any] = {}
        for group, result in zip(groups, results, strict=True):
            replies.update(zip(group, result, strict=True))
        return replies

    def refused(self, channel: str) -> None:
        """Part of a per-shard call was refused for ``channel``: call it alone next time."""
        if self.cluster:
            self._alone.add(channel)

    def accepted(self, channel: str) -> None:
        self._alone.discard(channel)

    def address_of(self, key: str, layout: Any = None) -> Address | None:
        """The server holding ``key``: the one Redis, or the cluster node the client's slot
        map names for its slot (None: not known now)."""
        if not self.cluster:
            return self.target.nodes[0]
        layout = layout if layout is not None else self._layout()
        if layout is None:
            return None
        name = _owner(layout, slot_of(key))
        return None if name is None else parse_address(name)

    async def _evalsha(
        self, calls: Sequence[ScriptCall], kind: str, channels: Sequence[str]
    ) -> list[Any]:
        """Script calls over the plane's own connections (``_direct``), one pipeline per
        server, the servers at once; through the client those whose server is not known,
        is not reached (nothing was sent), or redirected them."""
        direct = self._direct
        if direct is None:
            return await self._evalsha_client(calls, kind, channels)
        layout = self._layout() if self.cluster else None
        by_address: dict[Address, list[int]] = {}
        via_client: list[int] = []
        for i, (_, keys, _) in enumerate(calls):
            address = self.address_of(keys[0], layout)
            if address is None:
                via_client.append(i)
            else:
                by_address.setdefault(address, []).append(i)
        results: list[Any] = [None] * len(calls)
        failures: list[Exception] = []

        async def send(address: Address, indices: list[int]) -> None:
            commands = [
                ["EVALSHA", calls[i][0].sha, len(calls[i][1]), *calls[i][1], *calls[i][2]]
                for i in indices
            ]
            try:
                replies = await direct.link(address, kind).call(commands)
            except RespUnreachable:
                direct.forget(address)
                if not self.cluster:
                    raise
                # A node that failed over: the client finds the new one (and its map).
                via_client.extend(indices)
                return
            except Exception as exc:  # one error for the caller, not a group
                failures.append(exc)
                return
            self.count_trip(kind)
            for i, reply in zip(indices, replies, strict=True):
                results[i] = reply

        if len(by_address) == 1:
            await send(*next(iter(by_address.items())))
        elif by_address:
            async with trio.open_nursery() as nursery:
                for address, indices in by_address.items():
                    nursery.start_soon(send, address, indices)
        if failures:
            raise failures[0]
        via_client.extend(
            i for i, r in enumerate(results) if isinstance(r, RespError) and r.kind in REDIRECTIONS
        )
        if via_client:
            via_client.sort()
            again = await self._evalsha_client(
                [calls[i] for i in via_client], kind, [channels[i] for i in via_client]
            )
            for i, result in zip(via_client, again, strict=True):
                results[i] = result
        return results

    async def read_streams(
        self, streams: dict[str, str], count: int, block: int | None
    ) -> dict[bytes, list[StreamEntry]]:
        """One Redis: ``XREAD`` of ``streams`` (key: id read up to), blocking ``block`` ms
        (None: not), over the plane's own connection for it; each stream's new entries."""
        direct = self._direct
        if direct is None or self.cluster:
            raise trio.TooSlowError()  # not connected (a cluster polls instead)
        args: list[Any] = ["XREAD", "COUNT", count]
        if block is not None:
            args += ["BLOCK", block]
        args += ["STREAMS", *streams, *streams.values()]
        (reply,) = await direct.link(self.target.nodes[0], "read").call([args])
        self.count_trip("follow")
        if isinstance(reply, RespError):
            raise reply
        return _stream_entries(reply)

    async def unblock_read(self) -> bool:
        """End the blocking read of ``read_streams`` in progress now (it returns as if its
        block ran out), over another connection of the plane's; whether one was ended."""
        direct = self._direct
        if direct is None or self.cluster:
            return False
        node = self.target.nodes[0]
        read = direct.link(node, "read")
        client_id = read.client_id
        if client_id is None:
            if read.connected:
                raise RespError("ERR Redis did not tell the read connection's CLIENT ID")
            return False
        (reply,) = await direct.link(node, "unblock").call([["CLIENT", "UNBLOCK", client_id]])
        self.count_trip("follow")
        if isinstance(reply, RespError):
            raise reply
        return bool(reply)

    @property
    def transactions(self) -> bool:
        """Whether ``transaction_groups`` can be called: one Redis (not a cluster: a MULTI there
        must stay in one slot), over the plane's own connection (while connected)."""
        return self._direct is not None and not self.cluster

    async def transaction_groups(
        self,
        groups: Sequence[Sequence[Sequence[Any]]],
        kind: str,
        on_group: Callable[[int, list[Any]], None],
    ) -> None:
        """One Redis: each group of commands in a MULTI/EXEC of its own, all sent in one
        write (one round trip); each group's replies go to ``on_group`` as soon as its EXEC
        is read (Redis may still be running the last groups). Raises the error of a
        transaction Redis refused whole (EXECABORT, OOM): nothing of that group ran; the
        groups before it were handed over, those after it may have run."""
        direct = self._direct
        if direct is None or self.cluster:
            raise trio.TooSlowError()  # not connected: callers treat it as unreachable

        def executed(index: int, replies: list[Any]) -> None:
            on_group(index, _executed(replies[-1], len(groups[index])))

        await direct.link(self.target.nodes[0], kind).call_parts(
            [[["MULTI"], *group, ["EXEC"]] for group in groups], executed
        )
        self.count_trip(kind)

    async def _evalsha_client(
        self, calls: Sequence[ScriptCall], kind: str, channels: Sequence[str]
    ) -> list[Any]:
        import coredis.exceptions

        async with self.client.pipeline(transaction=False, raise_on_error=False) as pipe:
            replies = [pipe.evalsha(s.sha, keys=keys, args=args) for s, keys, args in calls]
        self.count_trip(kind, self.servers_of(channels))
        results: list[Any] = []
        for reply in replies:
            try:
                results.append(await reply)
            except coredis.exceptions.RedisError as exc:
                results.append(exc)
        return results

    # -- the client ----------------------------------------------------------------------------
    def _new_client(self) -> RedisClient:
        from coredis.retry import NoRetryPolicy

        return open_redis(
            self.url,
            connect_timeout=CONNECT_TIMEOUT,
            stream_timeout=READ_BLOCK_MS / 1000 + CALL_TIMEOUT,
            decode_responses=False,
            client_name=f"logplexd-data:{self.node_id}",
            retry_policy=NoRetryPolicy(),
            # Blocking reads hold a connection each (one per followed channel on a cluster).
            max_connections=1024,
        )

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        """Hold a new client (``client``) for the body's tasks."""
        client = self._new_client()
        try:
            async with client:
                self._client = client
                self._direct = self._new_direct()
                yield
        finally:
            self._client = None
            self._close_direct()

    async def last_words(self, hooks: Sequence[Callable[[], Awaitable[None]]]) -> None:
        """Run ``hooks`` (last checkpoints, leases handed back), shielded and bounded by
        CLOSE_GRACE, over a new connection: coredis reads replies in tasks of its client,
        and those went down with the cancelled ones."""
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
            last = self._new_client()
            try:
                async with last:
                    self._client = last
                    self._direct = self._new_direct()
                    for hook in hooks:
                        await hook()
            except Exception as exc:
                log.debug("data plane: last words not sent: %s", describe(exc))
            finally:
                self._client = None
                self._close_direct()

    def _new_direct(self) -> DirectLinks:
        return DirectLinks(
            self.target, f"logplexd-data:{self.node_id}", congestion=self._congestion
        )

    def _close_direct(self) -> None:
        direct, self._direct = self._direct, None
        if direct is not None:
            self._opened_before += direct.opened
            direct.close()

    @property
    def connections_opened(self) -> int:
        """Connections opened for the plane's own calls so far (``_direct``): a number that
        keeps growing under steady traffic means connections keep breaking."""
        now = self._direct.opened if self._direct is not None else 0
        return self._opened_before + now

    def link_congestion(self) -> dict[str, int]:
        """The plane's own open TCP connections by congestion control (what
        ``redis_tcp_congestion`` took effect as)."""
        return self._direct.congestion_controls() if self._direct is not None else {}

    # -- the tasks' helpers ---------------------------------------------------------------------
    async def probe(self) -> None:
        """Notice a lost or returned Redis even when nothing else is talking to it."""
        errors = redis_errors()
        while True:
            try:
                with trio.fail_after(PROBE_TIMEOUT):
                    await self.client.ping()
                self.count_trip("probe")
                if not self.link.reached.is_set():
                    with trio.fail_after(CALL_TIMEOUT):
                        await self._load_scripts()
            except errors as exc:
                self.link.lost(exc, "probe")
            else:
                self.link.ok("probe")
            await trio.sleep(PROBE_INTERVAL if self.link.failure is None else BACKOFF_FIRST * 4)

    async def _load_scripts(self) -> None:
        for script in SCRIPTS:
            await self.client.script_load(script.text)  # to every server of a cluster
            self.count_trip("other", len(self._primaries()) if self.cluster else 1)

    def _primaries(self) -> list[Any]:
        return list(self.client.connection_pool.cluster_layout.primaries)  # type: ignore[union-attr]

    async def back_off(self, backoff: Backoff) -> None:
        """Wait out the backoff; a probe that reaches Redis (again) ends it at once."""
        delay = backoff.next()
        if self.link.reached.is_set():
            await trio.sleep(delay)
            return
        with trio.move_on_after(delay):
            await self.link.reached.wait()


def _stream_entries(reply: Any) -> dict[bytes, list[StreamEntry]]:
    """An ``XREAD`` reply (RESP2: per stream ``[key, [[id, [field, value, ...]], ...]]``; a
    null array when nothing came) by stream key."""
    found: dict[bytes, list[StreamEntry]] = {}
    for key, entries in reply or ():
        found[key] = [
            StreamEntry(entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))
            for entry_id, fields in entries
            if fields is not None
        ]
    return found
