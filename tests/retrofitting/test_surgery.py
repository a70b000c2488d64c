"""Surgery on tiny random-weight models of every supported architecture."""

from __future__ import annotations

import pytest
import torch

from kallm.errors import KallmError
from kallm.retrofitting.arch import find_decoder_layers, find_ffn, model_dims
from kallm.retrofitting.displaced import restore_original_weights
from kallm.retrofitting.surgery import is_new_param, retrofit
from kallm.retrofitting.surgery_report import count_params
from tests.tiny_models import TINY_CONFIGS, make_tiny_model

ARCHS = list(TINY_CONFIGS)
INPUT = torch.randint(3, 256, (2, 7), generator=torch.Generator().manual_seed(0))


def _layer_outputs(model, ids=INPUT):
    """Each decoder layer's output for `ids` (forward hooks)."""
    _, layers = find_decoder_layers(model)
    outs, handles = {}, []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o.detach().clone())))
    with torch.no_grad():
        logits = model(ids).logits
    for h in handles:
        h.remove()
    return logits, outs


@pytest.mark.parametrize("arch", ARCHS)
def test_baseline_is_bit_identical(arch):
    reference = make_tiny_model(arch)
    model = make_tiny_model(arch)
    report = retrofit(model, layers="last:2", variant="baseline", freeze="ffn")
    with torch.no_grad():
        assert torch.equal(reference(INPUT).logits, model(INPUT).logits)
    assert report.trainable_params == 0
    assert report.replaced_old_params == report.replaced_new_params == 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["linear", "kan:chebyshev2:2"])
def test_only_selected_layers_change(arch, variant):
    reference = make_tiny_model(arch)
    model = make_tiny_model(arch)
    retrofit(model, layers="2", variant=variant, freeze="ffn", seed=0)
    _, ref_out = _layer_outputs(reference)
    _, new_out = _layer_outputs(model)
    for i in (0, 1):
        assert torch.equal(ref_out[i], new_out[i]), f"layer {i} below the retrofit changed"
    assert not torch.allclose(ref_out[2], new_out[2]), "the retrofitted layer did not change"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["linear", "kan:chebyshev2:2"])
def test_gradients_reach_exactly_the_trainable_parameters(arch, variant):
    model = make_tiny_model(arch)
    retrofit(model, layers="last:2", variant=variant, freeze="ffn", seed=0)
    model.train()
    model(INPUT, labels=INPUT).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert is_new_param(name), f"{name} trains under freeze=ffn but is not new"
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
        else:
            assert p.grad is None, f"frozen {name} received a gradient"


@pytest.mark.parametrize("arch", ARCHS)
def test_counts_match_closed_form_for_linear_restart(arch):
    model = make_tiny_model(arch)
    total_before, _ = count_params(model)
    _, layers = find_decoder_layers(model)
    ffn_params = sum(p.numel() for p in layers[3].parameters()) - sum(
        p.numel() for n, p in layers[3].named_parameters() if not n.startswith(find_ffn(layers[3], 3).attr)
        and not n.startswith(("fc2",))
    )
    report = retrofit(model, layers="last:1", variant="linear", freeze="blocks")
    assert report.total_params == total_before  # same class and shape
    assert report.replaced_old_params == report.replaced_new_params == ffn_params
    assert report.trainable_params == sum(p.numel() for p in layers[3].parameters())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_kan_counts_match_closed_form(arch):
    model = make_tiny_model(arch)
    d, _ = model_dims(model)
    total_before, _ = count_params(model)
    report = retrofit(model, layers="last:2", variant="kan:chebyshev2:2", freeze="ffn")
    # default KAN FFN: one KANLinear(d, d), (degree + 1) basis weights + SiLU base weights, no bias
    assert report.replaced_new_params == 2 * 4 * d * d
    assert report.trainable_params == 2 * 4 * d * d
    assert report.total_params == total_before - report.replaced_old_params + report.replaced_new_params


def test_linear_restart_uses_model_init_and_seed():
    model_a, model_b, model_c = (make_tiny_model("llama") for _ in range(3))
    retrofit(model_a, layers="last:1", variant="linear", seed=0)
    retrofit(model_b, layers="last:1", variant="linear", seed=0)
    retrofit(model_c, layers="last:1", variant="linear", seed=1)
    wa = model_a.model.layers[3].mlp.kallm_ffn.gate_proj.weight
    wb = model_b.model.layers[3].mlp.kallm_ffn.gate_proj.weight
    wc = model_c.model.layers[3].mlp.kallm_ffn.gate_proj.weight
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    std = model_a.config.initializer_range
    assert abs(wa.std().item() - std) < 0.3 * std
    assert type(model_a.model.layers[3].mlp.kallm_ffn).__name__ == "LlamaMLP"


def test_freeze_policies():
    counts = {}
    for policy in ("ffn", "blocks", "blocks+embeddings", "none"):
        model = make_tiny_model("llama")
        counts[policy] = retrofit(model, layers="last:2", variant="linear", freeze=policy).trainable_params
        emb = model.get_input_embeddings().weight
        assert emb.requires_grad == (policy in ("blocks+embeddings", "none"))
    total, _ = count_params(make_tiny_model("llama"))
    assert counts["ffn"] < counts["blocks"] < counts["blocks+embeddings"] < counts["none"] == total


def test_budget_match_two_layer_kan():
    model = make_tiny_model("llama")
    report = retrofit(model, layers="last:1", variant="kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match")
    old = report.replaced_old_params
    h = report.hidden_width
    assert h is not None and report.replaced_new_params <= old
    # the largest width within budget: one more unit would exceed it
    from kallm.kan import kan_num_params, parse_kan_spec

    spec = parse_kan_spec("sequential(chebyshev2:2,chebyshev2:2)")
    assert kan_num_params(spec, 32, 32, h + 1) > old


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": "last:9"}, "has 4 layers"),
        ({"variant": "kann:chebyshev2:2"}, "did you mean 'kan'"),
        ({"variant": "kan:chebyshv2:2"}, "chebyshev2"),
        ({"freeze": "ffns"}, "did you mean 'ffn'"),
        ({"variant": "kan:chebyshev2:2@budget=match"}, "multi-layer"),
        ({"variant": "baseline@budget=2"}, "untouched model"),
        ({"variant": "linear@budget=2"}, "budget of 2 parameters is below the smallest"),
    ],
)
def test_bad_input_errors(kwargs, message):
    with pytest.raises(KallmError, match=message):
        retrofit(make_tiny_model("llama"), **{"layers": "last:1", **kwargs})


def test_unsupported_architecture_names_class():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(KallmError, match="Sequential"):
        retrofit(model, layers="last:1", variant="linear")


def test_retrofit_twice_is_refused():
    model = make_tiny_model("llama")
    retrofit(model, layers="last:1", variant="linear")
    with pytest.raises(KallmError, match="already retrofitted"):
        retrofit(model, layers="last:1", variant="linear")


def test_restored_original_weights_give_the_original_logits():
    model, ref = make_tiny_model("llama"), make_tiny_model("llama")
    ids = torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    retrofit(model, layers="last:2", variant="linear", freeze="ffn", seed=0)
    assert not torch.allclose(model(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-3)
    assert restore_original_weights(model) == 2
    torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-6, rtol=0)
    narrow = make_tiny_model("llama")
    retrofit(narrow, layers="last:2", variant="linear@budget=0.5", freeze="ffn", seed=0)
    with pytest.raises(KallmError, match="init: original needs replacements shaped like the original"):
        restore_original_weights(narrow)
