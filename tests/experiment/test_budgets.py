"""A frontier in an experiment config: `budgets:` expanded per budget, matched controls once per budget,
per-variant and per-budget seeds, and errors that name the file, line and what is valid."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from kallm.errors import ConfigError
from kallm.experiment import run_experiment
from kallm.experiment.budgets import control_kinds
from kallm.experiment.plan import plan_runs
from kallm.experiment.schema import ExperimentConfig, load_experiment_config
from kallm.retrofitting.variant import VARIANT_KINDS, Budget, budget_label, parse_variant

SEQ = "kan:sequential(chebyshev2:2,chebyshev2:2)"
LEG = "kan:sequential(legendre:3,legendre:3)"
FRONTIER = f"""\
name: f
model: m
seeds: [0, 1]
variants:
  - {{name: original, spec: baseline}}
  - {{name: cheb, spec: "{SEQ}", init: distill, budgets: [0.25, 0.5, 1.0], seeds: [0]}}
  - {{name: leg, spec: "{LEG}", budgets: [0.5, match]}}
budget_seeds: {{0.5x: [1, 0]}}
"""


def load_text(tmp_path: Path, text: str) -> ExperimentConfig:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_experiment_config(path)


def test_roles_of_the_built_in_kinds():
    roles = {name: VARIANT_KINDS.get(name).role for name in ("baseline", "kan", "linear", "pruned")}
    assert roles == {"baseline": "baseline", "kan": "kan", "linear": "control", "pruned": "control"}
    assert {"linear", "pruned"} <= set(control_kinds()) and "kan" not in control_kinds()


def test_budget_labels_are_readable_and_filesystem_safe():
    assert [budget_label(b) for b in (Budget("ratio", 0.5), Budget("ratio", 1.0), Budget("ratio", 0.125),
                                      Budget("match"), Budget("count", 2_000_000))] == \
        ["0.5x", "1x", "0.125x", "match", "2000000"]


def test_budgets_expand_into_variants_and_one_control_per_kind_and_budget(tmp_path):
    cfg = load_text(tmp_path, FRONTIER)
    rows = [(v.name, str(v.spec), v.init, v.seeds) for v in cfg.variants]
    assert rows == [
        ("original", "baseline", None, None),
        ("cheb-0.25x", f"{SEQ}@budget=0.25", "distill", [0]),
        ("cheb-0.5x", f"{SEQ}@budget=0.5", "distill", None),  # budget_seeds wins: [0, 1], the top-level seeds
        ("cheb-1x", f"{SEQ}@budget=1.0", "distill", [0]),
        ("leg-0.5x", f"{LEG}@budget=0.5", "random", None),
        ("leg-match", f"{LEG}@budget=match", "random", None),
        # controls: once per distinct budget (0.5 is shared by both forms; match is the ratio 1), init distill
        ("pruned-0.25x", "pruned@budget=0.25", "distill", [0]),  # the seeds the forms at 0.25 run
        ("linear-0.25x", "linear@budget=0.25", "distill", [0]),
        ("pruned-0.5x", "pruned@budget=0.5", "distill", None),
        ("linear-0.5x", "linear@budget=0.5", "distill", None),
        ("pruned-1x", "pruned@budget=1.0", "distill", None),  # cheb-1x runs 0, leg-match all: the union
        ("linear-1x", "linear@budget=1.0", "distill", None),
    ]
    run_ids = [r.run_id for r in plan_runs(cfg)]
    assert run_ids[:5] == ["original", "cheb-0.25x.seed0", "cheb-0.5x.seed0", "cheb-0.5x.seed1", "cheb-1x.seed0"]
    assert run_ids[-2:] == ["linear-1x.seed0", "linear-1x.seed1"] and len(run_ids) == 19


def test_controls_are_chosen_or_switched_off(tmp_path):
    cfg = load_text(tmp_path, FRONTIER + "controls: [linear]\n")
    assert [v.name for v in cfg.variants if v.spec.kind in ("pruned", "linear")] == \
        ["linear-0.25x", "linear-0.5x", "linear-1x"]
    cfg = load_text(tmp_path, FRONTIER + "controls: []\n")
    assert [v.name for v in cfg.variants][-1] == "leg-match"


def test_a_config_without_the_frontier_keys_hashes_as_before(tmp_path):
    cfg = load_text(tmp_path, "name: t\nmodel: m\nvariants:\n  - {name: lin, spec: linear}\n")
    data = cfg.to_dict()
    assert "controls" not in data and "budget_seeds" not in data
    assert data["variants"] == [{"name": "lin", "spec": "linear", "init": "random", "budget": None,
                                 "curriculum": None}]


def test_the_expanded_config_is_stable_under_replace(tmp_path):
    cfg = load_text(tmp_path, FRONTIER)
    again = dataclasses.replace(cfg)
    assert [v.name for v in again.variants] == [v.name for v in cfg.variants]
    assert again.config_hash == cfg.config_hash


def test_a_variant_runs_a_subset_of_the_seeds(tmp_path):
    cfg = load_text(tmp_path, "name: t\nmodel: m\nseeds: [3, 1, 2]\nvariants:\n"
                              "  - {name: lin, spec: linear, seeds: [2, 3]}\n  - {name: k, spec: 'kan:chebyshev2:2'}\n")
    assert [r.run_id for r in plan_runs(cfg)] == ["lin.seed3", "lin.seed2", "k.seed3", "k.seed1", "k.seed2"]


@pytest.mark.parametrize("extra, pattern", [
    ("  - {name: x, spec: linear, seeds: [5]}\n",
     r"config\.yaml:8: variants\[3\]\.seeds\[0\]: seed 5 is not one of the top-level seeds \[0, 1\]"),
    ("  - {name: x, spec: linear, budgets: [0.5, 0.5]}\n", r"config\.yaml:8: .*budgets\[1\]: .*listed twice"),
    ("  - {name: x, spec: linear, budgets: [1]}\n", r"config\.yaml:8: .*parameter count of 1; write a ratio"),
    ("  - {name: x, spec: linear, budgets: [fast]}\n", r"config\.yaml:8: .*cannot read budget 'fast'"),
    ("  - {name: x, spec: linear, budgets: ['same-as cheb']}\n", r"config\.yaml:8: .*budgets take no 'same-as'"),
    ("  - {name: x, spec: linear, budget: 0.5, budgets: [0.25]}\n", r"config\.yaml:8: .*either budget or budgets"),
    ("  - {name: x, spec: 'kan:chebyshev2:2', budgets: [0.5]}\n", r"config\.yaml:8: .*budgets\[0\]: budget= needs"),
    ("  - {name: x, spec: baseline, budgets: [0.5]}\n", r"config\.yaml:8: .*untouched baseline"),
    ("  - {name: cheb-0.5x, spec: linear}\n", r"config\.yaml:\d+: .*'cheb-0\.5x' is used twice"),
    ("controls: [kan]\n", r"config\.yaml:8: controls\[0\]: unknown control kind 'kan'.*linear.*pruned"),
    ("budget_seeds: {0.3y: [0]}\n", r"config\.yaml:8: budget_seeds\.0\.3y: cannot read budget '0\.3y'"),
    ("controls: [linear, linear]\n", r"config\.yaml:8: controls\[1\]: .*listed twice"),
    ("budget_seeds: {'0.75': [0]}\n", r"config\.yaml:8: budget_seeds\.0\.75: .*not a budget .* valid: 0.25x, 0.5x, 1x"),
    ("budget_seeds: {match: [4]}\n", r"config\.yaml:8: budget_seeds\.match\[0\]: seed 4 is not one of"),
])
def test_frontier_errors_name_the_line_and_what_is_valid(tmp_path, extra, pattern):
    base = FRONTIER.replace("budget_seeds: {0.5x: [1, 0]}\n", "")  # 7 lines: the extra one is line 8
    with pytest.raises(ConfigError, match=pattern):
        load_text(tmp_path, base + extra)


def test_controls_without_budgets_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.yaml:5: controls: matched controls are added at the budgets"):
        load_text(tmp_path, "name: t\nmodel: m\nvariants:\n  - {name: lin, spec: linear}\ncontrols: [pruned]\n")


def test_control_specs_parse_back():
    for kind in control_kinds():
        spec = parse_variant(kind).with_budget(Budget("ratio", 0.5))
        assert parse_variant(str(spec)) == spec


def test_the_dry_run_plans_the_expanded_grid_with_its_sizes(tmp_path, tiny_base, chat_file, shared_data):
    from tests.experiment.test_runner import write_config

    path = write_config(tmp_path, tiny_base, chat_file, shared_data, seeds=[0], variants=[
        {"name": "original", "spec": "baseline"},
        {"name": "cheb", "spec": SEQ, "init": "distill", "budgets": [0.5, 1.0]}])
    rows = {r["run_id"]: r for r in run_experiment(path, dry_run=True)}
    assert list(rows) == ["original", "cheb-0.5x.seed0", "cheb-1x.seed0", "pruned-0.5x.seed0", "linear-0.5x.seed0",
                          "pruned-1x.seed0", "linear-1x.seed0"]
    ffn = 2 * 3 * 32 * 64  # the tiny llama's SwiGLU (3 projections of 32 x 64) in the 2 replaced layers
    for name, ratio in (("cheb-0.5x", 0.5), ("pruned-0.5x", 0.5), ("linear-1x", 1.0)):
        new = rows[f"{name}.seed0"]["replaced_new"]
        assert abs(new - ratio * ffn) <= 0.1 * ffn, (name, new)
    assert rows["pruned-0.5x.seed0"]["init"] == "distill" and rows["linear-1x.seed0"]["spec"] == "linear@budget=1.0"
