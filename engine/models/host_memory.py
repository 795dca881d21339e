"""Keep freed host memory in the process instead of handing it back to the kernel.

glibc serves an allocation above its mmap threshold (dynamic, 128 KiB to 32 MiB) with fresh pages
and unmaps them at ``free``; the heap's top is also trimmed back once 128 KiB are free. A forward
pass on the CPU allocates and frees activations of a few MB per layer (one layer of SmolLM2-135M on
16 x 135 tokens: 5 MB of hidden state, 14 MB of MLP activations), so without this every layer's
outputs are page-faulted and zeroed by the kernel again. Scoring the 30 skip-one candidates of
SmolLM2-135M on one such batch took 5.8 million page faults and 12 s of kernel time out of 47 s;
with freed memory kept, 90 thousand faults, 0.8 s, and 40 s in all (naive evaluation: 80 -> 75 s).
The same cure as preloading jemalloc or tcmalloc, without a library the user may not have.

The cost: up to ``TRIM_BYTES`` of freed memory stays in the process (reused by the next
allocation, never counted twice). Allocations of ``MMAP_BYTES`` and more (a dense logits tensor)
still get fresh pages: keeping those too (a 1 GiB threshold) made the plain healing loop of
bench/distill.py 1.4 s/step faster but raised its peak RSS from 4.4 to 5.5 GB, while the engine's
own paths (chunked heads, cached healing) never allocate that much at once. Only glibc has
``mallopt``; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_BYTES = 64 << 20  # below this, allocations come from the heap and are reused
TRIM_BYTES = 512 << 20  # freed memory kept at the top of the heap

_applied: bool | None = None


def keep_freed_host_memory() -> bool:
    """Tune glibc's allocator once per process; True when it took effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
    if not _applied:
        log.info("glibc refused the allocator settings; freed host memory goes back to the kernel")
    return _applied
