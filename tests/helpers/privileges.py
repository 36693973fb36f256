"""A check run without root's power to read any file.

As root, a file with mode 0 is still readable (CAP_DAC_OVERRIDE), so a test of an
unreadable file proves nothing; CI runs as root. ``unprivileged`` runs the check in a
forked child that has become nobody (uid and gid 65534, no supplementary groups) and
hands back its result or its exception; as any other user it just calls it. The file
must then sit where nobody can reach it: ``searchable_dir``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

NOBODY = 65534


def unprivileged(check: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``check(*args, **kwargs)``, as nobody when the tests run as root."""
    if os.geteuid() != 0:
        return check(*args, **kwargs)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                outcome: tuple[bool, object] = (True, check(*args, **kwargs))
            except BaseException as exc:  # handed to the parent, which raises it
                outcome = (False, exc)
            try:
                data = pickle.dumps(outcome)
            except Exception:  # an exception that does not pickle: its text then
                data = pickle.dumps((False, AssertionError(repr(outcome[1]))))
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as source:
        data = source.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the unprivileged child failed"
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


@contextlib.contextmanager
def searchable_dir() -> Iterator[Path]:
    """A fresh directory every user may search (not list), in the system's temp dir: a
    file in it is reached by nobody too, and then only its own mode decides. (pytest's
    ``tmp_path`` is inside a directory only its owner may enter.)"""
    with tempfile.TemporaryDirectory(prefix="logplexd-test-") as name:
        os.chmod(name, 0o711)
        yield Path(name)
