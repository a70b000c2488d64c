"""`kallm plot-functions` on a saved retrofit of a tiny real-architecture model."""

from __future__ import annotations

import pytest
import torch

from kallm.cli import main
from kallm.report.kan_functions import DPI, PANEL_INCHES
from kallm.retrofitting.saving import save_retrofit
from kallm.retrofitting.surgery import retrofit
from tests.report.test_kan_functions import png_size
from tests.tiny_models import make_tiny_model


def _error_lines(stderr: str) -> list[str]:
    """stderr without transformers' weight-loading progress bar (not kallm's to silence)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("Loading weights")]


@pytest.fixture(scope="module")
def retrofit_dir(smol_tokenizer, tmp_path_factory):
    """A retrofit (kan:chebyshev2:2 on layers 2, 3) whose KAN weights are no longer the fresh init."""
    from kallm.models.loading import load_model

    base = tmp_path_factory.mktemp("base")
    make_tiny_model("llama", vocab_size=len(smol_tokenizer)).save_pretrained(base)
    smol_tokenizer.save_pretrained(base)
    model, _ = load_model(str(base))
    retrofit(model, layers="last:2", variant="kan:chebyshev2:2", seed=0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("retro") / "retrofit"
    save_retrofit(model, out)
    return out


def test_plot_functions_writes_the_png(retrofit_dir, tmp_path, capsys):
    png = tmp_path / "layer3.png"
    code = main(["plot-functions", str(retrofit_dir), "--layer", "3", "--out", str(png), "--inputs", "3"])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(png)
    assert png_size(png) == (round(PANEL_INCHES[0] * 4 * DPI), round(PANEL_INCHES[1] * 3 * DPI))


def test_default_output_lies_in_the_retrofit_dir(retrofit_dir, capsys):
    code = main(["-q", "plot-functions", str(retrofit_dir), "--layer", "2", "--outputs", "2"])
    assert code == 0, capsys.readouterr().err
    png = retrofit_dir / "functions-layer2.png"
    assert capsys.readouterr().out.strip() == str(png)
    assert png_size(png) == (round(PANEL_INCHES[0] * 2 * DPI), round(PANEL_INCHES[1] * 4 * DPI))


@pytest.mark.parametrize(("args", "message"), [
    (["--layer", "1"], "decoder layer 1 holds no KAN layer (retrofitted layers: [2, 3])"),
    (["--layer", "9"], "layer 9 is out of range: the model has 4 layers"),
    (["--layer", "3", "--xlim", "2", "-2"], "x range must be increasing, got (2.0, -2.0)"),
])
def test_bad_requests_exit_2_with_one_line(retrofit_dir, tmp_path, capsys, args, message):
    code = main(["plot-functions", str(retrofit_dir), *args, "--out", str(tmp_path / "x.png")])
    assert code == 2
    assert _error_lines(capsys.readouterr().err) == [f"kallm plot-functions: error: {message}"]
    assert not (tmp_path / "x.png").exists()


def test_missing_folder_exits_2(tmp_path, capsys):
    assert main(["plot-functions", str(tmp_path / "nope"), "--layer", "3"]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert err == [f"kallm plot-functions: error: retrofit folder {tmp_path / 'nope'} does not exist"]
