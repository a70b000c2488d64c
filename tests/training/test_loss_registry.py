"""A loss term defined outside kallm: registered from this file, trained on, logged, and removed again."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pytest
import torch

from kallm.data import load_conversations
from kallm.data.tokenize import TokenizedExample
from kallm.errors import KallmError
from kallm.io import read_jsonl
from kallm.retrofitting import retrofit
from kallm.training import train_model
from kallm.training.config import TrainConfig
from kallm.training.loss_terms import LOSS_TERMS, LossTerm, TermBatch, TermOutput, TermSettings
from kallm.training.objective import LossSpec
from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample


class L2Penalty(LossTerm):
    """Squared L2 norm of the trainable (new FFN) weights. Its per-step mean is the penalty itself: each
    conversation of the global batch contributes the penalty once, and `count` is the conversations."""

    name = "toy"
    mean_over = "conversations"

    def count(self, examples: Sequence[TokenizedExample], settings: TermSettings) -> int:
        return len(examples)

    def compute(self, batch: TermBatch, scales: Mapping[str, float], settings: TermSettings) -> TermOutput:
        penalty = sum(p.float().pow(2).sum() for p in batch.model.parameters() if p.requires_grad)
        total = penalty * batch.input_ids.shape[0]
        return TermOutput(scales[self.name] * total, {self.name: total.detach()})


@pytest.fixture
def toy_term() -> Iterator[None]:
    before = LOSS_TERMS.names()
    LOSS_TERMS.add(L2Penalty.name, L2Penalty())
    try:
        yield
    finally:
        LOSS_TERMS.unregister(L2Penalty.name)
    assert LOSS_TERMS.names() == before


def _model(vocab: int) -> torch.nn.Module:
    model = make_tiny_model("llama", vocab_size=vocab, seed=0)
    retrofit(model, layers="last:1", variant="kan:chebyshev2:2", freeze="ffn", seed=0)
    return model


def _penalty(model: torch.nn.Module) -> float:
    return float(sum(p.detach().float().pow(2).sum() for p in model.parameters() if p.requires_grad))


def test_a_term_registered_outside_kallm_trains_and_is_logged(toy_term, smol_tokenizer, shared_data, tmp_path):
    chat = load_conversations(write_chat_sample(shared_data, tmp_path / "chat.jsonl", n=24))
    config = TrainConfig(steps=3, batch_size=2, grad_accum=2, max_length=96, lr=1e-2, warmup_steps=0,
                         eval_every=0, val_size=4, save_every=0, precision="fp32", loss="ce+0.5*toy")
    assert str(config.loss) == "ce+0.5*toy" and config.loss.logged == ("ce", "toy")
    model = _model(len(smol_tokenizer))
    initial = _penalty(model)
    train_model(model, smol_tokenizer, chat, config, tmp_path / "toy", progress=False)
    rows = [r for r in read_jsonl(tmp_path / "toy" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"ce", "toy"} <= set(rows[0]) and "kd" not in rows[0]
    assert rows[0]["toy"] == pytest.approx(initial, rel=1e-5)  # step 1 sees the initial weights
    for r in rows:  # the loss is the weighted sum of the logged term means
        assert r["loss"] == pytest.approx(r["ce"] + 0.5 * r["toy"], rel=1e-5)
    # trained on: a heavy penalty shrinks the weights that plain CE leaves about where they were
    plain = _model(len(smol_tokenizer))
    train_model(plain, smol_tokenizer, chat, config.replace(loss="ce"), tmp_path / "ce", progress=False)
    heavy = _model(len(smol_tokenizer))
    train_model(heavy, smol_tokenizer, chat, config.replace(loss="ce+100*toy"), tmp_path / "heavy", progress=False)
    assert _penalty(heavy) < 0.99 * _penalty(plain), (_penalty(heavy), _penalty(plain))
    plain_rows = [r for r in read_jsonl(tmp_path / "ce" / "metrics.jsonl") if "loss" in r]
    assert not {"ce", "toy"} & set(plain_rows[0])  # plain CE logs the loss alone, as before


def test_names_are_checked_against_the_registry_as_it_is(toy_term):
    assert LossSpec.from_text("kd+toy").needs_teacher
    assert not LossSpec.from_text("toy").needs_teacher
    with pytest.raises(KallmError, match="unknown loss term 'toi'; did you mean 'toy'"):
        LossSpec.from_text("ce+toi")


def test_an_unregistered_term_is_unknown_again():
    assert "toy" not in LOSS_TERMS and LOSS_TERMS.names()[:3] == ["ce", "kd", "hidden"]
    with pytest.raises(KallmError, match="unknown loss term 'toy'"):
        LossSpec.from_text("ce+toy")
    with pytest.raises(KallmError, match="unknown loss term 'toy'"):
        LOSS_TERMS.unregister("toy")
