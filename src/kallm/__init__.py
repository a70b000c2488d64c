"""kallm: retrofit pretrained causal LMs with Kolmogorov-Arnold Network feed-forward blocks."""

from __future__ import annotations

__version__ = "0.1.0"

# The public API is imported lazily so `import kallm` stays cheap (no torch/transformers import).
_LAZY = {
    "load_model": "kallm.models",
    "retrofit": "kallm.surgery",
    "save_retrofit": "kallm.retrofit_io",
    "load_retrofit": "kallm.retrofit_io",
    "train": "kallm.training",
    "evaluate_bbh": "kallm.bbh",
    "run_experiment": "kallm.experiments",
    "write_report": "kallm.report",
    "KallmError": "kallm.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kallm' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
