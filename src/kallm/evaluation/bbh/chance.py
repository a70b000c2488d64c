"""What guessing scores on BBH: per task, the mean over its examples of 1 / (number of possible answers).

Multiple-choice examples list their options; binary tasks have two answers; free-form answers cannot
be guessed from a list, so their chance level is taken as 0.
"""

from __future__ import annotations

from kallm.evaluation.bbh.candidates import candidates_for
from kallm.evaluation.bbh.tasks import FREE_FORM, Task


def chance_level(task: Task) -> float:
    """Expected accuracy of a uniform guess over each example's possible answers (0 for free-form tasks)."""
    if task.group == FREE_FORM or not task.examples:
        return 0.0
    return sum(1.0 / len(candidates_for(task, ex["input"])) for ex in task.examples) / len(task.examples)


def chance_levels(tasks: list[Task]) -> dict[str, float]:
    return {t.name: chance_level(t) for t in tasks}
