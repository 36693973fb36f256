"""The Platform API's records from before they were in the store: ``platform.lpj``.

Accounts, apps and log-drain timestamps (``model.Account``, ``App``, ``DrainMeta``) are held
by the store, beside the channels they refer to: the embedded store's journal for one node,
Redis or Redis Cluster for several (``_state`` has their operations). Earlier versions kept
them in a journal of their own in each node's data dir, so with a shared store an app made on
one node was unknown on the others:

    platform.lpj    journal header, then one framed msgpack record per transaction, each a
                    list of operations with the codes ``_state`` uses for these records
                    (``A``/``a`` account, ``P``/``p`` app, ``R``/``r`` drain timestamps)
    platform.lock   flock()ed by its writers

``migrate_platform_journal`` moves such a file into the store once, when the daemon starts:
it replays the journal, adds what it holds in one change (``Store.import_platform_records``:
records the store already has stay as they are, clashes are logged), and only once that
change is durable renames the file ``platform.lpj.migrated`` (a backup, never read again). A
crash in between imports it again at the next start, which changes nothing. With several
nodes on one Redis each imports its own file; an app name two nodes both hold goes to the
first imported, and the others are logged.
"""

from __future__ import annotations

import contextlib
import logging
import os

import msgpack
import trio

from . import files
from ._state import State
from .base import PlatformImport, Store
from .model import StoreCorrupt

log = logging.getLogger("logplexd.store")

JOURNAL_FILE = "platform.lpj"
LOCK_FILE = "platform.lock"
MIGRATED_SUFFIX = ".migrated"
_CODES = frozenset("AaPpRr")


def read_platform_journal(path: str | os.PathLike[str]) -> State | None:
    """The records a ``platform.lpj`` holds (in a ``State``), or None when there is none.

    A torn last record (a writer that crashed mid-append, never acknowledged) is ignored;
    anything else unreadable raises StoreCorrupt."""
    path = os.fspath(path)
    try:
        scan = files.read_journal(path)
    except files.FormatError as exc:
        raise StoreCorrupt(str(exc)) from None
    if scan is None:
        return None
    state = State()
    for payload in scan.records:
        try:
            ops = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise StoreCorrupt(f"{path}: unreadable record: {exc}") from None
        for op in ops:
            if not isinstance(op, list) or not op or op[0] not in _CODES:
                raise StoreCorrupt(f"{path}: not a Platform API record: {op!r:.80}")
            try:
                state.apply(op, 0.0)
            except (IndexError, KeyError, TypeError) as exc:
                raise StoreCorrupt(f"{path}: malformed record: {exc!r}") from None
    return state


async def migrate_platform_journal(
    store: Store, data_dir: str | os.PathLike[str]
) -> PlatformImport | None:
    """Import ``<data_dir>/platform.lpj`` into ``store`` and rename it ``.migrated``; None
    when there is no such file. Raises StoreUnavailable (the file stays, to be imported at
    the next try) and StoreCorrupt (unreadable: the file stays, nothing is imported)."""
    path = os.path.join(os.fspath(data_dir), JOURNAL_FILE)
    state = await trio.to_thread.run_sync(read_platform_journal, path)
    if state is None:
        return None
    report = await store.import_platform_records(
        list(state.accounts.values()),
        list(state.apps.values()),
        list(state.drain_meta.values()),
    )
    moved_to = await trio.to_thread.run_sync(_set_aside, path)
    for line in report.skipped:
        log.warning("platform records: %s: not imported: %s", path, line)
    log.info(
        "platform records: imported %d accounts, %d apps and %d drain timestamps of %d, %d"
        " and %d from %s into the store; the file is now %s",
        report.accounts,
        report.apps,
        report.drain_meta,
        len(state.accounts),
        len(state.apps),
        len(state.drain_meta),
        path,
        moved_to,
    )
    return report


def _set_aside(path: str) -> str:
    """Rename the imported journal (never over an earlier backup) and drop its lock file."""
    target = path + MIGRATED_SUFFIX
    number = 0
    while os.path.exists(target):
        number += 1
        target = f"{path}{MIGRATED_SUFFIX}.{number}"
    os.rename(path, target)
    files.fsync_dir(os.path.dirname(path) or ".")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(os.path.dirname(path), LOCK_FILE))
    return target


__all__ = [
    "JOURNAL_FILE",
    "MIGRATED_SUFFIX",
    "migrate_platform_journal",
    "read_platform_journal",
]
