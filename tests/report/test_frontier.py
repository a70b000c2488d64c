"""The report's Frontier section, from results records and per-example held-out scores written as a grid
writes them: the best KAN form per budget, 'beats' decided by the paired interval, the smallest KAN matching
the fresh MLP of the original's count, the plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kallm.report import write_report
from kallm.report.frontier import BEATS, EVEN, WORSE, build, frontier_points
from kallm.report.heldout_comparisons import N_RESAMPLES
from kallm.report.per_set import versus_original_by_set
from kallm.report.records import load_results, summarise
from kallm.report.stats import HeldoutRuns, nll_difference_ci
from tests.report.test_per_set import make_grid
from tests.report.test_report import table_rows

SETS = {"heldout": 40, "wiki": 30}
CHEB, LEG = "kan:sequential(chebyshev2:2,chebyshev2:2)", "kan:sequential(legendre:3,legendre:3)"
# variant -> (spec, new params per layer, seeds, NLL per token above the original's on every set)
GRID = {
    "original": ("baseline", None, [None], 0.0),
    "cheb-0.5x": (f"{CHEB}@budget=0.5", 1000, [0, 1], 0.10),
    "leg-0.5x": (f"{LEG}@budget=0.5", 1000, [0], 0.30),
    "cheb-1x": (f"{CHEB}@budget=1.0", 2000, [0], -0.05),
    "pruned-0.5x": ("pruned@budget=0.5", 1000, [0, 1], 0.60),
    "linear-0.5x": ("linear@budget=0.5", 1000, [0, 1], 0.10),
    "pruned-1x": ("pruned@budget=1.0", 2000, [0], 0.40),
    "linear-1x": ("linear@budget=1.0", 2000, [0], 0.0),
}


def make_frontier(run_dir: Path, grid: dict = GRID) -> dict[tuple[str, str], HeldoutRuns]:
    """Write results.jsonl and runs/*/heldout.json; return (variant, set) -> its runs' scores."""
    rng = np.random.default_rng(0)
    base = {n: (rng.normal(2.0, 0.3, size=k), rng.integers(20, 90, size=k).astype(float)) for n, k in SETS.items()}
    scored: dict[tuple[str, str], list[np.ndarray]] = {}
    records = []
    for variant, (spec, new_params, seeds, shift) in grid.items():
        for seed in seeds:
            run_id = variant if seed is None else f"{variant}.seed{seed}"
            stages, sets = {}, {}
            for name, (per_token, tokens) in base.items():
                noise = 0.0 if seed is None else rng.normal(0.0, 0.05, size=len(tokens))
                sums = (per_token + shift + noise) * tokens
                scored.setdefault((variant, name), []).append(sums)
                stages[name] = {"name": name, "keys": [f"{name}-{i}" for i in range(len(tokens))],
                                "nll_sums": sums.tolist(), "n_tokens": tokens.tolist()}
                sets[name] = {"nll": float(sums.sum() / tokens.sum()), "n_conversations": len(tokens),
                              "n_tokens": int(tokens.sum())}
            (run_dir / "runs" / run_id).mkdir(parents=True)
            (run_dir / "runs" / run_id / "heldout.json").write_text(json.dumps({"final": stages}))
            records.append({"run_id": run_id, "variant": variant, "spec": spec, "seed": seed,
                            "init": None if seed is None else "distill", "kind": spec.split("@")[0].split(":")[0],
                            "heldout": {**sets["heldout"], "set": "heldout", "sets": sets},
                            "params": {"trainable": new_params or 0, "new_per_layer": new_params}})
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {key: HeldoutRuns(np.stack(sums), base[key[1]][1]) for key, sums in scored.items()}


def frontier_of(run_dir: Path):
    summaries = summarise(load_results(run_dir))
    return build(run_dir, summaries, versus_original_by_set(run_dir, summaries))


def section(text: str) -> str:
    return text.split("## Frontier")[1].split("\n## ")[0]


def test_points_carry_role_budget_form_and_size(tmp_path):
    make_frontier(tmp_path)
    points = {p.name: p for p in frontier_points(summarise(load_results(tmp_path)))}
    assert "original" not in points
    cheb = points["cheb-0.5x"]
    assert (cheb.role, cheb.kind, cheb.form, cheb.new_params, str(cheb.budget)) == ("kan", "kan", "cheb", 1000, "0.5")
    assert (points["pruned-1x"].role, points["pruned-1x"].form) == ("control", "pruned")


def test_best_form_and_beats_are_decided_by_the_paired_interval(tmp_path):
    scored = make_frontier(tmp_path)
    f = frontier_of(tmp_path)
    assert [str(b) for b in f.budgets] == ["0.5", "1.0"]
    half = f.budgets[0]
    assert f.best_kan(half, "wiki").name == "cheb-0.5x" and f.best_overall(half).name == "cheb-0.5x"
    ci = nll_difference_ci(scored[("cheb-0.5x", "wiki")], scored[("pruned-0.5x", "wiki")], N_RESAMPLES)
    assert ci.high < 0  # the constructed case: 0.5 nats/token better than the pruned control
    original = scored[("original", "wiki")].per_run_nll.mean()
    pct = 100 / original
    kan = f.best_kan(half, "wiki")
    assert f.versus(kan, f.control(half, "pruned").summary, "wiki") == \
        f"{BEATS}: {pct * ci.mean:+.1f}% [{pct * ci.low:+.1f}, {pct * ci.high:+.1f}]"
    assert f.versus(kan, f.control(half, "linear").summary, "wiki").startswith(EVEN)  # the same shift
    assert f.versus(f.best_kan(half, "heldout"), f.control(f.budgets[1], "linear").summary, "heldout") \
        .startswith(WORSE)  # 0.10 above the full-size fresh MLP


def test_the_section_table_verdict_and_plot(tmp_path):
    make_frontier(tmp_path)
    text = write_report(tmp_path).read_text()
    assert (tmp_path / "plots" / "frontier.png").stat().st_size > 0
    part = section(text)
    assert "![held-out NLL vs new-FFN parameters per layer](plots/frontier.png)" in part
    rows = table_rows(part.split("### wiki")[1], "budget | best KAN")
    assert rows["0.5x"][0].startswith("cheb ") and rows["0.5x"][1].startswith("pruned-0.5x ")
    assert rows["0.5x"][3].startswith(BEATS) and rows["0.5x"][4].startswith(EVEN)
    assert rows["1x"][0].startswith("cheb ") and rows["1x"][3].startswith(BEATS)
    assert ("- 0.5x: the best KAN form is cheb (`cheb-0.5x`" in part
            and "it beats pruned-0.5x on heldout, wiki; it is not distinguishable from linear-0.5x on heldout, "
                "wiki." in part)
    assert ("Smallest KAN matching the fresh MLP of the original's count (`linear-1x`) on every held-out set: "
            "`cheb-1x` (2,000 new parameters per layer)") in part


def test_no_kan_matched_is_said(tmp_path):
    grid = {**GRID, "cheb-1x": (f"{CHEB}@budget=1.0", 2000, [0], 0.25)}
    make_frontier(tmp_path, grid)
    part = section(write_report(tmp_path).read_text())
    assert "No KAN matched the fresh MLP of the original's count (`linear-1x`) on every held-out set." in part


def test_a_grid_without_budgets_has_no_frontier(tmp_path):
    make_grid(tmp_path)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "frontier.png").write_bytes(b"stale")
    text = write_report(tmp_path).read_text()
    assert "## Frontier" not in text and not (tmp_path / "plots" / "frontier.png").exists()


def test_a_kan_of_fixed_size_sits_at_its_share_of_the_replaced_parameters(tmp_path):
    """A one-layer KAN has no budget (its degree sets its size): it joins the frontier at new/old parameters,
    named like a budgeted form so that its sizes make one line; an unbudgeted control does not."""
    grid = {**GRID, "kan-0.5x": ("kan:chebyshev2:2", 1000, [0], 0.2), "fresh": ("linear", 2000, [0], 0.1)}
    make_frontier(tmp_path, grid)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    for r in records:
        if r["variant"] in ("kan-0.5x", "fresh"):
            r["params"].update(replaced_old=10_000, replaced_new=r["params"]["new_per_layer"] * 5)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    points = {p.name: p for p in frontier_points(summarise(load_results(tmp_path)))}
    assert (str(points["kan-0.5x"].budget), points["kan-0.5x"].form) == ("0.5", "kan")
    assert "fresh" not in points


def test_each_kan_is_compared_with_the_controls_of_its_budget(tmp_path):
    from kallm.report.heldout_comparisons import matched_controls, pairwise

    make_frontier(tmp_path)
    summaries = summarise(load_results(tmp_path))
    by_name = {s.name: s for s in summaries}
    assert [c.name for c in matched_controls(by_name["cheb-0.5x"], summaries)] == ["pruned-0.5x", "linear-0.5x"]
    assert [c.name for c in matched_controls(by_name["cheb-1x"], summaries)] == ["pruned-1x", "linear-1x"]
    pairs = {(p.variant, p.reference) for p in pairwise(tmp_path, summaries) if p.role == "control"}
    assert ("cheb-0.5x", "pruned-0.5x") in pairs and ("leg-0.5x", "linear-0.5x") in pairs
    assert not any(v.startswith(("pruned", "linear")) for v, _ in pairs)


def test_a_diverged_form_is_marked_off_scale_and_the_rest_stays_readable(tmp_path):
    """A form 100x off (a diverged recovery) is drawn as a labelled arrowhead at the top, and the axis spans the
    other forms' intervals instead of stretching to it."""
    from kallm.report.frontier import OFF_SCALE, frontier_figure

    grid = {**GRID, "leg-0.5x": (f"{LEG}@budget=0.5", 1000, [0], 40.0)}  # 40 nats above: thousands of %
    make_frontier(tmp_path, grid)
    f = frontier_of(tmp_path)
    fig = frontier_figure(f)
    for ax in fig.axes:
        low, high = ax.get_ylim()
        assert OFF_SCALE < high < OFF_SCALE * 1.2 and low < 0
        labels = [t.get_text() for t in ax.texts]
        assert len(labels) == 1 and labels[0].startswith("leg +")
