"""Memory of a training run: the current figure per step and the peak per run.

On CUDA both come from the allocator (max allocated, reset per run). On CPU the current figure is
the process RSS and the peak is Linux's VmHWM, reset per run through /proc/self/clear_refs; without
that reset, several runs in one process (an experiment grid) would all report the largest peak so far.
The reset first hands memory the heap kept (see `kallm.runtime.allocator`) back to the OS, or a run's peak would
include what the run before it freed.
"""

from __future__ import annotations

import resource

import torch

from kallm.runtime.allocator import release_freed_memory

MemoryKind = str  # "cuda" | "rss"


def current_memory() -> tuple[int, MemoryKind]:
    """(bytes, kind): CUDA peak allocated on GPU, current RSS on CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda"
    import psutil

    return int(psutil.Process().memory_info().rss), "rss"


def reset_peak_memory() -> None:
    """Start a new peak-memory window (CUDA's peak counter, or this process's VmHWM on Linux)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    release_freed_memory()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not Linux, or not permitted: the process-lifetime peak is reported instead
        pass


def peak_memory() -> tuple[int, MemoryKind]:
    """(bytes, kind) of the peak since the last `reset_peak_memory`."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda"
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "rss"
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "rss"  # Linux reports KiB
