"""The daemon process keeps the C heap it grew (``logplexd.daemon.keep_heap``): blocks of a
flush's size come from the heap, and freeing them does not hand the pages back to the
kernel, so the next flush does not fault them in again. Checked in a fresh interpreter
(the settings are process-wide) through glibc's own account, ``mallinfo2``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json, sys
from logplexd.daemon import keep_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
tuned = keep_heap() if sys.argv[1] == "tuned" else None
blocks = [bytearray(1024 * 1024) for _ in range(64)]  # a flush's worth: 64 MB
held = libc.mallinfo2()
del blocks
after = libc.mallinfo2()
report = {"tuned": tuned, "mapped_while_held": held.hblkhd, "heap_after_free": after.arena}
print(json.dumps(report))
"""


def probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_flush_sized_allocation_comes_from_the_heap_and_stays_there() -> None:
    mib = 1024 * 1024
    tuned = probe("tuned")
    assert tuned["tuned"] is True
    assert tuned["mapped_while_held"] < 8 * mib  # from the heap, not pages of their own
    assert tuned["heap_after_free"] >= 60 * mib  # kept for the next flush
    # Python's own default: each 1 MB block is pages of its own, given back when freed.
    plain = probe("plain")
    assert plain["mapped_while_held"] >= 60 * mib and plain["heap_after_free"] < 8 * mib
