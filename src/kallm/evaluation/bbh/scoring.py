"""Scoring one generated output the way lm-eval does, plus kallm's whitespace-stripped headline.

The metrics are those of `kallm.evaluation.bbh.metrics` (`METRICS`); per mode (`strict` is always lm-eval's
reported number for that task family):
- zeroshot: `strict` = strict-match (raw output), `flexible` = flexible-extract (per-task regex), both
  with the zero-shot metric: case ignored and `.` at the end, `,`, `\\`, newlines and `"` removed.
- fewshot: `strict` = raw output == target (case-sensitive, nothing ignored: `' (C)'` is wrong).
- cot: `strict` = the text after the first "the answer is " minus its last character, == target.
- `flexible` in fewshot/cot: the zero-shot flexible-extract and metric applied to the output (for cot, to
  the extracted answer when there is one) - a kallm addition that shows what the model knew.
- `stripped` (kallm's headline; the one deviation from lm-eval): `strict` computed on `output.strip()`.
"""

from __future__ import annotations

from kallm.errors import KallmError
from kallm.evaluation.bbh.metrics import Example, score_example
from kallm.evaluation.bbh.prompts import get_mode
from kallm.evaluation.bbh.tasks import TASKS


def _generated(task: str, output: str, target: str, mode: str, question: str | None) -> Example:
    spec = get_mode(mode)
    TASKS.get(task)
    if not spec.generative:
        raise KallmError(f"BBH mode {spec.name!r} ranks candidates by log-likelihood and has no generated output "
                         f"to score; evaluate_bbh scores it")
    return Example(task, spec, target, output, question)


def extract_answers(task: str, output: str, mode: str, question: str | None = None) -> dict[str, str]:
    """The answer each metric of the mode compares with the target."""
    extracted, _ = score_example(_generated(task, output, "", mode, question))
    return {name: answer or "" for name, answer in extracted.items()}


def score_output(task: str, output: str, target: str, mode: str, *, question: str | None = None) -> dict[str, bool]:
    """Each metric's correctness of one output ({"strict", "flexible", "stripped"} and any registered one).

    `question` (the example's input) lets flexible-extract map option text to its letter and is needed for
    word_sorting, as in lm-eval; without it those steps are skipped.
    """
    return score_example(_generated(task, output, target, mode, question))[1]
