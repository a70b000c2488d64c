"""The modules a retrofit displaced, kept beside the model so the untouched model can be rebuilt.

Surgery drops each replaced FFN; keeping it costs what the model held before the retrofit, and it is
what distillation from the original model needs (`kallm.distill.teacher`). The table maps each module
surgery put in (a `RetrofitFFN`, or the `Identity` standing in for a split FFN's second half) to the
module it replaced. Weak-keyed, like the retrofit report: it lives as long as the model.
"""

from __future__ import annotations

import weakref

from torch import nn

from kallm.errors import KallmError

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


def restore_original_weights(model: nn.Module) -> int:
    """Load each displaced FFN's weights into the module that replaced it; the number of modules restored.

    A full-size linear restart is a fresh module of the original's own class and shape: given the
    original's weights back, the retrofit computes what the untouched model did while its FFNs can train.
    That is the reference for a recipe that also learns from the data (`init: original`): how much of a
    retrofit's gain is what training the original FFNs on the same data gives anyway."""
    restored = 0
    for new, old in _ORIGINALS.get(model, {}).values():
        inner = getattr(new, "kallm_ffn", None)
        if inner is None:  # a split FFN's second half stands in as a weightless Identity
            continue
        try:
            inner.load_state_dict(old.state_dict())
        except RuntimeError:
            raise KallmError(f"init: original needs replacements shaped like the original FFNs: a "
                             f"{type(inner).__name__} cannot take the weights of the {type(old).__name__} it "
                             "replaced (use spec: linear at full size)") from None
        restored += 1
    return restored
