"""Sizing replacement FFNs: the hidden width that meets a parameter budget, and narrower copies of MLPs.

A parameter-matched control is the model's own MLP class with a narrower intermediate size: every
projection *from* the hidden size d to the intermediate width (gate/up, or a fused gate_up of twice
the width) and every projection *back* to d is resized, so the architecture stays the same and only
the width changes. Counts are exact and closed-form; `kallm inspect` and dry runs show them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from kallm.errors import KallmError
from kallm.kan import kan_num_params
from kallm.retrofitting.variant import VariantSpec


def _conv1d_type() -> type | None:
    """GPT-2's transposed linear (transformers.pytorch_utils.Conv1D), if transformers is installed."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def _projection_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or Conv1D, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    conv = _conv1d_type()
    if conv is not None and isinstance(module, conv):
        return module.nx, module.nf
    return None


def _new_shape(shape: tuple[int, int], d: int, inter: int, width: int) -> tuple[int, int]:
    """The projection's shape when the intermediate size `inter` becomes `width`."""
    n_in, n_out = shape
    if n_in == d and n_out != d and n_out % inter == 0:  # up (or fused gate_up) projection
        return n_in, n_out // inter * width
    if n_out == d and n_in == inter:  # down projection
        return width, n_out
    return shape


def _check_dims(d: int, inter: int) -> None:
    if d == inter:
        raise KallmError(f"cannot resize an MLP whose intermediate size equals its hidden size ({d}): "
                         "the projections into and out of it cannot be told apart")


def _linear_count(modules: list[nn.Module], d: int, inter: int, width: int) -> int:
    """Parameters of `modules` with their intermediate size changed to `width` (closed form)."""
    total = 0
    for module in modules:
        for sub in module.modules():
            shape = _projection_shape(sub)
            if shape is None:
                total += sum(p.numel() for p in sub.parameters(recurse=False))
                continue
            n_in, n_out = _new_shape(shape, d, inter, width)
            total += n_in * n_out + (n_out if getattr(sub, "bias", None) is not None else 0)
    return total


def resize_mlp(module: nn.Module, d: int, inter: int, width: int) -> nn.Module:
    """`module` (a fresh copy, modified in place) with every projection through `inter` resized to `width`.

    The new projections are uninitialised in any meaningful sense; the caller re-initialises them the
    way the model initialises its own weights.
    """
    _check_dims(d, inter)
    own = _projection_shape(module)
    if own is not None:  # a split FFN's own linear (OPT's fc1 / fc2)
        return _resized_projection(module, own, _new_shape(own, d, inter, width))
    for name, sub in list(module.named_modules()):
        shape = _projection_shape(sub)
        if shape is not None:
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, _resized_projection(sub, shape, _new_shape(shape, d, inter, width)))
    return module


def _resized_projection(sub: nn.Module, shape: tuple[int, int], new_shape: tuple[int, int]) -> nn.Module:
    n_in, n_out = new_shape
    if (n_in, n_out) == shape:
        return sub
    ref = next(sub.parameters())
    if isinstance(sub, nn.Linear):
        return nn.Linear(n_in, n_out, bias=sub.bias is not None, device=ref.device, dtype=ref.dtype)
    return _conv1d_type()(n_out, n_in).to(device=ref.device, dtype=ref.dtype)


def _largest_width(count: Callable[[int], int], target: int, what: str) -> int:
    """The largest width w >= 1 with count(w) <= target (count grows with w)."""
    if count(1) > target:
        raise KallmError(f"the budget of {target:,} parameters is below the smallest {what} "
                         f"({count(1):,} parameters at width 1)")
    if count(1) == count(2):
        raise KallmError(f"{what} has no width to size (its parameter count does not depend on it)")
    lo, hi = 1, 2
    while count(hi) <= target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= target else (lo, mid)
    return lo


def kan_hidden_width(spec: VariantSpec, d: int, replaced_params: int) -> int | None:
    """The hidden width of a budgeted multi-layer KAN (None: the spec's own widths)."""
    if spec.budget is None:
        return None
    target = spec.budget.target(replaced_params)
    return _largest_width(lambda h: kan_num_params(spec.kan, d, d, h), target, f"'{spec}'")


def linear_width(spec: VariantSpec, modules: list[nn.Module], d: int, inter: int) -> int | None:
    """The intermediate size of a linear replacement (None: keep the model's own)."""
    if spec.hidden is not None:
        return spec.hidden
    if spec.budget is None:
        return None
    _check_dims(d, inter)
    target = spec.budget.target(_linear_count(modules, d, inter, inter))
    return _largest_width(lambda w: _linear_count(modules, d, inter, w), target, f"'{spec}'")
