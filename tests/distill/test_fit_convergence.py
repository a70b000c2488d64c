"""Fit-then-recover: every fit form recovers a representable target, chooses its ridge on validation rows,
never ends worse than its start, and its AdamW stage converges (tiny problems, float64)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from kallm.distill.adamw import fit_adamw
from kallm.distill.layerwise import DistillConfig, fit_replacement
from kallm.distill.sequential import sequential_distill
from kallm.distill.solve import RIDGE_GRID, FitRows, fvu
from kallm.distill.teacher import build_teacher
from kallm.kan import build_kan, parse_kan_spec
from kallm.retrofitting import retrofit
from kallm.retrofitting.arch import find_decoder_layers
from kallm.retrofitting.surgery import replacement_modules
from tests.distill.test_sequential import _batches
from tests.tiny_models import make_tiny_model

D = 16


def _kan(spec: str, seed: int, scale: float = 0.3):
    torch.manual_seed(seed)
    kan = build_kan(parse_kan_spec(spec), D, D).double()
    with torch.no_grad():
        for p in kan.parameters():
            p.normal_(0, scale)
    return kan


def _swiglu(seed: int) -> LlamaMLP:
    torch.manual_seed(seed)
    return LlamaMLP(LlamaConfig(hidden_size=D, intermediate_size=24, num_attention_heads=2)).double()


def _x(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_a_kan_layer_recovers_a_kan_of_its_own_spec_with_the_ridge_chosen():
    teacher, student = _kan("chebyshev2:3", 0), _kan("chebyshev2:3", 1)
    x = _x(1200).tanh()
    with torch.no_grad():
        y = teacher(x)
    fit = fit_replacement(student, x, y, DistillConfig(tokens=1200), seed=0, layer=0)
    assert fit.method == "lstsq" and fit.fvu < 1e-6 and fit.train_fvu < 1e-6
    assert fit.ridge in RIDGE_GRID and fit.ridge <= 1e-4  # noiseless: no shrinkage wins


def test_auto_ridge_beats_no_ridge_on_noisy_targets_and_never_looks_at_the_held_out_rows():
    """Few rows, many features, noisy targets: the validation rows pick a real ridge, and the held-out FVU
    is lower than the unregularised solve's. The held-out rows' targets do not change the fit."""
    x = _x(300).tanh()
    with torch.no_grad():
        y = _kan("chebyshev2:4", 0)(x) + 0.5 * _x(300, seed=1)
    auto, none = _kan("chebyshev2:4", 1), _kan("chebyshev2:4", 1)
    fit_auto = fit_replacement(auto, x, y, DistillConfig(tokens=300), seed=0, layer=0)
    fit_none = fit_replacement(none, x, y, DistillConfig(tokens=300, ridge=0.0), seed=0, layer=0)
    assert fit_auto.ridge > 0 and fit_none.ridge == 0.0
    assert fit_auto.fvu < fit_none.fvu and fit_auto.train_fvu > fit_none.train_fvu
    y_other = y.clone()
    y_other[-30:] = 100.0  # the held-out tenth
    other = _kan("chebyshev2:4", 1)
    fit_replacement(other, x, y_other, DistillConfig(tokens=300), seed=0, layer=0)
    assert torch.equal(other.weight, auto.weight)


def test_als_recovers_the_down_projection_of_a_fresh_swiglu():
    student = _swiglu(0)
    target = copy.deepcopy(student)
    torch.nn.init.normal_(target.down_proj.weight, std=0.5)
    x = _x(800)
    with torch.no_grad():
        y = target(x)
    fit = fit_replacement(student, x, y, DistillConfig(tokens=800, steps=10, rounds=2), seed=0, layer=0)
    assert fit.method == "adamw" and fit.fvu < 1e-9 and fit.ridge is not None
    torch.testing.assert_close(student.down_proj.weight, target.down_proj.weight, atol=1e-5, rtol=0)


def test_als_solves_a_gpt2_conv1d_output_projection():
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    torch.manual_seed(0)
    student = GPT2MLP(48, GPT2Config(n_embd=D, resid_pdrop=0.0)).double().eval()
    target = copy.deepcopy(student)
    torch.nn.init.normal_(target.c_proj.weight, std=0.5)
    x = _x(800)
    with torch.no_grad():
        y = target(x)
    fit = fit_replacement(student, x, y, DistillConfig(tokens=800, steps=10, rounds=1), seed=0, layer=0)
    assert fit.fvu < 1e-9 and fit.ridge is not None


def test_als_rounds_never_raise_the_validation_loss_of_a_fresh_swiglu():
    student, teacher = _swiglu(0), _swiglu(1)  # another MLP's function: not representable
    x = _x(1500)
    with torch.no_grad():
        y = teacher(x)
    # lr 1.0 is far too high: AdamW must restart at half the lr and still never leave a round worse
    fit = fit_replacement(student, x, y, DistillConfig(tokens=1500, steps=60, rounds=3, lr=1.0, batch_tokens=256),
                          seed=0, layer=0)
    losses = fit.val_fvu
    assert len(losses) == 1 + 2 * 3 + 1  # start, then (solve, AdamW) per round, then the final solve
    assert all(b <= a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 * losses[0] and fit.lr < 1.0


def test_a_pruned_mlp_at_full_width_fitted_to_its_original_keeps_it():
    original = make_tiny_model("llama").double()
    model = copy.deepcopy(original)
    retrofit(model, layers="last:1", variant="pruned@budget=1.0", seed=0)
    module = replacement_modules(find_decoder_layers(model)[1][3])[0].kallm_ffn
    before = copy.deepcopy(module.state_dict())
    x = torch.randn(600, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        y = find_decoder_layers(original)[1][3].mlp(x)
    fit = fit_replacement(module, x, y, DistillConfig(tokens=600, steps=20), seed=0, layer=3)
    assert fit.fvu < 1e-12 and fit.ridge is None  # the least-squares solution never replaced the original's
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # GPT-2's output projection is a Conv1D
def test_a_pruned_retrofit_at_full_width_is_recovered_exactly_by_sequential_distill(arch):
    original = make_tiny_model(arch)
    model = copy.deepcopy(original)
    retrofit(model, layers="last:2", variant="pruned@budget=1.0", seed=0)
    fits = sequential_distill(model, build_teacher(model), _batches(), DistillConfig(tokens=400, steps=20))
    assert [f.layer for f in fits] == [2, 3] and all(f.fvu < 1e-10 and f.ridge is None for f in fits), fits
    probe = _batches(1, seed=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(model(**probe).logits, original(**probe).logits, atol=1e-5, rtol=0)


def test_a_two_layer_kan_ends_below_its_warm_start():
    """A target made by a two-layer KAN of the same spec: AdamW improves on the warm start (first layer
    carrying its input, last layer solved), and an lr far too high never leaves it worse."""
    spec = f"sequential(chebyshev2:2,chebyshev2:2;hidden={D})"
    torch.manual_seed(5)
    teacher = build_kan(parse_kan_spec(spec), D, D).double()
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(0, 0.3)
    x = _x(3000).tanh()
    with torch.no_grad():
        y = teacher(x)
    for lr in (3e-3, 10.0):
        stack = build_kan(parse_kan_spec(spec), D, D).double()
        fit = fit_replacement(stack, x, y, DistillConfig(tokens=3000, steps=99, lr=lr, batch_tokens=256),
                              seed=0, layer=0)
        losses = fit.val_fvu
        assert all(b <= a for a, b in zip(losses, losses[1:])), (lr, losses)
        if lr < 1:
            assert losses[-1] < 0.98 * losses[0], losses
        else:
            assert fit.lr < lr  # restarted at a lower lr


def test_adamw_restarts_at_half_the_lr_and_keeps_its_best_state():
    torch.manual_seed(0)
    module = torch.nn.Linear(D, D).double()
    truth = torch.nn.Linear(D, D).double()
    x = _x(600)
    with torch.no_grad():
        rows = FitRows.split(x, truth(x), 0.2)
    stage = fit_adamw(module, rows, steps=50, lr=50.0, batch_tokens=64, seed=0)
    assert stage.restarts >= 1 and stage.lr == pytest.approx(50.0 / 2 ** stage.restarts)
    assert stage.best <= stage.start and all(p.grad is None for p in module.parameters())
    with torch.no_grad():
        assert fvu(module(rows.x_val), rows.y_val) == pytest.approx(stage.best)
