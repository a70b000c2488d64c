"""Plots of a KAN layer's learned univariate functions: panel choice, plotted values, the PNG file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kallm.errors import KallmError
from kallm.kan import KANLinear
from kallm.report.kan_functions import (
    DPI,
    PANEL_INCHES,
    find_kan_layer,
    kan_function_figure,
    plot_kan_functions,
    strongest_functions,
)
from kallm.retrofitting.surgery import retrofit
from tests.tiny_models import make_tiny_model


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's signature and IHDR chunk; fails on anything else."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def _kan_with_a_strong_function() -> KANLinear:
    """A KAN whose function in 5 -> out 2 dominates, then in 1 -> out 2 / in 5 -> out 0."""
    kan = KANLinear(8, 6, "chebyshev2", 2)
    with torch.no_grad():
        kan.weight.normal_(0, 0.01)
        parts, base = kan.unpack_weight()
        parts[0][2, :, 5] = torch.tensor([0.0, 3.0, 2.0])
        parts[0][2, :, 1] = torch.tensor([0.0, 0.0, 1.0])
        parts[0][0, :, 5] = torch.tensor([0.0, 0.5, 0.0])
        kan.weight.copy_(kan.pack_weight(parts, base))
    return kan


def test_strongest_functions_pick_the_largest_rms():
    phi = torch.zeros(10, 4, 3)
    phi[:, 2, 1] = 5.0
    phi[:, 0, 1] = 2.0
    phi[:, 0, 0] = 1.0
    ins, outs = strongest_functions(phi, 2, 2)
    assert ins == [2, 0] and outs == [1, 0]


def test_figure_panels_show_the_layers_functions_with_labelled_axes():
    import matplotlib.pyplot as plt

    kan = _kan_with_a_strong_function()
    fig = kan_function_figure(kan, n_inputs=2, n_outputs=2, x_range=(-2.0, 2.0), points=50)
    try:
        axes = np.array(fig.axes).reshape(2, 2)
        assert axes[0, 0].get_title() == "in 5 → out 2"
        assert [ax.get_title() for ax in axes[:, 0]] == ["in 5 → out 2", "in 1 → out 2"]
        assert axes[0, 1].get_title() == "in 5 → out 0"
        assert all(ax.get_xlabel() == "input value x" for ax in axes[-1])
        assert all(ax.get_ylabel() == "φ(x)" for ax in axes[:, 0])
        assert "chebyshev2, degree 2" in fig._suptitle.get_text()
        # The curve is phi_{5,2}: the KAN's output 2 as channel 5 alone moves (y_o = sum_i phi_{i,o}(x_i) + bias).
        xs, ys = axes[0, 0].get_lines()[0].get_data()
        grid = torch.linspace(-2.0, 2.0, 50)
        np.testing.assert_allclose(xs, grid.numpy(), atol=1e-6)
        x = torch.zeros(50, 8)
        x[:, 5] = grid
        with torch.no_grad():
            moved = kan(x)[:, 2] - kan(torch.zeros(1, 8))[0, 2]
        phi0 = kan.univariate(torch.zeros(1), [5], [2])[0, 0, 0]
        np.testing.assert_allclose(ys - phi0.item(), moved.numpy(), atol=1e-5)
        assert np.ptp(ys) > 1.0
    finally:
        plt.close(fig)


def test_png_has_the_figure_size_times_dpi(tmp_path):
    import matplotlib.image

    kan = _kan_with_a_strong_function()
    out = plot_kan_functions(kan, tmp_path / "sub" / "f.png", n_inputs=3, n_outputs=2)
    assert out == tmp_path / "sub" / "f.png"
    width, height = png_size(out)
    assert (width, height) == (round(PANEL_INCHES[0] * 2 * DPI), round(PANEL_INCHES[1] * 3 * DPI))
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    assert [p.name for p in out.parent.iterdir()] == ["f.png"]  # no temporary file left behind


def test_find_kan_layer_and_errors(smol_tokenizer):
    model = make_tiny_model("llama", vocab_size=len(smol_tokenizer))
    retrofit(model, layers="last:2", variant="kan:sequential(chebyshev2:2,legendre:3)@hidden=16")
    first, second = find_kan_layer(model, 3, 0), find_kan_layer(model, 3, 1)
    assert (first.in_features, first.out_features, second.degree) == (32, 16, 3)
    with pytest.raises(KallmError, match=r"layer 7 is out of range: the model has 4 layers"):
        find_kan_layer(model, 7)
    with pytest.raises(KallmError, match=r"decoder layer 1 holds no KAN layer \(retrofitted layers: \[2, 3\]\)"):
        find_kan_layer(model, 1)
    with pytest.raises(KallmError, match=r"has 2 KAN layers; --sublayer must be 0..1"):
        find_kan_layer(model, 3, 2)
    with pytest.raises(KallmError, match="x range must be increasing"):
        kan_function_figure(first, x_range=(1.0, -1.0))
    with pytest.raises(KallmError, match="at least one input and one output"):
        kan_function_figure(first, n_inputs=0)
