"""Drains across nodes: each stored drain runs on exactly one node, the lease owner.

``ClusterDrains`` stands between the store's drain events (``drain_sync``) and the local
``DrainManager``: it remembers every drain the store holds and runs (adds to the manager)
only those whose lease this node owns. The lease decisions are ``lease.Lease`` and
``lease.Liveness`` (sans-IO); this module is the thin trio adapter. Each tick: one pipeline
renews the node's liveness key and asks whether the holders of the drains it stands by for
are alive (one ``EXISTS`` per distinct holder); then
one script call per shard acquires the drains that are free or whose holder is dead, if
any. An idle node with 10,000 drains sends a handful of commands per tick, not 10,000. At
most every ``CHECKPOINT_INTERVAL`` one script call per shard stores the checkpoints of
every drain that delivered meanwhile (and a last one when the node stops).

A new owner starts from the drain's checkpoint (the sequence of the last message the
previous owner delivered) by following the channel's stream from there: at-least-once,
duplicates bounded by what was delivered but not yet checkpointed (one payload per drain,
plus what the old owner delivered in its last ``CHECKPOINT_INTERVAL`` when it died without
a word). If the stream was trimmed past the checkpoint, the follower counts the gap exactly
from the stream ids and the first delivery starts with the L10 notice. A new drain starts from the
birth checkpoint written before the API answered (``birth.py``); only when that write
failed does its first owner start at the newest entry of the stream.

With a data directory (``NodeDir``), each incarnation is recorded there before it is used
in Redis, and the incarnations earlier processes recorded are dead at once
(``lease.Incarnations``): at its first tick a restarted node deletes their liveness keys
(one round trip) and takes back, from their checkpoints, the drains they held, rather than
wait up to ttl + ttl/4 for those keys to expire.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..drains import DrainFeed, DrainManager, InvalidDrainUrl, delivery_target
from ..store import redact_url
from ._carried import CarriedBacklog
from ._carried import save as save_carried
from ._follow import Follow
from ._history import CatchUp
from ._journal import SpillJournal, journal_dir
from ._journal import remove_all as remove_journals
from ._link import CALL_TIMEOUT, describe, redis_errors
from ._node_dir import NodeDir
from ._refill import StreamRefill
from ._spilled import SpilledSeqs
from ._stream import CHECKPOINT_TTL_MS, Script, ScriptCall, StreamId
from .lease import (
    DEFAULT_TTL,
    Incarnations,
    Lease,
    LeaseEvent,
    LeaseState,
    Liveness,
    node_of,
    renew_interval,
)
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


# Acquires leases: per drain its lease key and the holder known dead ('' none). Takes the
# key when free, already ours, or held by that dead holder (compare-and-set: of two standby
# nodes taking over from one dead holder, one wins). Sets res[k] to the holder after.
ACQUIRE = _per_drain(
    2,
    """    local key, dead = f[1], f[2]
    local v = redis.pcall('GET', key)
    if type(v) == 'table' then
      res[k] = -1
    elseif not v or v == node or (dead ~= '' and v == dead) then
      local r = redis.pcall('SET', key, node)
      if type(r) == 'table' and r.err then res[k] = -1 else res[k] = node end
    else
      res[k] = v
    end""",
)
# Hands leases over to ARGV[1]: per drain its lease key and its holder now. Moved only while
# that holder still holds it: unlike ``ACQUIRE`` it never takes a missing key (a drain
# deleted meanwhile, its key gone, would get a lease key nobody ever deletes). Sets res[k]
# to the holder after ('' none).
HAND_OVER = _per_drain(
    2,
    """    local key, from = f[1], f[2]
    local v = redis.pcall('GET', key)
    if type(v) == 'table' then
      res[k] = -1
    elseif v == from then
      local r = redis.pcall('SET', key, node)
      if type(r) == 'table' and r.err then res[k] = -1 else res[k] = node end
    else
      res[k] = v or ''
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
    # The stream sequence delivered through while it runs here (-1: not running): the
    # stream is not trimmed past the slowest of its channel (``_note_delivered``).
    delivered: int = -1
    # Where its disk backlog lies in the stream, while it runs here.
    spilled: SpilledSeqs | None = None


class ClusterDrains:
    """The drain half of ``drain_sync``'s interface, with leases in front of the manager."""

    def __init__(
        self,
        plane: DataPlane,
        manager: DrainManager,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = trio.current_time,
        node_dir: NodeDir | None = None,
    ) -> None:
        """``node_dir``: the node's data directory, opened (``NodeDir.open``); without one
        (tests) nothing is recorded and no earlier incarnation is known dead."""
        self.plane = plane
        self.manager = manager
        self.ttl = ttl
        self.clock = clock
        self.node_id = plane.node_id
        self.liveness = Liveness(plane.node_id, ttl)
        self.node_dir = node_dir
        self.incarnations = Incarnations(plane.node_id)
        if node_dir is not None:
            self.incarnations = Incarnations(
                plane.node_id, node_dir.recorded, node_dir.recorded_on, node_dir.boot
            )
            if self.incarnations.unproven:
                log.info(
                    "drains: %d incarnations that %s recorded under another boot (of this machine, "
                    "or of another one it was copied from) are not known dead: their drains "
                    "wait for their liveness keys to expire",
                    len(self.incarnations.unproven),
                    node_dir.directory,
                )
            # Before the first tick can write it to Redis; an error stops the start.
            node_dir.record(self.incarnations.record(self.liveness.holder))
        self.liveness.recorded = True
        self.wanted: dict[int, Wanted] = {}
        # The drains of ``wanted`` whose lease this node does not hold: what each tick
        # looks at (with 10,000 drains, a look at every one per tick, and a tick per drain
        # added, made adding them quadratic). Kept by ``_lease_event``.
        self._standby: set[int] = set()
        # The drains of ``wanted`` per channel (deleting 10,000 channels looked at every
        # drain for each).
        self._of_channel: dict[str, set[int]] = {}
        # Per channel, the drains running here (``_note_delivered``).
        self._running: dict[str, dict[int, Wanted]] = {}
        self._wake = trio.Event()
        self._dirty = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.takeovers = 0
        # Lease exchanges with Redis so far (one per tick while there are drains).
        self.ticks = 0
        # Hand leases back when stopping (a graceful stop moves drains at once). Tests turn
        # it off to stand for a node that died without a word.
        self.release_on_stop = True
        # Disk backlogs the last process carried over (``_carried``), per drain id, until
        # this node starts the drain (or it is deleted).
        self.carried: dict[int, CarriedBacklog] = {}
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
            self.wanted[drain_id] = Wanted(channel_name, token, url, Lease())
            self._standby.add(drain_id)
            self._of_channel.setdefault(channel_name, set()).add(drain_id)
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
        self._standby.discard(drain_id)
        ids = self._of_channel.get(wanted.channel)
        if ids is not None:
            ids.discard(drain_id)
            if not ids:
                del self._of_channel[wanted.channel]
        if wanted.lease.owned:
            self._stop(drain_id, wanted)
        if self.carried.pop(drain_id, None) is not None:
            self._discard(drain_id)
        if self._nursery is not None:
            # Every node deletes the checkpoint (DEL is idempotent): a drain no node owned
            # yet has one too (its birth). The owner also hands its lease back.
            self._nursery.start_soon(
                self._release, wanted.channel, drain_id, True, wanted.lease.owned
            )
        return True

    def remove_channel(self, channel_name: str) -> int:
        ids = list(self._of_channel.get(channel_name, ()))
        for drain_id in ids:
            self.remove_drain(drain_id)
        return len(ids)

    def _note_delivered(self, channel: str, follow: Follow) -> None:
        """Tell the data plane how far the slowest drain of ``channel`` running here has
        delivered (its last settled message's stream sequence; -1: none runs here). The
        writers keep the stream from there on, up to READER_SLACK x keep behind its
        newest message: a drain whose receiver refused data for a while (judged slow,
        lapped by its ring) reads on from the stream instead of losing what ``keep``
        alone would have trimmed."""
        running = self._running.get(channel, {})
        self.plane.note_delivered(follow, min((w.delivered for w in running.values()), default=-1))

    def owned(self) -> list[int]:
        return [i for i, w in self.wanted.items() if w.lease.owned and not w.starting]

    def __len__(self) -> int:
        return len(self.wanted)

    # -- loss announced by the stream -------------------------------------------------------
    def announce_loss(self, channel: str, count: int, since: float) -> None:
        # The drains running here (``_running``): every owned one that delivers.
        for drain_id, wanted in list(self._running.get(channel, {}).items()):
            if not wanted.lease.owned:
                continue
            drain = self.manager.drain(drain_id)
            if drain is not None:
                drain.feed.note_lost(count, since)

    def _rewound(self, channel: str) -> None:
        # The stream's sequence started over: checkpoints restart from it too.
        for drain_id in self._of_channel.get(channel, ()):
            wanted = self.wanted[drain_id]
            wanted.stored, wanted.dirty = -1, None
            if wanted.delivered >= 0:
                wanted.delivered = 0
                if wanted.follow is not None:
                    self._note_delivered(channel, wanted.follow)

    # -- the task -----------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._checkpoints)
            nursery.start_soon(self._tick_when_reached)
            task_status.started()
            try:
                await self._leases()
            finally:
                self._nursery = None

    async def _tick_when_reached(self) -> None:
        """A tick as soon as the data plane first reaches Redis: the store often loads the
        drains before that, and a tick skipped then would leave a restarted node's drains
        waiting a whole interval."""
        await self.plane.link.reached.wait()
        self._wake.set()

    async def _leases(self) -> None:
        errors = redis_errors()
        interval = renew_interval(self.ttl)
        while True:
            self._wake = trio.Event()
            if not self.liveness.valid(self.clock()):
                self._stop_owned(LeaseEvent.EXPIRED, "lease not renewed in time, stopping here")
            if self.incarnations.unburied and self.plane.link.reached.is_set():
                try:
                    with trio.fail_after(min(CALL_TIMEOUT, interval)):
                        await self._bury()
                except errors as exc:
                    self.plane.link.lost(exc, "leases")
            # Only while the probe reaches Redis (the leases' own failure must not stop the
            # exchange that would clear it).
            if self.wanted and self.plane.link.reached.is_set():
                try:
                    # Never wait past the next tick: the local expiry above must run on time
                    # even when Redis stops answering without closing the connection.
                    with trio.fail_after(min(CALL_TIMEOUT, interval)):
                        events = await self._exchange()
                except errors as exc:
                    self.plane.link.lost(exc, "leases")
                else:
                    self.plane.link.ok("leases")
                    self.ticks += 1
                    # Outside the exchange's deadline: starting a drain reads its checkpoint.
                    await self._apply(events)
            with trio.move_on_after(interval):
                await self._wake.wait()

    def _stop_owned(self, event: LeaseEvent, why: str, holder: str | None = None) -> None:
        """Stop every owned drain; ``holder``: who holds their keys now, if known."""
        for drain_id, wanted in list(self.wanted.items()):
            if not wanted.lease.owned:
                continue  # what it knows of others' leases stays as it is
            self._lease_event(drain_id, wanted, event)
            log.warning("drain %d: %s", drain_id, why)
            self._stop(drain_id, wanted)
            if holder is not None:
                wanted.lease.holder = holder

    def _lease_event(
        self, drain_id: int, wanted: Wanted, event: LeaseEvent, holder: str | None = None
    ) -> tuple[LeaseState, LeaseState]:
        """``Lease.apply`` for one of ``wanted``, keeping ``_standby``."""
        before, after = wanted.lease.apply(event, holder)
        if self.wanted.get(drain_id) is wanted:
            if after is LeaseState.OWNER:
                self._standby.discard(drain_id)
            else:
                self._standby.add(drain_id)
        return before, after

    async def _exchange(self) -> dict[int, tuple[LeaseEvent, str | None, str]]:
        """One tick: renew the liveness key, look at the holders of the drains this node
        stands by for, and acquire those that are free or whose holder is dead."""
        from coredis.tokens import PureToken

        plane, keys, live = self.plane, self.plane.keys, self.liveness
        if not live.recorded and not await self._record():
            return {}
        sent_at = self.clock()
        wanted, standby = self.wanted, self._standby
        # Dead for certain, not to be asked after.
        certain = self.incarnations.dead
        holders = sorted(
            {
                h
                for i in standby
                if (h := wanted[i].lease.holder) is not None
                and h != live.holder
                and h not in certain
            }
        )
        alive_key = keys.alive(live.holder)
        async with plane.client.pipeline(transaction=False) as pipe:
            renewal = pipe.set(
                alive_key,
                b"1",
                px=live.ttl_ms,
                condition=PureToken.XX if live.confirmed else PureToken.NX,
            )
            checks = [(h, pipe.exists([keys.alive(h)])) for h in holders]
        named = [alive_key] + [keys.alive(h) for h in holders]
        plane.count_trip("lease", plane.connection.servers_of_keys(named))
        dead = {h for h, check in checks if not await check} | certain
        if await renewal:
            live.renewed(sent_at)
        else:
            # Gone (cut off for a TTL, or Redis lost it): its drains may be another node's
            # by now. Stop them, and take them back under a new incarnation if still free.
            old = live.gone()
            self.incarnations.left(old)
            dead.add(old)
            self._stop_owned(
                LeaseEvent.LOST, "this node's liveness key had expired, stopping", holder=old
            )
            if not await self._record():
                return {}
            sent_at = self.clock()
            if await plane.client.set(
                keys.alive(live.holder), b"1", px=live.ttl_ms, condition=PureToken.NX
            ):
                live.renewed(sent_at)
            plane.count_trip("lease")
        if not live.valid(self.clock()):
            return {}
        ids = [i for i in standby if wanted[i].lease.wants(dead)]
        if not ids:
            return {}
        events = await self._acquire(ids, dead)
        # Drains whose holder was not known yet (a node just started), found held by an
        # incarnation dead for certain (this node's, before a kill -9): taken now, not a
        # tick later.
        again = {
            i: (holder, channel)
            for i, (event, holder, channel) in events.items()
            if event is LeaseEvent.HELD_ELSEWHERE
            and holder in certain
            and (w := wanted.get(i)) is not None
            and w.channel == channel
        }
        if again:
            seen = {i: holder for i, (holder, _) in again.items() if holder is not None}
            events.update(await self._acquire(list(again), dead, seen))
        return events

    async def _record(self) -> bool:
        """Record the current incarnation in the data directory, before Redis sees it.
        False: not recorded (said), not to be used yet; the next tick tries again."""
        live = self.liveness
        if self.node_dir is not None:
            try:
                await trio.to_thread.run_sync(
                    self.node_dir.record, self.incarnations.record(live.holder)
                )
            except OSError as exc:
                log.error(
                    "drains: incarnation %s not recorded in %s, not used: %s",
                    live.holder,
                    self.node_dir.path,
                    exc,
                )
                return False
        live.recorded = True
        return True

    async def _bury(self) -> None:
        """Delete the liveness keys of the incarnations earlier processes recorded in the
        data directory (one round trip): other nodes see them dead at once too. Then
        forget them there."""
        plane, keys, node_dir = self.plane, self.plane.keys, self.node_dir
        # Only what this process read in its data directory is to be buried.
        assert node_dir is not None
        earlier = self.incarnations.unburied
        names = [keys.alive(h) for h in earlier]
        async with plane.client.pipeline(transaction=False) as pipe:
            # One DEL per key: on a cluster each may be on another shard.
            deletes = [pipe.delete([name]) for name in names]
        plane.count_trip("lease", plane.connection.servers_of_keys(names))
        alive = sum([await d for d in deletes])
        self.incarnations.buried()
        log.info(
            "drains: %d earlier incarnations of this node (%d still alive in Redis) are dead: "
            "their process has gone from %s",
            len(earlier),
            alive,
            node_dir.directory,
        )
        try:
            await trio.to_thread.run_sync(
                node_dir.record, self.incarnations.record(self.liveness.holder)
            )
        except OSError as exc:
            # Still recorded: the next process deletes them again (nothing, by then).
            log.warning("drains: %s not rewritten: %s", node_dir.path, exc)

    async def _apply(self, events: dict[int, tuple[LeaseEvent, str | None, str]]) -> None:
        """Apply a tick's acquisitions: start the drains this node got, from where each
        resumes (read for all of them at once: with one round trip each, a node taking
        over 10,000 drains started ~2,000 a second, and a failover took that much longer)."""
        starting: list[tuple[int, Wanted]] = []
        for drain_id, (event, holder, channel) in events.items():
            current = self.wanted.get(drain_id)
            if current is None:
                if event is LeaseEvent.ACQUIRED and self._nursery is not None:
                    # Removed while its lease was being acquired: hand it back.
                    self._nursery.start_soon(self._release, channel, drain_id)
                continue
            if holder is not None and self.incarnations.stranger(holder, self.liveness.holder):
                log.warning(
                    "drain %d: held by %s, an incarnation of this node id that %s never "
                    "recorded: is another process running with node id %s? Taken as alive "
                    "until its liveness key expires",
                    drain_id,
                    holder,
                    self.node_dir.directory if self.node_dir is not None else "this process",
                    self.node_id,
                )
            before, after = self._lease_event(drain_id, current, event, holder)
            if (
                event is LeaseEvent.HELD_ELSEWHERE
                and holder is not None
                and node_of(holder) != self.node_id
                and self.carried.pop(drain_id, None) is not None
            ):
                # Another node runs it now, from its checkpoint: what the backlog holds is
                # that node's to send from the stream (or to tell lost), and the files
                # would only fill this node's disk until the process ends.
                log.info(
                    "drain %d: taken by %s; the disk backlog carried over is removed",
                    drain_id,
                    holder,
                )
                self._discard(drain_id)
            if before is LeaseState.STANDBY and after is LeaseState.OWNER:
                current.starting = True
                starting.append((drain_id, current))
        if not starting:
            return
        try:
            with trio.fail_after(CALL_TIMEOUT):
                points = await self._start_points(starting)
        except redis_errors() as exc:
            # Not started: stand by; the next tick acquires again (the keys are still ours).
            log.warning("%d drains not started, Redis: %s", len(starting), describe(exc))
            for drain_id, wanted in starting:
                wanted.starting = False
                self._lease_event(drain_id, wanted, LeaseEvent.RELEASE)
            return
        for drain_id, wanted in starting:
            await self._start(drain_id, wanted, *points[drain_id])

    async def _start_points(
        self, starting: list[tuple[int, Wanted]]
    ) -> dict[int, tuple[StreamId, bool]]:
        """Where each of ``starting`` resumes, and whether that is its checkpoint (else, its
        birth checkpoint expired, the newest entry of its stream). Two round trips for all."""
        plane, keys = self.plane, self.plane.keys
        async with plane.client.pipeline(transaction=False) as pipe:
            gets = [pipe.get(keys.checkpoint(w.channel, i)) for i, w in starting]
        plane.count_trip("other")
        points: dict[int, tuple[StreamId, bool]] = {}
        missing: list[tuple[int, Wanted]] = []
        for (drain_id, wanted), get in zip(starting, gets, strict=True):
            raw = await get
            if raw is None:
                missing.append((drain_id, wanted))
            else:
                points[drain_id] = ((int(raw), 0), True)
        if missing:
            tops = await plane.tops([w.channel for _, w in missing])
            for (drain_id, _), top in zip(missing, tops, strict=True):
                points[drain_id] = (top, False)
        return points

    async def _acquire(
        self, ids: list[int], dead: set[str], seen: dict[int, str] | None = None
    ) -> dict[int, tuple[LeaseEvent, str | None, str]]:
        """Acquire the leases of ``ids``: one script call per shard in all. ``seen``: their
        holders as just found, where the leases do not know them yet."""
        keys = self.plane.keys
        holder = self.liveness.holder
        by_channel: dict[str, list[int]] = {}
        for drain_id in ids:
            by_channel.setdefault(self.wanted[drain_id].channel, []).append(drain_id)
        parts: dict[str, list[object]] = {}
        for channel, drain_ids in by_channel.items():
            part = parts[channel] = [len(drain_ids)]
            for drain_id in drain_ids:
                held = self.wanted[drain_id].lease.holder
                if seen is not None:
                    held = seen.get(drain_id, held)
                part.extend((keys.lease(channel, drain_id), held if held in dead else ""))
        replies = await self.plane.call_per_shard(ACQUIRE, (holder, 0), parts, "lease")
        events: dict[int, tuple[LeaseEvent, str | None, str]] = {}
        for channel, drain_ids in by_channel.items():
            results = self._results(channel, replies)
            for drain_id, result in zip(drain_ids, results, strict=True):
                if result == -1:
                    continue  # refused: tried again next tick
                now_held = result.decode() if isinstance(result, bytes) else str(result)
                event = LeaseEvent.ACQUIRED if now_held == holder else LeaseEvent.HELD_ELSEWHERE
                events[drain_id] = (event, now_held, channel)
        return events

    def _results(self, channel: str, replies: dict[str, list[int]]) -> list[int]:
        """``channel``'s results of a per-shard call; -1 (refused) sends it alone next time."""
        results = replies[channel]
        if -1 in results:
            self.plane.connection.refused(channel)
        else:
            self.plane.connection.accepted(channel)
        return results

    async def _start(
        self, drain_id: int, wanted: Wanted, after: StreamId, checkpointed: bool
    ) -> None:
        """Just acquired: follow the channel from ``after`` (its checkpoint, when
        ``checkpointed``), then run the drain."""
        channel = self.manager.registry.channel(wanted.channel)
        if channel is None:
            # Not in this node's index (yet): hand the lease back rather than hold it idle.
            wanted.starting = False
            self._lease_event(drain_id, wanted, LeaseEvent.RELEASE)
            if self._nursery is not None:
                self._nursery.start_soon(self._release, wanted.channel, drain_id)
            return
        if self.wanted.get(drain_id) is not wanted or not wanted.lease.owned:
            wanted.starting = False
            return
        carried = self.carried.get(drain_id)
        backlogs = self.manager.backlogs
        if carried is not None and backlogs is not None:
            # Only what is on disk: a killed process's last chunks may never have been
            # written (their messages come from the stream, after the last one that was).
            carried = carried.written_through(backlogs.written_end(drain_id))
            if carried is None:
                del self.carried[drain_id]
            else:
                self.carried[drain_id] = carried
        if carried is not None and not (
            checkpointed and carried.resumable_from(after[0]) and after[0] <= carried.resume_after
        ):
            # Another node delivered past where this one stopped (or, after a kill, this
            # one had delivered past the backlog): the backlog is void.
            log.info("drain %d: the disk backlog carried over is void (checkpoint moved)", drain_id)
            del self.carried[drain_id]
            self._discard(drain_id)
            carried = None
        # With a backlog carried over, the stream is read on after its last message.
        start = after if carried is None else (carried.resume_after, 0)
        existing = self.plane.follow_of(wanted.channel)
        follow = self.plane.hold(channel, start)
        wanted.follow = follow
        if existing is follow:
            # Bounded by a tick: the lease must be renewed on time meanwhile.
            await follow.wait_reached(start[0], min(2.0, renew_interval(self.ttl)))
        if self.wanted.get(drain_id) is not wanted or not wanted.lease.owned:
            self.plane.release(follow)
            wanted.follow = None
            wanted.starting = False
            return
        position, gap = follow.position_after(start[0])
        catch_up: CatchUp | None = None
        if gap and existing is follow:
            # This node followed the channel from later than the checkpoint (for a tail or
            # another drain): what lies between is in the stream, not lost.
            try:
                # Within a tick, as above (then what was not read is announced as lost).
                with trio.fail_after(min(CALL_TIMEOUT, renew_interval(self.ttl))):
                    catch_up = await self.plane.read_range(
                        wanted.channel, start[0], follow.seq_at(position)
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
        self.carried.pop(drain_id, None)  # (kept until here: a start given up may come again)
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
        # Lapped by the ring (a small cache of the stream), it reads on from the stream.
        refill = StreamRefill(
            self.plane.history.read_range, follow, self._spawn, feed.kick, drain_id
        )
        feed.refill_from(refill)
        if carried is not None and carried.lost:
            feed.note_lost(carried.lost, carried.since)
        if gap:
            feed.note_lost(gap, self.plane.wall_clock())
        wanted.stored = after[0] if checkpointed else -1
        if not checkpointed:
            wanted.dirty = after[0]
            self._dirty.set()
        self._hook_checkpoints(drain_id, wanted, feed, catch_up, refill)
        if carried is not None and wanted.spilled is not None:
            wanted.spilled.restore(carried.chunks, (after[0], carried.lost, carried.since))
            log.info(
                "drain %d: resumes the disk backlog the last process carried over (messages "
                "%d to %d of its stream)",
                drain_id,
                carried.chunks[0][2] + 1,
                carried.resume_after,
            )
        wanted.delivered = after[0]
        self._running.setdefault(wanted.channel, {})[drain_id] = wanted
        self._note_delivered(wanted.channel, follow)
        self.takeovers += 1
        log.info(
            "drain %d of %s: owned by this node (%s), from message %d",
            drain_id,
            wanted.channel,
            self.node_id,
            after[0],
        )

    def _hook_checkpoints(
        self,
        drain_id: int,
        wanted: Wanted,
        feed: DrainFeed,
        catch_up: CatchUp | None,
        refill: StreamRefill,
    ) -> None:
        """After each settled payload, note the stream sequence delivered through."""
        follow = wanted.follow
        assert follow is not None
        # Past what the stream keeps for it, the drain spills to this node's disk, and
        # journals each chunk for a start after a kill -9 (``_journal``).
        journal = None
        backlogs = self.manager.backlogs
        if backlogs is not None:

            def state() -> tuple[int, int, float] | None:
                if wanted.stored < 0:
                    return None
                return wanted.stored, feed.loss.count, feed.loss.since

            journal = SpillJournal(journal_dir(backlogs.directory), drain_id, wanted.channel, state)
            feed.on_owed.append(journal.owed)
        spilled = wanted.spilled = SpilledSeqs(follow, refill, journal)
        feed.on_spilled.append(spilled.spilled)
        feed.on_spilled_refill.append(spilled.spilled_refill)

        def through() -> int | None:
            """The stream sequence delivered through (None: not known here)."""
            # The takeover's catch-up is let go once the feed is past it (a feed never goes
            # back to it): it may be all the stream held between the checkpoint and the ring.
            nonlocal catch_up
            pending = feed.pending
            if catch_up is not None and pending is not catch_up.batch:
                catch_up = None
            if pending is None and not refill.reading and not feed.spilling:
                return follow.seq_at(feed.cursor)  # written where they lie in the ring
            from_stream = catch_up
            if refill.current is not None and pending is refill.current.batch:
                from_stream = refill.current
            if from_stream is not None and pending is from_stream.batch:
                # Still in the messages read from the stream: their own sequences.
                done = feed.pending_start
                return from_stream.seqs[done - 1] if done else None
            if refill.reading:
                return None  # between two reads of the stream: the last batch's said where
            if (ring_settled := feed.ring_batch_settled) is not None:
                return follow.seq_at(ring_settled)
            if feed.reading_disk or feed.spilling:
                return spilled.delivered_through(feed.disk_settled)
            if feed.pending_messages:
                return None  # read from the stream for the disk, which had no room
            return follow.seq_at(feed.cursor)

        def settled() -> None:
            seq = through()
            if seq is None:
                return
            if seq != wanted.delivered:
                wanted.delivered = seq
                self._note_delivered(wanted.channel, follow)
            if seq > wanted.stored and (wanted.dirty is None or seq > wanted.dirty):
                wanted.dirty = seq
                self._dirty.set()

        feed.on_settled.append(settled)

    def _spawn(self, read: Callable[..., Awaitable[None]], *args: object) -> bool:
        """Run a drain's read of its stream in this component's nursery (False: stopping)."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(read, *args)
        return True

    def _stop(self, drain_id: int, wanted: Wanted) -> None:
        running = self._running.get(wanted.channel)
        if running is not None and running.pop(drain_id, None) is not None:
            if not running:
                del self._running[wanted.channel]
            if wanted.follow is not None:
                self._note_delivered(wanted.channel, wanted.follow)
        wanted.delivered = -1
        if wanted.spilled is not None and wanted.spilled.journal is not None:
            wanted.spilled.journal.remove()  # (its backlog goes with it)
        wanted.spilled = None
        self.manager.remove_drain(drain_id)
        if wanted.follow is not None:
            self.plane.release(wanted.follow)
            wanted.follow = None
        wanted.dirty = None

    def forget_carried_absent(self) -> int:
        """Once the store has loaded every drain (each one carried over is wanted again by
        then): let go of the backlogs carried over for drains deleted while this node was
        down (their files went only when the process ended before). How many."""
        gone = [drain_id for drain_id in self.carried if drain_id not in self.wanted]
        for drain_id in gone:
            del self.carried[drain_id]
            self._discard(drain_id)
        if gone:
            log.info(
                "drains: %d disk backlogs carried over belong to drains deleted meanwhile; removed",
                len(gone),
            )
        return len(gone)

    def _discard(self, drain_id: int) -> None:
        backlogs = self.manager.backlogs
        if backlogs is not None:
            backlogs.discard(drain_id)

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
            spilled = wanted.spilled
            if spilled is not None and spilled.journal is not None and spilled.journal.active:
                self._journal_checkpoint(drain_id, spilled, seq)
        parts: dict[str, list[object]] = {}
        for channel, items in by_channel.items():
            part = parts[channel] = [len(items)]
            for drain_id, _, seq in items:
                part.extend(
                    (keys.lease(channel, drain_id), keys.checkpoint(channel, drain_id), seq)
                )
        replies = await self.plane.call_per_shard(
            CHECKPOINTS, (self.liveness.holder, CHECKPOINT_TTL_MS), parts, "checkpoint"
        )
        refused = False
        for channel, items in by_channel.items():
            results = self._results(channel, replies)
            for (drain_id, wanted, seq), result in zip(items, results, strict=True):
                if result == -1:
                    refused = True  # stored again with the next pipeline
                    continue
                if result == 0:
                    # Its lease key names another holder (or none): not ours any more.
                    before, after = self._lease_event(drain_id, wanted, LeaseEvent.LOST)
                    if before is LeaseState.OWNER and self.wanted.get(drain_id) is wanted:
                        log.warning("drain %d: lease lost to another node, stopping", drain_id)
                        self._stop(drain_id, wanted)
                    continue
                wanted.stored = max(wanted.stored, seq)
                if wanted.dirty is not None and wanted.dirty <= wanted.stored:
                    wanted.dirty = None
        if refused:
            self._dirty.set()
        return len(batch)

    def _journal_checkpoint(self, drain_id: int, spilled: SpilledSeqs, seq: int) -> None:
        """Journal the checkpoint about to be stored, before it is sent: should the process
        be killed, Redis holds it or the one before (``CarriedBacklog.earlier``)."""
        drain = self.manager.drain(drain_id)
        if drain is None:
            return
        disk, loss = drain.feed.disk, drain.feed.loss
        holds = disk is not None and disk.queued_end > disk.entry.spill_acked
        spilled.note_checkpoint((seq, loss.count, loss.since), holds)

    async def _release(
        self, channel: str, drain_id: int, removed: bool = False, owned: bool = True
    ) -> None:
        keys = self.plane.keys
        try:
            with trio.fail_after(CALL_TIMEOUT):
                if removed:
                    # Drain ids are never reused: its lease and checkpoint are of no more use
                    # to anyone (one slot: one command).
                    await self.plane.client.delete(
                        [keys.lease(channel, drain_id), keys.checkpoint(channel, drain_id)]
                    )
                    self.plane.count_trip("other")
                elif owned:
                    calls: list[ScriptCall] = [
                        (RELEASE, [keys.lease(channel, drain_id)], [self.liveness.holder])
                    ]
                    await self.plane.call_scripts(calls, "other", [channel])
        except Exception as exc:
            # Best effort: this node takes it again at its next tick, or, stopped, its
            # liveness key expires.
            log.debug("drain %d: lease not released: %s", drain_id, describe(exc))

    async def _release_all(self) -> None:
        """Stopping: give every lease up at once so other nodes take over at their next tick."""
        if not self.release_on_stop:
            return
        # What was delivered since the last checkpoint, so the next owner does not send it
        # again. Best effort, as the rest (the connection may be gone already).
        stored = False
        with contextlib.suppress(Exception):
            await self._store_checkpoints()
            stored = True
        carried = self._carry_over() if stored else set()
        if not self.liveness.confirmed:
            return
        if carried:
            with contextlib.suppress(Exception), trio.fail_after(CALL_TIMEOUT):
                await self._keep_for_next(carried)
        # Its drains stopped with the node's tasks: without its liveness key every lease it
        # holds is free to take (one command, however many drains).
        with contextlib.suppress(Exception), trio.fail_after(CALL_TIMEOUT):
            await self.plane.client.delete([self.plane.keys.alive(self.liveness.holder)])
            self.plane.count_trip("other")

    async def _keep_for_next(self, carried: set[int]) -> None:
        """Hand the leases of the drains whose backlogs are carried over to an incarnation
        of their own (``keeper``), whose liveness key lives one TTL: other nodes take every
        other lease at once (the node's own key goes next), these only once it expired;
        this node started again by then knows the keeper dead (its data dir records it)
        and takes them at its first tick. Their receivers were refusing data: the wait
        costs them no delivery, and a node that took them at once would start from the
        checkpoint, without the backlog."""
        if self.node_dir is None:
            return  # nowhere to record it: the next process could not tell it dead
        keeper = Liveness(self.node_id, self.ttl)
        await trio.to_thread.run_sync(
            self.node_dir.record,
            [*self.incarnations.record(self.liveness.holder), keeper.holder],
        )
        plane, keys, holder = self.plane, self.plane.keys, self.liveness.holder
        await plane.client.set(keys.alive(keeper.holder), b"1", px=keeper.ttl_ms)
        plane.count_trip("lease")
        by_channel: dict[str, list[int]] = {}
        for drain_id in sorted(carried):
            by_channel.setdefault(self.wanted[drain_id].channel, []).append(drain_id)
        parts: dict[str, list[object]] = {
            channel: [len(ids), *(x for i in ids for x in (keys.lease(channel, i), holder))]
            for channel, ids in by_channel.items()
        }
        # Compare-and-set from this incarnation to the keeper.
        await plane.call_per_shard(HAND_OVER, (keeper.holder, 0), parts, "lease")
        log.info(
            "drains: %d drains with a disk backlog carried over stay with this node for %.0f s",
            len(carried),
            self.ttl,
        )

    def _carry_over(self) -> set[int]:
        """Write, for the next process, the disk backlogs of the drains running here that
        hold messages (``_carried``), each with the checkpoint just stored; their ids."""
        backlogs = self.manager.backlogs
        if backlogs is None or not backlogs.ephemeral or not backlogs.closed_cleanly:
            return set()  # (not closed: the process is ending without a clean stop)
        carried: list[CarriedBacklog] = []
        for running in self._running.values():
            for drain_id, wanted in running.items():
                drain = self.manager.drain(drain_id)
                spilled = wanted.spilled
                if drain is None or spilled is None or not len(spilled):
                    continue
                disk = drain.feed.disk
                if disk is None or disk.queued_end <= disk.entry.spill_acked:
                    continue
                if wanted.dirty is not None or wanted.stored < 0:
                    continue  # its checkpoint is not in Redis: resumed from the stream
                loss = drain.feed.loss
                carried.append(
                    CarriedBacklog(
                        drain_id,
                        wanted.channel,
                        wanted.stored,
                        tuple(spilled.chunks()),
                        loss.count,
                        loss.since,
                    )
                )
        # What the drains journaled for a kill is superseded by what is carried over.
        remove_journals(backlogs.directory)
        try:
            save_carried(backlogs.directory, carried)
        except OSError as exc:
            log.warning("drains: disk backlogs not carried over to the next start: %s", exc)
            return set()
        if carried:
            log.info("drains: %d disk backlogs carried over to the next start", len(carried))
        return {backlog.drain_id for backlog in carried}
