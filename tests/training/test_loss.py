"""Labelled-positions-only loss against Hugging Face's own loss, values and gradients."""

from __future__ import annotations

import pytest
import torch

from kallm.models.prefix import tail_hidden_states
from kallm.training.loss import (
    CHUNK_BYTES,
    check_lm_head,
    chunk_rows,
    labelled_lm_loss,
    linear_cross_entropy_sum,
    softmax_and_ce,
)
from tests.tiny_models import make_tiny_model


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # a "prompt" without labels
    labels[mask == 0] = -100
    labels[2, 5] = -100
    return ids, mask, labels


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("chunk", [4, 1024])
def test_loss_equals_hf_loss(arch, chunk):
    model = make_tiny_model(arch)
    ids, mask, labels = _inputs()
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        hidden = tail_hidden_states(model, ids, mask, 0)
        total, n = labelled_lm_loss(hidden, labels, check_lm_head(model), chunk)
    assert n == int((labels[:, 1:] != -100).sum())
    assert torch.allclose(total / n, hf, atol=1e-6)


@pytest.mark.parametrize("chunk", [3, 1024])
def test_gradients_equal_plain_cross_entropy(chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    hidden = torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 50, (11,))
    ours = linear_cross_entropy_sum(hidden, head, targets, chunk)
    ours.backward()
    got = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad = None
    head.zero_grad()
    ref = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    ref.backward()
    assert torch.allclose(ours, ref, atol=1e-5)
    for a, b in zip(got, (hidden.grad, head.weight.grad, head.bias.grad)):
        assert torch.allclose(a, b, atol=1e-5)


def test_frozen_head_gets_no_gradient_and_model_grads_match():
    model = make_tiny_model("llama")
    model.requires_grad_(False)
    model.model.layers[3].requires_grad_(True)
    ids, mask, labels = _inputs(1)
    hidden = tail_hidden_states(model, ids, mask, 3)
    total, n = labelled_lm_loss(hidden, labels, model.lm_head, chunk_size=5)
    (total / n).backward()
    ours = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    assert model.lm_head.weight.grad is None
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    for k, g in ours.items():
        assert torch.allclose(g, dict(model.named_parameters())[k].grad, atol=1e-6), k


def test_no_labels_gives_zero_loss():
    head = torch.nn.Linear(4, 9)
    hidden = torch.randn(1, 5, 4)
    total, n = labelled_lm_loss(hidden, torch.full((1, 5), -100), head)
    assert n == 0 and float(total) == 0.0


def test_softmax_and_ce_is_exact_where_the_target_probability_underflows():
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.0, -200.0, 300.0], [5.0, 5.0, 5.0]])
    targets = torch.tensor([2, 1, 0])
    probs, ce = softmax_and_ce(logits, targets)
    expected = torch.logsumexp(logits.double(), 1) - logits.double()[torch.arange(3), targets]
    torch.testing.assert_close(ce.double(), expected, rtol=1e-6, atol=1e-6)  # row 1: p = e^-500 -> 0
    torch.testing.assert_close(probs, torch.softmax(logits, 1))
    _, ce_bf16 = softmax_and_ce(logits.to(torch.bfloat16), targets)
    assert ce_bf16.dtype == torch.float32 and torch.isfinite(ce_bf16).all()


def test_chunk_rows_bounds_16_bit_chunks_only():
    vocab = 49152
    assert chunk_rows(1024, vocab, torch.float32) == 1024
    rows = chunk_rows(1024, vocab, torch.bfloat16)
    assert 16 <= rows < 1024 and rows * vocab * 4 <= CHUNK_BYTES
    assert chunk_rows(8, vocab, torch.bfloat16) == 8
    assert chunk_rows(1024, 10**9, torch.bfloat16) == 16
