"""The naive reference KAN layer the benchmark compares against (typical public ChebyKAN style).

It stores the full (N, in, degree + 1) expansion, contracts it with an einsum over
(in, out, degree + 1) coefficients, and leaves the backward to autograd, which keeps the expansion
and every recurrence intermediate alive until backward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class NaiveChebyshevKAN(nn.Module):
    """y = silu(x) W_base + einsum(U_k(tanh x), C): Chebyshev U_k like kallm's default chebyshev2."""

    def __init__(self, in_features: int, out_features: int, degree: int = 2) -> None:
        super().__init__()
        self.degree = degree
        self.coeffs = nn.Parameter(torch.randn(in_features, out_features, degree + 1) / (in_features * (degree + 2))
                                   ** 0.5)
        self.base = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        t = torch.tanh(x)
        polys = [torch.ones_like(t), 2 * t]
        for _ in range(2, self.degree + 1):
            polys.append(2 * t * polys[-1] - polys[-2])
        expansion = torch.stack(polys[: self.degree + 1], dim=-1)  # (..., in, degree + 1)
        return torch.einsum("...id,iod->...o", expansion, self.coeffs) + self.base(nn.functional.silu(x))
