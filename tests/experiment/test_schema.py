"""The experiment config: typed variants parsed once at load, every rule checked before any work."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from kallm.config import FieldError
from kallm.errors import ConfigError, KallmError
from kallm.experiment.schema import (
    EvalConfig,
    ExperimentConfig,
    TrainSection,
    VariantConfig,
    experiment_from_mapping,
    load_experiment_config,
)
from kallm.retrofitting.variant import Budget, parse_variant

MINIMAL = "name: t\nmodel: m\nvariants:\n  - {name: lin, spec: linear}\n"

DEMO = """\
name: demo
model: smollm2-135m-instruct
seeds: [7]
train: {steps: 20, lr: 1e-4}
eval: {limit: 20, tasks: [navigate]}
variants:
  - {name: baseline, spec: baseline}
  - {name: linear-restart, spec: linear}
  - {name: kan-cheb2, spec: "kan:chebyshev2:2", init: random}
  - name: kan-2layer
    spec: "kan:sequential(chebyshev2:2,chebyshev2:2)"
    budget: match
    init: distill
  - {name: kan-curr, spec: "kan:chebyshev2:3", curriculum: [[0, 1], [10, 3]]}
  - {name: linear-matched, spec: linear, budget: same-as kan-cheb2}
"""


def load_text(tmp_path: Path, text: str) -> ExperimentConfig:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_experiment_config(path)


def test_sections_and_variants_are_typed(tmp_path):
    cfg = load_text(tmp_path, DEMO)
    assert isinstance(cfg.train, TrainSection) and cfg.train.steps == 20 and cfg.train.lr == 1e-4
    assert isinstance(cfg.eval, EvalConfig) and cfg.eval.tasks == ["navigate"] and cfg.distill is None
    two = cfg.variant("kan-2layer")
    assert two.spec == parse_variant("kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match")
    assert two.spec.budget == Budget("match") and two.budget is None  # folded into the spec
    assert (two.init, cfg.variant("linear-restart").init, cfg.variant("baseline").init) == ("distill", "random", None)
    curr = cfg.variant("kan-curr")
    assert curr.curriculum == ((0, 1), (10, 3)) and str(curr.build_spec()) == "kan:chebyshev2:1"
    matched = cfg.variant("linear-matched")
    assert matched.same_as == "kan-cheb2" and matched.spec.budget is None
    assert cfg.output_dir == "runs/demo" and cfg.source == tmp_path / "config.yaml"


@pytest.mark.parametrize("variant, pattern", [
    ("{name: base, spec: baseline, budget: match}", r":4: variants\[0\]\.budget: variant 'base' is the untouched"),
    ("{name: base, spec: baseline, init: distill}", r":4: variants\[0\]\.init: variant 'base' is the untouched"),
    ("{name: k, spec: 'kan:chebyshev2:2', budget: 0.5}", r":4: variants\[0\]\.budget: budget= needs a multi-layer"),
    ("{name: k, spec: 'linear', budget: half}", r":4: variants\[0\]\.budget: cannot read budget 'half'"),
    ("{name: k, spec: 'linear', budget: -2}", r":4: variants\[0\]\.budget: budget must be positive, got -2"),
    ("{name: k, spec: 'linear@budget=0.5', budget: 0.5}", r"variants\[0\]\.budget: .* already sets its size"),
    ("{name: lin, spec: linear, curriculum: [[0, 1]]}", r":4: variants\[0\]\.curriculum: .*single-basis KAN"),
    ("{name: k, spec: 'kan:chebyshev2:2', curriculum: [[5, 1], [5, 2]]}",
     r":4: variants\[0\]\.curriculum: curriculum must start at step 0"),
    ("{name: k, spec: 'kan:chebyshev2:2', curriculum: [[0, 1], [5, 3]]}",
     r"variants\[0\]\.curriculum: curriculum ends at degree 3 but the variant 'kan:chebyshev2:2' has degree 2"),
    ("{name: k, spec: 'kan:bspline:2', curriculum: [[0, 1], [5, 2]]}", r"curriculum: basis 'bspline' cannot raise"),
    ("{name: k, spec: 'kan:chebyshev2:2', curriculum: [[0, 1, 2]]}", r"curriculum\[0\]: expected a list of 2 items"),
    ("{name: k, spec: 'kan:chebyshev2:2', init: zeros}", r":4: variants\[0\]\.init: expected one of 'random', "),
    ("{name: k, spec: 'kan:chebyshev2:2', init: original}", r":4: variants\[0\]\.init: init: original .*needs spec: linear"),
    ("{name: k, spec: 'linear@budget=0.5', init: original}", r"variants\[0\]\.init: .*at full size, got linear@budget"),
    ("{name: k, spec: mlp}", r":4: variants\[0\]\.spec: unknown variant 'mlp'.* Valid variant names: baseline, kan"),
    ("{name: k, spec: 'kan:chebyshv2:2'}", r":4: variants\[0\]\.spec: in KAN spec .*did you mean 'chebyshev2'"),
    ("{name: k, spec: 'kan:chebyshev2:2@hidden=64'}", r"variants\[0\]\.spec: hidden= needs a multi-layer KAN"),
    ("{name: k, spec: 3}", r":4: variants\[0\]\.spec: expected a VariantSpec written as a string, got 3"),
    ("{name: 'a b', spec: linear}", r":4: variants\[0\]\.name: 'a b' is not a valid variant name"),
    ("{spec: linear}", r":4: variants\[0\]: missing required key 'name'"),
    ("{name: k, spec: linear, budget: same-as nobody}", r"variants\[0\]\.budget: unknown variant 'nobody'"),
    ("{name: k, spec: linear, budget: same-as k}", r"variants\[0\]\.budget: same-as needs another trained variant"),
    ("{name: k, spec: 'kan:chebyshev2:2', budget: same-as k}", r"budget: budget= needs a multi-layer KAN"),
])
def test_impossible_variants_name_the_variant_and_line(tmp_path, variant, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_text(tmp_path, f"name: t\nmodel: m\nvariants:\n  - {variant}\n")


def test_same_as_must_point_at_a_variant_with_a_size_of_its_own(tmp_path):
    text = ("name: t\nmodel: m\nvariants:\n  - {name: base, spec: baseline}\n"
            "  - {name: k, spec: linear, budget: same-as base}\n")
    with pytest.raises(ConfigError, match=r":5: variants\[1\]\.budget: same-as needs another trained variant"):
        load_text(tmp_path, text)


def test_experiment_level_checks(tmp_path):
    cases = {
        "seeds: [0, 1, 0]\n": r":5: seeds\[2\]: seed 0 is listed twice",
        "seeds: []\n": r":5: seeds: must list at least one seed",
        "device: gpu\n": r":5: device: device 'gpu' is not valid; expected auto, cpu, cuda, cuda:N or mps",
        "layers: ''\n": r":5: layers: must not be empty",
        "train: [1, 2]\n": r":5: train: expected a mapping, got \[1, 2\]",
        "train: {steps: 0}\n": r":5: train\.steps: must be an integer >= 1, got 0",
        "eval: {mode: fastest}\n": r":5: eval: unknown BBH mode",
        "distill: {tokens: 3}\n": r":5: distill: distill\.tokens must be at least 16",
        "freeze: all\n": r":5: freeze: expected one of",
        "eval: {precision: bf61}\n": r":5: eval\.precision: 'bf61' is not valid \(did you mean 'bf16'\?\); "
                                    r"choose one of: auto, fp32, bf16",
        "train: {precision: fp23}\n": r":5: train\.precision: 'fp23' is not valid \(did you mean 'fp32'\?\)",
    }
    for line, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern):
            load_text(tmp_path, MINIMAL + line)
    with pytest.raises(ConfigError, match=r"config\.yaml:3: variants: must list at least one variant"):
        load_text(tmp_path, "name: t\nmodel: m\nvariants: []\n")
    with pytest.raises(ConfigError, match=r":5: variants\[1\]\.name: variant name 'a' is used twice"):
        load_text(tmp_path, "name: t\nmodel: m\nvariants:\n  - {name: a, spec: linear}\n  - {name: a, spec: baseline}\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:1: missing required key 'model'"):
        load_text(tmp_path, "name: t\nvariants: [{name: a, spec: linear}]\n")


def test_missing_sections_get_their_defaults(tmp_path):
    cfg = load_text(tmp_path, MINIMAL + "distill: null\n")
    assert cfg.train == TrainSection() and cfg.eval == EvalConfig() and cfg.distill is None


def test_to_dict_is_json_ready_and_round_trips(tmp_path):
    cfg = load_text(tmp_path, DEMO)
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["variants"][3]["spec"] == "kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match"
    assert data["variants"][4]["curriculum"] == [[0, 1], [10, 3]]
    assert data["variants"][5]["budget"] == "same-as kan-cheb2"
    assert "source" not in data
    again = experiment_from_mapping(data)
    assert again == cfg and again.config_hash == cfg.config_hash and len(cfg.config_hash) == 12
    changed = dict(data, train={**data["train"], "lr": 2e-4})
    assert experiment_from_mapping(changed).config_hash != cfg.config_hash


def test_paths_are_relative_to_the_file_that_sets_them(tmp_path, monkeypatch):
    """Like `include:`: a config works from any working directory; an included file's paths are its own."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "sub" / "defaults.yaml").write_text("train: {data: [../data, org/hub-set]}\n"
                                                    "eval: {data_dir: ../bbh}\n", encoding="utf-8")
    cfg = load_text(tmp_path, "include: sub/defaults.yaml\n" + MINIMAL + "output_dir: out/x\n")
    monkeypatch.chdir(tmp_path / "sub")  # anywhere but the config's folder
    assert cfg.output_path() == tmp_path / "out" / "x"
    assert cfg.data_sources() == [tmp_path / "data", "org/hub-set"]
    assert cfg.bbh_data_dir() == tmp_path / "bbh"
    assert cfg.model_path() == "m"  # no such folder beside the config: a hub id, as written
    (tmp_path / "m").mkdir()
    assert cfg.model_path() == str(tmp_path / "m")
    assert load_text(tmp_path, MINIMAL).output_path() == tmp_path / "runs" / "t"  # the default, too
    assert cfg.to_dict()["output_dir"] == "out/x"  # recorded (and hashed) as written: the same on any checkout


def test_names_are_checked_when_the_config_loads(tmp_path):
    cases = {
        "eval: {tasks: [navigate, boolean_expresions]}\n":
            r":4: eval\.tasks: unknown BBH task 'boolean_expresions'; did you mean 'boolean_expressions'",
        "eval: {mode: mc, metric: strict}\n": r":4: eval\.metric: unknown metric 'strict'.*Valid metric names: acc, "
                                              r"acc_norm \(the metrics of mode 'mc'\)",
        "train: {steps: 5}\nvariants:\n  - {name: k, spec: 'kan:chebyshev2:2', curriculum: [[0, 1], [5, 2]]}\n":
            r":5: variants\[0\]\.curriculum: curriculum raises the degree at step 5, but training has only 5 steps",
    }
    for text, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern):
            load_text(tmp_path, "name: t\nmodel: m\n" + ("variants: [{name: l, spec: linear}]\n"
                                                         if "variants" not in text else "") + text)


def test_variant_lookup_suggests_names(tmp_path):
    cfg = load_text(tmp_path, MINIMAL)
    with pytest.raises(KallmError, match="did you mean 'lin'"):
        cfg.variant("lim")


def test_python_construction_validates_too():
    with pytest.raises(FieldError, match="budget: budget= needs a multi-layer KAN"):
        VariantConfig("k", parse_variant("kan:chebyshev2:2"), budget="match")
    assert VariantConfig("lin", parse_variant("linear"), budget=0.5).spec == parse_variant("linear@budget=0.5")
