"""How a model's arithmetic runs: precision (fp32 | bf16 | auto) and the CPU-bf16 machinery behind it.

The one entry point is a `Precision` (`resolve_precision(name, device)`) and its `autocast(device, *models)`:
inside it, on a CPU with native bf16, frozen weights are used as bf16 copies made once, attention runs as
grouped bf16 matmuls, and freed memory is kept for reuse. Nothing outside this package enters those helpers.

| module | concept |
| --- | --- |
| `precision` | `Precision`, `resolve_precision`, `autocast`, CPU capability detection |
| `bf16_weights` | frozen weights cast once to bf16 for a CPU bf16 block; the float32 output head |
| `grouped_attention` | attention as two grouped bf16 matmuls, switched in for sdpa models inside the block |
| `allocator` | glibc malloc settings that keep freed memory for the next step; the scratch-size limit |
"""

from __future__ import annotations

from kallm.runtime.precision import PRECISIONS, Precision, autocast, resolve_precision

__all__ = ["PRECISIONS", "Precision", "autocast", "resolve_precision"]
