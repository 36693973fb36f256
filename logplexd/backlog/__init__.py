"""Drain backlogs on disk (issue 19): append-only segment files of checksummed records.

``records`` is the sans-IO record format; ``SegmentLog`` keeps one drain's backlog in a
directory of segments within a disk budget, written from a writer thread and read back,
acknowledged and measured from the event loop (no trio in either: callers pick the
threads). ``spill`` puts them to work for the drains (``BacklogStore``, ``DrainBacklog``).
"""

from .ledger import map_shared
from .records import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Damage,
    RecordInfo,
    ScanResult,
    encode_record,
    parse_header,
    scan,
)
from .segments import (
    DEFAULT_BUDGET_BYTES,
    DEFAULT_SEGMENT_BYTES,
    Chunk,
    Recovery,
    SegmentLog,
    segment_name,
)
from .spill import BacklogStore, DrainBacklog, SpillSettings

__all__ = [
    "BacklogStore",
    "DEFAULT_BUDGET_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "Chunk",
    "Damage",
    "DrainBacklog",
    "RecordInfo",
    "Recovery",
    "ScanResult",
    "SegmentLog",
    "SpillSettings",
    "encode_record",
    "map_shared",
    "parse_header",
    "scan",
    "segment_name",
]
