"""Parameter-matched controls: the model's own MLP class, narrowed to a width or a budget, counted exactly."""

from __future__ import annotations

import pytest
import torch

from kallm.errors import KallmError
from kallm.retrofitting import parse_variant, retrofit
from kallm.retrofitting.arch import find_decoder_layers, find_ffn
from kallm.retrofitting.surgery import replacement_modules
from tests.tiny_models import make_tiny_model

# Per architecture: the new FFN's parameters at intermediate width h (hidden size 32 in every tiny model).
EXPECTED = {
    "llama": lambda h: 3 * 32 * h,  # gate, up, down; no biases
    "phi3": lambda h: 32 * 2 * h + h * 32,  # fused gate_up (2h outputs), down
    "gpt2": lambda h: (32 * h + h) + (h * 32 + 32),  # Conv1D c_fc, c_proj with biases
    "gpt_neox": lambda h: (32 * h + h) + (h * 32 + 32),
    "opt": lambda h: (32 * h + h) + (h * 32 + 32),  # inline fc1 / fc2
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_hidden_width_builds_the_models_own_mlp_narrower(arch):
    model = make_tiny_model(arch)
    report = retrofit(model, layers="last:2", variant="linear@hidden=24", freeze="ffn", seed=0)
    assert report.hidden_width == 24
    assert [r.new_params for r in report.layers] == [EXPECTED[arch](24)] * 2
    assert report.trainable_params == 2 * EXPECTED[arch](24)
    _, layers = find_decoder_layers(model)
    old_class = type(find_ffn(find_decoder_layers(make_tiny_model(arch))[1][0], 0).module)
    assert type(replacement_modules(layers[3])[0].kallm_ffn) is old_class
    with torch.no_grad():
        out = model(torch.randint(3, 200, (2, 9))).logits
    assert out.shape == (2, 9, 256) and torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_budget_picks_the_widest_mlp_within_it(arch):
    per_layer = EXPECTED[arch]
    for budget in (4096, 5000, 1234):
        report = retrofit(make_tiny_model(arch), layers="last:2", variant=f"linear@budget={budget}", seed=0)
        h = report.hidden_width
        assert per_layer(h) <= budget < per_layer(h + 1)
        assert report.new_params_per_layer == per_layer(h)
    half = retrofit(make_tiny_model(arch), layers="-1", variant="linear@budget=0.5", seed=0)
    full = per_layer(64)
    assert per_layer(half.hidden_width) <= full / 2 < per_layer(half.hidden_width + 1)
    match = retrofit(make_tiny_model(arch), layers="-1", variant="linear@budget=match", seed=0)
    assert match.hidden_width == 64 and match.replaced_new_params == match.replaced_old_params


def test_a_control_matches_a_kan_within_its_width_granularity():
    kan = retrofit(make_tiny_model("llama"), layers="last:2", variant="kan:chebyshev2:2", seed=0)
    control = retrofit(make_tiny_model("llama"), layers="last:2",
                       variant=parse_variant("linear").with_budget(parse_variant(
                           f"linear@budget={kan.new_params_per_layer}").budget), seed=0)
    assert kan.new_params_per_layer - 96 < control.new_params_per_layer <= kan.new_params_per_layer
    assert control.trainable_params / kan.trainable_params > 0.98


def test_impossible_sizes_are_refused():
    with pytest.raises(KallmError, match="budget of 50 parameters is below the smallest"):
        retrofit(make_tiny_model("llama"), layers="-1", variant="linear@budget=50")
    with pytest.raises(KallmError, match="hidden width must be a positive integer"):
        parse_variant("linear@hidden=0")
    with pytest.raises(KallmError, match="give either budget= or hidden="):
        parse_variant("linear@hidden=8@budget=match")
