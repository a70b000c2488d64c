"""Degree curriculum: function-preserving raises, schedules, and resuming a curriculum run."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from kallm.data import load_conversations
from kallm.errors import KallmError
from kallm.retrofitting.curriculum import (
    DegreeCurriculum,
    check_schedule_for,
    kan_layers,
    start_variant,
    validate_schedule,
)
from kallm.retrofitting.surgery import refresh_report, retrofit
from kallm.retrofitting.variant import parse_variant
from kallm.training import train_model
from kallm.training.checkpoint import latest_checkpoint
from kallm.training.config import TrainConfig
from tests.tiny_models import make_tiny_model
from tests.training_helpers import Interrupt, StopAt, step_losses, write_chat_sample

IDS = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
CONFIG = TrainConfig(steps=5, batch_size=4, max_length=128, lr=1e-2, warmup_steps=1, eval_every=0, val_size=4,
                     save_every=2, keep_checkpoints=2, precision="fp32")


def _kan_model(vocab_size: int, variant: str) -> torch.nn.Module:
    model = make_tiny_model("llama", vocab_size=vocab_size, seed=0)
    retrofit(model, layers="last:2", variant=variant, freeze="ffn", seed=0)
    return model


@pytest.mark.parametrize(("basis", "schedule"), [("chebyshev2", [[0, 1], [3, 2]]), ("legendre", [[0, 2], [5, 3]])])
def test_a_raise_leaves_the_model_function_unchanged(smol_tokenizer, basis, schedule):
    start, (step, target) = schedule[0][1], schedule[1]
    model = _kan_model(len(smol_tokenizer), f"kan:{basis}:{start}")
    with torch.no_grad():  # a fresh retrofit's coefficients would make a trivially preserved function
        for layer in kan_layers(model):
            layer.weight.normal_(0, 0.5)
    model.eval()
    curriculum = DegreeCurriculum(schedule)
    with torch.no_grad():
        before = model(IDS).logits
    assert not curriculum.on_step_start(step - 1, model)
    assert [layer.degree for layer in kan_layers(model)] == [start, start]
    shapes = [layer.weight.shape for layer in kan_layers(model)]
    assert curriculum.on_step_start(step, model)
    layers = kan_layers(model)
    assert [layer.degree for layer in layers] == [target, target]
    assert all(layer.weight.shape[1] > old[1] for layer, old in zip(layers, shapes))
    assert all(layer.weight.requires_grad for layer in layers)
    with torch.no_grad():
        after = model(IDS).logits
    assert before.abs().max() > 1e-3
    assert (after - before).abs().max() <= 1e-6
    assert not curriculum.on_step_start(step + 1, model)  # already at the degree in force
    report = refresh_report(model, parse_variant(f"kan:{basis}:{target}"))
    assert str(report.variant) == f"kan:{basis}:{target}"
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_degree_in_force_follows_the_schedule():
    curriculum = DegreeCurriculum([[0, 1], [3, 2], [10, 4]])
    assert curriculum.start_degree == 1
    assert [curriculum.degree_at(s) for s in (0, 2, 3, 9, 10, 100)] == [1, 1, 2, 2, 4, 4]








SCHEDULE = [[0, 1], [3, 2]]


@pytest.fixture(scope="module")
def chat(shared_data, tmp_path_factory):
    return load_conversations(write_chat_sample(shared_data, tmp_path_factory.mktemp("chat") / "chat.jsonl", n=16))


@pytest.fixture(scope="module")
def straight(smol_tokenizer, chat, tmp_path_factory):
    """An uninterrupted 5-step curriculum run (degree 1, raised to 2 at step 3)."""
    out = tmp_path_factory.mktemp("straight")
    result = train_model(_kan_model(len(smol_tokenizer), "kan:chebyshev2:1"), smol_tokenizer, chat, CONFIG, out,
                         progress=False, callbacks=[DegreeCurriculum(SCHEDULE)])
    return out, result


@pytest.mark.parametrize(("stop", "resumed_from"), [(3, 2), (4, 4)])
def test_curriculum_run_resumes_like_an_uninterrupted_one(smol_tokenizer, chat, straight, tmp_path, stop,
                                                          resumed_from):
    """Stopped at step 3 the latest checkpoint (2) predates the raise at step 3; stopped at 4 it follows it (4)."""
    schedule, vocab = SCHEDULE, len(smol_tokenizer)
    straight_dir, straight_result = straight
    split = tmp_path / "b"
    with pytest.raises(Interrupt):
        train_model(_kan_model(vocab, "kan:chebyshev2:1"), smol_tokenizer, chat, CONFIG, split, progress=False,
                    callbacks=[DegreeCurriculum(schedule), StopAt(stop)])
    assert latest_checkpoint(split / "checkpoints").name == f"step-{resumed_from:08d}"
    model = _kan_model(vocab, "kan:chebyshev2:1")
    resumed = train_model(model, smol_tokenizer, chat, CONFIG, split, resume=True, progress=False,
                          callbacks=[DegreeCurriculum(schedule)])
    assert [layer.degree for layer in kan_layers(model)] == [2, 2]
    a, b = step_losses(straight_dir / "metrics.jsonl"), step_losses(split / "metrics.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, 6))
    assert all(abs(a[s] - b[s]) < 1e-6 for s in a), (a, b)
    assert abs(resumed.final_train_loss - straight_result.final_train_loss) < 1e-6
    wa = load_file(straight_dir / "checkpoints" / "step-00000005" / "trainable.safetensors")
    wb = load_file(split / "checkpoints" / "step-00000005" / "trainable.safetensors")
    assert wa.keys() == wb.keys() and len(wa) == 2
    for k in wa:
        assert wa[k].shape[1] == 3 * 32 + 32  # degree 2: three basis terms per input, plus the base branch
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


@pytest.mark.parametrize(("schedule", "message"), [
    ([], "at least one"),
    ([[1, 2]], "must start at step 0"),
    ([[0, 1], [0, 2]], "steps must increase strictly: 0 then 0"),
    ([[0, 2], [4, 2]], "degrees must increase: 2 then 2 at step 4"),
    ([[0, 1], [3]], r"entry 1 must be \[step, degree\] integers"),
    ([[0, 1.5]], r"entry 0 must be \[step, degree\] integers"),
    ([[0, True]], r"entry 0 must be \[step, degree\] integers"),
    ([[0, -1]], "degrees must be >= 0"),
])
def test_bad_schedules_are_refused(schedule, message):
    with pytest.raises(KallmError, match=message):
        validate_schedule(schedule)
    with pytest.raises(KallmError, match=message):
        DegreeCurriculum(schedule)


def test_start_variant_and_the_rules_against_the_spec():
    assert str(start_variant(parse_variant("kan:chebyshev2:3"), ((0, 1), (5, 3)))) == "kan:chebyshev2:1"
    check_schedule_for(parse_variant("kan:chebyshev2:3"), ((0, 1), (5, 3)))
    with pytest.raises(KallmError, match="ends at degree 2 but the variant 'kan:chebyshev2:3' has degree 3"):
        check_schedule_for(parse_variant("kan:chebyshev2:3"), ((0, 1), (5, 2)))
    for spec in ("kan:parallel(chebyshev2:2,legendre:3)", "linear"):
        with pytest.raises(KallmError, match="needs a single-basis KAN variant"):
            start_variant(parse_variant(spec), ((0, 1),))
    with pytest.raises(KallmError, match="basis 'rbf' cannot raise its degree"):
        check_schedule_for(parse_variant("kan:rbf:3"), ((0, 1), (5, 3)))
