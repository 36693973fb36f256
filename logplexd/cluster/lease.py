"""Drain ownership: one liveness key per node, one lease key per drain, decided without I/O.

A node either *stands by* for a drain (it would run the drain if it could get the lease) or
*owns* it. A drain's lease key names its holder: a node *incarnation* (``node-id/random``,
new each time the node starts or finds its liveness key gone). The holder is alive while its
liveness key exists; the node renews that one key each tick (``SET ... XX PX ttl``), not one
key per drain, so a node's idle cost does not grow with its drains. A standby node that
knows a drain's holder asks only whether that holder is still alive (one ``EXISTS`` per
distinct holder per tick) and takes the drain over, compare-and-set, once it is not.

Why that is safe: a liveness key once gone never comes back (a node that finds its own key
gone takes a new incarnation), so a holder seen dead stays dead; and an owner stops
delivering when no renewal of its liveness key has been confirmed within the TTL (measured
from when the confirmed request was *sent*, so a slow reply never stretches it), before the
key can expire in Redis and anyone can take its drains over: two owners never deliver at
once as long as clocks run at the same rate.

Timing (defaults, all configurable): TTL 10 s, one tick every TTL/4 = 2.5 s. A node that
dies stops renewing; its liveness key expires at most TTL after its last renewal, and a
standby node takes over at its next tick: within TTL + one tick = 12.5 s < 15 s.

A node restarted on its data directory need not wait that long for its own drains
(``Incarnations``): it records each incarnation there before using it in Redis, and holds
the directory's lock for its life. The incarnations an earlier process recorded under the
same kernel boot are dead for certain once the lock is free (the kernel frees it only when
that process is gone), so the new process treats them as dead at once. An incarnation of
the same node id that the directory never recorded, or recorded under another boot, proves
nothing (another process, maybe on another machine, may have been given the same id, or a
copy of the directory, by mistake): it stays alive until its key expires.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

DEFAULT_TTL = 10.0
# An owner gives its drains up locally this much before its liveness key can expire.
SAFETY_MARGIN = 0.1  # fraction of the TTL


class LeaseState(Enum):
    STANDBY = "standby"
    OWNER = "owner"


class LeaseEvent(Enum):
    ACQUIRED = "acquired"  # the lease key was free, or its holder dead: now ours
    HELD_ELSEWHERE = "held_elsewhere"  # another incarnation holds it (alive, as far as known)
    LOST = "lost"  # the key is gone or someone else's (found by a checkpoint), or ours lapsed
    EXPIRED = "expired"  # local deadline passed without a confirmed liveness renewal
    RELEASE = "release"  # the drain is removed or the node stops


TRANSITIONS: dict[tuple[LeaseState, LeaseEvent], LeaseState] = {
    (LeaseState.STANDBY, LeaseEvent.ACQUIRED): LeaseState.OWNER,
    (LeaseState.STANDBY, LeaseEvent.HELD_ELSEWHERE): LeaseState.STANDBY,
    (LeaseState.STANDBY, LeaseEvent.EXPIRED): LeaseState.STANDBY,
    (LeaseState.STANDBY, LeaseEvent.RELEASE): LeaseState.STANDBY,
    # A late reply may arrive after the lease was given up: nothing changes.
    (LeaseState.STANDBY, LeaseEvent.LOST): LeaseState.STANDBY,
    (LeaseState.OWNER, LeaseEvent.ACQUIRED): LeaseState.OWNER,
    (LeaseState.OWNER, LeaseEvent.HELD_ELSEWHERE): LeaseState.STANDBY,
    (LeaseState.OWNER, LeaseEvent.LOST): LeaseState.STANDBY,
    (LeaseState.OWNER, LeaseEvent.EXPIRED): LeaseState.STANDBY,
    (LeaseState.OWNER, LeaseEvent.RELEASE): LeaseState.STANDBY,
}


def next_state(state: LeaseState, event: LeaseEvent) -> LeaseState:
    return TRANSITIONS[(state, event)]


@dataclass(slots=True)
class Lease:
    """One drain's lease as this node sees it."""

    state: LeaseState = LeaseState.STANDBY
    # Who holds the lease key, as last seen; None: not known (try to acquire it).
    holder: str | None = None

    @property
    def owned(self) -> bool:
        return self.state is LeaseState.OWNER

    def wants(self, dead: set[str]) -> bool:
        """Whether to try to acquire it now: not ours, and free or held by ``dead``."""
        return not self.owned and (self.holder is None or self.holder in dead)

    def apply(self, event: LeaseEvent, holder: str | None = None) -> tuple[LeaseState, LeaseState]:
        """Apply one event (``holder``: who holds the key now, when the reply said).

        Returns (before, after): the adapter starts the drain on STANDBY -> OWNER and stops
        it on OWNER -> STANDBY.
        """
        before = self.state
        self.state = next_state(before, event)
        if event in (LeaseEvent.ACQUIRED, LeaseEvent.HELD_ELSEWHERE):
            self.holder = holder
        elif event in (LeaseEvent.LOST, LeaseEvent.RELEASE):
            self.holder = None  # look again at the next tick
        return before, self.state


def new_incarnation() -> str:
    return secrets.token_hex(6)


def node_of(holder: str) -> str:
    """The node id of a holder (``node-id/random``; a node id may hold a ``/`` itself)."""
    return holder.rpartition("/")[0]


@dataclass(slots=True)
class Liveness:
    """This node's liveness key, which keeps every lease it holds. Times are monotonic s."""

    node_id: str
    ttl: float = DEFAULT_TTL
    incarnation: str = field(default_factory=new_incarnation)
    # Whether the key exists, as last confirmed (else it is to be created, ``SET NX``).
    confirmed: bool = False
    # Whether the incarnation is recorded in the node's data directory: only then may it be
    # written to Redis (a later process must be able to tell it dead).
    recorded: bool = False
    valid_until: float = 0.0

    @property
    def holder(self) -> str:
        """What this node writes into the lease keys it holds."""
        return f"{self.node_id}/{self.incarnation}"

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    def valid(self, now: float) -> bool:
        return now < self.valid_until

    def renewed(self, sent_at: float) -> None:
        """Created or renewed by a request sent at ``sent_at``."""
        self.confirmed = True
        self.valid_until = max(self.valid_until, sent_at + self.ttl * (1 - SAFETY_MARGIN))

    def gone(self) -> str:
        """The key was not there to renew (it expired: the node was cut off for a TTL, or
        Redis lost it): every lease of this incarnation may have been taken over. Takes a
        new incarnation; returns the old holder (dead now, for good)."""
        old = self.holder
        self.incarnation = new_incarnation()
        self.confirmed = False
        self.recorded = False
        self.valid_until = 0.0
        return old


class Incarnations:
    """This node's other incarnations: those known dead for certain, and what its data
    directory must record.

    ``recorded``: what earlier processes on the data directory recorded, under the kernel
    boot ``recorded_on``. They are dead for certain if recorded under this very boot
    (``boot``) of this machine's kernel, since this process now holds the directory's lock
    (``provably_dead``); their liveness keys may still be in Redis until deleted
    (``unburied``): until then other nodes take them for alive. Recorded under another boot
    (a reboot; or a copy of the directory on another machine, or one shared over a network
    file system, where the lock proves nothing) they prove nothing (``unproven``): alive
    until their keys expire, as any other node's.
    """

    __slots__ = ("node_id", "boot", "unburied", "dead", "unproven", "_told")

    def __init__(
        self,
        node_id: str,
        recorded: Iterable[str] = (),
        recorded_on: str | None = None,
        boot: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.boot = boot
        holders = list(dict.fromkeys(recorded))
        proven = provably_dead(recorded_on, boot)
        self.unburied: list[str] = holders if proven else []
        # Earlier processes' incarnations and this process's own old ones (``left``).
        self.dead: set[str] = set(self.unburied)
        self.unproven: set[str] = set() if proven else set(holders)
        # Strangers already told of (``stranger``): once each.
        self._told: set[str] = set()

    def record(self, current: str) -> list[str]:
        """What the data directory must hold (under ``boot``) before ``current`` is used in
        Redis: it, and the earlier ones whose keys may still be in Redis (a process killed
        before it deleted them leaves them to the next)."""
        return [*self.unburied, current]

    def buried(self) -> None:
        """The earlier ones' liveness keys are deleted: nothing left to record of them."""
        self.unburied = []

    def left(self, old: str) -> None:
        """This process gave ``old`` up (its key was gone): dead for good, and with no key
        to delete, not to be recorded any more."""
        self.dead.add(old)

    def stranger(self, holder: str, current: str) -> bool:
        """Whether ``holder`` is an incarnation of this node id that this directory never
        recorded, seen for the first time. It may be alive (another process given this
        node id): treated as any other node's until its key expires."""
        if holder == current or holder in self.dead or holder in self.unproven:
            return False
        if holder in self._told or node_of(holder) != self.node_id:
            return False
        self._told.add(holder)
        return True


def provably_dead(recorded_on: str | None, boot: str | None) -> bool:
    """Whether the incarnations a data directory recorded under kernel boot ``recorded_on``
    are dead, now that this process, under boot ``boot``, holds the directory's lock. Only
    under the same boot: a free lock says that no process of this kernel holds it, nothing
    of a machine the directory was copied from or is shared with. (After a reboot their
    keys have mostly expired anyway.)"""
    return boot is not None and recorded_on == boot


def renew_interval(ttl: float) -> float:
    """How often liveness is renewed and leases acquired: four chances per TTL."""
    return ttl / 4
