"""Which syslog connection makes room when the input is full (issue 22).

Connections that never send a byte must not lock producers out for ``syslog_idle_timeout``.
At ``max_syslog_connections`` one connection is evicted to admit the new one:

- the oldest connection that has sent nothing yet ("silent"), if there is one: it holds a
  place without producing (they are kept in accept order: O(1));
- else the longest-idle of the others, idle since the kernel last received data for it
  (``idle_of``: Linux ``TCP_INFO``); one is never a candidate while bytes wait to be read
  (``idle_of`` returns None: it is busy or held by pushback, and evicting it would lose
  them). A random sample of ``SAMPLE`` of them is looked at, so that a flood of
  connections does not cost a scan of every open connection for each accept.

The trio adapter (``syslog.py``) cancels the victim: a silent one through ``first`` (its
wait for the first bytes) or the flag it checks before that wait, an active one through
``scope`` (around its whole read loop, whose ``finally`` does the bookkeeping).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

SAMPLE = 16


@dataclass(eq=False)
class Slot:
    stream: Any
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # Set while the connection waits for its first bytes (a move_on scope).
    first: trio.CancelScope | None = None
    done: trio.Event = field(default_factory=trio.Event)
    silent: bool = True
    evicted: bool = False
    index: int = -1  # in ConnectionTable._active once not silent


class ConnectionTable:
    """The open connections of one ``SyslogInput`` (plain and TLS together)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._silent: dict[Slot, None] = {}  # insertion order = accept order
        self._active: list[Slot] = []
        self._by_stream: dict[int, Slot] = {}
        self._evicting = 0
        self._rng = rng or random.Random()

    def __len__(self) -> int:
        """Connections that hold a place (evicted ones on their way out do not)."""
        return len(self._by_stream) - self._evicting

    def get(self, stream: object) -> Slot | None:
        return self._by_stream.get(id(stream))

    def add(self, stream: object) -> Slot:
        slot = Slot(stream)
        self._by_stream[id(stream)] = slot
        self._silent[slot] = None
        return slot

    def activate(self, slot: Slot) -> None:
        """The connection sent its first bytes."""
        if slot.evicted or not slot.silent:
            return
        slot.silent = False
        del self._silent[slot]
        slot.index = len(self._active)
        self._active.append(slot)

    def remove(self, slot: Slot) -> None:
        if self._by_stream.get(id(slot.stream)) is not slot:
            return
        del self._by_stream[id(slot.stream)]
        if slot.evicted:
            self._evicting -= 1
        else:
            self._forget(slot)

    def victim(self, idle_of: Callable[[Any], float | None]) -> Slot | None:
        """The oldest silent connection, else the longest-idle of a sample of the others;
        None when none can be evicted."""
        for slot in self._silent:
            return slot
        best: Slot | None = None
        best_idle = -1.0
        active = self._active
        sample = active if len(active) <= SAMPLE else self._rng.sample(active, SAMPLE)
        for slot in sample:
            idle = idle_of(slot.stream)
            if idle is not None and idle > best_idle:
                best, best_idle = slot, idle
        return best

    def evict(self, slot: Slot) -> None:
        """Mark ``slot`` evicted and cancel what it waits on; it stops holding a place."""
        if slot.evicted:
            return
        self._forget(slot)
        slot.evicted = True
        self._evicting += 1
        if slot.silent:
            if slot.first is not None:
                slot.first.cancel()
        else:
            slot.scope.cancel()

    def _forget(self, slot: Slot) -> None:
        if slot.silent:
            self._silent.pop(slot, None)
            return
        active = self._active
        last = active.pop()
        if last is not slot:
            active[slot.index] = last
            last.index = slot.index
        slot.index = -1
