"""kallm: retrofit pretrained causal LMs with Kolmogorov-Arnold Network feed-forward blocks."""

from __future__ import annotations

__version__ = "0.1.0"

# The public API is imported lazily so `import kallm` stays cheap (no torch/transformers import).
# (The packages are named `retrofitting`, `training`, `experiment`: a package `kallm.retrofit` would
# replace the function `kallm.retrofit` as an attribute of `kallm` as soon as it was imported.)
_LAZY = {
    "load_model": "kallm.models.loading",
    "retrofit": "kallm.retrofitting",
    "retrofit_report": "kallm.retrofitting",
    "save_retrofit": "kallm.retrofitting",
    "load_retrofit": "kallm.retrofitting",
    "export_pretrained": "kallm.export.pretrained",
    "parse_variant": "kallm.retrofitting",
    "VariantSpec": "kallm.retrofitting",
    "train": "kallm.training",
    "TrainConfig": "kallm.training",
    "evaluate_bbh": "kallm.evaluation.bbh",
    "run_experiment": "kallm.experiment",
    "write_report": "kallm.report",
    "KallmError": "kallm.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kallm' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
