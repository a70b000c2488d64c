"""Fourier basis: 1, cos(k pi t / 2), sin(k pi t / 2) for k = 1..degree, on [-1, 1].

The base period is 4, twice the domain, so the two ends of [-1, 1] (where tanh saturates) are not
forced to the same value as they would be with period-2 harmonics. Adding harmonics leaves the
existing ones unchanged, so the degree can be raised in place.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kallm.kan.bases import Basis, register_basis


@register_basis("fourier")
class Fourier(Basis):
    constant_first = True

    @property
    def n_basis(self) -> int:
        return 2 * self.degree + 1

    def terms(self, t: Tensor, out: Tensor | None = None, skip_constant: bool = False) -> Tensor:
        first = 1 if skip_constant else 0
        n = self.n_basis - first
        if out is None and t.requires_grad and torch.is_grad_enabled():
            parts = [] if skip_constant else [torch.ones_like(t)]
            for k in range(1, self.degree + 1):
                angle = t * (k * math.pi / 2)
                parts += [torch.cos(angle), torch.sin(angle)]
            return torch.stack(parts, dim=-2) if parts else t.new_empty((*t.shape[:-1], 0, t.shape[-1]))
        out = self._alloc(t, n, out)
        if not skip_constant:
            out[..., 0, :].fill_(1.0)
        for k in range(1, self.degree + 1):
            angle = t * (k * math.pi / 2)
            torch.cos(angle, out=out[..., 2 * k - 1 - first, :])
            torch.sin(angle, out=out[..., 2 * k - first, :])
        return out

    def backward_terms(
        self, t: Tensor, terms: Tensor, grad: Tensor, skip_constant: bool = False
    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        # d/dt cos(w t) = -w sin(w t), d/dt sin(w t) = w cos(w t): both already sit in `terms`.
        first = 1 if skip_constant else 0
        grad_t = torch.zeros_like(t)
        for k in range(1, self.degree + 1):
            w = k * math.pi / 2
            cos, sin = 2 * k - 1 - first, 2 * k - first
            grad_t.addcmul_(grad[..., sin, :], terms[..., cos, :], value=w)
            grad_t.addcmul_(grad[..., cos, :], terms[..., sin, :], value=-w)
        return grad_t, ()

    def elevation_matrix(self, new_degree: int) -> Tensor:
        return torch.eye(self.n_basis, 2 * new_degree + 1, dtype=torch.float64)
