"""Per-run peak memory: a new window starts at each training run (grids run many in one process)."""

from __future__ import annotations

import sys

import pytest

from kallm.training.memory import peak_memory, reset_peak_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset is Linux-only")
def test_reset_starts_a_new_peak_window():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA peak is torch's own counter")
    block = bytearray(400_000_000)  # touch 400 MB
    block[::4096] = b"\x01" * len(block[::4096])
    high, kind = peak_memory()
    del block
    reset_peak_memory()
    low, _ = peak_memory()
    assert kind == "rss"
    assert high - low > 300_000_000
