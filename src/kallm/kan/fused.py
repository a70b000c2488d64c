"""The fused KAN engine shared by KANLinear and ParallelKAN: one matmul, recompute in backward.

Channels are split into groups (one group for KANLinear), each with a basis and an input map.
The design matrix ("expansion") has these columns, in this order:

1. for each group whose basis has B_0 == 1: its B_0 slab (c_g columns of ones);
2. for each group: its remaining terms, term-major (B_k for all c_g channels, then B_{k+1}, ...);
3. the base branch base_act(x), one column per input channel (when a base activation is set).

`forward(x) == expand(x) @ weight.T (+ bias)`. The ones columns are never materialised: their
weights are summed into a bias (mathematically identical, a quarter fewer matmul FLOPs at degree 2).
The rest is built in float32 (float64 for float64 inputs) straight into one buffer that feeds a
single addmm. Backward saves only the input: it rebuilds the buffer, gets dW with one matmul,
dExpansion with another, and dx through the bases' derivative recurrences, so no (N, in, n_basis)
tensor outlives the forward call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from kallm.errors import KallmError
from kallm.kan.bases import Basis
from kallm.kan.elementwise import Elementwise, get_activation, get_input_map


@dataclass(frozen=True)
class GroupLayout:
    start: int  # first input channel
    size: int  # channels in the group
    n_terms: int  # basis terms (n_basis)
    skip_constant: bool  # B_0 == 1 goes to the bias instead of the buffer
    const_offset: int  # column of its B_0 slab in the full layout (-1 when not skipped)
    rest_offset: int  # column of its first buffered term, counted within the buffer


def resolve_input_map(input_norm: str | None, basis: Basis) -> str:
    if input_norm is None:
        return "identity"
    name = basis.default_input_map if input_norm == "auto" else input_norm
    get_input_map(name)  # unknown names -> KallmError with suggestions
    return name


def _check_features(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KallmError(f"{name} must be a positive integer, got {value!r}")
    return value


class FusedKAN(nn.Module):
    """Grouped KAN layer: y = sum_g sum_k B_k(map_g(x_g)) W_{g,k} + base_act(x) W_base (+ bias)."""

    def __init__(self, in_features: int, out_features: int, bases: list[Basis], sizes: list[int],
                 input_maps: list[str], base_activation: str | None, bias: bool) -> None:
        super().__init__()
        self.in_features = _check_features(in_features, "in_features")
        self.out_features = _check_features(out_features, "out_features")
        if sum(sizes) != in_features or any(s < 1 for s in sizes):
            raise KallmError(f"group sizes {tuple(sizes)} must be positive and sum to in_features="
                             f"{in_features} (they sum to {sum(sizes)})")
        self.bases = nn.ModuleList(bases)
        self.sizes = list(sizes)
        self.input_maps = list(input_maps)
        self.base_activation = None if base_activation in (None, "none") else base_activation
        get_activation(self.base_activation)  # unknown names -> KallmError with suggestions, now
        for name in self.input_maps:
            get_input_map(name)
        self.weight = nn.Parameter(torch.empty(out_features, self.n_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.reset_parameters()

    # Looked up by name on use (not stored) so the module pickles: the registries hold lambdas.
    @property
    def _act(self) -> Elementwise | None:
        return get_activation(self.base_activation)

    @property
    def _maps(self) -> list[Elementwise]:
        return [get_input_map(m) for m in self.input_maps]

    # ----- layout -------------------------------------------------------------------------------
    def layout(self) -> tuple[list[GroupLayout], int, int]:
        """(groups, const_width, buffer_width); the base slab (if any) ends the buffer."""
        const_width = sum(s for b, s in zip(self.bases, self.sizes) if b.constant_first)
        groups, start, const_off, rest_off = [], 0, 0, 0
        for basis, size in zip(self.bases, self.sizes):
            skip = basis.constant_first
            groups.append(GroupLayout(start, size, basis.n_basis, skip, const_off if skip else -1, rest_off))
            const_off += size if skip else 0
            rest_off += (basis.n_basis - int(skip)) * size
            start += size
        return groups, const_width, rest_off + (self.in_features if self._act is not None else 0)

    @property
    def n_features(self) -> int:
        groups, const_width, buffer_width = self.layout()
        return const_width + buffer_width

    def basis_parameters(self) -> list[nn.Parameter]:
        return [p for b in self.bases for p in b.parameters()]

    # ----- init ---------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Per-column normal init with Var(y) = 1 for inputs x ~ N(0, 1).

        With zero-mean independent weights, Var(y_o) = sum_columns sigma_col^2 E[f_col(x)^2]. Each of a
        channel's F_g feature families (its basis terms plus the base branch) gets an equal share:
        sigma^2 = 1 / (in_features * F_g * E[f^2]), with E[f^2] under N(0, 1) by 96-point Gauss-Hermite
        quadrature (floored at 1% of the group's largest, so near-empty edge splines stay bounded).
        A layer built on the meta device (transformers' `from_pretrained` builds models there and then
        loads their weights) has no values to initialise.
        """
        if self.weight.is_meta:
            return
        nodes, qweights = np.polynomial.hermite_e.hermegauss(96)
        x = torch.from_numpy(nodes).to(self.weight.device)
        w = torch.from_numpy(qweights / math.sqrt(2 * math.pi)).to(self.weight.device)
        base_sq = None if self._act is None else float((w * self._act.fn(x) ** 2).sum())
        groups, const_width, _ = self.layout()
        per_group, base_std = [], torch.empty(self.in_features, dtype=torch.float64)
        for g, basis, imap in zip(groups, self.bases, self._maps):
            terms = basis.terms(imap.fn(x).unsqueeze(-1)).squeeze(-1)
            second = (w.unsqueeze(-1) * terms**2).sum(0).cpu()
            if base_sq is not None:
                second = torch.cat([second, torch.tensor([base_sq], dtype=torch.float64)])
            second = second.clamp_min(0.01 * float(second.max()))
            std = (1.0 / (self.in_features * len(second) * second)).sqrt()
            slabs = std[: g.n_terms, None, None] * torch.randn(g.n_terms, g.size, self.out_features,
                                                            dtype=torch.float64)
            per_group.append(slabs.permute(2, 0, 1))
            if base_sq is not None:
                base_std[g.start: g.start + g.size] = std[-1]
        base = None if base_sq is None else base_std * torch.randn(self.out_features, self.in_features,
                                                                  dtype=torch.float64)
        self.weight.copy_(self.pack_weight(per_group, base))
        if self.bias is not None:
            self.bias.zero_()

    # ----- weight packing -----------------------------------------------------------------------
    def unpack_weight(self, weight: Tensor | None = None) -> tuple[list[Tensor], Tensor | None]:
        """Per group (out, n_basis, size) coefficients, and the base weights (out, in) or None."""
        weight = self.weight if weight is None else weight
        groups, const_width, _ = self.layout()
        parts = []
        for g in groups:
            rest = weight[:, const_width + g.rest_offset: const_width + g.rest_offset
                          + (g.n_terms - int(g.skip_constant)) * g.size]
            rest = rest.reshape(weight.shape[0], -1, g.size)
            if g.skip_constant:
                const = weight[:, g.const_offset: g.const_offset + g.size].unsqueeze(1)
                rest = torch.cat([const, rest], dim=1)
            parts.append(rest)
        base = weight[:, -self.in_features:] if self._act is not None else None
        return parts, base

    def pack_weight(self, parts: list[Tensor], base: Tensor | None) -> Tensor:
        consts = [p[:, 0] for p, b in zip(parts, self.bases) if b.constant_first]
        rests = [(p[:, 1:] if b.constant_first else p).reshape(p.shape[0], -1) for p, b in zip(parts, self.bases)]
        return torch.cat([*consts, *rests, *([] if base is None else [base])], dim=1)

    def fused_weight(self) -> Tensor:
        """(n_features, out): forward(x) == expand(x) @ fused_weight() (+ bias)."""
        return self.weight.t()

    @torch.no_grad()
    def set_fused_weight(self, weight: Tensor) -> None:
        expected = (self.n_features, self.out_features)
        if tuple(weight.shape) != expected:
            raise KallmError(f"fused weight must have shape {expected} (n_features, out_features), "
                             f"got {tuple(weight.shape)}")
        self.weight.copy_(weight.t())

    # ----- expansion ----------------------------------------------------------------------------
    def _buffer(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The buffered columns (no ones columns) for x of shape (N, in), in the basis dtype, and the
        mapped inputs t of each group (backward reuses them)."""
        groups, _, width = self.layout()
        buf = torch.empty(x.shape[0], width, dtype=x.dtype, device=x.device)
        mapped = []
        for g, basis, imap in zip(groups, self.bases, self._maps):
            n = g.n_terms - int(g.skip_constant)
            out = buf[:, g.rest_offset: g.rest_offset + n * g.size].unflatten(1, (n, g.size))
            mapped.append(imap.fn(x[:, g.start: g.start + g.size]))
            basis.terms(mapped[-1], out, g.skip_constant)
        if self._act is not None:
            self._act.write(x, buf[:, -self.in_features:])
        return buf, mapped

    @torch.no_grad()
    def expand(self, x: Tensor) -> Tensor:
        """The design matrix (..., n_features), float32 (float64 for float64 input); not differentiable.

        With a B_0 == 1 basis its ones columns repeat once per channel, so the matrix is rank-deficient
        by construction: least-squares fits need a rank-revealing solver (`torch.linalg.lstsq(...,
        driver="gelsd")`, `pinv`) or a ridge term; the default CPU driver `gelsy` gives wrong answers.
        """
        self._check_input(x)
        flat = x.reshape(-1, self.in_features).to(_basis_dtype(x.dtype))
        _, const_width, _ = self.layout()
        buf, _ = self._buffer(flat)
        if const_width:
            buf = torch.cat([buf.new_ones(buf.shape[0], const_width), buf], dim=1)
        return buf.reshape(*x.shape[:-1], -1)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise KallmError(f"{type(self).__name__} expects inputs with last dimension {self.in_features}, "
                             f"got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        weight, bias = self.weight, self.bias
        device_type = x.device.type
        out_dtype = x.dtype
        if torch.is_autocast_enabled(device_type):
            out_dtype = torch.get_autocast_dtype(device_type)
            weight = weight.to(out_dtype)
            bias = None if bias is None else bias.to(out_dtype)
        y = _KANFunction.apply(x.reshape(-1, self.in_features), weight, bias, self, *self.basis_parameters())
        return y.reshape(*x.shape[:-1], self.out_features).to(out_dtype)


def _basis_dtype(dtype: torch.dtype) -> torch.dtype:
    # Low-precision recurrences lose accuracy fast (T_k values near +-1 cancel), so bases run in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


class _KANFunction(torch.autograd.Function):
    """y = [buffer(x)] @ W_rest.T + sum(W_const) (+ b); saves x (and W) only."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, layer: FusedKAN, *basis_params: Tensor):
        ctx.layer = layer
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        with torch.autocast(x.device.type, enabled=False):
            buf = layer._buffer(x.to(_basis_dtype(x.dtype)))[0].to(weight.dtype)
            _, const_width, _ = layer.layout()
            shift = weight[:, :const_width].sum(1) if const_width else None
            if bias is not None:
                shift = bias if shift is None else shift + bias
            rest = weight[:, const_width:].t()
            return torch.mm(buf, rest) if shift is None else torch.addmm(shift, buf, rest)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        layer: FusedKAN = ctx.layer
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_params = any(ctx.needs_input_grad[4:])
        groups, const_width, _ = layer.layout()
        bdt = _basis_dtype(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            grad_y = grad_y.to(weight.dtype)
            xb = x.to(bdt)
            buf, mapped = layer._buffer(xb)
            grad_w = grad_b = grad_x = None
            grad_sum = grad_y.sum(0) if (need_w and const_width) or (need_b and ctx.has_bias) else None
            if need_w:
                grad_w = torch.mm(grad_y.t(), buf.to(weight.dtype))
                if const_width:
                    grad_w = torch.cat([grad_sum.unsqueeze(1).expand(-1, const_width), grad_w], dim=1)
            if need_b and ctx.has_bias:
                grad_b = grad_sum
            param_grads: list[Tensor | None] = []
            if need_x or need_params:
                grad_buf = torch.mm(grad_y, weight[:, const_width:]).to(bdt)
                grad_x = None if len(groups) == 1 else torch.empty_like(xb)
                for g, basis, imap, t in zip(groups, layer.bases, layer._maps, mapped):
                    n = g.n_terms - int(g.skip_constant)
                    cols = slice(g.rest_offset, g.rest_offset + n * g.size)
                    xs = xb[:, g.start: g.start + g.size]
                    grad_t, pg = basis.backward_terms(
                        t, buf[:, cols].unflatten(1, (n, g.size)), grad_buf[:, cols].unflatten(1, (n, g.size)),
                        g.skip_constant)
                    if grad_x is None:  # one group: its (fresh) result is the whole input gradient
                        grad_x = imap.backward(grad_t, xs, t)
                    else:
                        grad_x[:, g.start: g.start + g.size] = imap.backward(grad_t, xs, t)
                    params = list(basis.parameters())
                    pg = (*pg, *([None] * (len(params) - len(pg))))  # a basis may return () for "none"
                    param_grads += [None if gp is None else gp.to(p.dtype) for gp, p in zip(pg, params)]
                if layer._act is not None:
                    act_out = buf[:, -layer.in_features:]
                    grad_x.add_(layer._act.backward(grad_buf[:, -layer.in_features:], xb, act_out))
                grad_x = grad_x.to(x.dtype) if need_x else None
            else:
                param_grads = [None] * len(layer.basis_parameters())
        return (grad_x, grad_w, grad_b, None, *param_grads)
