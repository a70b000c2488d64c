"""Least-squares read-outs for distillation, the ridge chosen on validation rows.

A layer that is linear in some of its weights given the rest (a KAN: `expand(x) @ weight`; an MLP: its
projection back to the hidden size on its activations) has a closed-form ridge solution. The ridge is
chosen, not fixed: the normal equations are accumulated once on the fit rows, every candidate of
`RIDGE_GRID` is solved (a Cholesky factorisation each), and the one with the lowest FVU on a validation slice
of the fit rows wins (the reported held-out rows are never seen). A fixed ridge (a number) skips the
search. When the layer already has a meaningful start (a pruned MLP, the original's own weights), "keep
the current weights" is a candidate too, so a solve never leaves a layer worse than it found it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Relative to the mean diagonal of the Gram matrix; 0 is the minimum-norm least-squares solution.
RIDGE_GRID = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


@dataclass
class FitRows:
    """The rows a layer is fitted on (x, y) and the validation slice that chooses between fits."""

    x: Tensor
    y: Tensor
    x_val: Tensor
    y_val: Tensor

    @classmethod
    def split(cls, x: Tensor, y: Tensor, fraction: float) -> FitRows:
        """The last `fraction` of the rows (at least one, never all) validates: contiguous rows come from
        the same texts, so a tail slice measures generalisation to other texts, as the held-out rows do."""
        n_val = min(max(1, int(len(x) * fraction)), len(x) - 1)
        return cls(x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:])

    def all_x(self) -> Tensor:
        return torch.cat([self.x, self.x_val])

    def all_y(self) -> Tensor:
        return torch.cat([self.y, self.y_val])


@dataclass
class Readout:
    """A least-squares read-out (weight: features x outputs, float64) and how it was chosen."""

    weight: Tensor
    bias: Tensor | None
    ridge: float
    val_fvu: float


def fvu(pred: Tensor, target: Tensor) -> float:
    """Fraction of variance unexplained, pooled over output channels."""
    var = (target - target.mean(0)).pow(2).sum()
    return float((pred - target).pow(2).sum() / var.clamp_min(1e-12))


def _with_ones(feats: Tensor, with_bias: bool) -> Tensor:
    feats = feats if feats.dtype == torch.float64 else feats.float()
    return torch.cat([feats, feats.new_ones(len(feats), 1)], dim=1) if with_bias else feats


def normal_equations(chunks: Iterable[tuple[Tensor, Tensor]], with_bias: bool) -> tuple[Tensor, Tensor]:
    """(X'X, X'Y) in float64, accumulated chunk by chunk (never all features at once).

    A float32 model's chunk products are float32 (half the time of float64, and they were most of a
    degree-6 KAN's fit; the held-out FVU on SmolLM2's layers agreed to 1e-6), a float64 model's float64."""
    gram = rhs = None
    for feats, target in chunks:
        feats = _with_ones(feats, with_bias)
        g, r = (feats.T @ feats).double(), (feats.T @ target.to(feats.dtype)).double()
        gram, rhs = (g, r) if gram is None else (gram + g, rhs + r)
    return gram, rhs


def _cholesky_solve(gram: Tensor, rhs: Tensor, ridge: float) -> Tensor | None:
    """The ridge solution through a Cholesky factorisation (about 20 times faster than an eigendecomposition
    on a CPU); None when the regularised Gram matrix is not numerically positive definite."""
    reg = gram.clone()
    reg.diagonal().add_(ridge * float(gram.diagonal().mean()))
    factor, info = torch.linalg.cholesky_ex(reg)
    if int(info) != 0:
        return None
    solution = torch.cholesky_solve(rhs, factor)
    return solution if bool(torch.isfinite(solution).all()) else None


def ridge_solve(gram: Tensor, rhs: Tensor, ridge: float) -> Tensor:
    """The ridge solution, `ridge` relative to the mean diagonal. A singular system (ridge 0 on a
    rank-deficient design) gets the minimum-norm solution: eigenvalues below 1e-12 of the largest count as
    zero (a pseudo-inverse)."""
    solution = _cholesky_solve(gram, rhs, ridge)
    if solution is not None:
        return solution
    evals, evecs = torch.linalg.eigh(gram)
    shifted = evals + ridge * float(gram.diagonal().mean())
    floor = 1e-12 * float(evals.abs().max().clamp_min(1e-300))
    inv = torch.where(shifted > floor, 1.0 / shifted.clamp_min(floor), torch.zeros_like(shifted))
    return evecs @ (inv[:, None] * (evecs.T @ rhs))


def _choose(gram: Tensor, rhs: Tensor, val_feats: Tensor, y_val: Tensor, candidates: tuple[float, ...]
            ) -> Readout | None:
    """The candidate ridge whose solution has the lowest validation FVU (None if every one is NaN). Among
    several, one whose system is singular (ridge 0 on a rank-deficient design) is skipped."""
    val_feats = val_feats.double()
    best: Readout | None = None
    for lam in candidates:
        weight = ridge_solve(gram, rhs, lam) if len(candidates) == 1 else _cholesky_solve(gram, rhs, lam)
        if weight is None:
            continue
        score = fvu(val_feats @ weight, y_val)
        if score == score and (best is None or score < best.val_fvu):  # NaN never wins
            best = Readout(weight, None, lam, score)
    return best


def _chunks(features: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, chunk: int
            ) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, len(x), chunk):
        yield features(x[start:start + chunk]), y[start:start + chunk]


@torch.no_grad()
def fit_readout(features: Callable[[Tensor], Tensor], rows: FitRows, with_bias: bool, ridge: float | str,
                current: Tensor | None = None, refit_all: bool = False, chunk: int = 4096) -> Readout | None:
    """The best least-squares read-out of `features(x)` onto y, or None when the current weights (whose
    predictions on the validation rows are `current`) are at least as good on the validation rows.

    `ridge` "auto" tries every `RIDGE_GRID` value, a number only itself. The candidates are solved on
    `rows.x`; with `refit_all` the winner is solved again on the validation rows too (for a final fit that
    nothing is compared with afterwards)."""
    gram, rhs = normal_equations(_chunks(features, rows.x, rows.y, chunk), with_bias)
    val_feats = torch.cat([_with_ones(f, with_bias) for f, _ in _chunks(features, rows.x_val, rows.y_val, chunk)])
    y_val = rows.y_val.double()
    best = _choose(gram, rhs, val_feats, y_val, RIDGE_GRID if ridge == "auto" else (float(ridge),))
    keep = fvu(current.to(y_val.dtype), y_val) if current is not None else float("inf")
    if best is None or not best.val_fvu < keep:
        log.debug("distill: least squares (val FVU %s) does not beat the current weights (%.4g)",
                  None if best is None else f"{best.val_fvu:.4g}", keep)
        return None
    if refit_all:
        g_val, r_val = normal_equations([(val_feats, rows.y_val)], False)
        best.weight = ridge_solve(gram + g_val, rhs + r_val, best.ridge)
    if with_bias:
        best.weight, best.bias = best.weight[:-1], best.weight[-1]
    return best


def linear_in_weights(module: nn.Module) -> bool:
    """A layer `solve_layer` can solve: a KAN layer (`expand`, then one matmul with its fused weight)."""
    return hasattr(module, "expand") and hasattr(module, "set_fused_weight")


def solve_layer(module: nn.Module, rows: FitRows, ridge: float | str, refit_all: bool = False) -> float | None:
    """Ridge regression on the layer's design matrix (its basis expansion): the ridge chosen, None when the
    layer's current weights were better on the validation rows (and kept)."""
    has_bias = getattr(module, "bias", None) is not None
    with torch.no_grad():
        current = module(rows.x_val)
    readout = fit_readout(module.expand, rows, has_bias, ridge, current, refit_all)
    if readout is None:
        return None
    with torch.no_grad():
        if readout.bias is not None:
            module.bias.copy_(readout.bias.to(module.bias.dtype))
        module.set_fused_weight(readout.weight.to(module.weight.dtype))
    return readout.ridge
