"""The memory of a daemon process: keep the heap it grew, and no transparent huge pages.

In Redis mode a flush holds tens of MB of frames and routed batches for one round trip and
then frees them. glibc gives the top of its heap back to the kernel past a threshold, and
moves that threshold and the one above which a block gets pages of its own as the process
frees large blocks: the next flush then faulted those pages in and had them cleared again
(perf: page faults, ``clear_page`` and their accounting about 6 % of a Redis-mode node with
1,000 busy channels, ``_int_malloc`` 3 %). Fixed thresholds keep freed memory for the
next flush instead. The process's peak memory stays mapped: what the bounds (ring, buffer,
flush) allow anyway.

Transparent huge pages are turned off for the process (``no_huge_pages``), as Redis does
for itself: each ring reserves its bound's address space up front (``MAP_NORESERVE``) and
touches only what it holds, and with the kernel's THP set to ``always`` (the default of
several distributions) every touched region got a 2 MiB page cleared. 1,000 channels with
a drain each (e2e, 3 M messages): the embedded node 1.3 GB resident instead of 0.56 GB,
0.77 M msgs/s at 1.40 CPU s/M instead of ~2 M at 0.6; a Redis-mode node 3.8 GB, its event
loop stalled past Redis's call timeout, nothing delivered in the run.

Under strict overcommit (``vm.overcommit_memory`` 2) the kernel counts a reservation's
whole size against its commit limit, ``MAP_NORESERVE`` or not: 1,000 channels' rings
(16 MiB each by default) took the limit, and the next allocation anywhere (a socket read's
buffer) raised MemoryError and ended the daemon. There the rings grow on the heap instead
(``fit_overcommit``; ``reserve_address_space`` in ``_native/ring.pyx``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from pathlib import Path

from ..native import reserve_address_space

log = logging.getLogger("logplexd")

OVERCOMMIT_SETTING = Path("/proc/sys/vm/overcommit_memory")
# prctl(2): the process's "THP disable" flag (Linux 3.15+; kept across fork and execve).
_PR_SET_THP_DISABLE = 41
# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap (glibc's own ceiling for its moving threshold).
MMAP_THRESHOLD = 32 * 1024 * 1024
# Free memory at the top of the heap is given back to the kernel only past this much.
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_heap() -> bool:
    """Fix glibc's thresholds (see the module's docstring); whether it was done (False on
    another C library or platform: nothing to tune)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    if not done:
        log.debug("the C library refused fixed allocator thresholds")
    return done


def no_huge_pages() -> bool:
    """Turn transparent huge pages off for this process (see the module's docstring);
    whether it was done (False on another platform, or a kernel without the flag)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
        log.debug("transparent huge pages left on: prctl refused (errno %d)", ctypes.get_errno())
        return False
    return True


def strict_overcommit(setting: str) -> bool:
    """Whether ``vm.overcommit_memory`` (its file's text) is strict accounting (2)."""
    return setting.strip() == "2"


def fit_overcommit(setting_file: Path = OVERCOMMIT_SETTING) -> bool:
    """Under strict overcommit, make rings grow on the heap rather than reserve their
    bounds' address space; whether it did."""
    try:
        setting = setting_file.read_text()
    except OSError:
        return False
    if not strict_overcommit(setting):
        return False
    reserve_address_space(False)
    log.info("strict overcommit (vm.overcommit_memory = 2): channel rings grow on the heap")
    return True
