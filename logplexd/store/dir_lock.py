"""A data directory held by one process: an exclusive ``flock`` on a file in it.

The kernel lets go of the lock when the process ends, however it ends (``kill -9``
included), and never while it runs. So holding it proves that no other live process uses
the directory, and finding it free proves that every process that held it before is gone.
The embedded store holds ``lock`` while it has the store open; a Redis-mode node holds
``redis-node.lock`` for its whole life (``cluster.NodeDir``).
"""

from __future__ import annotations

import fcntl
import os

from .model import StoreLocked


class DirLock:
    def __init__(self, directory: str | os.PathLike[str], name: str) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.path = os.path.join(self.directory, name)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (creating the directory if needed); StoreLocked when another
        process holds it. Never waits: a second process on one directory is a mistake to
        report, not to queue behind the first."""
        if self._fd is not None:
            return
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        # O_CLOEXEC (Python's default): a child process must not keep the lock alive.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(
                f"{self.directory} is in use by another process (it holds "
                f"{os.path.basename(self.path)})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
