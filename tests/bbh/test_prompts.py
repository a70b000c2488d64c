"""Prompts equal lm-eval's, character for character.

Fixtures are lm-evaluation-harness 0.4.x task definitions (lm_eval/tasks/bbh/{zeroshot,fewshot,cot_fewshot}/
TASK.yaml, written as in the repository; metadata version 3.0 templates: target_delimiter " " and
fewshot_delimiter "\\n\\n" by default, fewshot sampler first_n). The expected prompt is assembled the way
lm-eval's ConfigurableTask.fewshot_context and ContextSampler.get_context do: description + for each sample
(doc_to_text(sample) + target_delimiter + target + fewshot_delimiter) + doc_to_text(doc).
"""

from __future__ import annotations

import pytest
import yaml

from kallm.bbh import build_prompt, load_task
from kallm.bbh.prompts import MODES, get_mode, wrap_chat
from kallm.errors import KallmError

SPORTS_COT = """\
dataset_name: sports_understanding
description: 'Determine whether an artificially constructed sentence relating to sports
  is plausible or not.


  '
doc_to_text: 'Q: {{input}}

  A: Let''s think step by step.

  '
fewshot_config:
  sampler: first_n
  samples:
  - input: Is the following sentence plausible? "Bam Adebayo scored a reverse layup
      in the Western Conference Finals."
    target: Bam Adebayo is an American basketball player.
      Scoring a reverse layup in the Western Conference Finals is part of the NBA
      Finals. So the answer is yes.
  - input: Is the following sentence plausible? "Santi Cazorla scored a touchdown."
    target: Santi Cazorla is a soccer player. Touchdown
      is part of American football and rugby. So the answer is no.
  - input: Is the following sentence plausible? "DeMar DeRozan was called for the
      goal tend."
    target: DeMar DeRozan is an American basketball player.
      Goal tending is part of basketball. So the answer is yes.
include: _cot_fewshot_template_yaml
task: bbh_cot_fewshot_sports_understanding
"""

SPORTS_FEWSHOT = """\
dataset_name: sports_understanding
description: 'Determine whether an artificially constructed sentence relating to sports
  is plausible or not.


  '
doc_to_text: 'Q: {{input}}

  A:'
fewshot_config:
  sampler: first_n
  samples:
  - input: Is the following sentence plausible? "Bam Adebayo scored a reverse layup
      in the Western Conference Finals."
    target: 'yes'
  - input: Is the following sentence plausible? "Santi Cazorla scored a touchdown."
    target: 'no'
  - input: Is the following sentence plausible? "DeMar DeRozan was called for the
      goal tend."
    target: 'yes'
include: _fewshot_template_yaml
task: bbh_fewshot_sports_understanding
"""

BOOLEAN_FEWSHOT = """\
dataset_name: boolean_expressions
description: 'Evaluate the result of a random Boolean expression.


  '
doc_to_text: 'Q: {{input}}

  A:'
fewshot_config:
  sampler: first_n
  samples:
  - input: not ( ( not not True ) ) is
    target: 'False'
  - input: True and False and not True and True is
    target: 'False'
  - input: not not ( not ( False ) ) is
    target: 'True'
include: _fewshot_template_yaml
task: bbh_fewshot_boolean_expressions
"""

HYPERBATON_FEWSHOT = """\
dataset_name: hyperbaton
description: 'Order adjectives correctly in English sentences.


  '
doc_to_text: 'Q: {{input}}

  A:'
fewshot_config:
  sampler: first_n
  samples:
  - input: 'Which sentence has the correct adjective order:

      Options:

      (A) rubber terrible ship

      (B) terrible rubber ship'
    target: (B)
  - input: 'Which sentence has the correct adjective order:

      Options:

      (A) repulsive small Brazilian exercise ship

      (B) Brazilian repulsive exercise small ship'
    target: (A)
  - input: 'Which sentence has the correct adjective order:

      Options:

      (A) blue gold wonderful square shoe

      (B) wonderful square blue gold shoe'
    target: (B)
include: _fewshot_template_yaml
task: bbh_fewshot_hyperbaton
"""

DATE_ZEROSHOT = """\
dataset_name: date_understanding
description: 'Infer the date from context.


  '
doc_to_text: 'Q: {{input}}

  A:'
include: _zeroshot_template_yaml
task: bbh_zeroshot_date_understanding
"""


def lm_eval_context(task_yaml: str, doc_input: str) -> str:
    """lm-eval's fewshot_context for a doc, from a task yaml (jinja `{{input}}` is the only template)."""
    cfg = yaml.safe_load(task_yaml)

    def doc_to_text(text: str) -> str:
        return cfg["doc_to_text"].replace("{{input}}", text)

    samples = cfg.get("fewshot_config", {}).get("samples", [])
    fewshot = "".join(doc_to_text(s["input"]) + " " + s["target"] + "\n\n" for s in samples)
    return cfg["description"] + fewshot + doc_to_text(doc_input)


QUESTION = 'Is the following sentence plausible? "Joao Moutinho caught the screen pass in the NFC championship."'


@pytest.mark.parametrize(
    ("task", "mode", "fixture", "question"),
    [
        ("sports_understanding", "cot", SPORTS_COT, QUESTION),
        ("sports_understanding", "fewshot", SPORTS_FEWSHOT, QUESTION),
        ("sports_understanding", "mc", SPORTS_FEWSHOT, QUESTION),
        ("boolean_expressions", "fewshot", BOOLEAN_FEWSHOT, "not ( True ) and ( True ) is"),
        ("hyperbaton", "fewshot", HYPERBATON_FEWSHOT,
         "Which sentence has the correct adjective order:\nOptions:\n(A) big old red car\n(B) red old big car"),
        ("date_understanding", "zeroshot", DATE_ZEROSHOT, "Today is 9/7. What is the date tomorrow?"),
    ],
)
def test_prompt_equals_lm_eval(shared_data, task, mode, fixture, question):
    expected = lm_eval_context(fixture, question)
    assert build_prompt(task, {"input": question, "target": "x"}, mode, shared_data / "bbh") == expected


def test_prompt_shapes_by_mode(shared_data):
    task = load_task("sports_understanding", shared_data / "bbh", limit=1)
    q = task.examples[0]["input"]
    zero = build_prompt(task, q, "zeroshot")
    assert zero == f"{task.description}\n\nQ: {q}\nA:"
    cot = build_prompt(task, q, "cot")
    assert cot.endswith(f"Q: {q}\nA: Let's think step by step.\n")
    assert cot.count("Q: ") == 4 and cot.count("So the answer is") == 3
    # lm-eval's target delimiter puts a space after the CoT trigger's newline in exemplars.
    assert "A: Let's think step by step.\n Bam Adebayo" in cot
    few = build_prompt(task, q, "fewshot")
    assert "Let's think" not in few and few.count("\nA: yes\n\n") == 2 and "\nA: no\n\n" in few


def test_cot_prompt_for_multiline_reasoning(shared_data):
    task = load_task("boolean_expressions", shared_data / "bbh", limit=1)
    cot = build_prompt(task, "True is", "cot")
    assert cot.startswith("Evaluate the result of a random Boolean expression.\n\nQ: not ( ( not not True ) ) is\n"
                          "A: Let's think step by step.\n Remember that (i) expressions inside brackets")
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
