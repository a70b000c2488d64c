"""Learnable activations: an MLP's fixed activation made a sum of learnable univariate functions.

This is the KAT / GR-KAN form (Yang & Wang, "Kolmogorov-Arnold Transformer", ICLR 2025): the linear
projections of an MLP stay, and the activation between them becomes a learnable function per channel
group,

    phi_g(t) = w_g * base(t) + sum_k c_{g,k} B_k(map(t))

with `base` the MLP's own activation module (SiLU, GELU, ...), B_k any registered basis and `map` its
default input map (`kallm.kan.bases`). w starts at 1 and c at 0, so a new activation computes exactly
the original one: a retrofit starts from the pretrained model's function and learns away from it.

Unlike a KAN layer (`kallm.kan.layer`, sums of univariate functions of every input), these functions
act on one channel each; the projections around them do the mixing.

This module is shipped in exported model folders: it imports torch and kallm's KAN modules only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kallm.errors import KallmError
from kallm.kan.elementwise import get_input_map
from kallm.kan.fused import resolve_input_map
from kallm.kan.spec import BasisSpec, parse_kan_spec


def activation_basis(basis: str | BasisSpec) -> BasisSpec:
    """The basis spec of a learnable activation: one basis, with no KAN-layer base branch or bias (the
    activation's base is the MLP's own activation; its only layer option is `norm`, the input map)."""
    spec = parse_kan_spec(basis)
    if not isinstance(spec, BasisSpec):
        raise KallmError(f"a learnable activation takes one basis (e.g. 'chebyshev2:4'), got {str(spec)!r}")
    for key in ("base", "bias"):
        if spec.option(key) is not None:
            raise KallmError(f"a learnable activation's basis takes no {key}= option (its base is the MLP's "
                             f"own activation), got {str(spec)!r}")
    return spec


def activation_groups(width: int, groups: int | None) -> int:
    """The number of channel groups: `groups`, capped at the width; None or 0 means one per channel."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise KallmError(f"a learnable activation's width must be a positive integer, got {width!r}")
    if groups is None or groups == 0:
        return width
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 0:
        raise KallmError(f"a learnable activation's groups must be a positive integer (or 0: one per "
                         f"channel), got {groups!r}")
    return min(groups, width)


def activation_num_params(basis: str | BasisSpec, width: int, groups: int | None) -> int:
    """Parameters of `LearnableActivation(width, basis, groups)`, in closed form: (n_basis + 1) per group,
    plus the basis's own (a rational basis's shared denominator)."""
    made = activation_basis(basis).make_basis()
    return activation_groups(width, groups) * (made.n_basis + 1) + sum(p.numel() for p in made.parameters())


class LearnableActivation(nn.Module):
    """phi_g(t) = w_g * base(t) + sum_k c_{g,k} B_k(map(t)) on `width` channels in `groups` contiguous groups.

    Args:
        width: the number of channels (the last dimension of the input).
        basis: a basis spec (`"chebyshev2:4"`, `"jacobi:3:alpha=0.5,beta=0.5"`, `"bspline:3:norm=tanh"`).
        groups: channel groups sharing one function (None or 0: one per channel; capped at `width`);
            groups differ in size by at most one, the first ones taking the remainder.
        base: the original activation module; None is the identity.
    """

    def __init__(self, width: int, basis: str | BasisSpec = "chebyshev2:4", groups: int | None = None,
                 base: nn.Module | None = None) -> None:
        super().__init__()
        spec = activation_basis(basis)
        self.width = width
        self.n_groups = activation_groups(width, groups)
        self.basis_spec = str(spec)
        self.basis = spec.make_basis()
        self.input_map = resolve_input_map(spec.input_norm, self.basis)
        self._map = get_input_map(self.input_map)
        self.base = base if base is not None else nn.Identity()
        self.base_path: str | None = None  # set by a retrofit: where the decoder layer holds its base
        self.weight = nn.Parameter(torch.ones(self.n_groups))
        self.coef = nn.Parameter(torch.zeros(self.n_groups, self.basis.n_basis))

    def _per_channel(self, values: Tensor) -> Tensor:
        """Per-group `values` (n_groups, ...) repeated over each group's channels: (width, ...).

        The groups are `equal_sizes(width, n_groups)`: the first `extra` have one channel more. Integer
        repeats need no index tensor (which a model built on the meta device could not hold)."""
        size, extra = divmod(self.width, self.n_groups)
        if size == 1 and extra == 0:
            return values
        return torch.cat([values[:extra].repeat_interleave(size + 1, dim=0),
                          values[extra:].repeat_interleave(size, dim=0)])

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.width:
            raise KallmError(f"LearnableActivation of width {self.width} got an input of shape "
                             f"{tuple(x.shape)}")
        w, c = self._per_channel(self.weight.to(x.dtype)), self._per_channel(self.coef.to(x.dtype)).t()
        terms = self.basis.terms(self._map.fn(x))  # (..., n_basis, width)
        return w * self.base(x) + (terms * c).sum(dim=-2)

    @torch.no_grad()
    def univariate(self, t_grid: Tensor) -> Tensor:
        """phi_g(t) for t in `t_grid` (G,) -> (G, n_groups), float32: the learned function of each group."""
        if t_grid.dim() != 1:
            raise KallmError(f"univariate expects a 1-D grid of input values, got shape "
                             f"{tuple(t_grid.shape)}")
        t = t_grid.to(device=self.weight.device, dtype=self.weight.dtype)
        terms = self.basis(self._map.fn(t)).float()  # (G, n_basis)
        return self.weight.float() * self.base(t).float()[:, None] + terms @ self.coef.float().t()

    def extra_repr(self) -> str:
        return (f"width={self.width}, basis={self.basis_spec!r}, groups={self.n_groups}, "
                f"input_map={self.input_map!r}")


class ProjectedKAN(nn.Module):
    """in_proj (d -> width) -> LearnableActivation -> out_proj (width -> d): an ungated MLP whose activation
    learns (GR-KAN). `act` is the learnable activation of `width` channels."""

    def __init__(self, d: int, width: int, act: LearnableActivation, in_bias: bool = False,
                 out_bias: bool = False) -> None:
        super().__init__()
        if act.width != width:
            raise KallmError(f"ProjectedKAN of width {width} got a LearnableActivation of width {act.width}")
        self.in_proj = nn.Linear(d, width, bias=in_bias)
        self.act = act
        self.out_proj = nn.Linear(width, d, bias=out_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.act(self.in_proj(x)))

    @staticmethod
    def num_params(d: int, width: int, in_bias: bool, out_bias: bool, act_params: int) -> int:
        """Parameters of a ProjectedKAN, in closed form (`act_params`: its activation's)."""
        return 2 * d * width + (width if in_bias else 0) + (d if out_bias else 0) + act_params

    def describe(self) -> dict[str, Any]:
        """What an export records to rebuild it (besides the base activation, found in the layer)."""
        return {"d": self.in_proj.in_features, "width": self.in_proj.out_features,
                "in_bias": self.in_proj.bias is not None, "out_bias": self.out_proj.bias is not None}
