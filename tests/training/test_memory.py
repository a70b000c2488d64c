"""Per-run peak memory: a new window starts at each training run (grids run many in one process), and
memory an earlier run freed is not counted in it (the suite runs with malloc tuned as the CLI tunes it,
so the heap keeps freed blocks: see tests/conftest.py)."""

from __future__ import annotations

import sys

import pytest
import torch

from kallm.training.memory import current_memory, peak_memory, reset_peak_memory

# the RSS window: CUDA peaks are torch's own counter, and the RSS reset is Linux-only
rss_window_only = pytest.mark.skipif(torch.cuda.is_available() or not sys.platform.startswith("linux"),
                                     reason="the RSS peak window (Linux, no CUDA)")


def touched(n_bytes: int) -> bytearray:
    block = bytearray(n_bytes)
    block[::4096] = b"\x01" * len(block[::4096])
    return block


@rss_window_only
def test_reset_starts_a_new_peak_window():
    block = touched(400_000_000)
    high, kind = peak_memory()
    del block
    reset_peak_memory()
    low, _ = peak_memory()
    assert kind == "rss"
    assert high - low > 300_000_000


@rss_window_only
def test_memory_the_heap_kept_from_an_earlier_run_is_not_in_the_next_window():
    earlier_run = [touched(16 * 2**20) for _ in range(40)]  # 16 MiB blocks come from the heap, 640 MiB
    with_it, _ = current_memory()
    del earlier_run  # the heap keeps these pages (M_TRIM_THRESHOLD 2 GiB)...
    reset_peak_memory()  # ...until the new window starts
    next_window, _ = peak_memory()
    assert with_it - next_window > 500 * 2**20


@rss_window_only
def test_a_training_runs_reset_inside_a_longer_window_keeps_the_earlier_peak_in_it():
    """A grid run's window spans loading and distillation before training resets its own window."""
    from kallm.training.memory import rss_peak, rss_window

    with rss_window() as run:
        start = run.peak()
        block = touched(400_000_000)  # a distillation before training
        del block
        reset_peak_memory()  # training's own window starts
        assert rss_peak() < start + 200_000_000
        assert run.peak() > start + 350_000_000
