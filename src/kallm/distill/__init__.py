"""Function-preserving initialisation: fit the new FFNs to the original model before training.

| module | concept |
| --- | --- |
| `layerwise` | `DistillConfig`; record the original FFNs' inputs and outputs once, fit each replacement (least squares, AdamW) |
| `solve` | least-squares read-outs: the ridge chosen on validation rows, kept only if better than the current weights |
| `adamw` | the AdamW stage: best state kept, restarted at half the lr when its first measurement is worse |
| `sequential` | fit layers bottom-up on the states the retrofitted model really produces (targets `ffn` or `block`) |
| `teacher` | the untouched model rebuilt beside a retrofit, sharing every frozen tensor (for the fit and for KD) |
"""

from __future__ import annotations

from kallm.distill.layerwise import DistillConfig, LayerFit, distill_retrofit
from kallm.distill.sequential import sequential_distill
from kallm.distill.teacher import build_teacher

__all__ = ["DistillConfig", "LayerFit", "build_teacher", "distill_retrofit", "sequential_distill"]
