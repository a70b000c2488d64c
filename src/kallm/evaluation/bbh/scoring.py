"""Scoring one generated output the way lm-eval does, plus kallm's whitespace-stripped headline.

Per mode (`strict` is always lm-eval's reported number for that task family):
- zeroshot: `strict` = strict-match (raw output), `flexible` = flexible-extract (per-task regex), both
  with the zero-shot metric: case ignored and `.` at the end, `,`, `\\`, newlines and `"` removed.
- fewshot: `strict` = raw output == target (case-sensitive, nothing ignored: `' (C)'` is wrong).
- cot: `strict` = the text after the first "the answer is " minus its last character, == target.
- `flexible` in fewshot/cot/mc: the zero-shot flexible-extract and metric applied to the output (for cot, to
  the extracted answer when there is one) - a kallm addition that shows what the model knew.
- `stripped` (kallm's headline; the one deviation from lm-eval): `strict` computed on `output.strip()`.
"""

from __future__ import annotations

from kallm.evaluation.bbh.filters import INVALID, cot_extract, exact_match, flexible_extract, zeroshot_match
from kallm.evaluation.bbh.prompts import get_mode
from kallm.evaluation.bbh.tasks import TASKS


def _strict_answer(mode: str, output: str) -> str:
    return cot_extract(output) if mode == "cot" else output


def extract_answers(task: str, output: str, mode: str, question: str | None = None) -> dict[str, str]:
    """The answer each metric compares with the target."""
    name = get_mode(mode).name
    TASKS.get(task)
    strict = _strict_answer(name, output)
    stripped = _strict_answer(name, output.strip())
    # CoT: look for the answer in "the answer is ..." first, in the whole output when that is missing.
    flexible_source = strict if name == "cot" and strict != INVALID else output
    return {"strict": strict, "flexible": flexible_extract(task, flexible_source, question), "stripped": stripped}


def score_output(task: str, output: str, target: str, mode: str, *, question: str | None = None) -> dict[str, bool]:
    """{"strict", "flexible", "stripped"} correctness of one output.

    `question` (the example's input) lets flexible-extract map option text to its letter and is needed for
    word_sorting, as in lm-eval; without it those steps are skipped.
    """
    name = get_mode(mode).name
    answers = extract_answers(task, output, name, question)
    if name == "zeroshot":
        strict = zeroshot_match(answers["strict"], target)
        stripped = zeroshot_match(answers["stripped"], target)
    else:
        strict = exact_match(answers["strict"], target)
        stripped = exact_match(answers["stripped"], target)
    return {"strict": strict, "flexible": zeroshot_match(answers["flexible"], target), "stripped": stripped}
