"""The modules surgery puts into a model: the `RetrofitFFN` wrapper, and resized projections.

This module imports only torch (and transformers for GPT-2's Conv1D): `kallm export` ships it, with
the KAN library, inside an exported model folder, where the model's own code rebuilds the same
modules without kallm (see `kallm.export.portable`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kallm.errors import KallmError


class RetrofitFFN(nn.Module):
    """Holds a replacement FFN under the recognisable name `kallm_ffn`."""

    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.kallm_ffn = inner
        self.kind = kind

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.kallm_ffn(hidden_states)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def conv1d_type() -> type | None:
    """GPT-2's transposed linear (transformers.pytorch_utils.Conv1D), if transformers is installed."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def projection_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or Conv1D, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    conv = conv1d_type()
    if conv is not None and isinstance(module, conv):
        return module.nx, module.nf
    return None


def resized_projection(sub: nn.Module, shape: tuple[int, int], new_shape: tuple[int, int]) -> nn.Module:
    """A new projection of `sub`'s type and bias with `new_shape` (`sub` itself when the shape is the same)."""
    n_in, n_out = new_shape
    if (n_in, n_out) == tuple(shape):
        return sub
    ref = next(sub.parameters())
    if isinstance(sub, nn.Linear):
        return nn.Linear(n_in, n_out, bias=sub.bias is not None, device=ref.device, dtype=ref.dtype)
    return conv1d_type()(n_out, n_in).to(device=ref.device, dtype=ref.dtype)


def named_projections(module: nn.Module) -> dict[str, tuple[int, int]]:
    """{dotted path within `module` ('' for the module itself): (in, out)} of every Linear/Conv1D in it."""
    return {name: shape for name, sub in module.named_modules() if (shape := projection_shape(sub)) is not None}


def set_projection_shapes(module: nn.Module, shapes: dict[str, tuple[int, int]]) -> nn.Module:
    """`module` with the projections at the given paths resized (the module itself when its path is '')."""
    for name, new_shape in shapes.items():
        sub = module.get_submodule(name)
        shape = projection_shape(sub)
        if shape is None:
            raise KallmError(f"{type(module).__name__}.{name} is not a Linear or Conv1D projection")
        module = replace_submodule(module, name, resized_projection(sub, shape, tuple(new_shape)))
    return module


def replace_submodule(module: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """`module` with its submodule at dotted path `name` replaced by `new` (`new` itself when `name` is '')."""
    if not name:
        return new
    parent_name, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, child, new)
    return module
