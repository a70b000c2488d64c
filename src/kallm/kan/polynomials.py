"""Polynomial bases: orthogonal families through their three-term recurrences, and Bernstein.

Every orthogonal family here satisfies P_0 = 1, P_1 = a_0 t + b_0 and
P_{n+1} = (a_n t + b_n) P_n - c_n P_{n-1}; differentiating it gives the derivative recurrence
P'_{n+1} = a_n P_n + (a_n t + b_n) P'_n - c_n P'_{n-1}, which the backward pass uses instead of
autograd (no stored per-term intermediates, and finite everywhere, unlike acos/cos formulations).
Lower-degree terms do not depend on the degree, so raising the degree keeps the function.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from kallm.errors import KallmError
from kallm.kan.bases import Basis, check_number, register_basis


class RecurrenceBasis(Basis):
    constant_first = True

    def coefficients(self) -> list[tuple[float, float, float]]:
        """(a_n, b_n, c_n) for n = 0 .. degree - 1 (c_0 is unused: P_{-1} = 0)."""
        raise NotImplementedError

    def _functional(self, t: Tensor) -> list[Tensor]:
        polys = [torch.ones_like(t)]
        prev: Tensor | float = 0.0
        for a, b, c in self.coefficients():
            polys.append((a * t + b) * polys[-1] - c * prev)
            prev = polys[-2]
        return polys

    def terms(self, t: Tensor, out: Tensor | None = None, skip_constant: bool = False) -> Tensor:
        first = 1 if skip_constant else 0
        if out is None and t.requires_grad and torch.is_grad_enabled():
            return torch.stack(self._functional(t)[first:], dim=-2)
        out = self._alloc(t, self.n_basis - first, out)
        # In-place into `out` (usually a slab of the layer's matmul buffer): no temporaries per term.
        if not skip_constant:
            out[..., 0, :].fill_(1.0)
        coefs = self.coefficients()
        prev: Tensor | None = None  # None stands for P_0 == 1 when it is not stored
        cur: Tensor | None = None
        for n, (a, b, c) in enumerate(coefs):
            slot = out[..., n + 1 - first, :]
            if n == 0:
                torch.mul(t, a, out=slot)
            elif prev is None:  # P_0 == 1 was not stored: -c * P_0 is a broadcast scalar
                torch.addcmul(t.new_full((), -c), t, cur, value=a, out=slot)
            else:
                torch.mul(prev, -c, out=slot)
                slot.addcmul_(t, cur, value=a)
            if b:
                slot.add_(1.0 if n == 0 else cur, alpha=b)
            prev, cur = cur, slot
        return out

    def backward_terms(
        self, t: Tensor, terms: Tensor, grad: Tensor, skip_constant: bool = False
    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        first = 1 if skip_constant else 0
        coefs = self.coefficients()
        if not coefs:
            return torch.zeros_like(t), ()
        a0, b0, _ = coefs[0]
        grad_t = grad[..., 1 - first, :] * a0
        d_prev: Tensor | float = 0.0
        d_cur: Tensor | float = a0
        for n in range(1, len(coefs)):
            a, b, c = coefs[n]
            if n == 1:
                # P_1 = a0 t + b0 is linear, so P'_2 = 2 a0 a1 t + (a1 b0 + a0 b1).
                slope, offset = 2.0 * a0 * a, a * b0 + a0 * b
                if n == len(coefs) - 1:  # degree 2: accumulate without materialising P'_2
                    grad_t.addcmul_(grad[..., 2 - first, :], t, value=slope)
                    if offset:
                        grad_t.add_(grad[..., 2 - first, :], alpha=offset)
                    break
                d_new = torch.mul(t, slope)
                if offset:
                    d_new.add_(offset)
            else:
                # P'_{n+1} = a P_n + (a t + b) P'_n - c P'_{n-1}
                d_new = torch.mul(terms[..., n - first, :], a)
                d_new.addcmul_(t, d_cur, value=a)
                if b:
                    d_new.add_(d_cur, alpha=b)
                if c:
                    # d_prev is a float while it is P'_1 = a_0 (a constant).
                    d_new.sub_(c * d_prev) if isinstance(d_prev, float) else d_new.sub_(d_prev, alpha=c)
            grad_t.addcmul_(grad[..., n + 1 - first, :], d_new)
            d_prev, d_cur = d_cur, d_new
        return grad_t, ()

    def elevation_matrix(self, new_degree: int) -> Tensor:
        return torch.eye(self.n_basis, new_degree + 1, dtype=torch.float64)


@register_basis("chebyshev1")
class Chebyshev1(RecurrenceBasis):
    """Chebyshev polynomials of the first kind T_k on [-1, 1]."""

    def coefficients(self) -> list[tuple[float, float, float]]:
        return [(1.0, 0.0, 0.0)] + [(2.0, 0.0, 1.0)] * (self.degree - 1) if self.degree else []


@register_basis("chebyshev2")
class Chebyshev2(RecurrenceBasis):
    """Chebyshev polynomials of the second kind U_k on [-1, 1]."""

    def coefficients(self) -> list[tuple[float, float, float]]:
        return [(2.0, 0.0, 1.0)] * self.degree


@register_basis("legendre")
class Legendre(RecurrenceBasis):
    """Legendre polynomials P_k on [-1, 1]: (n+1) P_{n+1} = (2n+1) t P_n - n P_{n-1}."""

    def coefficients(self) -> list[tuple[float, float, float]]:
        return [((2 * n + 1) / (n + 1), 0.0, n / (n + 1)) for n in range(self.degree)]


@register_basis("jacobi")
class Jacobi(RecurrenceBasis):
    """Jacobi polynomials P_k^(alpha, beta) on [-1, 1]; alpha, beta > -1 (default 0, 0 = Legendre)."""

    param_doc = {"alpha": "exponent of (1 - t) in the weight, > -1", "beta": "exponent of (1 + t), > -1"}

    def __init__(self, degree: int, alpha: float = 0.0, beta: float = 0.0) -> None:
        super().__init__(degree)
        self.alpha = check_number(alpha, "alpha", "jacobi")
        self.beta = check_number(beta, "beta", "jacobi")
        for key, value in (("alpha", self.alpha), ("beta", self.beta)):
            if value <= -1.0:
                raise KallmError(f"basis 'jacobi': parameter {key!r} must be > -1, got {value!r}")

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta}

    def coefficients(self) -> list[tuple[float, float, float]]:
        al, be = self.alpha, self.beta
        coefs = [((al + be + 2) / 2, (al - be) / 2, 0.0)]
        for n in range(1, self.degree):
            s = 2 * n + al + be
            d = 2 * (n + 1) * (n + al + be + 1) * s
            coefs.append(((s + 1) * (s + 2) * s / d, (s + 1) * (al * al - be * be) / d,
                          2 * (n + al) * (n + be) * (s + 2) / d))
        return coefs[: self.degree]


@register_basis("gegenbauer")
class Gegenbauer(RecurrenceBasis):
    """Gegenbauer (ultraspherical) polynomials C_k^(lam) on [-1, 1]; lam > -1/2, lam != 0."""

    param_doc = {"lam": "the ultraspherical parameter lambda, > -1/2 and != 0 (default 1 = chebyshev2)"}
    param_aliases = {"alpha": "lam"}

    def __init__(self, degree: int, lam: float = 1.0) -> None:
        super().__init__(degree)
        self.lam = check_number(lam, "lam", "gegenbauer")
        if self.lam <= -0.5:
            raise KallmError(f"basis 'gegenbauer': parameter 'lam' (alias 'alpha') must be > -1/2, got {lam!r}")
        if self.lam == 0.0:
            raise KallmError("basis 'gegenbauer': parameter 'lam' must not be 0 (C_k^(0) vanishes for k >= 1); "
                             "use 'chebyshev1' for that limit")

    def params(self) -> dict[str, Any]:
        return {"lam": self.lam}

    def coefficients(self) -> list[tuple[float, float, float]]:
        lam = self.lam
        return [(2 * (n + lam) / (n + 1), 0.0, (n + 2 * lam - 1) / (n + 1)) for n in range(self.degree)]


@register_basis("hermite")
class Hermite(RecurrenceBasis):
    """Physicists' Hermite polynomials H_k: H_{n+1} = 2t H_n - 2n H_{n-1}."""

    default_input_map = "tanh3"

    def coefficients(self) -> list[tuple[float, float, float]]:
        return [(2.0, 0.0, 2.0 * n) for n in range(self.degree)]


@register_basis("laguerre")
class Laguerre(RecurrenceBasis):
    """(Generalized) Laguerre polynomials L_k^(alpha) on [0, inf); alpha > -1 (default 0)."""

    default_input_map = "sigmoid8"
    param_doc = {"alpha": "generalized Laguerre parameter, > -1 (default 0)"}

    def __init__(self, degree: int, alpha: float = 0.0) -> None:
        super().__init__(degree)
        self.alpha = check_number(alpha, "alpha", "laguerre")
        if self.alpha <= -1.0:
            raise KallmError(f"basis 'laguerre': parameter 'alpha' must be > -1, got {alpha!r}")

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def coefficients(self) -> list[tuple[float, float, float]]:
        al = self.alpha
        return [(-1 / (n + 1), (2 * n + 1 + al) / (n + 1), (n + al) / (n + 1)) for n in range(self.degree)]


@register_basis("bernstein")
class Bernstein(Basis):
    """Bernstein polynomials b_{k,n}(t) = C(n, k) t^k (1 - t)^(n - k) on [0, 1]."""

    default_input_map = "sigmoid"

    @staticmethod
    def _powers(t: Tensor, n: int) -> tuple[list[Tensor | float], list[Tensor | float]]:
        """t^0..t^n and (1 - t)^0..(1 - t)^n (powers 0 as the float 1.0, to skip passes)."""
        s = 1.0 - t
        pow_t: list[Tensor | float] = [1.0]
        pow_s: list[Tensor | float] = [1.0]
        for k in range(n):
            pow_t.append(t if k == 0 else pow_t[-1] * t)
            pow_s.append(s if k == 0 else pow_s[-1] * s)
        return pow_t, pow_s

    @staticmethod
    def _product(a: Tensor | float, b: Tensor | float, scale: float, like: Tensor) -> Tensor:
        if isinstance(a, float) and isinstance(b, float):
            return torch.full_like(like, a * b * scale)
        return a * b * scale

    def terms(self, t: Tensor, out: Tensor | None = None, skip_constant: bool = False) -> Tensor:
        n = self.degree
        pow_t, pow_s = self._powers(t, n)
        values = [self._product(pow_t[k], pow_s[n - k], float(math.comb(n, k)), t) for k in range(n + 1)]
        if out is None:
            return torch.stack(values, dim=-2)
        out = self._alloc(t, n + 1, out)
        for k, value in enumerate(values):
            out[..., k, :] = value
        return out

    def backward_terms(
        self, t: Tensor, terms: Tensor, grad: Tensor, skip_constant: bool = False
    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        # b'_{k,n} = n (b_{k-1,n-1} - b_{k,n-1}): sum_k g_k b'_{k,n} = n sum_m b_{m,n-1} (g_{m+1} - g_m).
        n = self.degree
        grad_t = torch.zeros_like(t)
        if n == 0:
            return grad_t, ()
        pow_t, pow_s = self._powers(t, n - 1)
        for m in range(n):
            lower = self._product(pow_t[m], pow_s[n - 1 - m], float(n * math.comb(n - 1, m)), t)
            grad_t.addcmul_(lower, grad[..., m + 1, :] - grad[..., m, :])
        return grad_t, ()

    def elevation_matrix(self, new_degree: int) -> Tensor:
        # Degree elevation: b_{k,n} = (n+1-k)/(n+1) b_{k,n+1} + (k+1)/(n+1) b_{k+1,n+1}, applied repeatedly.
        m = torch.eye(self.n_basis, dtype=torch.float64)
        for n in range(self.degree, new_degree):
            step = torch.zeros(n + 1, n + 2, dtype=torch.float64)
            for k in range(n + 1):
                step[k, k] = (n + 1 - k) / (n + 1)
                step[k, k + 1] = (k + 1) / (n + 1)
            m = m @ step
        return m
