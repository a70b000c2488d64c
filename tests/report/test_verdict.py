"""The report's verdict section from a grid's results and per-conversation held-out files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from kallm.report import plots as report_plots
from kallm.report import write_report
from kallm.report.records import load_results, summarise
from tests.report.test_report import table_rows

TASKS = ["navigate", "web_of_lies", "date_understanding"]
CHANCE = {"navigate": 0.5, "web_of_lies": 0.5, "date_understanding": 1 / 6}
KEYS = [f"conv{i}" for i in range(40)]
# variant -> (spec, same_as, trainable, per-token NLL shift from the original, BBH accuracy)
GRID = {
    "baseline": ("baseline", None, 0, 0.0, 0.45),
    "linear-restart": ("linear", None, 13_271_040, 1.0, 0.40),
    "kan": ("kan:chebyshev2:2", None, 6_635_520, 0.30, 0.44),
    "linear-matched": ("linear@budget=1327104", "kan", 6_635_520, 0.32, 0.41),
}


TUNED = "original-tuned"  # the original's own FFNs trained by the recipe (init: original): a reference


def make_grid(run_dir: Path, grid: dict = GRID) -> dict[str, list[float]]:
    """results.jsonl + runs/<id>/heldout.json; returns each variant's per-run pooled NLLs."""
    rng = np.random.default_rng(5)
    tokens = rng.integers(10, 200, size=len(KEYS))
    difficulty = rng.normal(2.0, 0.5, size=len(KEYS))
    nlls: dict[str, list[float]] = {}
    records = []
    for name, (spec, same_as, trainable, shift, acc) in grid.items():
        for seed in ([None] if spec == "baseline" else [0, 1]):
            run_id = name if seed is None else f"{name}.seed{seed}"
            per_token = difficulty + shift + (0 if seed is None else rng.normal(0, 0.2, size=len(KEYS)))
            sums = (per_token * tokens).tolist()
            nll = sum(sums) / tokens.sum()
            nlls.setdefault(name, []).append(nll)
            scored = {"name": "heldout", "keys": KEYS, "nll_sums": sums, "n_tokens": tokens.tolist()}
            stages = {"final": {"heldout": scored}}
            if seed is not None:
                stages["init"] = {"heldout": dict(scored, nll_sums=[x * 1.5 for x in sums])}
            folder = run_dir / "runs" / run_id
            folder.mkdir(parents=True)
            (folder / "heldout.json").write_text(json.dumps(stages))
            records.append({
                "run_id": run_id, "variant": name, "spec": spec, "kind": spec.split(":")[0].split("@")[0],
                "seed": seed, "same_as": same_as, "metric": "acc", "init": "original" if name == TUNED else None,
                "scores": {"average": acc, "per_task": {t: acc for t in TASKS}, "chance": CHANCE,
                           "n": {t: 20 for t in TASKS}},
                "params": {"total": 134_515_008 - 6_635_520 * (trainable == 6_635_520), "trainable": trainable},
                "heldout": {"nll": nll, "n_conversations": len(KEYS)},
                "heldout_init": {"nll": 1.5 * nll} if seed is not None else None,
            })
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return nlls


def test_heldout_table_pairs_and_verdict(tmp_path):
    nlls = make_grid(tmp_path)
    text = write_report(tmp_path).read_text()
    assert text.index("## Verdict") < text.index("## Held-out quality") < text.index("## BIG-Bench Hard")
    table = table_rows(text, "variant | spec | held-out NLL")
    assert list(table) == list(GRID)
    original = nlls["baseline"][0]
    for name, values in nlls.items():
        std = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        assert table[name][1] == f"{statistics.mean(values):.3f}{std} ({len(values)})"
    kan = table["kan"]
    delta = statistics.mean(nlls["kan"]) - original
    assert kan[2].startswith(f"{delta:+.3f} [") and kan[3] == f"{100 * delta / original:+.1f}%"
    assert kan[4] == f"{original / (1.5 * statistics.mean(nlls['kan'])):.3f} → " \
                     f"{original / statistics.mean(nlls['kan']):.3f}"
    assert table["baseline"][2:5] == ["—", "—", "—"]
    assert "| kan | linear-matched | control |" in text and "| kan | linear-restart | linear restart |" in text
    assert table_rows(text, "variant | compared with | as")["kan"][-1] == "kan better"  # 0.3 vs 1.0 nats apart
    verdict = text.split("## Verdict")[1].split("##")[0]
    assert f"The original model scores {original:.3f} nats" in verdict
    closest = min((n for n in nlls if n != "baseline"), key=lambda n: statistics.mean(nlls[n]))
    assert "are distinguishably worse than the original" in verdict and f"the closest is {closest}." in verdict
    assert "kan is better than linear-restart (its linear restart: " in verdict
    assert "could only detect a difference of about" in verdict and "distinguishable from chance" in verdict
    bbh = table_rows(text, "variant | accuracy")
    assert bbh["kan"][1] == f"{100 * (0.5 + 0.5 + 1 / 6) / 3:.1f}"
    assert (tmp_path / "plots" / "heldout_vs_params.png").read_bytes()[:4] == b"\x89PNG"


def test_the_pareto_figure_plots_the_table(tmp_path):
    nlls = make_grid(tmp_path)
    fig = report_plots.heldout_vs_params_figure(summarise(load_results(tmp_path)))
    ax = fig.axes[0]
    points = {c.get_label(): (c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in ax.containers}
    assert points["kan (n=2)"] == pytest.approx((6.63552, statistics.mean(nlls["kan"])))
    original = next(line for line in ax.lines if line.get_label() == "baseline (n=1)")
    assert original.get_ydata()[0] == pytest.approx(nlls["baseline"][0])


def test_only_a_randomly_initialised_full_size_linear_is_the_linear_restart():
    from kallm.folders.records import RunRecord
    from kallm.report.heldout_comparisons import linear_restart_of
    from kallm.report.records import VariantSummary

    def summary(name, spec, init, same_as=None):
        return VariantSummary(name, spec, init, [RunRecord(same_as=same_as)])

    tuned = summary("original-tuned", "linear", "original")
    fitted = summary("linear-fit", "linear", "distill")
    matched = summary("matched", "linear@budget=1327104", "distill", same_as="kan")
    restart = summary("linear-restart", "linear", "random")
    assert [s.is_linear_restart for s in (tuned, fitted, matched, restart)] == [False, False, False, True]
    assert linear_restart_of([tuned, fitted, matched, restart]) is restart
    assert linear_restart_of([tuned, fitted]) is None


def test_the_original_trained_the_same_way_is_a_reference_not_a_retrofit(tmp_path):
    nlls = make_grid(tmp_path, {**GRID, TUNED: ("linear", None, 13_271_040, -0.5, 0.45)})
    text = write_report(tmp_path).read_text()
    verdict = text.split("## Verdict")[1].split("##")[0]
    retrofits = [n for n in nlls if n not in ("baseline", TUNED)]
    closest = min(retrofits, key=lambda n: statistics.mean(nlls[n]))
    assert f"the closest retrofit is {closest}." in verdict  # not the tuned original, though it scores best
    assert min(nlls, key=lambda n: statistics.mean(nlls[n])) == TUNED
    assert "kan is worse than original-tuned (original trained the same way: +0.8" in verdict
    assert "kan is better than linear-restart (its linear restart: " in verdict  # the tuned one is no restart
    assert table_rows(text, "variant | spec | held-out NLL")[TUNED][0] == "`linear` (original weights)"
