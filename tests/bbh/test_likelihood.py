"""Candidate log-likelihoods: the shared-prompt path, the forward_fn path and a plain forward agree."""

from __future__ import annotations

import torch

from kallm.bbh.likelihood import encode_pair, loglikelihoods

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
