"""Mixing KAN layers: channel groups with different bases in one matmul, and stacks of layers.

ParallelKAN splits the input channels into groups (`sizes`, default as equal as possible), expands
each group with its own basis/degree/input map, and feeds all expansions (plus the base branch)
into the same output through one matmul (the fused engine). SequentialKAN composes layers whose
widths chain, e.g. 576 -> h -> 576; nothing is inserted between them (each layer is nonlinear).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from kallm.errors import KallmError
from kallm.kan.bases import Basis, get_basis
from kallm.kan.fused import FusedKAN, resolve_input_map
from kallm.kan.layer import UnivariateMixin

PartLike = Basis | tuple[str, int] | tuple[str, int, Mapping[str, Any]]


def _as_basis(part: PartLike, index: int) -> Basis:
    if isinstance(part, Basis):
        return part
    if isinstance(part, tuple) and len(part) in (2, 3) and isinstance(part[0], str):
        params = dict(part[2]) if len(part) == 3 else {}
        return get_basis(part[0], part[1], **params)
    raise KallmError(f"ParallelKAN part {index} must be a Basis or a (name, degree[, params]) tuple, got {part!r}")


def equal_sizes(total: int, parts: int) -> list[int]:
    """`total` split into `parts` sizes differing by at most one (the first groups get the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class ParallelKAN(UnivariateMixin, FusedKAN):
    """Input channels split into groups, each with its own basis; one matmul over all expansions.

    Args:
        parts: one entry per group: a Basis or (name, degree[, params]).
        sizes: channels per group, summing to in_features (default: equal split).
        input_norm: one value for all groups ("auto": each basis's own map) or one per group.
        base_activation, bias: as for KANLinear (one base branch over all channels).
    """

    def __init__(self, in_features: int, out_features: int, parts: Sequence[PartLike],
                 sizes: Sequence[int] | None = None, base_activation: str | None = "silu",
                 input_norm: str | None | Sequence[str | None] = "auto", bias: bool = False) -> None:
        if not parts:
            raise KallmError("ParallelKAN needs at least one part")
        bases = [_as_basis(p, i) for i, p in enumerate(parts)]
        if isinstance(in_features, int) and not isinstance(in_features, bool) and in_features < len(bases):
            raise KallmError(f"ParallelKAN: {len(bases)} parts need at least {len(bases)} input channels, "
                             f"got in_features={in_features}")
        if sizes is None:
            sizes = equal_sizes(in_features, len(bases)) if isinstance(in_features, int) else []
        elif len(sizes) != len(bases):
            raise KallmError(f"ParallelKAN: got {len(sizes)} group sizes {tuple(sizes)} for {len(bases)} parts")
        norms = [input_norm] * len(bases) if input_norm is None or isinstance(input_norm, str) else list(input_norm)
        if len(norms) != len(bases):
            raise KallmError(f"ParallelKAN: got {len(norms)} input_norm values for {len(bases)} parts")
        maps = [resolve_input_map(n, b) for n, b in zip(norms, bases)]
        super().__init__(in_features, out_features, bases, list(sizes), maps, base_activation, bias)

    def extra_repr(self) -> str:
        parts = ", ".join(f"{b.name}:{b.degree}x{s}" for b, s in zip(self.bases, self.sizes))
        return (f"in_features={self.in_features}, out_features={self.out_features}, parts=[{parts}], "
                f"base_activation={self.base_activation}, bias={self.bias is not None}")


# The attribute by which a module asks the training optimiser (kallm.training.optim) to move its own
# parameters at a multiple of the lr; set where the module is built, so a loaded retrofit trains alike.
LR_SCALE_ATTR = "kallm_lr_scale"

# The lr multiple of every layer of a stack but the last. Each output of a KAN layer has as many weights as
# inputs on its constant basis term (and on the even terms, near-constant for small inputs); Adam moves each
# by about lr per step, all in the gradient's direction, so one step shifts an output by ~lr x in_features.
# At the model's output that is small; on an inner layer's output, the next layer's input in [-1, 1] after
# its input map, it undoes the fit in one step (benchmarks/kan_stack_lr.py measures the scale).
INNER_LR_SCALE = 0.1


class SequentialKAN(nn.Module):
    """A stack of KAN layers applied in order; widths must chain (layer i's out = layer i+1's in).

    Every layer but the last trains at `inner_lr_scale` times the lr (see INNER_LR_SCALE).
    """

    def __init__(self, layers: Sequence[nn.Module], inner_lr_scale: float = INNER_LR_SCALE) -> None:
        super().__init__()
        if not layers:
            raise KallmError("SequentialKAN needs at least one layer")
        for i in range(1, len(layers)):
            prev, cur = getattr(layers[i - 1], "out_features", None), getattr(layers[i], "in_features", None)
            if prev != cur:
                raise KallmError(f"SequentialKAN: layer {i - 1} outputs {prev} features but layer {i} expects {cur}")
        if not inner_lr_scale > 0:
            raise KallmError(f"SequentialKAN: inner_lr_scale must be positive, got {inner_lr_scale}")
        for layer in layers[:-1]:
            setattr(layer, LR_SCALE_ATTR, inner_lr_scale)
        self.layers = nn.ModuleList(layers)
        self.in_features = getattr(layers[0], "in_features", None)
        self.out_features = getattr(layers[-1], "out_features", None)

    @property
    def hidden_features(self) -> list[int]:
        return [layer.out_features for layer in self.layers[:-1]]

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
