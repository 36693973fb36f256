"""Drain ownership: one lease per drain, decided without I/O.

A node either *stands by* (it would run the drain if it could get the lease) or *owns* the
drain. Each tick the adapter asks ``Lease.command`` what to send (``SET key node NX PX ttl``
to acquire, a compare-and-extend script to renew), sends every drain's command in one
pipeline, and feeds each reply back as a ``LeaseEvent``. ``Lease.tick`` expires the lease
locally: an owner that has not had a renewal confirmed within the TTL (measured from when
the confirmed request was *sent*, so a slow reply never stretches it) stops delivering
before any other node can have acquired the key, so two owners never deliver at once as
long as clocks run at the same rate.

Timing (defaults, all configurable): TTL 10 s, one tick every TTL/4 = 2.5 s. A node that
dies stops renewing; its key expires at most TTL after its last renewal, and a standby
node tries at its next tick: takeover within TTL + one tick = 12.5 s < 15 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

DEFAULT_TTL = 10.0
# An owner gives the lease up locally this much before the key can expire in Redis.
SAFETY_MARGIN = 0.1  # fraction of the TTL


class LeaseState(Enum):
    STANDBY = "standby"
    OWNER = "owner"


class LeaseEvent(Enum):
    ACQUIRED = "acquired"  # SET NX succeeded
    HELD_ELSEWHERE = "held_elsewhere"  # SET NX refused: another node owns it
    RENEWED = "renewed"  # the key was still ours and got a new TTL
    LOST = "lost"  # renewal found the key gone or someone else's
    UNREACHABLE = "unreachable"  # no answer from Redis
    EXPIRED = "expired"  # local deadline passed without a confirmed renewal
    RELEASE = "release"  # the drain is removed or the node stops


class Command(Enum):
    ACQUIRE = "acquire"
    RENEW = "renew"


TRANSITIONS: dict[tuple[LeaseState, LeaseEvent], LeaseState] = {
    (LeaseState.STANDBY, LeaseEvent.ACQUIRED): LeaseState.OWNER,
    (LeaseState.STANDBY, LeaseEvent.HELD_ELSEWHERE): LeaseState.STANDBY,
    (LeaseState.STANDBY, LeaseEvent.UNREACHABLE): LeaseState.STANDBY,
    (LeaseState.STANDBY, LeaseEvent.EXPIRED): LeaseState.STANDBY,
    (LeaseState.STANDBY, LeaseEvent.RELEASE): LeaseState.STANDBY,
    # A reply to an old renewal may arrive after the lease was given up: nothing changes.
    (LeaseState.STANDBY, LeaseEvent.RENEWED): LeaseState.STANDBY,
    (LeaseState.STANDBY, LeaseEvent.LOST): LeaseState.STANDBY,
    (LeaseState.OWNER, LeaseEvent.RENEWED): LeaseState.OWNER,
    (LeaseState.OWNER, LeaseEvent.ACQUIRED): LeaseState.OWNER,
    # Unreachable: keep delivering until the local deadline (EXPIRED) says otherwise.
    (LeaseState.OWNER, LeaseEvent.UNREACHABLE): LeaseState.OWNER,
    (LeaseState.OWNER, LeaseEvent.HELD_ELSEWHERE): LeaseState.STANDBY,
    (LeaseState.OWNER, LeaseEvent.LOST): LeaseState.STANDBY,
    (LeaseState.OWNER, LeaseEvent.EXPIRED): LeaseState.STANDBY,
    (LeaseState.OWNER, LeaseEvent.RELEASE): LeaseState.STANDBY,
}


def next_state(state: LeaseState, event: LeaseEvent) -> LeaseState:
    return TRANSITIONS[(state, event)]


@dataclass(slots=True)
class Lease:
    """One drain's lease as this node sees it. Times are monotonic seconds."""

    ttl: float = DEFAULT_TTL
    state: LeaseState = LeaseState.STANDBY
    valid_until: float = 0.0

    @property
    def owned(self) -> bool:
        return self.state is LeaseState.OWNER

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    def command(self) -> Command:
        return Command.RENEW if self.owned else Command.ACQUIRE

    def apply(self, event: LeaseEvent, sent_at: float) -> tuple[LeaseState, LeaseState]:
        """Apply one event; ``sent_at`` is when the request it answers was sent.

        Returns (before, after): the adapter starts the drain on STANDBY -> OWNER and stops
        it on OWNER -> STANDBY.
        """
        before = self.state
        self.state = next_state(before, event)
        if self.state is LeaseState.OWNER and event in (LeaseEvent.ACQUIRED, LeaseEvent.RENEWED):
            self.valid_until = max(self.valid_until, sent_at + self.ttl * (1 - SAFETY_MARGIN))
        if self.state is LeaseState.STANDBY:
            self.valid_until = 0.0
        return before, self.state

    def tick(self, now: float) -> tuple[LeaseState, LeaseState]:
        """Expire the lease locally once its deadline has passed."""
        if self.owned and now >= self.valid_until:
            return self.apply(LeaseEvent.EXPIRED, now)
        return self.state, self.state


def renew_interval(ttl: float) -> float:
    """How often leases are acquired or renewed: four chances per TTL."""
    return ttl / 4
