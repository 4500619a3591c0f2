"""glibc's allocator, told to give memory back: the process-level setting `ferry up` makes before it loads anything.

glibc moves its mmap threshold up to the largest block freed so far (up to 32 MiB), and its trim threshold to twice
that: after ferry once freed a few MiB in one piece (a /status body, an xDS response, a big dict's table), later
blocks of that size came from the heap and the freed top of the heap was kept. At 10,000 services that left
~40 MiB of free heap in ferry's resident memory for good (mallinfo2: 41 MiB free of 100 MiB). Fixed thresholds
(glibc's own defaults, no longer moving) send big blocks to mmap, which returns them when freed, and trim the heap's
top: measured with bench/convergence.py at 10,000 services, peak RSS 297 -> 286 MiB, after the run 297 -> 262 MiB.
Elsewhere (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("ferry")

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
THRESHOLD = 128 * 1024  # glibc's default for both, kept from moving


def tune_malloc(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds; False where there is no glibc (or it refuses)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
    if not done:
        log.debug("glibc's malloc thresholds could not be set")
    return done
