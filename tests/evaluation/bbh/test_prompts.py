"""The shape of each mode's prompt, its stops and the chat wrapper.

Equality with lm-eval's prompts, character for character for every example of every task, is tested against
fixtures that lm-eval 0.4.13 generated itself (test_lm_eval_fixtures.py); these tests spell out what that means.
"""

from __future__ import annotations

import pytest

from kallm.errors import KallmError
from kallm.evaluation.bbh import build_prompt, load_task
from kallm.evaluation.bbh.prompts import MODES, get_mode, wrap_chat


def test_prompt_shapes_by_mode(shared_data):
    task = load_task("sports_understanding", shared_data / "bbh", limit=1)
    q = task.examples[0]["input"]
    zero = build_prompt(task, q, "zeroshot")
    assert zero == f"{task.description}\n\nQ: {q}\nA:"
    cot = build_prompt(task, q, "cot")
    assert cot.endswith(f"Q: {q}\nA: Let's think step by step.\n")
    assert cot.count("Q: ") == 4 and cot.count("So the answer is") == 3
    # The CoT template's target delimiter is "": the reasoning starts right after the trigger's newline.
    assert "A: Let's think step by step.\nBam Adebayo" in cot
    few = build_prompt(task, q, "fewshot")
    assert "Let's think" not in few and few.count("\nA: yes\n\n") == 2 and "\nA: no\n\n" in few


def test_mc_prompt_is_the_fewshot_prompt(shared_data):
    # mc scores answers after exactly the prompt that the fixtures prove equal to lm-eval's bbh_fewshot.
    task = load_task("hyperbaton", shared_data / "bbh", limit=2)
    for example in task.examples:
        assert build_prompt(task, example, "mc") == build_prompt(task, example, "fewshot")


def test_cot_prompt_for_multiline_reasoning(shared_data):
    task = load_task("boolean_expressions", shared_data / "bbh", limit=1)
    cot = build_prompt(task, "True is", "cot")
    assert cot.startswith("Evaluate the result of a random Boolean expression.\n\nQ: not ( ( not not True ) ) is\n"
                          "A: Let's think step by step.\nRemember that (i) expressions inside brackets")
    assert "= not not False = True. So the answer is True.\n\nQ: True is\nA: Let's think step by step.\n" in cot


def test_mode_stops_and_budgets_follow_lm_eval():
    assert get_mode("zeroshot").stops == ("</s>", "Q:", "<|im_end|>")
    assert get_mode("fewshot").stops == ("</s>", "Q", "\n\n") == get_mode("cot").stops
    assert (get_mode("zeroshot").max_gen_toks, get_mode("fewshot").max_gen_toks, get_mode("cot").max_gen_toks) == (
        256, 256, 1024)
    assert set(MODES.names()) == {"zeroshot", "fewshot", "cot", "mc"}


def test_unknown_mode_suggests():
    with pytest.raises(KallmError, match="did you mean 'fewshot'"):
        get_mode("fewshots")


def test_bad_example_is_rejected(shared_data):
    with pytest.raises(KallmError, match="'input'"):
        build_prompt("navigate", {"question": "x"}, "zeroshot", shared_data / "bbh")


def test_chat_wrap_uses_the_tokenizer_template(smol_tokenizer):
    wrapped = wrap_chat(smol_tokenizer, "Q: hi\nA:")
    assert wrapped.endswith("<|im_start|>user\nQ: hi\nA:<|im_end|>\n<|im_start|>assistant\n")
