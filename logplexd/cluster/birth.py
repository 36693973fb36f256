"""A drain's birth checkpoint (issue 11): it delivers what is sent after it got its URL.

In Redis mode a drain runs on the node holding its lease, from its checkpoint key
``P:{ch:<name>}:drain:<id>:ckpt`` (``Keys``). A drain with no checkpoint starts at the
stream's newest entry when a node first acquires it, so without a birth checkpoint the
messages sent between the 201 of the control API and that first acquisition (a lease
tick later at best; much later when the lease is held elsewhere) would never be delivered.

So when a drain gets its destination (created with a URL, or a reservation given one),
``birth_hook`` writes, before the API answers, the channel's current message sequence as
the drain's checkpoint, unless it already has one: one script on one channel's keys (the
sequence and the checkpoint share the ``{ch:<name>}`` hash tag, so it is legal on Redis
Cluster). The first owner then follows the stream from there and delivers every message
with a higher sequence: every one accepted after the 2xx, and also those accepted before
it but still in some node's outbound buffer then (they get their sequence when written).

A reservation (no URL) gets no checkpoint: it delivers nothing until it gets a URL, and its
birth is then (otherwise the first owner would replay, or announce as lost, everything the
channel received while it was only a reservation).

If the write fails (the data plane is unreachable while the configuration store answered),
the drain is already stored and the API answers 201 all the same (the change cannot be
taken back): one warning is logged, and the first owner falls back to the newest entry of
the stream when it acquires the drain, as before this existed. An owner that acquires the
drain before the birth write lands does the same (its start, the newest entry then, is
not later than the birth sequence, so nothing after the 2xx is lost either); the script
never overwrites a checkpoint an owner already stored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from ..store import DrainRecord
from ._link import CALL_TIMEOUT, describe, redis_errors
from ._stream import CHECKPOINT_TTL_MS, Script, ScriptCall
from .plane import DataPlane

log = logging.getLogger("logplexd.drains")

# KEYS: 1 checkpoint, 2 channel sequence. Returns the checkpoint the drain starts after
# (the one already there, or the sequence just written; 0 for a channel never written to).
_BIRTH_LUA = """
local current = redis.call('GET', KEYS[1])
if current then
  return tonumber(current)
end
local seq = redis.call('GET', KEYS[2]) or '0'
redis.call('SET', KEYS[1], seq, 'PX', ARGV[1])
return tonumber(seq)
"""
BIRTH = Script(_BIRTH_LUA)


async def write_birth(plane: DataPlane, drain: DrainRecord) -> int:
    """Store the drain's birth checkpoint (unless it has one); the checkpoint it starts
    after. One round trip (counted as "other"), by SHA1 like every data-plane script.
    Raises what ``redis_errors()`` names (trio.TooSlowError after CALL_TIMEOUT)."""
    keys = [plane.keys.checkpoint(drain.channel, drain.id), plane.keys.sequence(drain.channel)]
    calls: list[ScriptCall] = [(BIRTH, keys, [CHECKPOINT_TTL_MS])]
    with trio.fail_after(CALL_TIMEOUT):
        (result,) = await plane.call_scripts(calls, "other", [drain.channel])
    return result if isinstance(result, int) else 0  # the script returns an integer


def birth_hook(plane: DataPlane) -> Callable[[DrainRecord], Awaitable[None]]:
    """The hook ``RedisStore.drain_birth_hooks`` runs once a drain got its destination."""
    errors = redis_errors()

    async def hook(drain: DrainRecord) -> None:
        if drain.url is None:
            return  # a reservation: born when it gets a URL
        try:
            seq = await write_birth(plane, drain)
        except errors as exc:
            # The drain and its URL stay out of the log line (the URL may hold credentials).
            log.warning(
                "drain %d of %s: start point not stored (Redis: %s); its first owner starts "
                "at the newest message then, so messages sent before that are not delivered",
                drain.id,
                drain.channel,
                describe(exc),
            )
            return
        log.debug("drain %d of %s: delivers messages after %d", drain.id, drain.channel, seq)

    return hook
