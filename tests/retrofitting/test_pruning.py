"""The pruned-MLP control: the model's own MLP narrowed to its most important channels, weights copied."""

from __future__ import annotations

import copy

import pytest
import torch

from kallm.errors import KallmError
from kallm.retrofitting import parse_variant, retrofit
from kallm.retrofitting.arch import find_decoder_layers, find_ffn
from kallm.retrofitting.pruning import (
    activation_importance,
    channel_importance,
    kept_channels,
    prune_projections,
    reselect_channels,
)
from tests.tiny_models import TINY_CONFIGS, make_tiny_model

IDS = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))
ARCHS = sorted(TINY_CONFIGS)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _silence_channels(model, layer: int, keep: int) -> None:
    """Zero what intermediate channels keep: onward make the MLP of `layer` use only the first `keep`."""
    _, layers = find_decoder_layers(model)
    index = layer % len(layers)
    site = find_ffn(layers[index], index)
    modules = [site.module, *(getattr(site.layer, n) for n in site.bypass)]
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, torch.nn.Linear) and sub.out_features == model.config.hidden_size \
                    and sub.in_features != model.config.hidden_size:
                with torch.no_grad():
                    sub.weight[:, keep:] = 0  # down projection: the later channels write nothing
            elif type(sub).__name__ == "Conv1D" and sub.nf == model.config.hidden_size and sub.nx != sub.nf:
                with torch.no_grad():
                    sub.weight[keep:, :] = 0


@pytest.mark.parametrize("arch", ARCHS)
def test_full_width_pruning_is_the_original(arch):
    model = make_tiny_model(arch)
    before = _logits(model)
    report = retrofit(model, layers="last:2", variant="pruned", freeze="ffn")
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)
    assert report.trainable_params == report.replaced_old_params  # a copy: the same count, all trainable


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "phi3"])  # phi3's fused gate_up: next test
def test_an_mlp_that_uses_half_its_channels_is_recovered_exactly(arch):
    model = make_tiny_model(arch)
    _silence_channels(model, layer=-1, keep=32)
    before = _logits(model)
    report = retrofit(model, layers="last:1", variant="pruned@hidden=32", freeze="ffn")
    assert report.hidden_width == 32
    torch.testing.assert_close(_logits(model), before, rtol=1e-5, atol=1e-6)


def test_a_fused_gate_up_keeps_the_same_channels_of_both_halves():
    model = make_tiny_model("phi3")
    layers = find_decoder_layers(model)[1]
    mlp = find_ffn(layers[-1], len(layers) - 1).module
    with torch.no_grad():
        mlp.down_proj.weight[:, 1::2] = 0  # only the even channels write anything
    before = _logits(model)
    retrofit(model, layers="last:1", variant="pruned@hidden=32", freeze="ffn")
    torch.testing.assert_close(_logits(model), before, rtol=1e-5, atol=1e-6)
    pruned = find_ffn(layers[-1], len(layers) - 1).module.kallm_ffn
    assert tuple(pruned.gate_up_proj.weight.shape) == (64, 32) and tuple(pruned.down_proj.weight.shape) == (32, 32)


def test_importance_orders_channels_and_ties_keep_their_order():
    model = make_tiny_model("llama")
    mlp = find_ffn(find_decoder_layers(model)[1][0], 0).module
    with torch.no_grad():
        mlp.down_proj.weight[:, 5] *= 100
        mlp.down_proj.weight[:, 7] = 0
    score = channel_importance([mlp], 32, 64)
    assert int(score.argmax()) == 5 and float(score[7]) == 0.0
    keep = kept_channels([mlp], 32, 64, 63)
    assert 7 not in keep.tolist() and keep.tolist() == sorted(keep.tolist())
    with pytest.raises(KallmError, match="between 1 and the original's 64"):
        kept_channels([mlp], 32, 64, 65)


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_parameter_counts_are_those_of_the_linear_control_of_the_same_width(arch):
    counts = {}
    for text in ("pruned@budget=0.5", "linear@budget=0.5"):
        report = retrofit(make_tiny_model(arch), layers="last:2", variant=text, freeze="ffn")
        counts[parse_variant(text).kind] = (report.replaced_new_params, report.hidden_width, report.trainable_params)
    assert counts["pruned"] == counts["linear"]


def _mlp_with_idle_heavy_channels():
    """A tiny llama MLP (d 32, inter 64) whose channels 0-47 have the largest weights but carry nothing on
    inputs along the first axis (their gate rows are zero there), and x along that axis."""
    mlp = find_decoder_layers(make_tiny_model("llama"))[1][3].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[:48, 0] = 0.0
        mlp.gate_proj.weight[:48, 1:] *= 10.0
        mlp.gate_proj.weight[48:, 0] = 1.0
    x = torch.zeros(200, 32)
    x[:, 0] = torch.randn(200, generator=torch.Generator().manual_seed(0))
    return mlp, x


def test_activation_importance_is_each_channels_rms_times_its_column_norm():
    mlp, x = _mlp_with_idle_heavy_channels()
    with torch.no_grad():
        h = (mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)).double()
    expected = h.pow(2).mean(0).sqrt() * mlp.down_proj.weight.double().norm(dim=0)
    score = activation_importance(mlp, x, 32, 64, chunk=64)  # chunks add up to the whole
    torch.testing.assert_close(score, expected)
    assert torch.all(score[:48] == 0) and torch.all(score[48:] > 0)


def test_reselected_channels_are_those_the_data_uses():
    """Weight norms keep the idle heavy channels; chosen again on x, the pruned MLP computes the original's
    function on x exactly; a fresh module of another layout is left alone."""
    mlp, x = _mlp_with_idle_heavy_channels()
    by_weight = prune_projections(copy.deepcopy(mlp), 32, 64, kept_channels([mlp], 32, 64, 16))
    with torch.no_grad():
        assert not torch.allclose(by_weight(x), mlp(x), atol=1e-3)
        assert reselect_channels(mlp, by_weight, x, 32, 64)
        torch.testing.assert_close(by_weight(x), mlp(x), atol=1e-6, rtol=0)
    other = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Linear(16, 32))
    before = copy.deepcopy(other.state_dict())
    assert not reselect_channels(mlp, other, x, 32, 64)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
