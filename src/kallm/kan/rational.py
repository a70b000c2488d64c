"""Rational basis after the Kolmogorov-Arnold Transformer's "safe" Pade unit (group-rational KAN).

Terms are t^k / Q(t) for k = 0..degree with Q(t) = 1 + |b_1 t + ... + b_m t^m|, so the layer's
matmul forms P_{i,o}(t) / Q(t) with a per-edge numerator P and one learnable denominator shared by
all channels of the layer (KAT shares denominators within channel groups; here the group is the
layer, or each part of a ParallelKAN). Q >= 1, so the denominator can never reach zero. The
denominator coefficients start at `den_init` (not 0: |u| has zero gradient at u = 0, so all-zero
coefficients would never move). Raising the degree adds numerator powers with zero weight and
keeps the denominator, which leaves the function unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kallm.errors import KallmError
from kallm.kan.bases import Basis, check_degree, check_number, register_basis


@register_basis("rational")
class Rational(Basis):
    param_doc = {
        "den_degree": "degree m >= 1 of the denominator polynomial (default max(1, degree - 1), as KAT's 5/4)",
        "den_init": "initial value of every denominator coefficient (default 0.1)",
    }

    def __init__(self, degree: int, den_degree: int | None = None, den_init: float = 0.1) -> None:
        super().__init__(degree)
        m = max(1, self.degree - 1) if den_degree is None else check_degree(den_degree, "rational 'den_degree'")
        if m < 1:
            raise KallmError(f"basis 'rational': 'den_degree' must be >= 1, got {den_degree!r}")
        self.den_degree = m
        self.den_init = check_number(den_init, "den_init", "rational")
        self.denominator = nn.Parameter(torch.full((m,), self.den_init))

    def params(self) -> dict[str, Any]:
        return {"den_degree": self.den_degree, "den_init": self.den_init}

    def with_degree(self, new_degree: int) -> Basis:
        basis = Rational(new_degree, self.den_degree, self.den_init)
        with torch.no_grad():
            basis.denominator.copy_(self.denominator)
        return basis

    def numerator_u(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """u(t) = b_1 t + ... + b_m t^m and u'(t), by Horner."""
        coef = self.denominator.to(t.dtype)
        acc = torch.zeros_like(t)
        dacc = torch.zeros_like(t)
        for j in range(self.den_degree - 1, -1, -1):  # acc = b_1 + b_2 t + ...; u = acc * t
            dacc = dacc * t + acc
            acc = acc * t + coef[j]
        return acc * t, dacc * t + acc

    def denominator_value(self, t: Tensor) -> Tensor:
        return 1.0 + self.numerator_u(t)[0].abs()

    def terms(self, t: Tensor, out: Tensor | None = None, skip_constant: bool = False) -> Tensor:
        inv_q = 1.0 / self.denominator_value(t)
        if out is None:
            powers = [inv_q]
            for _ in range(self.degree):
                powers.append(powers[-1] * t)
            return torch.stack(powers, dim=-2)
        out = self._alloc(t, self.n_basis, out)
        out[..., 0, :] = inv_q
        for k in range(1, self.n_basis):
            torch.mul(out[..., k - 1, :], t, out=out[..., k, :])
        return out

    def backward_terms(
        self, t: Tensor, terms: Tensor, grad: Tensor, skip_constant: bool = False
    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        # terms_k = t^k / Q, Q = 1 + |u|: d terms_k/dt = k terms_{k-1} - terms_k sign(u) u' / Q and
        # d terms_k/db_j = -terms_k sign(u) t^j / Q. With A = sign(u) / Q * sum_k g_k terms_k:
        # grad_t = sum_k k g_k terms_{k-1} - A u',  grad_b_j = -sum A t^j.
        u, du = self.numerator_u(t)
        weighted = (grad * terms).sum(-2)
        a = weighted.mul_(torch.sign(u)).mul_(terms[..., 0, :])
        grad_t = -a * du
        for k in range(1, self.n_basis):
            grad_t.addcmul_(grad[..., k, :], terms[..., k - 1, :], value=float(k))
        grad_b = []
        power = t
        for j in range(self.den_degree):
            grad_b.append(-(a * power).sum())
            if j + 1 < self.den_degree:
                power = power * t
        return grad_t, (torch.stack(grad_b),)

    def elevation_matrix(self, new_degree: int) -> Tensor:
        return torch.eye(self.n_basis, new_degree + 1, dtype=torch.float64)
