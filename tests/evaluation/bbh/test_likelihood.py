"""Candidate log-likelihoods: the shared-prompt path (candidates packed after their context under a 4D mask),
the forward_fn path and a plain forward agree, on every tiny architecture."""

from __future__ import annotations

import pytest
import torch

from kallm.evaluation.bbh.likelihood import encode_pair, loglikelihoods, pack_tails
from tests.evaluation.bbh.conftest import make_lively
from tests.tiny_models import TINY_CONFIGS

REQUESTS = [
    ("Q: Is the sky blue?\nA:", " Yes"),
    ("Q: Is the sky blue?\nA:", " No"),
    ("Q: Pick one.\nOptions:\n(A) red\n(B) blue\nA:", " (A)"),
    ("Q: Pick one.\nOptions:\n(A) red\n(B) blue\nA:", " (B)"),
    ("Q: Pick one.\nOptions:\n(A) red\n(B) blue\nA:", " (B) because blue is nicer"),
    ("Short:", " True"),
]
LONG = "Answer the questions.\n\n" + "".join(f"Q: What is {i} plus {i}?\nA: {2 * i}\n\n" for i in range(8))
# Contexts sharing a long prefix: it is computed once and the rest left padded after it.
REQUESTS += [(LONG + "Q: Is it late?\nA:", " Yes"), (LONG + "Q: Is it late?\nA:", " No"),
             (LONG + "Q: Which one is the smallest number here?\nA:", " 1"),
             (LONG + "Q: Which one is the smallest number here?\nA:", " 12")]


def reference(model, tokenizer, context, continuation):
    ctx, cont = encode_pair(tokenizer, context, continuation)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0], dim=-1)
    return sum(float(logp[len(ctx) - 1 + j, tok]) for j, tok in enumerate(cont))


def test_encode_pair_moves_trailing_space(smol_tokenizer):
    ctx, cont = encode_pair(smol_tokenizer, "A: ", "Yes")
    assert smol_tokenizer.decode(ctx) == "A:" and smol_tokenizer.decode(cont) == " Yes"


def test_paths_agree_with_a_plain_forward(lively_llama, smol_tokenizer):
    expected = [reference(lively_llama, smol_tokenizer, c, x) for c, x in REQUESTS]
    shared = loglikelihoods(lively_llama, smol_tokenizer, REQUESTS, batch_size=3)

    def forward_fn(ids, mask):
        return lively_llama.model(input_ids=ids, attention_mask=mask).last_hidden_state

    full = loglikelihoods(lively_llama, smol_tokenizer, REQUESTS, batch_size=4, forward_fn=forward_fn)
    for e, s, f in zip(expected, shared, full):
        assert abs(e - s) < 1e-3 and abs(e - f) < 1e-3
    assert all(v < 0 for v in expected) and len({round(v, 3) for v in expected}) == len(expected)


@pytest.mark.parametrize("arch", sorted(set(TINY_CONFIGS) - {"llama"}))
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_candidates_agree_with_a_plain_forward_on_every_architecture(arch, attention, smol_tokenizer):
    model = make_lively(arch, len(smol_tokenizer))
    model.set_attn_implementation(attention)
    # gpt2 and opt learn 128 positions: the long shared-prefix requests do not fit them
    requests = REQUESTS[:6] if arch in ("gpt2", "opt") else REQUESTS
    expected = [reference(model, smol_tokenizer, c, x) for c, x in requests]
    shared = loglikelihoods(model, smol_tokenizer, requests, batch_size=3)
    assert max(abs(e - s) for e, s in zip(expected, shared)) < 1e-4


def test_packed_tails_see_the_context_and_their_own_earlier_tokens_only():
    context_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])  # row 0 has a padding hole
    ids, positions, mask, spans = pack_tails([[[5, 6, 7], [8]], [[9, 10]]], context_mask, torch.tensor([[1], [2]]),
                                             pad_id=0, dtype=torch.float32)
    assert ids.tolist() == [[5, 6], [9, 0]]
    assert positions.tolist() == [[2, 3], [3, 3]]
    assert spans == [(0, 0, [5, 6, 7]), (0, 2, [8]), (1, 0, [9, 10])]
    seen = (mask[:, 0] == 0).int().tolist()
    assert seen[0] == [[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]]  # the hole stays masked; causal within the tail
    assert seen[1] == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]  # the padding query sees the context only


def test_forward_fn_batches_are_deterministic(lively_llama, smol_tokenizer):
    seen: list[list[tuple]] = [[], []]

    def recorder(k):
        def forward_fn(ids, mask):
            seen[k].append((tuple(ids.shape), ids.tolist(), mask.tolist()))
            return lively_llama.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return forward_fn

    loglikelihoods(lively_llama, smol_tokenizer, REQUESTS, batch_size=2, forward_fn=recorder(0))
    loglikelihoods(lively_llama, smol_tokenizer, REQUESTS, batch_size=2, forward_fn=recorder(1))
    assert seen[0] == seen[1] and len(seen[0]) == 5
    # Right padding, longest rows first.
    assert [s[0][1] for s in seen[0]] == sorted((s[0][1] for s in seen[0]), reverse=True)
    assert all(row[0] == 1 for _, _, mask in seen[0] for row in mask)
