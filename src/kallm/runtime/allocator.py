"""glibc's malloc told to keep freed memory for the next allocation instead of handing it back to the OS.

By default glibc serves a block above its mmap threshold with fresh pages from mmap and unmaps it on
free, and trims the top of the heap once more free memory sits there than twice that threshold (which
starts at 128 KiB and follows the largest block freed so far, up to 32 MiB). A PyTorch step on the CPU
allocates and frees activation-sized blocks (MiB to tens of MiB) layer after layer, so many of them
fault their pages in afresh, zero-filled by the kernel. On the embedded SmolLM2 (last:5 KAN, 4x256
tokens, 2 threads) six bf16 training steps took 190-360k minor page faults; with `keep_freed_memory()`
about 50k, and the steps ran faster (figures in the README's precision section).

What it does: `mallopt(M_MMAP_THRESHOLD, 32 MiB)` (blocks up to 32 MiB come from the heap, where a freed
block serves the next; larger ones are still mapped and unmapped, so a one-off huge block never
fragments the heap) and `mallopt(M_TRIM_THRESHOLD, 2 GiB)` (the heap is trimmed only when 2 GiB at its
top are free). The cost: the process's resident memory stays near its peak instead of falling after it.
It is process-wide, so the library never does it on its own: the command line calls it at start (and
the benchmarks, which measure what the command line runs); from Python, call it once yourself. Skipped
where malloc is not glibc's, where the user set glibc's own tunables (MALLOC_*_ variables or glibc.malloc.*
in GLIBC_TUNABLES: theirs win), and with KALLM_MALLOC=system. `release_freed_memory()` hands what the
heap keeps back to the OS at a point where that is wanted: a new peak-memory window (one per training run).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# glibc's <malloc.h> parameter numbers
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # the largest glibc accepts on 64-bit
# The largest scratch buffer kallm's CPU hot paths make at once (a chunk of logits, attention scores): below
# the mmap threshold with a margin, so it comes from the heap instead of being mapped and faulted in afresh.
HEAP_BLOCK_BYTES = 24 * 2**20
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes a C int
USER_TUNABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
OPT_OUT = "KALLM_MALLOC"

TUNED = (f"glibc, freed memory kept (M_MMAP_THRESHOLD={MMAP_THRESHOLD_BYTES // 2**20} MiB, "
         f"M_TRIM_THRESHOLD={(TRIM_THRESHOLD_BYTES + 1) // 2**30} GiB)")

_state = "system default"


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as described above; True when it is (now or earlier) tuned."""
    global _state
    if _state == TUNED:
        return True
    why_not = _reason_to_skip()
    if why_not is not None:
        _state = f"system default ({why_not})"
        log.debug("malloc left alone: %s", why_not)
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        _state = "system default (mallopt refused)"
        return False
    _state = TUNED
    return True


def _reason_to_skip() -> str | None:
    if os.environ.get(OPT_OUT, "").lower() == "system":
        return f"{OPT_OUT}=system"
    if not _glibc():
        return "malloc is not glibc's"
    set_by_user = [name for name in USER_TUNABLES if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        set_by_user.append("GLIBC_TUNABLES glibc.malloc.*")
    if set_by_user:
        return f"{', '.join(set_by_user)} set"
    return None  # glibc always has mallopt


ONEDNN_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
# oneDNN keeps every compiled kernel (one per op, shape and dtype) in a process-wide cache of 1,024 by
# default. A grid's runs see new shapes (widths, sequence lengths), so the cache grew by tens of MB per run
# and a long grid's retained memory with it; 128 kernels cover one run's working set.
ONEDNN_CACHE_CAPACITY = 128


def bound_kernel_cache() -> str:
    """Bound oneDNN's kernel cache (unless the user set its size): the value in effect, for provenance.

    oneDNN reads the variable when it first builds a kernel, so this must run before any tensor op."""
    os.environ.setdefault(ONEDNN_CACHE_VARIABLE, str(ONEDNN_CACHE_CAPACITY))
    return os.environ[ONEDNN_CACHE_VARIABLE]


def release_freed_memory() -> None:
    """Give the heap's free pages back to the OS (glibc's malloc_trim), so that resident memory is what
    is live: a training run's peak window starts there, not at what an earlier run freed and the heap kept."""
    if _glibc():
        ctypes.CDLL(None).malloc_trim(ctypes.c_size_t(0))


def _glibc() -> bool:
    return platform.libc_ver()[0] == "glibc"


def allocator_state() -> str:
    """How malloc is set up in this process, for run provenance (timings depend on it)."""
    return _state
