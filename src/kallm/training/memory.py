"""Memory of a training run: the current figure per step and the peak per run.

On CUDA both come from the allocator (max allocated, reset per run). On CPU the current figure is
the process RSS and the peak is Linux's VmHWM, reset per run through /proc/self/clear_refs; without
that reset, several runs in one process (an experiment grid) would all report the largest peak so far.
The reset first hands memory the heap kept (see `kallm.runtime.allocator`) back to the OS, or a run's peak would
include what the run before it freed.

`rss_window()` measures the peak RSS of a longer span (one run of a grid: loading, distillation, training,
evaluation) on any device; a training run's own reset inside it folds the peak so far into the window first.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator

import torch

from kallm.runtime.allocator import release_freed_memory

MemoryKind = str  # "cuda" | "rss"


class RssWindow:
    """The process's peak RSS since the window opened (read `peak()` while it is open)."""

    def __init__(self) -> None:
        self.folded = 0  # the highest peak of the spans that a reset inside the window closed

    def peak(self) -> int:
        return max(self.folded, rss_peak())


_OPEN_WINDOWS: list[RssWindow] = []


def current_memory() -> tuple[int, MemoryKind]:
    """(bytes, kind): CUDA peak allocated on GPU, current RSS on CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda"
    return current_rss(), "rss"


def current_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def reset_peak_memory() -> None:
    """Start a new peak-memory window (CUDA's peak counter, or this process's VmHWM on Linux)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    _reset_rss_peak()


def _reset_rss_peak() -> None:
    for window in _OPEN_WINDOWS:  # the peak so far stays counted in the longer windows around this one
        window.folded = max(window.folded, rss_peak())
    release_freed_memory()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not Linux, or not permitted: the process-lifetime peak is reported instead
        pass


@contextlib.contextmanager
def rss_window() -> Iterator[RssWindow]:
    """A peak-RSS window over the block, on CPU or CUDA alike (VmHWM: the process's resident memory)."""
    window = RssWindow()
    _reset_rss_peak()
    _OPEN_WINDOWS.append(window)
    try:
        yield window
    finally:
        _OPEN_WINDOWS.remove(window)


def peak_memory() -> tuple[int, MemoryKind]:
    """(bytes, kind) of the peak since the last `reset_peak_memory`."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda"
    return rss_peak(), "rss"


def rss_peak() -> int:
    """The process's peak RSS since the last reset (Linux's VmHWM; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
