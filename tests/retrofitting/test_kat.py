"""The `kat` variant (learnable activations between the original MLP's projections) on every tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

from kallm.errors import KallmError
from kallm.kan.activation import LearnableActivation, ProjectedKAN
from kallm.retrofitting import parse_variant, retrofit
from kallm.retrofitting.arch import find_decoder_layers, find_ffn
from kallm.retrofitting.saving import load_retrofit, save_retrofit
from kallm.retrofitting.sizing import ffn_param_count
from kallm.retrofitting.surgery import replacement_modules
from kallm.retrofitting.variant import VARIANT_KINDS, VariantSpec
from tests.tiny_models import TINY_CONFIGS, make_tiny_model, make_tiny_tokenizer

IDS = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))
ARCHS = sorted(TINY_CONFIGS)
UNGATED = ["gpt2", "gpt_neox", "opt"]  # MLPs with no gate: up -> act -> down
KAT = VARIANT_KINDS.get("kat")


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _retrofitted(arch: str, variant: str):
    model = make_tiny_model(arch)
    original = _logits(model)
    report = retrofit(model, layers="last:2", variant=variant, seed=1)
    return model, report, original


def _site(model, index: int = -1):
    _, layers = find_decoder_layers(model)
    return find_ffn(layers[index % len(layers)], index % len(layers))


# ---------------------------------------------------------------- grammar

@pytest.mark.parametrize("text, canonical", [
    ("kat:chebyshev2:4", "kat:chebyshev2:4"),
    ("kat: chebyshev2:4 ; ungated ; groups=8", "kat:chebyshev2:4;groups=8;ungated"),
    ("kat:chebyshev2:4;groups=0", "kat:chebyshev2:4"),
    ("kat:jacobi:3:alpha=0.5,beta=0.5;groups=2@budget=match",
     "kat:jacobi:3:alpha=0.5,beta=0.5;groups=2@budget=match"),
    ("kat:bspline:3:norm=tanh;ungated@hidden=96", "kat:bspline:3:norm=tanh;ungated@hidden=96"),
    ("kat:legendre:2@budget=0.5", "kat:legendre:2@budget=0.5"),
])
def test_variant_text_round_trips(text, canonical):
    spec = parse_variant(text)
    assert str(spec) == canonical and spec.kind == "kat"
    assert parse_variant(str(spec)) == spec


@pytest.mark.parametrize("text, message", [
    ("kat", "needs a basis"),
    ("kat:", "needs a basis"),
    ("kat:chebyshv2:4", "did you mean 'chebyshev2'"),
    ("kat:chebyshev2:4;ungatd", "did you mean 'ungated'"),
    ("kat:chebyshev2:4;grups=2", "did you mean 'groups='"),
    ("kat:chebyshev2:4;groups=x", "groups must be a non-negative integer"),
    ("kat:chebyshev2:4;ungated;ungated", "repeated"),
    ("kat:parallel(chebyshev2:2,legendre:2)", "takes one basis"),
    ("kat:chebyshev2:4:base=gelu", "no base= option"),
    ("kat:chebyshev2:4@budget=match@hidden=3", "either budget= or hidden="),
])
def test_bad_variant_text_is_refused_clearly(text, message):
    with pytest.raises(KallmError, match=message):
        parse_variant(text)


def test_a_spec_takes_only_the_canonical_argument():
    assert str(VariantSpec("kat", arg="chebyshev2:4;groups=2;ungated")) == "kat:chebyshev2:4;groups=2;ungated"
    with pytest.raises(KallmError, match="canonical"):
        VariantSpec("kat", arg="chebyshev2:4;ungated;groups=2")
    with pytest.raises(KallmError, match="needs a basis"):
        VariantSpec("kat")


def test_the_kind_is_a_kan_role_kind():
    assert KAT.role == "kan" and KAT.options == ("budget", "hidden")


# ---------------------------------------------------------------- modules

@pytest.mark.parametrize("arch", ARCHS)
def test_full_width_starts_exactly_as_the_original(arch):
    model, report, original = _retrofitted(arch, "kat:chebyshev2:4;groups=5")
    assert torch.equal(_logits(model), original)
    acts = [m for m in model.modules() if isinstance(m, LearnableActivation)]
    assert report.hidden_width == 64 and len(acts) == 2
    assert all(a.width == 64 and a.n_groups == 5 for a in acts)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_model_trains_and_only_the_new_parameters_change(arch):
    model, _, _ = _retrofitted(arch, "kat:legendre:3@budget=0.5")
    with torch.no_grad():  # the learnable functions leave their starting point
        for m in model.modules():
            if isinstance(m, LearnableActivation):
                m.coef.normal_(std=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".kallm_ffn." in n for n in changed)
    assert any(n.endswith(".coef") for n in changed)
    assert any(n.endswith(".weight") and "act" in n for n in changed)


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2", "opt"])
def test_the_own_mlp_keeps_its_shape(arch):
    model, report, _ = _retrofitted(arch, "kat:chebyshev2:2@hidden=40")
    site = _site(model)
    new = replacement_modules(site.layer)
    if arch == "opt":  # split FFN: fc1 and fc2 pruned, the layer's activation_fn made learnable
        assert sorted(type(m.kallm_ffn).__name__ for m in new) == ["LearnableActivation", "Linear", "Linear"]
        assert site.layer.fc1.kallm_ffn.out_features == 40 and site.layer.fc2.kallm_ffn.in_features == 40
    else:
        assert len(new) == 1 and type(new[0].kallm_ffn).__name__.endswith("MLP")  # the model's own class
    assert report.hidden_width == 40


@pytest.mark.parametrize("arch", UNGATED)
@pytest.mark.parametrize("width", [40, 64])
def test_ungated_form_of_an_ungated_mlp_is_the_pruned_original(arch, width):
    pruned, _, _ = _retrofitted(arch, f"pruned@hidden={width}")
    model, _, _ = _retrofitted(arch, f"kat:chebyshev2:3;ungated@hidden={width}")
    assert isinstance(_site(model).module.kallm_ffn, ProjectedKAN)
    torch.testing.assert_close(_logits(model), _logits(pruned), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_ungated_form_wider_than_the_original_adds_nothing_at_the_start(arch):
    narrow, _, _ = _retrofitted(arch, "kat:chebyshev2:3;ungated")
    wide, report, _ = _retrofitted(arch, "kat:chebyshev2:3;ungated@hidden=100")
    kan = _site(wide).module.kallm_ffn
    assert report.hidden_width == 100 and kan.in_proj.weight[64:].abs().sum() > 0  # fresh on the way in
    assert torch.equal(kan.out_proj.weight[:, 64:], torch.zeros(32, 36))  # zero on the way out
    torch.testing.assert_close(_logits(wide), _logits(narrow), rtol=0, atol=1e-5)


def test_ungated_form_of_a_swiglu_reads_the_gate_rows():
    model = make_tiny_model("llama")
    mlp = copy.deepcopy(_site(model).module)
    retrofit(model, layers="last:1", variant="kat:chebyshev2:3;ungated")
    kan = _site(model).module.kallm_ffn
    assert torch.equal(kan.in_proj.weight, mlp.gate_proj.weight)  # full width: every channel, in order
    assert torch.equal(kan.out_proj.weight, mlp.down_proj.weight)
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(kan(x), mlp.down_proj(mlp.act_fn(mlp.gate_proj(x))))


def test_phi3_ungated_reads_the_gate_half_of_the_fused_projection():
    model = make_tiny_model("phi3")
    gate_up = _site(model).module.gate_up_proj.weight.detach().clone()
    retrofit(model, layers="last:1", variant="kat:chebyshev2:3;ungated")
    assert torch.equal(_site(model).module.kallm_ffn.in_proj.weight, gate_up[:64])


@pytest.mark.parametrize("arch", ARCHS)
def test_own_mlp_form_wider_than_the_original_starts_as_it(arch):
    model, report, original = _retrofitted(arch, "kat:chebyshev2:3;groups=7@hidden=100")
    assert report.hidden_width == 100
    torch.testing.assert_close(_logits(model), original, rtol=0, atol=1e-5)
    site = _site(model)
    down = (site.layer.fc2 if arch == "opt" else site.module).kallm_ffn
    outs = [m for m in down.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 32]
    outs += [m for m in down.modules() if type(m).__name__ == "Conv1D" and m.nf == 32]
    weight = outs[0].weight if isinstance(outs[0], torch.nn.Linear) else outs[0].weight.T
    assert weight.shape == (32, 100) and torch.equal(weight[:, 64:], torch.zeros(32, 36))


# ---------------------------------------------------------------- sizes

SIZED = ["kat:chebyshev2:4", "kat:chebyshev2:4@budget=match", "kat:chebyshev2:4@budget=2.0",
         "kat:legendre:3;groups=4@budget=0.5", "kat:bspline:3@budget=0.3",
         "kat:chebyshev2:4;ungated@budget=match", "kat:rational:3;ungated@budget=2.0",
         "kat:chebyshev2:2;groups=2;ungated@hidden=20"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", SIZED)
def test_built_parameters_equal_the_closed_form_count(arch, variant):
    model = make_tiny_model(arch)
    site = _site(model)
    spec = parse_variant(variant)
    expected, width = KAT.new_params(model, site, spec), KAT.size(model, site, spec)
    replaced = ffn_param_count(site)
    wider = KAT.count(model, site, spec, width + 1)
    report = retrofit(model, layers="last:1", variant=variant)
    assert report.layers[0].new_params == expected and report.hidden_width == width
    if spec.budget is not None:  # the largest width within the budget
        assert expected <= spec.budget.target(replaced) < wider


@pytest.mark.parametrize("arch", ARCHS)
def test_a_matched_budget_is_at_most_the_original(arch):
    model = make_tiny_model(arch)
    site = _site(model)
    for variant in ("kat:chebyshev2:4@budget=1.0", "kat:chebyshev2:4;ungated@budget=1.0"):
        assert KAT.new_params(model, site, parse_variant(variant)) <= ffn_param_count(site)


def test_a_budget_below_the_smallest_module_is_refused():
    model = make_tiny_model("llama")
    with pytest.raises(KallmError, match="below the smallest"):
        retrofit(model, layers="last:1", variant="kat:chebyshev2:4@budget=10")


# ---------------------------------------------------------------- saving

@pytest.mark.parametrize("arch, variant", [
    ("llama", "kat:chebyshev2:3;groups=4@budget=0.5"),
    ("phi3", "kat:legendre:2;ungated@hidden=80"),
    ("phi3", "kat:chebyshev2:2@hidden=80"),
    ("gpt2", "kat:rational:3"),
    ("opt", "kat:chebyshev2:2@hidden=40"),
    ("opt", "kat:bspline:3;ungated@budget=match"),
])
def test_save_load_reproduces_logits(tmp_path, arch, variant):
    base = tmp_path / "base"
    model = make_tiny_model(arch)
    model.save_pretrained(base)
    make_tiny_tokenizer().save_pretrained(base)
    model = make_tiny_model(arch)
    retrofit(model, layers="last:2", variant=variant, seed=3)
    with torch.no_grad():  # weights a fresh retrofit does not have
        for name, p in model.named_parameters():
            if ".kallm_ffn." in name:
                p.add_(0.05 * torch.randn_like(p))
        expected = model(IDS).logits
    save_retrofit(model, tmp_path / "retro", base_model=str(base))
    loaded, _ = load_retrofit(tmp_path / "retro")
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, expected)


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2"])
def test_the_own_mlp_form_chooses_its_channels_again_on_data_the_ungated_form_keeps_its_start(arch):
    """Before a distillation fit the own-MLP form takes the channels the layer's inputs use most (its
    projections then equal the original's pruned to those channels); the ungated form is left as built."""
    from kallm.retrofitting.arch import model_dims
    from kallm.retrofitting.pruning import activation_importance, prune_projections

    original = make_tiny_model(arch)
    dims = model_dims(original)
    x = torch.randn(300, dims[0], generator=torch.Generator().manual_seed(1))
    for variant, refined in (("kat:chebyshev2:3@hidden=24", True), ("kat:chebyshev2:3;ungated@hidden=24", False)):
        model = copy.deepcopy(original)
        retrofit(model, layers="last:1", variant=variant, seed=0)
        new = replacement_modules(find_decoder_layers(model)[1][3])[0].kallm_ffn
        mlp = find_ffn(find_decoder_layers(original)[1][3], 3).module
        before = copy.deepcopy(new.state_dict())
        assert KAT.refine_start(mlp, new, x, dims) is refined
        if not refined:
            assert all(torch.equal(before[k], v) for k, v in new.state_dict().items())
            continue
        keep = torch.sort(torch.argsort(activation_importance(mlp, x, *dims), descending=True)[:24]).values
        expected = prune_projections(copy.deepcopy(mlp), *dims, keep).state_dict()
        assert all(torch.equal(expected[k], new.state_dict()[k]) for k in expected)
