"""One run of a grid: its peak memory, recorded, and what it leaves behind, released when it ends.

A grid runs many models in one process. Whatever still refers to a finished run's model (a cache bound
to it, a table keyed on it, a reference cycle the collector has not reached yet) keeps its hundreds of
MB resident into the next run; on the embedded SmolLM2 each run of a grid once raised the process's
peak by about 0.9 GB (a weak-keyed table of bf16 weight copies whose values kept their keys alive).
`run_memory` closes each run: the grid drops its references to the run (`release`), the collector
frees the cycles, and the heap hands its free pages back to the OS (the CLI tunes malloc to keep freed
memory, see `kallm.runtime.allocator`), so the next run starts from what is live.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from kallm.runtime.allocator import release_freed_memory
from kallm.training.memory import current_rss, rss_window

MIB = 2**20


@dataclass
class RunMemory:
    """A run's peak resident memory (loading to recording) and what stayed resident after its release."""

    peak_rss_mb: float = 0.0
    rss_after_mb: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {key: round(value, 1) for key, value in asdict(self).items()}


@contextlib.contextmanager
def run_memory(release: Callable[[], None]) -> Iterator[RunMemory]:
    """Measure the block's peak RSS; at its end (failed or not) `release()`, collect and trim the heap.

    The run's own references (its model, tokenizer, teacher, optimizer) must be gone by then: keep them
    in a function called inside the block, not in the caller's locals."""
    memory = RunMemory()
    with rss_window() as window:
        try:
            yield memory
        finally:
            memory.peak_rss_mb = window.peak() / MIB
            release()
            gc.collect()
            release_freed_memory()
            memory.rss_after_mb = current_rss() / MIB
