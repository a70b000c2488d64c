"""Plots of the univariate functions a KAN layer learned (pykan-style), as a grid of small panels.

Each panel shows phi_{i,o}(x): how raw input channel i contributes to output unit o (base branch +
basis expansion). Panels are chosen by contribution: the input channels and output units whose
functions have the largest norm over the plotted range.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kallm.errors import KallmError


def find_kan_layer(model: nn.Module, layer: int, index: int = 0) -> nn.Module:
    """The `index`-th KANLinear inside decoder layer `layer`'s retrofitted FFN."""
    from kallm.kan import KANLinear
    from kallm.retrofitting.arch import find_decoder_layers
    from kallm.retrofitting.surgery_report import find_report

    _, layers = find_decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise KallmError(f"layer {layer} is out of range: the model has {len(layers)} layers")
    kans = [m for m in layers[layer].modules() if isinstance(m, KANLinear)]
    if not kans:
        report = find_report(model)
        where = f" (retrofitted layers: {list(report.layer_indices)})" if report else ""
        raise KallmError(f"decoder layer {layer} holds no KAN layer{where}")
    if not 0 <= index < len(kans):
        raise KallmError(f"decoder layer {layer} has {len(kans)} KAN layers; --sublayer must be 0..{len(kans) - 1}")
    return kans[index]


DPI = 110
PANEL_INCHES = (2.6, 2.1)  # (width, height) of one panel


def strongest_functions(phi: torch.Tensor, n_inputs: int, n_outputs: int) -> tuple[list[int], list[int]]:
    """(input channels, output units) whose functions phi (G, in, out) have the largest RMS over the grid."""
    strength = phi.pow(2).mean(0).sqrt()
    ins = strength.sum(1).topk(min(n_inputs, strength.shape[0])).indices.tolist()
    outs = strength[ins].sum(0).topk(min(n_outputs, strength.shape[1])).indices.tolist()
    return ins, outs


@torch.no_grad()
def kan_function_figure(
    kan: nn.Module, n_inputs: int = 4, n_outputs: int = 4, x_range: tuple[float, float] = (-4.0, 4.0),
    points: int = 200, title: str | None = None,
):
    """A matplotlib Figure (rows: input channels, columns: output units) of the strongest functions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n_inputs < 1 or n_outputs < 1:
        raise KallmError(f"need at least one input and one output to plot, got {n_inputs} and {n_outputs}")
    if not x_range[0] < x_range[1]:
        raise KallmError(f"x range must be increasing, got {x_range}")
    ref = next(kan.parameters())
    grid = torch.linspace(x_range[0], x_range[1], points, device=ref.device, dtype=torch.float32)
    phi = kan.univariate(grid).float().cpu()  # (G, in, out)
    ins, outs = strongest_functions(phi, n_inputs, n_outputs)
    fig, axes = plt.subplots(len(ins), len(outs), figsize=(PANEL_INCHES[0] * len(outs), PANEL_INCHES[1] * len(ins)),
                             squeeze=False, sharex=True)
    xs = grid.cpu().numpy()
    for r, i in enumerate(ins):
        for c, o in enumerate(outs):
            ax = axes[r][c]
            ax.plot(xs, phi[:, i, o].numpy(), color="tab:blue", lw=1.5)
            ax.axhline(0, color="0.8", lw=0.6, zorder=0)
            ax.set_title(f"in {i} → out {o}", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(ins) - 1:
                ax.set_xlabel("input value x", fontsize=8)
            if c == 0:
                ax.set_ylabel("φ(x)", fontsize=8)
    basis = getattr(kan, "basis_name", None) or getattr(getattr(kan, "basis", None), "name", None) or type(kan).__name__
    fig.suptitle(title or f"learned univariate functions ({basis}, degree {getattr(kan, 'degree', '?')})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_kan_functions(
    kan: nn.Module, out_path: str | Path, n_inputs: int = 4, n_outputs: int = 4,
    x_range: tuple[float, float] = (-4.0, 4.0), points: int = 200, title: str | None = None,
) -> Path:
    """Write `kan_function_figure` as a PNG of (PANEL_INCHES x grid) x DPI pixels."""
    import matplotlib.pyplot as plt

    from kallm.io import write_with_atomic

    fig = kan_function_figure(kan, n_inputs, n_outputs, x_range, points, title)
    out = Path(out_path)
    try:
        write_with_atomic(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)
    return out
