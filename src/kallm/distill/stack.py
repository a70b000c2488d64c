"""A stack of KAN layers (`SequentialKAN`) fitted in closed form: its earlier layers carry their input on, its
last layer is solved on what they give (`kallm.distill.layerwise` then alternates that solve with AdamW).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kallm.distill.solve import FitRows, linear_in_weights, solve_layer


def warm_start_stack(module: nn.Module, rows: FitRows, ridge: float | str) -> float | None:
    """Start a stack close to a one-layer fit: earlier layers pass their input on, the last is solved.

    Each earlier layer that is linear in its weights is first fitted (least squares) to carry its input
    through: to the input itself when it is square, to the input's leading principal components when it
    is narrower (random features otherwise). The last layer is then solved by least squares on what
    they give. A random stack's output is often orders of magnitude off the target's scale, and random
    features lose most of the input: AdamW moves each weight by about lr per step and spent its whole
    budget undoing that (measured: a two-layer KAN at the original's parameter count diverged at lr 2e-3).
    """
    with torch.no_grad():
        hidden = rows
        for layer in module.layers[:-1]:
            carried = carried_input(hidden.all_x(), getattr(layer, "out_features", 0)) if linear_in_weights(layer) \
                else None
            if carried is not None:
                n = len(hidden.x)
                solve_layer(layer, FitRows(hidden.x, carried[:n], hidden.x_val, carried[n:]), ridge)
            hidden = FitRows(layer(hidden.x), rows.y, layer(hidden.x_val), rows.y_val)
    return solve_layer(module.layers[-1], hidden, ridge)


def carried_input(x: Tensor, width: int) -> Tensor | None:
    """What a layer of `width` outputs should carry of its input x: x itself; when narrower, its top principal
    components at unit variance (the next layer's tanh map curved, not saturated, and no feature so small that
    its solve needs huge, fragile weights); when wider, nothing (None: keep the random init)."""
    if width == x.shape[1]:
        return x
    if not 0 < width < x.shape[1]:
        return None
    centred = (x - x.mean(0)).double()
    _, _, vh = torch.linalg.svd(centred[: min(len(x), 16384)], full_matrices=False)
    components = centred @ vh[:width].T
    return (components / components.std(0).clamp_min(1e-12)).to(x.dtype)


def solve_last_layer(module: nn.Module, rows: FitRows, ridge: float | str) -> float | None:
    """Solve a stack's last layer by least squares on what its earlier layers give (kept if not better)."""
    with torch.no_grad():
        hidden_x, hidden_val = rows.x, rows.x_val
        for layer in module.layers[:-1]:
            hidden_x, hidden_val = layer(hidden_x), layer(hidden_val)
    return solve_layer(module.layers[-1], FitRows(hidden_x, rows.y, hidden_val, rows.y_val), ridge)
