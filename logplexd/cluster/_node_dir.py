"""``NodeDir``: a Redis-mode node's data directory, held for the process's life, and the
incarnations it recorded there.

The node holds ``redis-node.lock`` (``store.DirLock``) from its start to its end: a second
process on the same directory refuses to start (it would share ``redis-unsent.bin`` and
this record with the first), and a process that finds the lock free knows that no process
of this kernel holds it any more. ``redis-incarnations`` names the kernel's boot
(``boot <id>``, the first line) and then, one per line, each incarnation
(``lease.Liveness``: ``node-id/random``) the node took, written before the incarnation is
used in Redis. So the next process on the directory can tell them dead
(``lease.Incarnations``: if recorded under its own boot) and take its drains back without
waiting for their liveness keys to expire. Replaced whole (``store.write_atomically``: a
temporary file, fsync, rename), never torn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..store import DirLock, write_atomically

LOCK_FILE = "redis-node.lock"
INCARNATIONS_FILE = "redis-incarnations"
# Linux: random, new at each boot of the kernel, the same for every process (and container)
# it runs.
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This kernel boot's id (None: not known, and then nothing recorded is proven)."""
    try:
        text = BOOT_ID.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def parse(data: bytes) -> tuple[str | None, list[str]]:
    """The boot and the incarnations a file names (anything else in it is passed over: a
    node id has no space or line break, an incarnation has a ``/``)."""
    boot: str | None = None
    holders: list[str] = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        key, _, rest = line.partition(" ")
        if key == "boot" and rest and boot is None and not holders:
            boot = rest
        elif "/" in line and " " not in line and line.isprintable():
            holders.append(line)
    return boot, holders


def render(boot: str | None, holders: Sequence[str]) -> bytes:
    head = f"boot {boot}\n" if boot else ""
    return (head + "".join(f"{holder}\n" for holder in holders)).encode()


class NodeDir:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / INCARNATIONS_FILE
        self._lock = DirLock(directory, LOCK_FILE)
        self.boot = boot_id()
        # What earlier processes recorded, and under which boot (``open``).
        self.recorded: list[str] = []
        self.recorded_on: str | None = None

    def open(self) -> list[str]:
        """Hold the directory (``StoreLocked``: another process does) and read what earlier
        processes recorded; returns the incarnations."""
        self._lock.acquire()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        except BaseException:
            self._lock.release()
            raise
        self.recorded_on, self.recorded = parse(data)
        return self.recorded

    @staticmethod
    def peek(directory: Path) -> list[str]:
        """The incarnations ``directory`` records, read without its lock (a node may be
        running on it): for monitoring and tests, not for deciding who is dead."""
        try:
            return parse((directory / INCARNATIONS_FILE).read_bytes())[1]
        except FileNotFoundError:
            return []

    def record(self, holders: Sequence[str]) -> None:
        """Make the file name exactly ``holders``, under this boot (durable on return)."""
        assert self._lock.held, "open() first"
        write_atomically(str(self.path), render(self.boot, holders))

    def close(self) -> None:
        self._lock.release()
