"""On-disk format of the embedded store: a versioned header, then length + CRC32 framed records.

    file    = magic(8) version(u16 BE) reserved(6 zero bytes) record*
    record  = length(u32 BE) crc32(u32 BE) payload(length bytes, msgpack)

The journal holds one record per committed transaction (a list of ``_state`` operations).
The snapshot holds exactly one record, the whole state, and is only ever replaced by
rename, so it is never torn.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

from ._state import State
from .model import (
    Account,
    App,
    ChannelRecord,
    CredentialRecord,
    DrainMeta,
    DrainRecord,
    SessionRecord,
    StoreCorrupt,
    TokenRecord,
)

log = logging.getLogger("logplexd.store")

JOURNAL_MAGIC = b"LPLXJRNL"
SNAPSHOT_MAGIC = b"LPLXSNAP"
FORMAT_VERSION = 1
HEADER = struct.Struct(">8sH6x")
RECORD_HEAD = struct.Struct(">II")
# A length above this is garbage, not a record (a snapshot of millions of objects fits).
MAX_RECORD_BYTES = 1 << 30


class FormatError(Exception):
    pass


def header(magic: bytes) -> bytes:
    return HEADER.pack(magic, FORMAT_VERSION)


def frame(payload: bytes) -> bytes:
    return RECORD_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def check_header(data: bytes, magic: bytes, path: str) -> None:
    if len(data) < HEADER.size:
        raise FormatError(f"{path}: file shorter than its header")
    found_magic, version = HEADER.unpack_from(data)
    if found_magic != magic:
        raise FormatError(f"{path}: not a logplexd store file (bad magic)")
    if version != FORMAT_VERSION:
        raise FormatError(f"{path}: format version {version}, this build reads {FORMAT_VERSION}")


@dataclass
class JournalScan:
    records: list[bytes]
    # Offset just past the last good record: the journal is cut back to it before appending.
    valid_length: int
    ignored_bytes: int
    ignored_reason: str | None


def scan_records(data: bytes, start: int) -> JournalScan:
    records: list[bytes] = []
    pos = start
    end = len(data)
    reason: str | None = None
    while pos < end:
        if end - pos < RECORD_HEAD.size:
            reason = "truncated record header"
            break
        length, crc = RECORD_HEAD.unpack_from(data, pos)
        body_start = pos + RECORD_HEAD.size
        if length > MAX_RECORD_BYTES:
            reason = "implausible record length"
            break
        if body_start + length > end:
            reason = "truncated record"
            break
        payload = data[body_start : body_start + length]
        if zlib.crc32(payload) != crc:
            reason = "checksum mismatch"
            break
        records.append(payload)
        pos = body_start + length
    return JournalScan(records, pos, end - pos, reason)


def read_journal(path: str) -> JournalScan | None:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    if len(data) < HEADER.size and JOURNAL_MAGIC.startswith(data[: len(JOURNAL_MAGIC)]):
        # Crashed while creating the journal: it holds nothing yet.
        return JournalScan([], 0, len(data), "truncated header" if data else None)
    check_header(data, JOURNAL_MAGIC, path)
    return scan_records(data, HEADER.size)


def read_snapshot(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    check_header(data, SNAPSHOT_MAGIC, path)
    scan = scan_records(data, HEADER.size)
    if len(scan.records) != 1 or scan.ignored_bytes:
        raise FormatError(f"{path}: damaged snapshot ({scan.ignored_reason or 'no record'})")
    return scan.records[0]


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, content: bytes, *, sync: bool = True) -> None:
    """Write a temp file, fsync it, rename it over ``path``, fsync the directory. Without
    ``sync``, no fsync: whole or not at all across a process's death (a kill -9 loses
    nothing the kernel took), not across a machine's, and never waits on the disk."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(content)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        fsync_dir(os.path.dirname(path) or ".")


def write_snapshot(path: str, payload: bytes) -> int:
    content = header(SNAPSHOT_MAGIC) + frame(payload)
    write_atomically(path, content)
    return len(content)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# -- snapshot encoding -----------------------------------------------------------------------
# A snapshot payload is a stream of msgpack objects: the counters, then for each section its
# name and row count followed by the rows one by one. Loading it row by row keeps the decoded
# form of the whole snapshot from ever being in memory at once. A channel row is
# [name, label, flags], with its overflow mode appended only when one is set (so snapshots
# written before the field existed load unchanged). The Platform API's records are three
# more sections, written only when they hold something (so a store without them writes the
# snapshot an older logplexd reads).


def _channel_row(channel: ChannelRecord) -> list[Any]:
    row: list[Any] = [channel.name, channel.label, list(channel.flags)]
    if channel.overflow is not None:
        row.append(channel.overflow)
    return row


_OPTIONAL = frozenset({"accounts", "apps", "drain_meta"})


def encode_snapshot(state: State) -> bytes:
    packer = msgpack.Packer(use_bin_type=True)
    sections: list[tuple[str, list[list[Any]]]] = [
        ("channels", [_channel_row(c) for c in state.channels.values()]),
        ("tokens", [[t.id, t.channel, t.name] for t in state.tokens.values()]),
        ("drains", [[d.id, d.channel, d.token, d.url] for d in state.drains.values()]),
        (
            "credentials",
            [
                [c.id, c.password_hash, list(c.permissions), c.name]
                for c in state.credentials.values()
            ],
        ),
        ("sessions", [[s.id, s.body, s.expires_at] for s in state.sessions.values()]),
        (
            "accounts",
            [
                [a.id, a.email, a.token_hash, a.created_at, a.updated_at]
                for a in state.accounts.values()
            ],
        ),
        ("apps", [[app.to_record()] for app in state.apps.values()]),
        (
            "drain_meta",
            [[m.drain_id, m.app_id, m.created_at, m.updated_at] for m in state.drain_meta.values()],
        ),
    ]
    sections = [(name, rows) for name, rows in sections if rows or name not in _OPTIONAL]
    parts = [packer.pack(state.counters)]
    for name, rows in sections:
        parts.append(packer.pack([name, len(rows)]))
        parts.extend(packer.pack(row) for row in rows)
    return b"".join(parts)


def load_snapshot(state: State, payload: bytes, now: float) -> None:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
    unpacker.feed(payload)
    state.counters.update(next(unpacker))
    channels = state.channels
    # Share one string object per channel name and per token name: with hundreds of
    # thousands of tokens the duplicate strings would cost tens of megabytes.
    names: dict[str, str] = {}
    for name, count in unpacker:
        for _ in range(count):
            row = next(unpacker)
            if name == "channels":
                overflow = row[3] if len(row) > 3 else None
                channels[row[0]] = ChannelRecord(row[0], row[1], tuple(row[2]), overflow)
            elif name == "tokens":
                channel = channels[row[1]].name if row[1] in channels else row[1]
                state.put_token(TokenRecord(row[0], channel, names.setdefault(row[2], row[2])))
            elif name == "drains":
                channel = channels[row[1]].name if row[1] in channels else row[1]
                state.put_drain(DrainRecord(row[0], channel, row[2], row[3]))
            elif name == "credentials":
                state.credentials[row[0]] = CredentialRecord(row[0], row[1], tuple(row[2]), row[3])
            elif name == "sessions":
                if row[2] > now:
                    state.sessions[row[0]] = SessionRecord(row[0], row[1], row[2])
            elif name == "accounts":
                state.put_account(Account(*row))
            elif name == "apps":
                state.put_app(App.from_record(row[0]))
            elif name == "drain_meta":
                state.drain_meta[row[0]] = DrainMeta(*row)
            else:
                raise StoreCorrupt(f"unknown snapshot section {name!r}")
