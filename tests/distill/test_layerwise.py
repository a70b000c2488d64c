"""Distill-then-train on a tiny random-weight Llama with the real tokenizer and real chat data."""

from __future__ import annotations

import copy

import pytest
import torch

from kallm.data import collate, load_conversations
from kallm.distill.layerwise import (
    DistillConfig,
    collect_ffn_io,
    distill_retrofit,
    fits_to_dict,
    fvu,
    load_ffn_io,
    save_ffn_io,
)
from kallm.errors import KallmError
from kallm.kan import build_kan, parse_kan_spec
from kallm.retrofitting.arch import find_decoder_layers
from kallm.retrofitting.surgery import RetrofitFFN, retrofit
from kallm.training.config import TrainConfig
from kallm.training.examples import prepare_data
from kallm.training.loss import StepLoss
from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample

CONFIG = TrainConfig(steps=1, batch_size=4, max_length=128, val_size=8, eval_batches=None, eval_every=0,
                     save_every=0, warmup_steps=0, precision="fp32")
LAYERS = (2, 3)


@pytest.fixture(scope="module")
def chat(shared_data, tmp_path_factory):
    return load_conversations(write_chat_sample(shared_data, tmp_path_factory.mktemp("chat") / "chat.jsonl"))


@pytest.fixture(scope="module")
def train_batches(chat, smol_tokenizer):
    """Padded batches of the training split (the held-out conversations are never distilled on)."""
    train, _ = prepare_data(smol_tokenizer, chat, CONFIG, progress=False)
    return [collate(train[i:i + 8], smol_tokenizer.pad_token_id) for i in range(0, len(train), 8)]


@pytest.fixture(scope="module")
def original(smol_tokenizer):
    return make_tiny_model("llama", vocab_size=len(smol_tokenizer), seed=0)


@pytest.fixture(scope="module")
def io(original, train_batches):
    return collect_ffn_io(original, train_batches, LAYERS, 2048, progress=False)


def _ffn(model, layer: int):
    return next(m for m in find_decoder_layers(model)[1][layer].children() if isinstance(m, RetrofitFFN)).kallm_ffn


def _held_out_fvu(module, io, layer: int, fraction: float = 0.1) -> float:
    x, y = io[layer]
    n = max(1, int(len(x) * fraction))
    with torch.no_grad():
        return fvu(module(x[-n:]), y[-n:])


def test_collected_pairs_are_the_mlp_inputs_and_outputs(original, train_batches):
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in LAYERS}
    layers = find_decoder_layers(original)[1]
    # The MLP's input is the post-attention RMSNorm's output: record it independently of distill's hooks.
    handles = [layers[i].post_attention_layernorm.register_forward_hook(
        lambda m, a, out, i=i: seen[i].append(out.detach().clone())) for i in LAYERS]
    try:
        io = collect_ffn_io(original, train_batches[:2], LAYERS, 10**6, progress=False)
    finally:
        for h in handles:
            h.remove()
    n_real = sum(int(b["attention_mask"].sum()) for b in train_batches[:2])
    assert n_real < sum(b["attention_mask"].numel() for b in train_batches[:2])  # padding was present
    for i in LAYERS:
        x, y = io[i]
        assert x.shape == y.shape == (n_real, 32) and x.dtype == y.dtype == torch.float32
        expected_x = torch.cat([h[b["attention_mask"].bool()] for h, b in zip(seen[i], train_batches[:2])])
        assert torch.equal(x, expected_x)
        with torch.no_grad():
            torch.testing.assert_close(y, layers[i].mlp(x), rtol=1e-5, atol=1e-7)
        assert y.abs().max() > 0


def test_collection_stops_at_max_tokens_and_round_trips_on_disk(original, train_batches, tmp_path):
    original.train()
    try:
        io = collect_ffn_io(original, train_batches, [3], 100, progress=False)
        assert original.training  # the mode it was given back in
    finally:
        original.eval()
    assert list(io) == [3] and io[3][0].shape == (100, 32)
    save_ffn_io(io, tmp_path / "io.safetensors")
    back = load_ffn_io(tmp_path / "io.safetensors")
    assert list(back) == [3] and all(torch.equal(a, b) for a, b in zip(io[3], back[3]))


@pytest.mark.parametrize("spec", ["chebyshev2:2", "parallel(chebyshev2:2,legendre:3)"])
def test_lstsq_recovers_a_kan_of_the_same_spec(original, io, spec):
    """Targets made by a KAN of the variant's own spec lie in the design matrix's span: an exact fit."""
    torch.manual_seed(0)
    teacher = build_kan(parse_kan_spec(spec), 32, 32)
    with torch.no_grad():
        teacher.weight.normal_(0, 0.3)
    target_io = {i: (x, teacher(x).detach()) for i, (x, _) in io.items()}
    model = copy.deepcopy(original)
    retrofit(model, layers="last:2", variant=f"kan:{spec}", seed=1)
    assert not torch.allclose(_ffn(model, 3).weight, teacher.weight)
    fits = distill_retrofit(model, target_io, DistillConfig(tokens=2048, ridge=1e-10), progress=False)
    assert [f.layer for f in fits] == list(LAYERS) and {f.method for f in fits} == {"lstsq"}
    for f in fits:
        assert f.fvu < 1e-6 and f.train_fvu < 1e-6 and f.tokens == 2048
        assert _held_out_fvu(_ffn(model, f.layer), target_io, f.layer) == pytest.approx(f.fvu)


def test_distilled_start_is_far_closer_to_the_original_than_random(original, io, smol_tokenizer, chat):
    random_model = copy.deepcopy(original)
    retrofit(random_model, layers="last:2", variant="kan:chebyshev2:2", seed=0)
    distilled = copy.deepcopy(original)
    retrofit(distilled, layers="last:2", variant="kan:chebyshev2:2", seed=0)
    fits = distill_retrofit(distilled, io, progress=False)
    for f in fits:
        random_fvu = _held_out_fvu(_ffn(random_model, f.layer), io, f.layer)
        assert f.fvu < 1.0 and f.fvu < 1e-3 * random_fvu, (f.layer, f.fvu, random_fvu)
    assert set(fits_to_dict(fits)) == {"2", "3"} and fits_to_dict(fits)["3"]["method"] == "lstsq"

    _, val = prepare_data(smol_tokenizer, chat, CONFIG, progress=False)
    batch = collate(val, smol_tokenizer.pad_token_id)

    def held_out_loss(model) -> float:  # what train_model reports as its initial eval loss
        with torch.no_grad():
            loss_sum, n = StepLoss(model.eval(), 0, CONFIG.logits_chunk_size)(
                batch["input_ids"], batch["attention_mask"], batch["labels"])
        return float(loss_sum) / n

    base = held_out_loss(original)
    gap_distilled = abs(held_out_loss(distilled) - base)
    gap_random = abs(held_out_loss(random_model) - base)
    assert gap_distilled < 0.1 * gap_random, (base, gap_distilled, gap_random)


def test_adamw_fits_a_linear_restart(original, io):
    model = copy.deepcopy(original)
    retrofit(model, layers="last:2", variant="linear", seed=0)
    before = {i: _held_out_fvu(_ffn(model, i), io, i) for i in LAYERS}
    fits = distill_retrofit(model, io, DistillConfig(tokens=2048, steps=30, lr=1e-3, batch_tokens=256), progress=False)
    for f in fits:
        assert f.method == "adamw"
        assert f.fvu < 0.5 * before[f.layer], (f.layer, f.fvu, before[f.layer])


def test_adamw_two_layer_kan_starts_from_a_least_squares_last_layer(original, io):
    model = copy.deepcopy(original)
    retrofit(model, layers="last:2", variant="kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match", seed=0)
    random_fvu = {i: _held_out_fvu(_ffn(model, i), io, i) for i in LAYERS}
    # An lr far too high for these tiny targets: the fit must still not end worse than its warm start.
    fits = distill_retrofit(model, io, DistillConfig(tokens=2048, steps=5, lr=1.0), progress=False)
    for f in fits:
        assert f.method == "adamw" and f.fvu < 2.0 and f.fvu < 1e-3 * random_fvu[f.layer]


def test_a_mlp_output_projection_is_solved_before_adamw():
    """A SwiGLU whose down projection alone is wrong is fitted exactly by the warm start (no AdamW needed)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    from kallm.distill.layerwise import _warm_start_output_projection
    from kallm.distill.solve import FitRows

    torch.manual_seed(0)
    teacher = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=48))
    student = copy.deepcopy(teacher)
    torch.nn.init.normal_(student.down_proj.weight)
    x = torch.randn(512, teacher.hidden_size)
    with torch.no_grad():
        y = teacher(x)
    assert fvu(student(x).detach(), y) > 1.0
    assert _warm_start_output_projection(student, FitRows.split(x, y, 0.1), ridge=1e-10) == 1e-10
    assert fvu(student(x).detach(), y) < 1e-8


def test_a_two_layer_kan_starts_as_a_one_layer_fit_with_its_inputcarried_input(original, io):
    """The first of two square KAN layers is fitted to pass its input on, so the stack starts as good as the
    one-layer least-squares fit (and far better than its random-feature start was)."""
    single = copy.deepcopy(original)
    retrofit(single, layers="last:2", variant="kan:chebyshev2:2", seed=0)
    one_layer = {f.layer: f.fvu for f in distill_retrofit(single, io, DistillConfig(tokens=2048), progress=False)}
    stack = copy.deepcopy(original)
    retrofit(stack, layers="last:2", variant="kan:sequential(chebyshev2:2,chebyshev2:2;hidden=32)", seed=0)
    fits = distill_retrofit(stack, io, DistillConfig(tokens=2048, steps=1, lr=1e-9), progress=False)
    for f in fits:
        assert f.fvu < 1.5 * one_layer[f.layer] + 1e-3, (f.layer, f.fvu, one_layer[f.layer])


def test_distill_errors(original, io):
    with pytest.raises(KallmError, match="apply kallm.retrofit first"):
        distill_retrofit(copy.deepcopy(original), io)
    model = copy.deepcopy(original)
    retrofit(model, layers="last:2", variant="linear")
    with pytest.raises(KallmError, match="needs the original model"):
        collect_ffn_io(model, [], LAYERS, 100)
    with pytest.raises(KallmError, match="linear in its weights; LlamaMLP is not"):
        distill_retrofit(model, io, DistillConfig(method="lstsq"))
    with pytest.raises(KallmError, match=r"no recorded activations for layer 2 \(have \[3\]\)"):
        distill_retrofit(model, {3: io[3]})
    with pytest.raises(KallmError, match="no tokens to distill from"):
        collect_ffn_io(copy.deepcopy(original), [], LAYERS, 100)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tokens": 8}, "distill.tokens must be at least 16"),
    ({"method": "sgd"}, "must be auto, lstsq or adamw"),
    ({"ridge": -1.0}, "distill.ridge must be auto or a number >= 0"),
    ({"ridge": "big"}, "distill.ridge must be auto or a number >= 0"),
    ({"rounds": 0}, "must be positive"),
    ({"validation_fraction": 0.0}, r"validation_fraction must be in \(0, 0.5\)"),
    ({"steps": 0}, "must be positive"),
    ({"holdout_fraction": 0.5}, r"holdout_fraction must be in \(0, 0.5\)"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(KallmError, match=message):
        DistillConfig(**kwargs)
