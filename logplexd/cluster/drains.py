"""Drains across nodes: each stored drain runs on exactly one node, the lease owner.

``ClusterDrains`` stands between the store's drain events (``drain_sync``) and the local
``DrainManager``: it remembers every drain the store holds and runs (adds to the manager)
only those whose lease this node owns. The lease decisions are ``lease.Lease`` (sans-IO);
this module is the thin trio adapter: one pipeline per tick acquires or renews every
drain's lease, and one pipeline at most every ``CHECKPOINT_INTERVAL`` stores the
checkpoints of every drain that delivered meanwhile (and a last one when the node stops).

A new owner starts from the drain's checkpoint (the sequence of the last message the
previous owner delivered) by following the channel's stream from there: at-least-once,
duplicates bounded by what was delivered but not yet checkpointed (one payload per drain,
plus what the old owner delivered in its last ``CHECKPOINT_INTERVAL`` when it died without
a word). If the stream was trimmed past the checkpoint, the follower counts the gap exactly
from the stream ids and the first delivery starts with the L10 notice. A new drain starts from the
birth checkpoint written before the API answered (``birth.py``); only when that write
failed does its first owner start at the newest entry of the stream.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..drains import DrainFeed, DrainManager, InvalidDrainUrl, delivery_target
from ..store import redact_url
from ._follow import Follow
from ._history import CatchUp
from ._link import CALL_TIMEOUT, describe, redis_errors
from ._stream import CHECKPOINT_TTL_MS, Script, ScriptCall, StreamId
from .lease import DEFAULT_TTL, Command, Lease, LeaseEvent, LeaseState, renew_interval
from .plane import DataPlane

log = logging.getLogger("logplexd.drains")

# Checkpoints are stored at most this often (one pipeline for every drain that delivered):
# the bound on what a new owner delivers again after a node died without handing over.
CHECKPOINT_INTERVAL = 0.5


def _per_drain(fields: int, body: str) -> Script:
    """A script over drains of several channels, one call per shard
    (``Connection.call_per_shard``). ARGV: 1 node, 2 ttl ms, 3 channels; per channel: its
    drains d, then ``fields`` values per drain (``f[1]``...). ``body`` sets ``res[k]`` for
    drain k: 1 done, 0 not ours, -1 refused (its key is not on this shard: a slot that
    moved). Returns per channel the list of ``res``."""
    return Script(
        f"""#!lua flags=allow-cross-slot-keys
local node, ttl = ARGV[1], ARGV[2]
local out = {{}}
local i = 4
for c = 1, tonumber(ARGV[3]) do
  local res = {{}}
  local drains = tonumber(ARGV[i])
  i = i + 1
  for k = 1, drains do
    local f = {{}}
    for j = 1, {fields} do f[j] = ARGV[i + j - 1] end
    i = i + {fields}
{body}
  end
  out[c] = res
end
return out
"""
    )


# Every lease of the node's drains: per drain 'a' (acquire) or 'r' (renew) and its lease
# key. 1 acquired or renewed, 0 held by another node (not ours any more).
LEASES = _per_drain(
    2,
    """    local op, key = f[1], f[2]
    local r = false
    if op == 'a' then r = redis.pcall('SET', key, node, 'NX', 'PX', ttl) end
    if type(r) == 'table' and r.err then
      res[k] = -1
    elseif r then
      res[k] = 1
    else
      local owner = redis.pcall('GET', key)
      if type(owner) == 'table' then
        res[k] = -1
      elseif owner == node then
        redis.pcall('PEXPIRE', key, ttl)
        res[k] = 1
      else
        res[k] = 0
      end
    end""",
)
# The checkpoints of every drain that delivered: per drain its lease key, its checkpoint
# key and the sequence (ttl: the checkpoint's). Only the owner moves a checkpoint.
CHECKPOINTS = _per_drain(
    3,
    """    local owner = redis.pcall('GET', f[1])
    if type(owner) == 'table' then
      res[k] = -1
    elseif owner == node then
      local r = redis.pcall('SET', f[2], f[3], 'PX', ttl)
      if type(r) == 'table' and r.err then res[k] = -1 else res[k] = 1 end
    else
      res[k] = 0
    end""",
)
# KEYS: 1 lease. ARGV: 1 node.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
RELEASE = Script(_RELEASE_LUA)


@dataclass(slots=True)
class Wanted:
    channel: str
    token: str
    url: str
    lease: Lease
    follow: Follow | None = None
    # Last checkpoint stored, and the one to store next (None: nothing new).
    stored: int = -1
    dirty: int | None = None
    starting: bool = False


class ClusterDrains:
    """The drain half of ``drain_sync``'s interface, with leases in front of the manager."""

    def __init__(
        self,
        plane: DataPlane,
        manager: DrainManager,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.plane = plane
        self.manager = manager
        self.ttl = ttl
        self.clock = clock
        self.node_id = plane.node_id
        self.wanted: dict[int, Wanted] = {}
        self._wake = trio.Event()
        self._dirty = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.takeovers = 0
        # Hand leases back when stopping (a graceful stop moves drains at once). Tests turn
        # it off to stand for a node that died without a word.
        self.release_on_stop = True
        plane.on_loss = self.announce_loss
        plane.on_rewind = self._rewound
        plane.before_close.append(self._release_all)

    # -- the manager's interface, as drain_sync calls it ---------------------------------------
    def add_drain(self, channel_name: str, drain_id: int, token: str, url: str) -> None:
        delivery_target(url)  # refuse a bad URL here, as the manager would
        old = self.wanted.get(drain_id)
        if old is not None and old.channel != channel_name:
            self.remove_drain(drain_id)
            old = None
        if old is None:
            self.wanted[drain_id] = Wanted(channel_name, token, url, Lease(self.ttl))
        else:
            old.token, old.url = token, url
            if old.lease.owned and not old.starting:
                self.manager.update_drain(drain_id, url)
        self._wake.set()

    def update_drain(self, drain_id: int, url: str) -> bool:
        wanted = self.wanted.get(drain_id)
        if wanted is None:
            return False
        wanted.url = url
        if wanted.lease.owned and not wanted.starting:
            self.manager.update_drain(drain_id, url)
        return True

    def remove_drain(self, drain_id: int) -> bool:
        wanted = self.wanted.pop(drain_id, None)
        if wanted is None:
            return False
        if wanted.lease.owned:
            self._stop(drain_id, wanted)
        if self._nursery is not None:
            # Every node deletes the checkpoint (DEL is idempotent): a drain no node owned
            # yet has one too (its birth). The owner also hands its lease back.
            self._nursery.start_soon(
                self._release, wanted.channel, drain_id, True, wanted.lease.owned
            )
        return True

    def remove_channel(self, channel_name: str) -> int:
        ids = [i for i, w in self.wanted.items() if w.channel == channel_name]
        for drain_id in ids:
            self.remove_drain(drain_id)
        return len(ids)

    def owned(self) -> list[int]:
        return [i for i, w in self.wanted.items() if w.lease.owned and not w.starting]

    def __len__(self) -> int:
        return len(self.wanted)

    # -- loss announced by the stream -------------------------------------------------------
    def announce_loss(self, channel: str, count: int, since: float) -> None:
        for drain_id, wanted in self.wanted.items():
            if wanted.channel != channel or not wanted.lease.owned:
                continue
            drain = self.manager.drain(drain_id)
            if drain is not None:
                drain.feed.note_lost(count, since)

    def _rewound(self, channel: str) -> None:
        # The stream's sequence started over: checkpoints restart from it too.
        for wanted in self.wanted.values():
            if wanted.channel == channel:
                wanted.stored, wanted.dirty = -1, None

    # -- the task -----------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._checkpoints)
            task_status.started()
            try:
                await self._leases()
            finally:
                self._nursery = None

    async def _leases(self) -> None:
        errors = redis_errors()
        interval = renew_interval(self.ttl)
        while True:
            self._wake = trio.Event()
            now = self.clock()
            for drain_id, wanted in list(self.wanted.items()):
                before, after = wanted.lease.tick(now)
                if before is LeaseState.OWNER and after is LeaseState.STANDBY:
                    log.warning("drain %d: lease not renewed in time, stopping here", drain_id)
                    self._stop(drain_id, wanted)
            # Only while the probe reaches Redis (the leases' own failure must not stop the
            # exchange that would clear it).
            if self.wanted and self.plane.link.reached.is_set():
                sent_at = self.clock()
                ids = list(self.wanted)
                channels = {i: self.wanted[i].channel for i in ids}
                try:
                    # Never wait past the next tick: the local expiry below must run on time
                    # even when Redis stops answering without closing the connection.
                    with trio.fail_after(min(CALL_TIMEOUT, interval)):
                        replies = await self._exchange(ids)
                except errors as exc:
                    self.plane.link.lost(exc, "leases")
                    replies = {i: LeaseEvent.UNREACHABLE for i in ids}
                else:
                    self.plane.link.ok("leases")
                for drain_id, event in replies.items():
                    current = self.wanted.get(drain_id)
                    if current is None:
                        if event is LeaseEvent.ACQUIRED and self._nursery is not None:
                            # Removed while its lease was being acquired: hand it back.
                            self._nursery.start_soon(self._release, channels[drain_id], drain_id)
                        continue
                    before, after = current.lease.apply(event, sent_at)
                    if before is LeaseState.STANDBY and after is LeaseState.OWNER:
                        await self._start(drain_id, current)
                    elif before is LeaseState.OWNER and after is LeaseState.STANDBY:
                        log.warning("drain %d: lease lost to another node, stopping", drain_id)
                        self._stop(drain_id, current)
            with trio.move_on_after(interval):
                await self._wake.wait()

    async def _exchange(self, ids: list[int]) -> dict[int, LeaseEvent]:
        """Acquire or renew the leases of ``ids``: one script call per shard in all."""
        keys = self.plane.keys
        commands: dict[int, Command] = {}
        by_channel: dict[str, list[int]] = {}
        for drain_id in ids:
            wanted = self.wanted[drain_id]
            commands[drain_id] = wanted.lease.command()
            by_channel.setdefault(wanted.channel, []).append(drain_id)
        parts: dict[str, list[object]] = {}
        for channel, drain_ids in by_channel.items():
            part = parts[channel] = [len(drain_ids)]
            for drain_id in drain_ids:
                op = "a" if commands[drain_id] is Command.ACQUIRE else "r"
                part.extend((op, keys.lease(channel, drain_id)))
        ttl_ms = self.wanted[ids[0]].lease.ttl_ms  # one ttl for every drain of the node
        replies = await self.plane.call_per_shard(LEASES, (self.node_id, ttl_ms), parts, "lease")
        events: dict[int, LeaseEvent] = {}
        for channel, drain_ids in by_channel.items():
            results = self._results(channel, replies)
            for drain_id, result in zip(drain_ids, results, strict=True):
                if result == -1:
                    events[drain_id] = LeaseEvent.UNREACHABLE
                elif commands[drain_id] is Command.ACQUIRE:
                    events[drain_id] = (
                        LeaseEvent.ACQUIRED if result == 1 else LeaseEvent.HELD_ELSEWHERE
                    )
                else:
                    events[drain_id] = LeaseEvent.RENEWED if result == 1 else LeaseEvent.LOST
        return events

    def _results(self, channel: str, replies: dict[str, list[int]]) -> list[int]:
        """``channel``'s results of a per-shard call; -1 (refused) sends it alone next time."""
        results = replies[channel]
        if -1 in results:
            self.plane.connection.refused(channel)
        else:
            self.plane.connection.accepted(channel)
        return results

    async def _start(self, drain_id: int, wanted: Wanted) -> None:
        """Just acquired: follow the channel from the checkpoint, then run the drain."""
        channel = self.manager.registry.channel(wanted.channel)
        if channel is None:
            # Not in this node's index (yet): hand the lease back rather than hold it idle.
            wanted.lease.apply(LeaseEvent.RELEASE, self.clock())
            if self._nursery is not None:
                self._nursery.start_soon(self._release, wanted.channel, drain_id)
            return
        wanted.starting = True
        try:
            with trio.fail_after(CALL_TIMEOUT):
                key = self.plane.keys.checkpoint(wanted.channel, drain_id)
                raw = await self.plane.client.get(key)
                self.plane.count_trip("other")
                after: StreamId
                if raw is None:
                    after = await self.plane.top(wanted.channel)
                else:
                    after = (int(raw), 0)
        except redis_errors() as exc:
            # Not started: stand by; the next tick acquires again (the key is still ours).
            wanted.starting = False
            log.warning("drain %d: not started, Redis: %s", drain_id, describe(exc))
            wanted.lease.apply(LeaseEvent.RELEASE, self.clock())
            return
        if self.wanted.get(drain_id) is not wanted or not wanted.lease.owned:
            wanted.starting = False
            return
        existing = self.plane.follow_of(wanted.channel)
        follow = self.plane.hold(channel, after)
        wanted.follow = follow
        if existing is follow:
            # Bounded by a tick: the lease must be renewed on time meanwhile.
            await follow.wait_reached(after[0], min(2.0, renew_interval(self.ttl)))
        if self.wanted.get(drain_id) is not wanted or not wanted.lease.owned:
            self.plane.release(follow)
            wanted.follow = None
            wanted.starting = False
            return
        position, gap = follow.position_after(after[0])
        catch_up: CatchUp | None = None
        if gap and existing is follow:
            # This node followed the channel from later than the checkpoint (for a tail or
            # another drain): what lies between is in the stream, not lost.
            try:
                # Within a tick, as above (then what was not read is announced as lost).
                with trio.fail_after(min(CALL_TIMEOUT, renew_interval(self.ttl))):
                    catch_up = await self.plane.read_range(
                        wanted.channel, after[0], follow.seq_at(position)
                    )
            except redis_errors() as exc:
                log.warning("drain %d: gap not read from the stream: %s", drain_id, describe(exc))
            else:
                gap = catch_up.lost
            if self.wanted.get(drain_id) is not wanted or not wanted.lease.owned:
                self.plane.release(follow)
                wanted.follow = None
                wanted.starting = False
                return
        try:
            self.manager.add_drain(wanted.channel, drain_id, wanted.token, wanted.url)
        except InvalidDrainUrl as exc:
            log.warning("drain %d: not started, %s (%s)", drain_id, exc, redact_url(wanted.url))
            wanted.starting = False
            return
        drain = self.manager.drain(drain_id)
        wanted.starting = False
        if drain is None:
            return
        feed = drain.feed
        # What was read from the stream is delivered first, before the ring from ``position`` on.
        feed.resume_at(position, catch_up.batch if catch_up is not None else None)
        if gap:
            feed.note_lost(gap, self.plane.wall_clock())
        wanted.stored = after[0] if raw is not None else -1
        if raw is None:
            wanted.dirty = after[0]
            self._dirty.set()
        self._hook_checkpoints(drain_id, wanted, feed, catch_up)
        self.takeovers += 1
        log.info(
            "drain %d of %s: owned by this node (%s), from message %d",
            drain_id,
            wanted.channel,
            self.node_id,
            after[0],
        )

    def _hook_checkpoints(
        self, drain_id: int, wanted: Wanted, feed: DrainFeed, catch_up: CatchUp | None
    ) -> None:
        """After each settled payload, note the stream sequence delivered through."""
        follow = wanted.follow
        assert follow is not None

        def settled() -> None:
            if catch_up is not None and feed.pending is catch_up.batch:
                # Still in the messages read from the stream: their own sequences.
                done = feed.pending_start
                if not done:
                    return
                seq = catch_up.seqs[done - 1]
            else:
                seq = follow.seq_at(feed.cursor - feed.pending_messages)
            if seq > wanted.stored and (wanted.dirty is None or seq > wanted.dirty):
                wanted.dirty = seq
                self._dirty.set()

        feed.on_settled.append(settled)

    def _stop(self, drain_id: int, wanted: Wanted) -> None:
        self.manager.remove_drain(drain_id)
        if wanted.follow is not None:
            self.plane.release(wanted.follow)
            wanted.follow = None
        wanted.dirty = None

    async def _checkpoints(self) -> None:
        """Store the checkpoints of drains that delivered, at most every CHECKPOINT_INTERVAL."""
        errors = redis_errors()
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            try:
                with trio.fail_after(CALL_TIMEOUT):
                    stored = await self._store_checkpoints()
            except errors as exc:
                self.plane.link.lost(exc, "checkpoints")
                self._dirty.set()
            else:
                if stored is not None:
                    self.plane.link.ok("checkpoints")
            # Whatever settles meanwhile waits for the next pipeline.
            await trio.sleep(CHECKPOINT_INTERVAL)

    async def _store_checkpoints(self) -> int | None:
        """One pipeline for every owned drain with a checkpoint to store; how many (None:
        there was none)."""
        batch = [
            (i, w, w.dirty) for i, w in self.wanted.items() if w.dirty is not None and w.lease.owned
        ]
        if not batch:
            self.plane.link.ok("checkpoints")  # nothing of ours is left to store
            return None
        keys = self.plane.keys
        by_channel: dict[str, list[tuple[int, Wanted, int]]] = {}
        for drain_id, wanted, seq in batch:
            assert seq is not None
            by_channel.setdefault(wanted.channel, []).append((drain_id, wanted, seq))
        parts: dict[str, list[object]] = {}
        for channel, items in by_channel.items():
            part = parts[channel] = [len(items)]
            for drain_id, _, seq in items:
                part.extend(
                    (keys.lease(channel, drain_id), keys.checkpoint(channel, drain_id), seq)
                )
        replies = await self.plane.call_per_shard(
            CHECKPOINTS, (self.node_id, CHECKPOINT_TTL_MS), parts, "checkpoint"
        )
        refused = False
        for channel, items in by_channel.items():
            results = self._results(channel, replies)
            for (_, wanted, seq), result in zip(items, results, strict=True):
                if result == -1:
                    refused = True  # stored again with the next pipeline
                    continue
                wanted.stored = max(wanted.stored, seq)
                if wanted.dirty is not None and wanted.dirty <= wanted.stored:
                    wanted.dirty = None
        if refused:
            self._dirty.set()
        return len(batch)

    async def _release(
        self, channel: str, drain_id: int, removed: bool = False, owned: bool = True
    ) -> None:
        try:
            with trio.fail_after(CALL_TIMEOUT):
                if owned:
                    key = self.plane.keys.lease(channel, drain_id)
                    calls: list[ScriptCall] = [(RELEASE, [key], [self.node_id])]
                    await self.plane.call_scripts(calls, "other", [channel])
                if removed:  # drain ids are never reused: its checkpoint is of no more use
                    await self.plane.client.delete([self.plane.keys.checkpoint(channel, drain_id)])
                    self.plane.count_trip("other")
        except Exception as exc:
            # Best effort: the TTL hands the drain over anyway.
            log.debug("drain %d: lease not released: %s", drain_id, describe(exc))

    async def _release_all(self) -> None:
        """Stopping: hand every owned lease back at once so another node takes over now."""
        if not self.release_on_stop:
            return
        # What was delivered since the last checkpoint, so the next owner does not send it
        # again. Best effort, as the releases (the connection may be gone already).
        with contextlib.suppress(Exception):
            await self._store_checkpoints()
        owned = [(i, w) for i, w in self.wanted.items() if w.lease.owned]
        for drain_id, wanted in owned:
            await self._release(wanted.channel, drain_id)
