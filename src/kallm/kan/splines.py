"""Grid bases: B-splines (Cox-de Boor on a uniform, extended grid) and Gaussian RBF bumps.

Both live on a grid of `grid_size` intervals over [grid_min, grid_max] (default [-1, 1], the
image of the default `tanh` input map). The B-spline grid is extended by `degree` knots on each
side so that the splines sum to 1 everywhere on the range; there are grid_size + degree of them.
The RBF family uses the same count and centres (the B-splines' centres) with a Gaussian of the
same variance as the B-spline bump ((degree + 1) h^2 / 12), so `rbf:k` is the smooth analogue of
`bspline:k` (FastKAN's observation). Neither can raise its degree in place: every term changes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kallm.errors import KallmError
from kallm.kan.bases import MAX_GRID_SIZE, Basis, check_number, register_basis

_GRID_DOC = {
    "grid_size": "number of grid intervals, a positive integer (default 5)",
    "grid_min": "left end of the grid range (default -1)",
    "grid_max": "right end of the grid range (default 1)",
}


class GridBasis(Basis):
    param_doc = _GRID_DOC

    def __init__(self, degree: int, grid_size: int = 5, grid_min: float = -1.0, grid_max: float = 1.0) -> None:
        super().__init__(degree)
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or not 1 <= grid_size <= MAX_GRID_SIZE:
            raise KallmError(f"basis {self.name!r}: 'grid_size' must be a positive integer up to {MAX_GRID_SIZE} "
                             f"(kallm's limit), got {grid_size!r}")
        self.grid_size = grid_size
        self.grid_min = check_number(grid_min, "grid_min", self.name)
        self.grid_max = check_number(grid_max, "grid_max", self.name)
        if self.grid_max <= self.grid_min:
            raise KallmError(f"basis {self.name!r}: need grid_min < grid_max, got [{grid_min}, {grid_max}]")

    @property
    def n_basis(self) -> int:
        return self.grid_size + self.degree

    @property
    def step(self) -> float:
        return (self.grid_max - self.grid_min) / self.grid_size

    def params(self) -> dict[str, Any]:
        return {"grid_size": self.grid_size, "grid_min": self.grid_min, "grid_max": self.grid_max}

    def knots(self, like: Tensor | None = None) -> Tensor:
        """The extended uniform knot vector, grid_size + 2 degree + 1 knots."""
        idx = torch.arange(-self.degree, self.grid_size + self.degree + 1, dtype=torch.float64)
        knots = self.grid_min + idx * self.step
        return knots if like is None else knots.to(device=like.device, dtype=like.dtype)

    def _store(self, values: Tensor, t: Tensor, out: Tensor | None) -> Tensor:
        return values if out is None else self._alloc(t, self.n_basis, out).copy_(values)


@register_basis("bspline")
class BSpline(GridBasis):
    """B-splines of order `degree` on a uniform grid (efficient-kan's basis).

    Evaluated locally: a point in knot cell i has only degree + 1 non-zero splines, given by the
    uniform Cox-de Boor recurrence in the cell coordinate f; they are scattered into the dense
    output. Same values as the dense recurrence, at a fraction of its passes over memory.
    """

    def _local(self, t: Tensor, degree: int) -> tuple[Tensor, list[Tensor], list[Tensor | None]]:
        """Spline index of the first non-zero spline (i - degree, long), the degree-`degree` splines
        that are non-zero on t's cell, and per slot a mask of where that spline exists (None: always).

        When every t lies in [grid_min, grid_max] (always, with the default tanh map) no masks are
        needed: the cell is clamped into the grid and the right end grid_max belongs to the last cell.
        """
        p, h = self.degree, self.step
        u = (t - (self.grid_min - p * h)) / h
        lo, hi = torch.aminmax(t) if t.numel() else (t.new_zeros(()), t.new_zeros(()))
        in_grid = bool(lo >= self.grid_min) and bool(hi <= self.grid_max)
        cell = torch.floor(u)
        if in_grid:
            cell.clamp_(p, self.grid_size + p - 1)
        f = u - cell
        local = [torch.ones_like(t)]
        for q in range(1, degree + 1):
            # B_{j,q} = ((f + q - r) B_{j,q-1} + (r + 1 - f) B_{j+1,q-1}) / q for r = j - (i - q)
            nxt = []
            for r in range(q + 1):
                value = (r + 1 - f).mul_(local[r]) if r < q else None
                if r >= 1:
                    left = (f + (q - r)).mul_(local[r - 1])
                    value = left if value is None else value.add_(left)
                nxt.append(value.mul_(1.0 / q))
            local = nxt
        first = (cell - p).long()
        masks: list[Tensor | None] = [None] * (p + 1)
        if not in_grid:  # outside the extended knots every spline is 0; near the ends some don't exist
            inside = (cell >= 0) & (cell <= self.grid_size + 2 * p - 1)
            masks = [inside & (first >= -r) & (first <= self.n_basis - 1 - r) for r in range(p + 1)]
        return first, local, masks

    def _index(self, first: Tensor, r: int) -> Tensor:
        return (first + r).clamp_(0, self.n_basis - 1).unsqueeze(-2)

    def terms(self, t: Tensor, out: Tensor | None = None, skip_constant: bool = False) -> Tensor:
        first, local, masks = self._local(t, self.degree)
        functional = out is None
        out = t.new_zeros((*t.shape[:-1], self.n_basis, t.shape[-1])) if functional else self._alloc(
            t, self.n_basis, out).zero_()
        for r, (value, mask) in enumerate(zip(local, masks)):
            src = (value if mask is None else value * mask).unsqueeze(-2)
            index = self._index(first, r)
            out = out.scatter_add(-2, index, src) if functional else out.scatter_add_(-2, index, src)
        return out

    def backward_terms(
        self, t: Tensor, terms: Tensor, grad: Tensor, skip_constant: bool = False
    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        grad_t = torch.zeros_like(t)
        if self.degree == 0:
            return grad_t, ()
        # B'_{j,p} = (B_{j,p-1} - B_{j+1,p-1}) / h, with the degree p - 1 splines of the same cell.
        first, lower, masks = self._local(t, self.degree - 1)  # masks are per slot of the degree-p splines
        for r, mask in enumerate(masks):
            deriv = lower[r - 1] if r >= 1 else None
            if r < self.degree:
                deriv = -lower[r] if deriv is None else deriv - lower[r]
            if mask is not None:
                deriv = deriv * mask
            g = grad.gather(-2, self._index(first, r)).squeeze(-2)
            grad_t.addcmul_(g, deriv, value=1.0 / self.step)
        return grad_t, ()


@register_basis("rbf")
class RBF(GridBasis):
    """Gaussian bumps exp(-(t - c_j)^2 / (2 s^2)) at the B-spline centres, s^2 = (degree + 1) h^2 / 12."""

    def centres(self, like: Tensor) -> Tensor:
        knots = self.knots(like)
        return 0.5 * (knots[: self.n_basis] + knots[self.degree + 1:])

    @property
    def _inv_two_var(self) -> float:
        return 6.0 / ((self.degree + 1) * self.step**2)

    def terms(self, t: Tensor, out: Tensor | None = None, skip_constant: bool = False) -> Tensor:
        centres = self.centres(t).unsqueeze(-1)
        if out is None:
            diff = t.unsqueeze(-2) - centres
            return torch.exp(-self._inv_two_var * diff * diff)
        out = self._alloc(t, self.n_basis, out)
        torch.sub(t.unsqueeze(-2), centres, out=out)
        return out.square_().mul_(-self._inv_two_var).exp_()

    def backward_terms(
        self, t: Tensor, terms: Tensor, grad: Tensor, skip_constant: bool = False
    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        # d/dt phi_j = 2 k (c_j - t) phi_j, so sum_j g_j phi_j' = 2 k (sum_j g_j phi_j c_j - t sum_j g_j phi_j).
        weighted = grad * terms
        centres = self.centres(t)
        moment = torch.einsum("...jc,j->...c", weighted, centres)
        return 2.0 * self._inv_two_var * (moment - t * weighted.sum(-2)), ()
