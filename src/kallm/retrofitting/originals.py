"""The modules a retrofit displaced, kept beside the model so the untouched model can be rebuilt.

Surgery drops each replaced FFN; keeping it costs what the model held before the retrofit, and it is
what distillation from the original model needs (`kallm.training.teacher`). The table maps each module
surgery put in (a `RetrofitFFN`, or the `Identity` standing in for a split FFN's second half) to the
module it replaced. Weak-keyed, like the retrofit report: it lives as long as the model.
"""

from __future__ import annotations

import weakref

from torch import nn

_ORIGINALS: weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[nn.Module, nn.Module]]] = (
    weakref.WeakKeyDictionary()
)


def keep_originals(model: nn.Module, pairs: list[tuple[nn.Module, nn.Module]]) -> None:
    """Record (module put in, module it replaced) pairs for `model`."""
    table = _ORIGINALS.setdefault(model, {})
    for new, old in pairs:
        table[id(new)] = (new, old)


def original_modules(model: nn.Module) -> dict[int, nn.Module]:
    """id(module put in by surgery) -> the original module it replaced (empty for an untouched model)."""
    return {key: old for key, (_, old) in _ORIGINALS.get(model, {}).items()}
