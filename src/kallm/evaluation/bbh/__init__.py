"""BIG-Bench Hard evaluation that reproduces lm-evaluation-harness where comparability matters.

Modes: `zeroshot`, `fewshot`, `cot` (lm-eval's bbh_zeroshot / bbh_fewshot / bbh_cot_fewshot prompts, stops and
scoring) and `mc` (log-likelihood ranking of the enumerable answers, what a small model knows). kallm's
headline metric `stripped` is lm-eval's strict score on the whitespace-stripped output: the one deviation.
Each mode reports the registered metrics that apply to it (`metrics.METRICS`).
"""

from __future__ import annotations

from kallm.evaluation.bbh.evaluate import EvalSettings, evaluate_bbh
from kallm.evaluation.bbh.metrics import METRICS
from kallm.evaluation.bbh.prompts import MODES, build_prompt, get_mode
from kallm.evaluation.bbh.scoring import extract_answers, score_output
from kallm.evaluation.bbh.tasks import GROUPS, TASKS, list_tasks, load_task, load_tasks, select_tasks

__all__ = [
    "GROUPS", "METRICS", "MODES", "TASKS", "EvalSettings", "build_prompt", "evaluate_bbh", "extract_answers", "get_mode",
    "list_tasks", "load_task", "load_tasks", "score_output", "select_tasks",
]
