"""A busy syslog connection read and framed by a worker thread, handed to the loop in batches.

The event loop was the limit at full load (py-spy: the ``recv`` calls and the framing were
about 40 % of its time at 2 M msgs/s on one connection). The framer runs without the GIL, so
a thread that reads and frames overlaps with the loop routing and delivering the previous
reads. A ``trio.to_thread.run_sync`` per read costs ~130 µs of CPU (more than the framing it
moves), so the thread lives as long as the connection stays busy and hands over whatever
it has queued per wake-up of the loop: one pipe write, only when the loop is waiting.

Bounded: at most ``MAX_QUEUED`` framed reads wait for the loop; the thread then stops
reading, and TCP flow control holds the sender, exactly as when the loop itself is busy.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections import deque
from enum import Enum

import trio

from ..native import Batch, OctetFramer

MAX_QUEUED = 4


class ReaderEnd(Enum):
    EOF = "eof"
    IDLE = "idle"  # nothing arrived for the idle timeout
    QUIET = "quiet"  # reads got small: the connection goes back to the loop
    STOPPED = "stopped"


# What the thread hands over: a framed read (bytes read, batch), an end, or an error.
Item = tuple[int, Batch] | ReaderEnd | OSError


class ConnectionReader:
    def __init__(
        self,
        fd: int,
        framer: OctetFramer,
        *,
        read_size: int,
        quiet_below: int,
        idle_timeout: float,
    ) -> None:
        self.fd = fd
        self.framer = framer
        self.read_size = read_size
        self.quiet_below = quiet_below
        self.idle_ms = max(1, int(idle_timeout * 1000))
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._queue: deque[Item] = deque()
        self._stopping = False
        self._loop_waiting = False
        # Thread -> loop ("items queued") and loop -> thread ("stop"), as pipes both sides
        # can wait on: trio's wait_readable and the thread's poll().
        self._ready_r, self._ready_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._ready_r, False)

    # -- the thread ---------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except OSError as exc:
            self._push(exc)
        except BaseException:
            self._push(ReaderEnd.STOPPED)
            raise

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            with self._lock:
                while len(self._queue) >= MAX_QUEUED and not self._stopping:
                    self._space.wait()
                if self._stopping:
                    self._push_locked(ReaderEnd.STOPPED)
                    return
            events = poller.poll(self.idle_ms)
            if not events:
                self._push(ReaderEnd.IDLE)
                return
            if any(fd == self._stop_r for fd, _ in events):
                self._push(ReaderEnd.STOPPED)
                return
            try:
                data = os.read(self.fd, self.read_size)
            except BlockingIOError:
                continue
            if not data:
                self._push(ReaderEnd.EOF)
                return
            self._push((len(data), self.framer.feed(data)))
            if len(data) < self.quiet_below:
                self._push(ReaderEnd.QUIET)
                return

    def _push(self, item: Item) -> None:
        with self._lock:
            self._push_locked(item)

    def _push_locked(self, item: Item) -> None:
        self._queue.append(item)
        if self._loop_waiting:
            self._loop_waiting = False
            os.write(self._ready_w, b"!")

    # -- the loop -----------------------------------------------------------------------
    async def items(self) -> list[Item]:
        """Everything queued, oldest first; waits (without blocking the loop) for at least one."""
        while True:
            with self._lock:
                if self._queue:
                    items = list(self._queue)
                    self._queue.clear()
                    self._space.notify()
                    return items
                self._loop_waiting = True
            await trio.lowlevel.wait_readable(self._ready_r)
            with contextlib.suppress(BlockingIOError):
                os.read(self._ready_r, 64)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._space.notify()
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"!")

    def close(self) -> None:
        for fd in (self._ready_r, self._ready_w, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
