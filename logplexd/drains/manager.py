"""``DrainManager``: every drain of the daemon, each a task in one nursery.

The control API calls the synchronous methods after a change is durable; each takes effect
at once. A drain added while ``run`` is not running yet starts when it does.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import trio

from .. import __version__
from ..backlog import BacklogStore
from ..router import Registry
from .drain import Drain, DrainStats
from .feed import DrainFeed
from .pump import DrainPump
from .settings import DrainSettings
from .target import delivery_target
from .transport import TlsContexts

log = logging.getLogger("logplexd.drains")


class DrainManager:
    def __init__(
        self,
        registry: Registry,
        *,
        user_agent: str | None = None,
        settings: DrainSettings | None = None,
        tls_ca_file: str | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        backlogs: BacklogStore | None = None,
        pump_writes: Callable[[list[tuple[int, bytes]]], list[int | OSError]] | None = None,
    ) -> None:
        self.registry = registry
        # Disk backlogs (None: a drain that falls a ring behind is lapped, with an L10).
        self.backlogs = backlogs
        self.user_agent = user_agent or f"logplexd/{__version__}"
        self.settings = settings or DrainSettings()
        self.tls = TlsContexts(tls_ca_file)
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock
        self.pump = DrainPump(
            linger=self.settings.linger,
            linger_messages=self.settings.linger_messages,
            pushback=self.settings.overflow == "pushback",
            # What the pump's worker thread runs for a round (tests hold it in flight).
            write_all=pump_writes,
        )
        self._drains: dict[int, Drain] = {}
        self._nursery: trio.Nursery | None = None
        self._closing = trio.Event()

    # -- the task -------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every drain until cancelled, or until ``shutdown`` has let them flush."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.pump.run)
            if self.backlogs is not None:
                await nursery.start(self.backlogs.run)
            for drain in self._drains.values():
                nursery.start_soon(drain.run)
            task_status.started()
            try:
                await self._closing.wait()
                nursery.cancel_scope.cancel()
            finally:
                self._nursery = None

    async def shutdown(self, deadline: float | None = None) -> None:
        """Let each drain deliver what the channel held when this was called, for at most
        ``deadline`` seconds (default ``settings.shutdown_grace``), then stop them all."""
        grace = self.settings.shutdown_grace if deadline is None else deadline
        with trio.move_on_after(grace):
            for drain in list(self._drains.values()):
                drain.feed.begin_flush()
            for drain in list(self._drains.values()):
                if self._nursery is not None:
                    await drain.done.wait()
        self._closing.set()
        for drain in list(self._drains.values()):
            drain.stop()
        with trio.CancelScope(shield=True), trio.move_on_after(self.settings.shutdown_grace):
            # A write the pump's worker had in flight when the drains stopped is settled
            # first: delivered (so counted, and in Redis mode in the last checkpoints), or
            # kept, to be moved to the backlog with the rest.
            await self.pump.wait_settled()
        await self.close_backlogs()

    async def close_backlogs(self) -> None:
        """Move what drains hold only in memory to their disk backlogs, write and sync
        them (shielded: this is the final flush), bounded by ``shutdown_grace``."""
        backlogs = self.backlogs
        if backlogs is None or not backlogs.opened:
            return
        moved = 0
        for drain in self._drains.values():
            # Ephemeral (Redis mode): the next process resumes from the checkpoints.
            moved += 0 if backlogs.ephemeral else drain.feed.spill_rest()
        with trio.CancelScope(shield=True), trio.move_on_after(self.settings.shutdown_grace):
            await backlogs.close()
        if moved:
            log.info("%d undelivered messages written to drain backlogs", moved)

    # -- changes (synchronous; take effect at once) -----------------------------------------
    def add_drain(self, channel_name: str, drain_id: int, token: str, url: str) -> None:
        """Start delivering the channel's new messages (from now on) to ``url``.

        Raises ``InvalidDrainUrl`` for a URL the control API should have refused. Adding an
        id that exists replaces that drain.
        """
        target = delivery_target(url)
        self._stop_drain(drain_id)
        feed = DrainFeed(self.registry, channel_name, wall_clock=self.wall_clock)
        if self.backlogs is not None and self.backlogs.opened:
            feed.attach_backlog(self.backlogs.attach(drain_id, channel_name))
        drain = Drain(
            drain_id=drain_id,
            token=token,
            target=target,
            feed=feed,
            settings=self.settings,
            tls=self.tls,
            user_agent=self.user_agent,
            rng=random.Random(self.rng.random()),
            wall_clock=self.wall_clock,
            pump=self.pump,
        )
        self._drains[drain_id] = drain
        if self._nursery is not None:
            self._nursery.start_soon(drain.run)
        log.info("drain %d of %s -> %s", drain_id, channel_name, target.redacted)

    def update_drain(self, drain_id: int, url: str) -> bool:
        """Point the drain at ``url``; it keeps its cursor and every undelivered message.

        Returns False for an unknown drain; raises ``InvalidDrainUrl`` for a bad URL.
        """
        drain = self._drains.get(drain_id)
        if drain is None:
            return False
        target = delivery_target(url)
        if target != drain.target:
            drain.retarget(target)
            log.info("drain %d now -> %s", drain_id, target.redacted)
        return True

    def remove_drain(self, drain_id: int) -> bool:
        """The drain was deleted: stop it and delete its disk backlog."""
        return self._stop_drain(drain_id, forget=True)

    def _stop_drain(self, drain_id: int, *, forget: bool = False) -> bool:
        """Stop the drain here; its disk backlog is kept (it is replaced, or paused)
        unless ``forget``."""
        drain = self._drains.pop(drain_id, None)
        if drain is None:
            return False
        drain.stop()
        disk = drain.feed.detach_backlog()
        if disk is not None and self.backlogs is not None:
            if forget or self.backlogs.ephemeral:
                self.backlogs.destroy(disk)
            else:
                self.backlogs.detach(disk)
        return True

    def remove_channel(self, channel_name: str) -> int:
        """Stop every drain of the channel; returns how many there were."""
        ids = [i for i, d in self._drains.items() if d.channel_name == channel_name]
        for drain_id in ids:
            self.remove_drain(drain_id)
        return len(ids)

    # -- observation ----------------------------------------------------------------------
    def __contains__(self, drain_id: int) -> bool:
        return drain_id in self._drains

    def __len__(self) -> int:
        return len(self._drains)

    def drain(self, drain_id: int) -> Drain | None:
        return self._drains.get(drain_id)

    def stats(self) -> list[DrainStats]:
        return [drain.stats() for drain in self._drains.values()]

    def drain_stats(self, drain_id: int) -> DrainStats | None:
        drain = self._drains.get(drain_id)
        return None if drain is None else drain.stats()

    def channel_stats(self, channel_name: str) -> list[DrainStats]:
        return [d.stats() for d in self._drains.values() if d.channel_name == channel_name]
