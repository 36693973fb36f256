"""The record format of drain backlog segments (sans-IO: bytes in, values out).

A record is a fixed header followed by an opaque payload (octet-counted frames, as
``native.octet_frames`` makes them; this module never looks inside)::

    offset size  field
         0    2  magic        b"LB"
         2    1  version      1
         3    1  flags        0
         4    4  payload_len  u32, at most MAX_PAYLOAD
         8    4  count        u32, messages in the payload, at least 1
        12    8  first_seq    u64, backlog sequence of the payload's first message
        20    8  written_at   f64, wall-clock seconds when the record was made
        28    4  crc          u32: zlib.crc32 of bytes 2..28, continued over the payload
        32       payload

All little-endian. A record holds the messages ``first_seq .. first_seq + count - 1``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Literal, TypeAlias

MAGIC = b"LB"
VERSION = 1
HEADER = struct.Struct("<2sBBIIQdI")
HEADER_SIZE = HEADER.size
# The crc covers the header from the version byte up to (not including) the crc itself.
_CRC_FIELDS = slice(2, HEADER_SIZE - 4)
# A length past this is damage, never a reason to read or allocate that much.
MAX_PAYLOAD = 64 * 1024 * 1024
MAX_COUNT = (1 << 32) - 1
_SEQ_LIMIT = 1 << 64
# What a header starts with, to tell a torn header (a prefix of this) from garbage.
_HEADER_PREFIX = MAGIC + bytes((VERSION, 0))

Damage: TypeAlias = Literal["torn", "corrupt"]


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """Where one good record lies in a scanned buffer, and what its header says."""

    offset: int
    first_seq: int
    count: int
    written_at: float
    payload_offset: int
    payload_len: int

    @property
    def end_offset(self) -> int:
        return self.payload_offset + self.payload_len

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.count


@dataclass(frozen=True, slots=True)
class ScanResult:
    """The good records from the start offset on, and why the walk stopped.

    ``valid_end`` is the offset just past the last good record (the start offset when there
    is none); ``damage`` is None when the buffer ended exactly there, "torn" when what
    follows is the beginning of a record that was not completely written, "corrupt" when it
    is not a record at all (bad magic, version, flags, length or count, or a crc mismatch).
    """

    records: list[RecordInfo]
    valid_end: int
    damage: Damage | None


def encode_record(first_seq: int, count: int, payload: bytes, written_at: float) -> bytes:
    return record_header(first_seq, count, payload, written_at) + payload


def record_header(first_seq: int, count: int, payload: bytes, written_at: float) -> bytes:
    """The header of the record that holds ``payload``, its crc included: written before
    the payload (``os.writev``), a record is not assembled in memory (a spilling drain's
    records are megabytes; joining them was a fresh allocation and a copy each). Only a
    short ``writev``, rare, joins the two to finish (``SegmentLog.append``)."""
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be between 1 and {MAX_COUNT}, not {count}")
    if not first_seq >= 0 or first_seq + count >= _SEQ_LIMIT:
        raise ValueError(f"messages {first_seq} + {count} do not fit the u64 sequence space")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    header = bytearray(
        HEADER.pack(MAGIC, VERSION, 0, len(payload), count, first_seq, written_at, 0)
    )
    crc = zlib.crc32(payload, zlib.crc32(header[_CRC_FIELDS]))
    struct.pack_into("<I", header, HEADER_SIZE - 4, crc)
    return bytes(header)


def parse_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> RecordInfo | Damage:
    """The header at ``offset``, checked for everything but the crc (which needs the
    payload): "torn" when fewer than HEADER_SIZE bytes are left and they could begin a
    header. Whether the payload is all there is the caller's question."""
    view = memoryview(buf).cast("B")
    available = len(view) - offset
    if available < HEADER_SIZE:
        prefix = bytes(view[offset : offset + len(_HEADER_PREFIX)])
        return "torn" if _HEADER_PREFIX.startswith(prefix) else "corrupt"
    magic, version, flags, payload_len, count, first_seq, written_at, _crc = HEADER.unpack_from(
        view, offset
    )
    if (
        magic != MAGIC
        or version != VERSION
        or flags != 0
        or payload_len > MAX_PAYLOAD
        or count < 1
        or first_seq + count >= _SEQ_LIMIT
    ):
        return "corrupt"
    return RecordInfo(offset, first_seq, count, written_at, offset + HEADER_SIZE, payload_len)


def scan(
    buf: bytes | bytearray | memoryview, offset: int = 0, *, check_crc: bool = True
) -> ScanResult:
    """Walk the records from ``offset`` until the end of ``buf`` or the first damage.

    Payloads are not copied: records are reported by offset. ``check_crc=False`` checks the
    headers only (a cheap walk over data already verified, or to be verified on reading).
    """
    view = memoryview(buf).cast("B")
    end = len(view)
    records: list[RecordInfo] = []
    position = offset
    while position < end:
        info = parse_header(view, position)
        if isinstance(info, str):
            return ScanResult(records, position, info)
        if info.end_offset > end:
            return ScanResult(records, position, "torn")
        if check_crc:
            (stored,) = struct.unpack_from("<I", view, position + HEADER_SIZE - 4)
            header_crc = zlib.crc32(
                view[position + _CRC_FIELDS.start : position + _CRC_FIELDS.stop]
            )
            if zlib.crc32(view[info.payload_offset : info.end_offset], header_crc) != stored:
                return ScanResult(records, position, "corrupt")
        records.append(info)
        position = info.end_offset
    return ScanResult(records, position, None)
