"""KANLinear: a Kolmogorov-Arnold layer y_o = sum_i phi_{i,o}(x_i), one basis for all channels.

phi_{i,o}(x) = w_base[o, i] * base_act(x) + sum_k W_k[o, i] * B_k(map(x)), where `map` is the
basis's input map (`input_norm="auto"`; see `kallm.kan.bases` for the choice per basis). The
computation is the fused engine of `kallm.kan.fused`: one matmul over the expansion, and a custom
backward that saves only the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kallm.errors import KallmError
from kallm.kan.bases import Basis, check_degree, get_basis
from kallm.kan.fused import FusedKAN, resolve_input_map


class UnivariateMixin:
    """`univariate` for any FusedKAN: the learned phi_{i,o} on a grid of raw input values."""

    @torch.no_grad()
    def univariate(self: Any, x_grid: Tensor, in_idx: Sequence[int] | Tensor | None = None,
                   out_idx: Sequence[int] | Tensor | None = None) -> Tensor:
        """phi_{i,o}(x) for x in `x_grid` (G,) -> (G, len(in_idx), len(out_idx)), float32.

        Includes the base branch and every basis term (B_0's weight too); the layer's bias is not a
        function of any single input and is left out, so y_o = sum_i phi_{i,o}(x_i) + bias_o.
        Select channels with `in_idx`/`out_idx` (default: all) to keep the (G, in, out) result small.
        """
        if x_grid.dim() != 1:
            raise KallmError(f"univariate expects a 1-D grid of input values, got shape {tuple(x_grid.shape)}")
        dev = self.weight.device
        ins = torch.arange(self.in_features, device=dev) if in_idx is None else torch.as_tensor(in_idx, device=dev)
        outs = torch.arange(self.out_features, device=dev) if out_idx is None else torch.as_tensor(
            out_idx, device=dev)
        xg = x_grid.to(device=dev, dtype=torch.float32)
        parts, base = self.unpack_weight(self.weight.float())
        result = xg.new_zeros(len(xg), len(ins), len(outs))
        groups, _, _ = self.layout()
        for g, basis, imap, coef in zip(groups, self.bases, self._maps, parts):
            mask = (ins >= g.start) & (ins < g.start + g.size)
            if not bool(mask.any()):
                continue
            terms = basis(imap.fn(xg))  # (G, n_basis)
            local = coef[outs][:, :, ins[mask] - g.start]  # (O, n_basis, C)
            result[:, mask] = torch.einsum("gk,okc->gco", terms, local)
        if base is not None:
            result += self._act.fn(xg)[:, None, None] * base.float()[outs][:, ins].t()[None]
        return result


class KANLinear(UnivariateMixin, FusedKAN):
    """KAN layer `in_features -> out_features` with one basis family.

    Args:
        basis: a registered basis name (see `list_bases()`) or a Basis instance (then `degree` and
            `basis_params` are the instance's own and the arguments here are ignored / refused).
        degree: the basis degree (polynomial degree; spline order; number of harmonics for fourier).
        base_activation: the residual-style base branch (`silu`, `gelu`, `tanh`, `identity`), or None.
        input_norm: `"auto"` (the basis's natural map), an input-map name (`tanh`, `sigmoid`,
            `tanh3`, `sigmoid8`, `identity`) or None (identity). Always elementwise: no statistics
            over tokens, so outputs of one token never depend on another token.
        bias: add a learnable output bias.
        **basis_params: the basis's parameters (e.g. `alpha`, `beta` for jacobi, `grid_size` for bspline).
    """

    def __init__(self, in_features: int, out_features: int, basis: str | Basis = "chebyshev2", degree: int = 2,
                 base_activation: str | None = "silu", input_norm: str | None = "auto", bias: bool = False,
                 **basis_params: Any) -> None:
        if isinstance(basis, Basis):
            if basis_params:
                raise KallmError("pass basis parameters to get_basis, not to KANLinear, when giving a Basis instance")
            basis_module = basis
        else:
            basis_module = get_basis(basis, degree, **basis_params)
        super().__init__(in_features, out_features, [basis_module], [in_features],
                         [resolve_input_map(input_norm, basis_module)], base_activation, bias)
        self.input_norm = input_norm

    @property
    def basis(self) -> Basis:
        return self.bases[0]

    @property
    def degree(self) -> int:
        return self.basis.degree

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, basis={self.basis.name}, "
                f"degree={self.degree}, input_map={self.input_maps[0]}, base_activation={self.base_activation}, "
                f"bias={self.bias is not None}")

    @torch.no_grad()
    def raise_degree(self, new_degree: int) -> None:
        """Raise the degree in place, keeping the function unchanged (new terms start at 0).

        Works for bases whose lower-degree span is contained in the higher one (orthogonal
        polynomials, fourier, rational: new coefficients are zero; bernstein: exact degree
        elevation); bspline and rbf raise KallmError. The weight is replaced by a new nn.Parameter,
        so an optimizer built on the old one must be rebuilt (its state for this layer is stale).
        """
        new_degree = check_degree(new_degree, "new_degree")
        if new_degree < self.degree:
            raise KallmError(f"raise_degree: new degree {new_degree} is below the current degree {self.degree}")
        if new_degree == self.degree:
            return
        old = self.basis
        elevation = old.elevation_matrix(new_degree).to(self.weight.device)
        parts, base = self.unpack_weight()
        coef = torch.einsum("oki,kj->oji", parts[0].double(), elevation).to(self.weight.dtype)
        param_dtype = next(iter(old.parameters()), self.weight).dtype
        self.bases[0] = old.with_degree(new_degree).to(device=self.weight.device, dtype=param_dtype)
        requires_grad = self.weight.requires_grad
        self.weight = nn.Parameter(self.pack_weight([coef], base), requires_grad=requires_grad)
