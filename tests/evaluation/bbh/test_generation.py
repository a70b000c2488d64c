"""Batched greedy decoding: same text as one-by-one decoding, stops and EOS honoured."""

from __future__ import annotations

import pytest

from kallm.evaluation.bbh import load_task
from kallm.evaluation.bbh.generation import cut_at_stops, generate_greedy
from kallm.evaluation.bbh.prompts import render_prompt


@pytest.fixture(scope="module")
def prompts(shared_data):
    tasks = [load_task(n, shared_data / "bbh", limit=10) for n in ("boolean_expressions", "navigate", "snarks")]
    # Few-shot prompts: those of one task share a long prefix, which batched prefill computes once.
    return [render_prompt(t, ex["input"], "fewshot") for t in tasks for ex in t.examples]


def test_cut_at_stops_takes_the_earliest():
    assert cut_at_stops(" (B)\n\nQ: next", ("Q", "\n\n")) == " (B)"
    assert cut_at_stops("A Q B\n\n", ("\n\n", "Q")) == "A "
    assert cut_at_stops("no stop", ("Q:",)) == "no stop"


def test_batched_equals_one_by_one(lively_llama, smol_tokenizer, prompts):
    assert len(prompts) == 30
    one = generate_greedy(lively_llama, smol_tokenizer, prompts, max_new_tokens=8, batch_size=1)
    batched = generate_greedy(lively_llama, smol_tokenizer, prompts, max_new_tokens=8, batch_size=16)
    assert batched == one
    assert len(set(one)) > 10  # outputs really depend on the prompt


def test_stop_string_cuts_and_ends_generation(lively_llama, smol_tokenizer, prompts):
    free = generate_greedy(lively_llama, smol_tokenizer, prompts[:4], max_new_tokens=12, batch_size=4)
    stop = free[0][3:6]
    cut = generate_greedy(lively_llama, smol_tokenizer, prompts[:4], stops=(stop,), max_new_tokens=12, batch_size=4)
    assert cut[0] == free[0][:free[0].index(stop)]
    assert cut[1:] == [cut_at_stops(f, (stop,)) for f in free[1:]]


def test_eos_stops_at_once(lively_llama, smol_tokenizer, prompts):
    first = generate_greedy(lively_llama, smol_tokenizer, prompts[:1], max_new_tokens=1)[0]
    token = smol_tokenizer(first, add_special_tokens=False)["input_ids"][0]
    old = lively_llama.generation_config.eos_token_id
    lively_llama.generation_config.eos_token_id = token
    try:
        assert generate_greedy(lively_llama, smol_tokenizer, prompts[:1], max_new_tokens=5) == [""]
    finally:
        lively_llama.generation_config.eos_token_id = old


def test_plan_batches_keeps_shared_prefixes_together():
    from kallm.evaluation.bbh.generation import LONG_SHARED_PREFIX, plan_batches

    a = [1] * LONG_SHARED_PREFIX
    b = [2] * LONG_SHARED_PREFIX
    rows = sorted([a + [5], a + [6], a + [7], [3, 1], [3, 2], b + [5], b + [6], [4]])
    batches = plan_batches(rows, [1] * len(rows), capacity=2)
    assert [[rows[i][0] for i in batch] for batch in batches] == [[1, 1], [1], [2, 2], [3, 3], [4]]
    assert plan_batches(rows, [1] * len(rows), 2) == batches  # deterministic
    # Sizes count against the capacity (mc: candidates per context); an oversized item stands alone.
    assert plan_batches([[1], [2], [3]], [3, 1, 1], capacity=2) == [[0], [1, 2]]
