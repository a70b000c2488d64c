"""Held-out plain text: the block protocol's NLL equals a naive full-sequence reference (float64)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from kallm.errors import KallmError
from kallm.evaluation.heldout.scoring import score_heldout
from kallm.evaluation.heldout.text import DOCUMENT_SEPARATOR, is_text_set, load_text_set, text_windows
from tests.tiny_models import make_tiny_model

TEXT = ("The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest "
        "structure in Paris. Its base is square, measuring 125 metres on each side. During its construction "
        "the tower surpassed the Washington Monument to become the tallest man-made structure in the world, "
        "a title it held for 41 years until the Chrysler Building in New York City was finished in 1930.")


@pytest.fixture(scope="module")
def model(smol_tokenizer):
    return make_tiny_model("llama", vocab_size=len(smol_tokenizer)).double()


def _reference(model, ids: list[int], block_length: int, stride: int) -> tuple[float, int]:
    """(summed NLL, scored tokens): each window run on its own, float64 log-softmax, every token after the
    first scored once, by the window that first holds it."""
    total, count, scored_to = 0.0, 0, 1
    for start in range(0, len(ids), stride):
        window = ids[start: start + block_length]
        if len(window) < 2:
            break
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([window])).logits[0].double(), -1)
        for j in range(max(scored_to - start, 1), len(window)):
            total -= float(logp[j - 1, window[j]])
            count += 1
        scored_to = start + len(window)
        if scored_to >= len(ids):
            break
    return total, count


@pytest.mark.parametrize("block_length,stride", [(32, None), (32, 20), (16, 1), (128, None)])
def test_text_nll_equals_the_naive_reference(model, smol_tokenizer, tmp_path, block_length, stride):
    path = tmp_path / "tower.txt"
    path.write_text(TEXT, encoding="utf-8")
    windows = load_text_set(path, smol_tokenizer, block_length, max_tokens=70, stride=stride)
    ids = smol_tokenizer(TEXT, add_special_tokens=False)["input_ids"][:70]
    score = score_heldout(model, windows, name="tower", pad_id=smol_tokenizer.pad_token_id, batch_size=3)
    ref_sum, ref_n = _reference(model, ids, block_length, stride or block_length)
    assert score.total_tokens == ref_n
    assert score.nll == pytest.approx(ref_sum / ref_n, rel=1e-6)
    assert score.summary()["ppl"] == pytest.approx(math.exp(ref_sum / ref_n), rel=1e-6)
    assert len(score.keys) == len(windows)  # one example per block


def test_one_block_is_the_whole_sequence(model, smol_tokenizer, tmp_path):
    """A block as long as the text: every token but the first, scored by one full-sequence forward."""
    path = tmp_path / "tower.txt"
    path.write_text(TEXT, encoding="utf-8")
    windows = load_text_set(path, smol_tokenizer, 128, max_tokens=60)
    ids = torch.tensor([smol_tokenizer(TEXT, add_special_tokens=False)["input_ids"][:60]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].double()
    ref = float(F.cross_entropy(logits, ids[0, 1:], reduction="mean"))
    score = score_heldout(model, windows, name="tower", pad_id=smol_tokenizer.pad_token_id)
    assert len(windows) == 1 and score.total_tokens == 59
    assert score.nll == pytest.approx(ref, rel=1e-6)


def test_non_overlapping_blocks_skip_each_blocks_first_token():
    windows = text_windows(list(range(10, 35)), 10)
    assert [w.index for w in windows] == [0, 10, 20]
    assert [sum(t != -100 for t in w.labels[1:]) for w in windows] == [9, 9, 4]
    assert all(w.labels[0] == -100 for w in windows)
    overlapping = text_windows(list(range(10, 35)), 10, stride=5)
    assert sum(sum(t != -100 for t in w.labels) for w in overlapping) == 24  # every token but the first, once


def test_jsonl_text_rows_are_joined_and_capped(smol_tokenizer, tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ("First part.", "Second part.")) + "\n")
    assert is_text_set(path)
    windows = load_text_set(path, smol_tokenizer, 4, max_tokens=6)
    ids = smol_tokenizer(DOCUMENT_SEPARATOR.join(["First part.", "Second part."]),
                         add_special_tokens=False)["input_ids"]
    assert [t for w in windows for t in w.input_ids] == ids[:6]


def test_bad_protocol_settings_are_refused():
    with pytest.raises(KallmError, match="stride <= block_length"):
        text_windows([1, 2, 3], 4, stride=5)
