"""Metrics registered from outside kallm: reported by evaluate_bbh, accepted as `eval.metric`, and gone
again once unregistered."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kallm.config.mapping import FieldError
from kallm.evaluation.bbh import evaluate_bbh, get_mode
from kallm.evaluation.bbh.metrics import METRICS, BBHMetric, Example
from kallm.experiment.schema import EvalConfig


class NonEmpty(BBHMetric):
    """Generated text: did the model say anything at all?"""

    name = "nonempty"

    def extract(self, example: Example) -> str:
        return example.output.strip()

    def correct(self, example: Example, answer: str | None) -> bool:
        return bool(answer)


class Worst(BBHMetric):
    """mc: the candidate of *lowest* log-likelihood is the target (1 - acc on two-way tasks)."""

    name = "worst"
    generative = False

    def extract(self, example: Example) -> str:
        return example.candidates[min(range(len(example.candidates)), key=example.logprobs.__getitem__)]

    def correct(self, example: Example, answer: str | None) -> bool:
        return answer == example.target_candidate


@pytest.fixture
def toy_metrics() -> Iterator[None]:
    before = METRICS.names()
    for metric in (NonEmpty(), Worst()):
        METRICS.add(metric.name, metric)
    try:
        yield
    finally:
        for name in ("nonempty", "worst"):
            METRICS.unregister(name)
    assert METRICS.names() == before


def _rows(path):
    return [json.loads(line) for line in (path / "predictions.jsonl").read_text().splitlines()]


def test_a_registered_generation_metric_is_scored_and_aggregated(toy_metrics, lively_llama, smol_tokenizer,
                                                                 shared_data, tmp_path):
    scores = evaluate_bbh(lively_llama, smol_tokenizer, tasks=["object_counting", "navigate"], mode="fewshot",
                          limit=2, data_dir=shared_data / "bbh", max_gen_toks=4, out_dir=tmp_path, progress=False)
    assert scores["metrics"] == ["strict", "flexible", "stripped", "nonempty"]
    assert scores["headline_metric"] == "stripped"
    rows = _rows(tmp_path)
    for r in rows:
        assert r["extracted"]["nonempty"] == r["output"].strip()
        assert r["correct"]["nonempty"] == bool(r["output"].strip())
    for task in ("object_counting", "navigate"):
        mine = [r["correct"]["nonempty"] for r in rows if r["task"] == task]
        assert scores["tasks"][task]["nonempty"] == pytest.approx(sum(mine) / 2)
    assert scores["micro"]["nonempty"] == pytest.approx(sum(r["correct"]["nonempty"] for r in rows) / 4)
    assert scores["macro"]["nonempty"] == pytest.approx(
        (scores["tasks"]["object_counting"]["nonempty"] + scores["tasks"]["navigate"]["nonempty"]) / 2)


def test_a_registered_likelihood_metric_ranks_the_candidates(toy_metrics, lively_llama, smol_tokenizer,
                                                             shared_data, tmp_path):
    scores = evaluate_bbh(lively_llama, smol_tokenizer, tasks="hyperbaton,navigate", mode="mc", limit=3,
                          data_dir=shared_data / "bbh", out_dir=tmp_path, progress=False)
    assert scores["metrics"] == ["acc", "acc_norm", "worst"]
    rows = _rows(tmp_path)
    for r in rows:
        worst = min(range(len(r["candidates"])), key=lambda i: r["logprobs"][i])
        assert r["extracted"]["worst"] == r["candidates"][worst]
        assert r["correct"]["worst"] == (r["candidates"][worst] == r["target"])
        assert r["correct"]["worst"] != r["correct"]["acc"]  # two candidates each, the target among them
    assert scores["micro"]["worst"] == pytest.approx(1 - scores["micro"]["acc"])


def test_eval_metric_accepts_a_registered_metric_of_the_mode(toy_metrics):
    assert get_mode("fewshot").metrics == ("strict", "flexible", "stripped", "nonempty")
    assert get_mode("mc").metrics == ("acc", "acc_norm", "worst")
    assert EvalConfig(mode="fewshot", metric="nonempty").metric == "nonempty"
    with pytest.raises(FieldError, match=r"metric: unknown metric 'nonemptyy'; did you mean 'nonempty'"):
        EvalConfig(mode="fewshot", metric="nonemptyy")
    with pytest.raises(FieldError, match=r"unknown metric 'nonempty'.*\(the metrics of mode 'mc'\)"):
        EvalConfig(mode="mc", metric="nonempty")


def test_an_unregistered_metric_is_gone():
    assert "nonempty" not in METRICS and get_mode("fewshot").metrics == ("strict", "flexible", "stripped")
    assert get_mode("mc").metrics == ("acc", "acc_norm")
    with pytest.raises(FieldError, match="unknown metric 'nonempty'"):
        EvalConfig(mode="fewshot", metric="nonempty")
