"""The metrics BBH modes report, one object each, registered in `METRICS`.

A metric says which modes it scores (generated text, or the ranked candidates of `mc`), how it reads one
example's answer (`extract`, what predictions.jsonl records under `extracted`), whether that answer is
right (`correct`) and how a task's examples add up (`aggregate`, the mean by default). A mode reports
every registered metric that applies to it, in registry order; adding a metric is one subclass with
`@bbh_metric`.

    strict     lm-eval's number for the mode's task family (zeroshot strict-match, fewshot `none`, cot
               get-answer): the raw output (cot: the text after "the answer is ") against the target
    flexible   lm-eval's zero-shot flexible-extract and metric (for cot on the extracted answer when there
               is one): what the model knew, whatever its formatting
    stripped   kallm's headline, the one deviation from lm-eval: `strict` on the whitespace-stripped output
    acc        mc: the candidate of highest log-likelihood is the target
    acc_norm   mc: the same with log-likelihoods per character (lm-eval's acc_norm)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from kallm.evaluation.bbh.filters import INVALID, cot_extract, exact_match, flexible_extract, zeroshot_match
from kallm.registry import Registry


class Mode(Protocol):
    """What a metric reads of a mode (`kallm.evaluation.bbh.prompts.Mode`, which lists its metrics from here)."""

    @property
    def name(self) -> str: ...
    @property
    def cot(self) -> bool: ...
    @property
    def generative(self) -> bool: ...
    @property
    def lenient_match(self) -> bool: ...


@dataclass(frozen=True)
class Example:
    """One evaluated example as a metric sees it: the generated `output`, or (mc) the candidates, their
    summed log-probabilities and the candidate the target denotes."""

    task: str
    mode: Mode
    target: str
    output: str = ""
    question: str | None = None  # the example's input (flexible-extract maps option text to letters with it)
    candidates: tuple[str, ...] = ()
    logprobs: tuple[float, ...] = ()
    target_candidate: str | None = None


class BBHMetric:
    """One metric. Subclass, set `name` (and `generative = False` for candidate ranking), register with
    `@bbh_metric`."""

    name: ClassVar[str]
    generative: ClassVar[bool] = True  # scores generated text; False: the ranked candidates of mc
    counts_invalid: ClassVar[bool] = False  # report per task how many answers could not be extracted

    def applies_to(self, mode: Mode) -> bool:
        return mode.generative == self.generative

    def extract(self, example: Example) -> str | None:
        raise NotImplementedError

    def correct(self, example: Example, answer: str | None) -> bool:
        raise NotImplementedError

    def aggregate(self, values: Sequence[bool]) -> float:
        return sum(bool(v) for v in values) / len(values)


METRICS: Registry[BBHMetric] = Registry("metric")


def bbh_metric(cls: type[BBHMetric]) -> type[BBHMetric]:
    """Class decorator: register one instance of the metric under its `name`."""
    METRICS.add(cls.name, cls())
    return cls


def metrics_of(mode: Mode) -> tuple[str, ...]:
    """The metrics `mode` reports, in registry order."""
    return tuple(name for name in METRICS if METRICS.get(name).applies_to(mode))


def score_example(example: Example) -> tuple[dict[str, str | None], dict[str, bool]]:
    """(each metric's extracted answer, each metric's correctness) for one example of its mode."""
    extracted: dict[str, str | None] = {}
    correct: dict[str, bool] = {}
    for name in metrics_of(example.mode):
        metric = METRICS.get(name)
        extracted[name] = answer = metric.extract(example)
        correct[name] = metric.correct(example, answer)
    return extracted, correct


def _strict_answer(mode: Mode, output: str) -> str:
    return cot_extract(output) if mode.cot else output


def _mode_match(mode: Mode, answer: str, target: str) -> bool:
    """The exact match of the mode's lm-eval template: the zero-shot one ignores case and some punctuation,
    the few-shot and CoT templates comment that out."""
    return zeroshot_match(answer, target) if mode.lenient_match else exact_match(answer, target)


@bbh_metric
class Strict(BBHMetric):
    name = "strict"

    def extract(self, example: Example) -> str:
        return _strict_answer(example.mode, example.output)

    def correct(self, example: Example, answer: str | None) -> bool:
        return _mode_match(example.mode, answer or "", example.target)


@bbh_metric
class Flexible(BBHMetric):
    name = "flexible"
    counts_invalid = True

    def extract(self, example: Example) -> str:
        # CoT: look for the answer in "the answer is ..." first, in the whole output when that is missing.
        strict = _strict_answer(example.mode, example.output)
        source = strict if example.mode.cot and strict != INVALID else example.output
        return flexible_extract(example.task, source, example.question)

    def correct(self, example: Example, answer: str | None) -> bool:
        return zeroshot_match(answer or "", example.target)


@bbh_metric
class Stripped(BBHMetric):
    name = "stripped"

    def extract(self, example: Example) -> str:
        return _strict_answer(example.mode, example.output.strip())

    def correct(self, example: Example, answer: str | None) -> bool:
        return _mode_match(example.mode, answer or "", example.target)


def _best(candidates: Sequence[str], scores: Sequence[float]) -> str:
    return candidates[max(range(len(candidates)), key=scores.__getitem__)]


@bbh_metric
class Accuracy(BBHMetric):
    name = "acc"
    generative = False

    def extract(self, example: Example) -> str:
        return _best(example.candidates, example.logprobs)

    def correct(self, example: Example, answer: str | None) -> bool:
        return answer == example.target_candidate


@bbh_metric
class NormalisedAccuracy(Accuracy):
    name = "acc_norm"

    def extract(self, example: Example) -> str:
        norms = [s / max(len(c), 1) for s, c in zip(example.logprobs, example.candidates)]  # per character
        return _best(example.candidates, norms)
