"""Held-out NLL: per-conversation sums that add up to the training loss, with or without the shared prefix."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kallm.data import load_conversations, tokenize_conversations
from kallm.errors import KallmError
from kallm.evaluation.heldout.scoring import HeldoutScore, carve_heldout, score_heldout
from kallm.models.prefix import PrefixCache, prefix_fingerprint
from kallm.retrofitting import retrofit
from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample


@pytest.fixture(scope="module")
def examples(shared_data, smol_tokenizer, tmp_path_factory):
    chat = load_conversations(write_chat_sample(shared_data, tmp_path_factory.mktemp("chat") / "c.jsonl", n=12))
    return tokenize_conversations(smol_tokenizer, chat.conversations, 96).examples


def _reference(model, example) -> tuple[float, int]:
    """Summed NLL of one conversation's labelled tokens, straight from the model's logits."""
    ids = torch.tensor([example.input_ids])
    labels = torch.tensor(example.labels[1:])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].double()
    keep = labels != -100
    return float(F.cross_entropy(logits[keep], labels[keep], reduction="sum")), int(keep.sum())


def test_per_conversation_sums_match_the_models_own_logits(examples, smol_tokenizer):
    model = make_tiny_model("llama", vocab_size=len(smol_tokenizer))
    score = score_heldout(model, examples, name="chat", pad_id=smol_tokenizer.pad_token_id, batch_size=5,
                          chunk_size=37)
    by_key = dict(zip(score.keys, zip(score.nll_sums, score.n_tokens)))
    assert sorted(by_key) == sorted(e.key for e in examples)
    for example in examples:
        ref_sum, ref_n = _reference(model, example)
        assert by_key[example.key][1] == ref_n
        assert by_key[example.key][0] == pytest.approx(ref_sum, rel=1e-5)
    assert score.nll == pytest.approx(sum(score.nll_sums) / sum(score.n_tokens))
    assert score.summary()["ppl"] == pytest.approx(math.exp(score.nll))


def test_the_shared_prefix_gives_the_same_scores(examples, smol_tokenizer):
    model = make_tiny_model("llama", vocab_size=len(smol_tokenizer))
    retrofit(model, layers="last:2", variant="kan:chebyshev2:2", seed=0)
    pad = smol_tokenizer.pad_token_id
    plain = score_heldout(model, examples, name="chat", pad_id=pad)
    cache = PrefixCache(2, prefix_fingerprint(model, 2))
    cached = score_heldout(model, examples, name="chat", pad_id=pad, layer_index=2, cache=cache, batch_size=3)
    assert len(cache) == len(examples)
    again = score_heldout(model, examples, name="chat", pad_id=pad, layer_index=2, cache=cache)
    assert dict(zip(plain.keys, plain.nll_sums)) == pytest.approx(dict(zip(cached.keys, cached.nll_sums)), rel=1e-5)
    assert again.nll_sums == cached.nll_sums or again.nll == pytest.approx(cached.nll)
    assert HeldoutScore.from_dict(cached.to_dict()) == cached


def test_carving_is_fixed_disjoint_and_keeps_only_scorable_conversations(shared_data, smol_tokenizer, tmp_path):
    chat = load_conversations(write_chat_sample(shared_data, tmp_path / "c.jsonl", n=20))
    held, rest = carve_heldout(chat, 6, smol_tokenizer, max_length=96, seed=0)
    again, _ = carve_heldout(chat, 6, smol_tokenizer, max_length=96, seed=0)
    assert len(held) == 6 and [e.key for e in held] == [e.key for e in again]
    assert len(rest) == 14 and not {chat.locations[e.index] for e in held} & set(rest.locations)
    assert all(e.num_labels > 0 for e in held)  # every held-out conversation has tokens to score
    with pytest.raises(KallmError, match=r"keep an assistant token within 96 tokens; lower eval.heldout_size"):
        carve_heldout(chat, 19, smol_tokenizer, max_length=96, seed=0)
    with pytest.raises(KallmError, match="empty"):
        score_heldout(make_tiny_model("llama"), [], name="none", pad_id=0)


def test_quality_retained_is_the_nll_ratio_and_the_gap_in_nats():
    from kallm.evaluation.heldout.scoring import quality_retained

    kept = quality_retained(1.25, 1.5)
    assert kept.retained == pytest.approx(1.25 / 1.5) and kept.gap_nats == pytest.approx(0.25)
    assert kept.relative_gap == pytest.approx(0.2)  # 20% worse than the original
    assert quality_retained(2.0, 2.0).retained == 1.0 and quality_retained(2.0, 2.0).gap_nats == 0.0
    better = quality_retained(2.0, 1.6)  # a fine-tuned variant may beat the original in-domain
    assert better.retained > 1 and better.gap_nats < 0
    for bad in ((0.0, 1.0), (1.0, float("nan")), (-1.0, 1.0)):
        with pytest.raises(KallmError, match="two positive finite NLLs"):
            quality_retained(*bad)
