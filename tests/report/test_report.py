"""The report: statistics checked by hand, tables and figures checked against results.jsonl."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

import kallm
from kallm.errors import KallmError
from kallm.report import comparisons, load_results, summarise, write_report
from kallm.report import plots as report_plots
from kallm.report.stats import bootstrap_mean_ci, compare, mean_std, paired_differences

TASKS = ["boolean_expressions", "navigate", "snarks"]
VARIANTS = [  # name, spec, trainable params, base accuracy
    ("baseline", "baseline", 0, 0.40),
    ("linear-restart", "linear", 13_271_040, 0.30),
    ("kan-cheb2", "kan:chebyshev2:2", 6_635_520, 0.35),
]


def make_run(run_dir: Path, seeds=(0, 1, 2), variants=VARIANTS) -> list[dict]:
    """A results.jsonl (+ metrics.jsonl per trained run) with deterministic pseudo-random scores."""
    rng = np.random.default_rng(123)
    records = []
    for name, spec, trainable, base in variants:
        for seed in ([None] if spec == "baseline" else seeds):
            per_task = {t: round(float(base + rng.uniform(-0.1, 0.1)), 4) for t in TASKS}
            record = {
                "run_id": name if seed is None else f"{name}.seed{seed}", "variant": name, "spec": spec,
                "seed": seed, "metric": "acc_norm",
                "scores": {"average": sum(per_task.values()) / len(per_task), "per_task": per_task},
                "params": {"total": 134_515_008, "trainable": trainable},
                "eval": {"mode": "mc", "limit": 20, "n_examples": 60, "wall_s": 40.0},
                "config_hash": "ab12cd34ef56", "versions": {"torch": "2.13.0"}, "git_commit": "abc123",
                "time": "2026-11-28T15:00:00+00:00",
            }
            if spec != "baseline":
                rel = f"{name}.seed{seed}/train/metrics.jsonl"
                record["init"] = "random"
                record["train"] = {"steps": 20, "tokens": 4000, "wall_s": 100.0 + 10 * seed,
                                   "peak_memory_bytes": 2**30 * (2 + seed), "memory_kind": "rss",
                                   "final_train_loss": 1.5, "initial_eval_loss": 3.0, "final_eval_loss": 2.0,
                                   "metrics_path": rel}
                rows = [{"step": s, "loss": 3.0 - 0.1 * s + seed * 0.01, "lr": 1e-4} for s in range(0, 21, 5)]
                rows += [{"step": s, "eval_loss": 3.0 - 0.05 * s} for s in (0, 20)]
                (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                (run_dir / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
            records.append(record)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def table_rows(markdown: str, first_header: str) -> dict[str, list[str]]:
    """The rows (first cell -> other cells) of the markdown table whose header starts with `first_header`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header}"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


# --- statistics, by hand ---------------------------------------------------------------------------


def test_mean_std_by_hand():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert mean_std([0.5]) == (0.5, None, 1)
    assert mean_std([]) == (None, None, 0)
    assert mean_std([1.0, float("nan"), 3.0]) == (2.0, pytest.approx(2 ** 0.5), 2)


def test_bootstrap_of_constant_differences_collapses_to_the_point():
    ci = bootstrap_mean_ci([0.25] * 30)
    assert (ci.mean, ci.low, ci.high, ci.n) == (0.25, 0.25, 0.25, 30)
    single = bootstrap_mean_ci([-0.1])
    assert (single.low, single.high) == (-0.1, -0.1)


def test_bootstrap_of_symmetric_data_contains_zero_and_is_reproducible():
    ci = bootstrap_mean_ci([-0.2, -0.1, 0.1, 0.2] * 5)
    assert ci.mean == pytest.approx(0.0) and ci.contains(0.0) and ci.low < -0.01 and ci.high > 0.01
    assert bootstrap_mean_ci([-0.2, -0.1, 0.1, 0.2] * 5) == ci
    # Symmetric data resampled symmetrically: the interval is (nearly) symmetric around 0.
    assert ci.low == pytest.approx(-ci.high, abs=0.01)


def test_bootstrap_width_matches_the_normal_approximation():
    values = np.random.default_rng(1).normal(0.0, 1.0, size=400)
    ci = bootstrap_mean_ci(values)
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.08)
    with pytest.raises(KallmError, match="no values"):
        bootstrap_mean_ci([])


def test_paired_differences_match_seed_and_task():
    scores = {(0, "a"): 0.5, (1, "a"): 0.7, (0, "b"): 0.2, (1, "c"): 0.9}
    reference = {(0, "a"): 0.4, (1, "a"): 0.4, (2, "b"): 0.1}
    assert paired_differences(scores, reference) == pytest.approx({(0, "a"): 0.1, (1, "a"): 0.3})
    # A run without a seed (the baseline) is matched to every seed of the other side.
    assert paired_differences({(None, "a"): 0.5}, reference) == pytest.approx({(0, "a"): 0.1, (1, "a"): 0.1})
    assert paired_differences(scores, {(None, "a"): 0.5}) == pytest.approx({(0, "a"): 0.0, (1, "a"): 0.2})
    c = compare("v", scores, "ref", reference)
    assert (c.better, c.worse, c.tied) == (2, 0, 0) and c.ci.mean == pytest.approx(0.2)
    assert compare("v", {(0, "z"): 1.0}, "ref", reference) is None


# --- the report against results.jsonl ---------------------------------------------------------------


def test_report_tables_agree_with_results(tmp_path):
    records = make_run(tmp_path)
    path = kallm.write_report(tmp_path)
    assert path == tmp_path / "report.md"
    text = path.read_text()

    main = table_rows(text, "variant | spec | accuracy")
    assert list(main) == ["baseline", "linear-restart", "kan-cheb2"]
    for name, _, trainable, _ in VARIANTS:
        accs = [r["scores"]["average"] for r in records if r["variant"] == name]
        std = f"{100 * statistics.stdev(accs):.1f}" if len(accs) > 1 else "—"
        assert main[name][1] == f"{100 * statistics.mean(accs):.1f} ± {std} ({len(accs)})"
        assert main[name][2] == ("0" if trainable == 0 else f"{trainable / 1e6:.1f}M")
        assert main[name][3] == "134.5M"
    assert main["baseline"][4:] == ["—", "—"]  # not trained: no memory, no time
    assert main["kan-cheb2"][4:] == ["4.00 GiB (rss)", "1m 50s"]  # max over seeds; mean of 100, 110, 120 s

    per_task = table_rows(text, "task")
    assert list(per_task) == TASKS
    for task in TASKS:
        for col, (name, *_rest) in enumerate(VARIANTS):
            values = [r["scores"]["per_task"][task] for r in records if r["variant"] == name]
            assert per_task[task][col] == f"{100 * statistics.mean(values):.1f}"

    compared = table_rows(text, "variant | compared with | pairs")  # the paired comparison table
    ref = {(r["seed"], t): r["scores"]["per_task"][t] for r in records if r["spec"] == "linear" for t in TASKS}
    for name in ("baseline", "kan-cheb2"):
        mine = [r for r in records if r["variant"] == name]
        diffs = [r["scores"]["per_task"][t] - ref[(s, t)] for r in mine for t in TASKS
                 for s in ([r["seed"]] if r["seed"] is not None else [0, 1, 2])]
        ci = bootstrap_mean_ci(diffs, n_resamples=10_000, seed=0)
        row = compared[name]
        assert row[0] == "linear-restart" and row[1] == str(len(diffs)) == "9"
        assert row[2] == f"{100 * statistics.mean(diffs):+.1f}"
        assert row[3] == f"[{100 * ci.low:+.1f}, {100 * ci.high:+.1f}]"
        assert ci.low <= statistics.mean(diffs) <= ci.high
    assert "linear-restart" not in compared
    assert "10,000 resamples" in text and "percentile bootstrap" in text

    assert "`ab12cd34ef56`" in text and "`abc123`" in text and "torch 2.13.0" in text
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        png = tmp_path / link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "accuracy_vs_params.png", "loss_curves.png", "paired_differences.png", "per_task.png"]


def test_figures_plot_the_same_numbers_as_the_tables(tmp_path):
    records = make_run(tmp_path)
    summaries = summarise(load_results(tmp_path))

    def acc(name):
        return 100 * statistics.mean(r["scores"]["average"] for r in records if r["variant"] == name)

    fig = report_plots.accuracy_vs_params_figure(summaries)
    ax = fig.axes[0]
    points = {}
    for container in ax.containers:
        line = container.lines[0]
        points[container.get_label()] = (line.get_xdata()[0], line.get_ydata()[0])
    assert points["linear-restart (n=3)"] == pytest.approx((13.27104, acc("linear-restart")))
    assert points["kan-cheb2 (n=3)"] == pytest.approx((6.63552, acc("kan-cheb2")))
    baseline_line = next(line for line in ax.lines if line.get_label() == "baseline (n=1)")
    assert baseline_line.get_ydata()[0] == pytest.approx(acc("baseline"))

    bars = report_plots.per_task_figure(summaries).axes[0].containers
    kan_bars = next(c for c in bars if c.get_label() == "kan-cheb2")
    widths = [patch.get_width() for patch in kan_bars.patches]
    expected = [100 * statistics.mean(r["scores"]["per_task"][t] for r in records if r["variant"] == "kan-cheb2")
                for t in TASKS]
    assert widths == pytest.approx(expected)

    comps = comparisons(summaries)
    diff_ax = report_plots.comparison_figure(comps).axes[0]
    xs = [c.lines[0].get_xdata()[0] for c in diff_ax.containers]
    assert xs == pytest.approx([100 * c.ci.mean for c in comps])

    loss_ax, eval_ax = report_plots.loss_curves_figure(tmp_path, summaries).axes
    assert len(loss_ax.lines) == 6 and len(eval_ax.lines) == 6  # 2 trained variants x 3 seeds
    seed2 = loss_ax.lines[2]  # linear-restart, seed 2
    assert list(seed2.get_xdata()) == [0, 5, 10, 15, 20]
    assert list(seed2.get_ydata()) == pytest.approx([3.0 - 0.1 * s + 0.02 for s in range(0, 21, 5)])
    assert list(eval_ax.lines[0].get_ydata()) == pytest.approx([3.0, 2.0])


def test_missing_fields_show_a_dash(tmp_path):
    sparse = [
        {"variant": "baseline", "spec": "baseline", "seed": None, "scores": {"average": 0.4}},
        {"run_id": "kan.seed0", "variant": "kan", "spec": "kan:chebyshev2:2", "seed": 0,
         "scores": {"average": None}, "train": {"metrics_path": "kan.seed0/missing.jsonl"}},
        {"run_id": "kan.seed1", "variant": "kan", "seed": 1, "params": None, "train": None},
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sparse))
    text = write_report(tmp_path).read_text()
    main = table_rows(text, "variant | spec | accuracy")
    assert main["baseline"] == ["`baseline`", "40.0 ± — (1)", "—", "—", "—", "—"]
    assert main["kan"] == ["`kan:chebyshev2:2`", "— (0)", "—", "—", "—", "—"]
    assert "No comparison" in text and "config hash: —" in text
    assert not (tmp_path / "plots" / "loss_curves.png").exists()


def test_reference_falls_back_to_baseline_and_reruns_replace_records(tmp_path):
    records = make_run(tmp_path, seeds=(0,), variants=[VARIANTS[0], VARIANTS[2]])
    rerun = dict(records[-1], scores={"average": 0.9, "per_task": {t: 0.9 for t in TASKS}})
    with (tmp_path / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(rerun) + "\n")
    text = write_report(tmp_path).read_text()
    assert table_rows(text, "variant | spec | accuracy")["kan-cheb2"][1] == "90.0 ± — (1)"
    row = table_rows(text, "variant | compared with | pairs")["kan-cheb2"]
    base = records[0]["scores"]["per_task"]
    assert row[0] == "baseline" and row[2] == f"{100 * statistics.mean(0.9 - base[t] for t in TASKS):+.1f}"


def test_notes_output_location_and_stale_plots(tmp_path):
    make_run(tmp_path)
    (tmp_path / "plots").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"notes": "Sized for 2 CPU cores: 20 steps."}))
    out = write_report(tmp_path, tmp_path / "elsewhere" / "r.md")
    assert "Sized for 2 CPU cores: 20 steps." in out.read_text()
    assert (tmp_path / "elsewhere" / "plots" / "per_task.png").is_file()
    (tmp_path / "notes.md").write_text("From notes.md.\n")
    # A plot that can no longer be drawn (no metrics files) must not survive from the last report.
    write_report(tmp_path)
    assert (tmp_path / "plots" / "loss_curves.png").is_file()
    for metrics in tmp_path.glob("*/train/metrics.jsonl"):
        metrics.unlink()
    text = write_report(tmp_path).read_text()
    assert "From notes.md." in text and "Sized for" not in text
    assert not (tmp_path / "plots" / "loss_curves.png").exists() and "loss_curves.png" not in text


def test_bad_results_are_clear_errors(tmp_path):
    with pytest.raises(KallmError, match="no results.jsonl in"):
        write_report(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"variant": "a"}\n{oops\n')
    with pytest.raises(KallmError, match=r"results\.jsonl:2: not valid JSON"):
        write_report(tmp_path)
