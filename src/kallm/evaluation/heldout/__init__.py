"""Held-out quality: NLL on conversations (and text) no run of a grid trained on, per set and per source.

| module | concept |
| --- | --- |
| `scoring` | `HeldoutScore` (per-example sums, the one schema), `score_heldout`, `carve_heldout`, `quality_retained` |
| `text` | plain-text held-out files: NLL per token in fixed blocks (the protocol, documented there) |
| `text` | plain text scored as a language model: fixed-length blocks, the first token of each unscored |

A grid's held-out sets (carved once, tokenised once, their shared prefix computed once, every run scored)
are kept by `kallm.experiment.heldout_sets`; the scores' schema is `kallm.folders.records.HeldoutScore`.
"""

from __future__ import annotations

from kallm.evaluation.heldout.scoring import HeldoutScore, carve_heldout, quality_retained, score_heldout

__all__ = ["HeldoutScore", "carve_heldout", "quality_retained", "score_heldout"]
