"""Experiment configs: YAML with include, validation errors that name file:line and key."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from kallm.config import (
    ExperimentConfig,
    FieldError,
    VariantConfig,
    experiment_from_mapping,
    from_mapping,
    load_experiment_config,
    load_yaml_mapping,
    validate_spec,
)
from kallm.errors import ConfigError, KallmError


@dataclass
class Sched:
    warmup: int = 0
    kind: Literal["cosine", "constant"] = "cosine"


@dataclass
class TrainCfg:
    lr: float = 1e-3
    steps: int = 10
    betas: tuple[float, float] = (0.9, 0.999)
    sched: Sched = field(default_factory=Sched)
    max_tokens: int | None = None
    tasks: list[str] | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise FieldError("lr", f"must be positive, got {self.lr}")


@dataclass
class EvalCfg:
    limit: int = 5

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise KallmError(f"limit must be at least 1, got {self.limit}")


TYPES = {"train": TrainCfg, "eval": EvalCfg}

BASE = """\
model: smollm2-135m-instruct
seeds: [0, 1, 2]
train:
  lr: 1e-4
  steps: 200
  sched: {warmup: 10, kind: constant}
eval: {limit: 20}
variants:
  - {name: old, spec: linear}
"""

DEMO = """\
include: base.yaml
name: demo
train:
  steps: 20
  sched: {warmup: 2}
seeds: [7]
variants:
  - {name: baseline, spec: baseline}
  - {name: linear-restart, spec: linear}
  - {name: kan-cheb2, spec: "kan:chebyshev2:2", init: random}
  - name: kan-2layer
    spec: "kan:sequential(chebyshev2:2,chebyshev2:2)"
    budget: match
    init: distill
    curriculum: [[0, 1], [100, 2]]
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, types: dict | None = None) -> ExperimentConfig:
    return load_experiment_config(write(tmp_path, "config.yaml", text), types)


MINIMAL = "name: t\nmodel: m\nvariants:\n  - {name: lin, spec: linear}\n"


def test_include_deep_merges_mappings_and_replaces_lists(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    cfg = load_experiment_config(write(tmp_path, "demo.yaml", DEMO), TYPES)
    assert cfg.name == "demo" and cfg.model == "smollm2-135m-instruct"
    assert cfg.train == TrainCfg(lr=1e-4, steps=20, sched=Sched(warmup=2, kind="constant"))
    assert cfg.eval == EvalCfg(limit=20)
    assert cfg.seeds == [7]  # the list replaced, not appended
    assert [v.name for v in cfg.variants] == ["baseline", "linear-restart", "kan-cheb2", "kan-2layer"]
    two = cfg.variant("kan-2layer")
    assert (two.kind, two.kan_spec, two.budget, two.init) == (
        "kan", "sequential(chebyshev2:2,chebyshev2:2)", "match", "distill")
    assert two.curriculum == [(0, 1), (100, 2)]
    assert cfg.variant("linear-restart").init == "random"  # default for trained variants
    assert cfg.variant("baseline").init is None
    assert cfg.output_dir == "runs/demo" and cfg.distill is None
    assert cfg.source == tmp_path / "demo.yaml"


def test_include_path_is_relative_to_including_file(tmp_path):
    write(tmp_path, "configs/defaults/base.yaml", "model: from-base\n")
    path = write(tmp_path, "configs/exp.yaml", "include: defaults/base.yaml\n" + MINIMAL.replace("model: m\n", ""))
    assert load_experiment_config(path).model == "from-base"


def test_error_line_points_into_the_included_file(tmp_path):
    write(tmp_path, "base.yaml", "model: m\ntrain:\n  lr: fast\n")
    path = write(tmp_path, "exp.yaml", "include: base.yaml\nname: t\nvariants: [{name: a, spec: linear}]\n")
    with pytest.raises(ConfigError) as err:
        load_experiment_config(path, TYPES)
    assert str(err.value) == f"{tmp_path / 'base.yaml'}:3: train.lr: expected a number, got 'fast'"


def test_type_error_names_file_line_and_key(tmp_path):
    text = MINIMAL + "train:\n  steps: 10\n  lr: fast\n"
    with pytest.raises(ConfigError, match=r"config\.yaml:7: train\.lr: expected a number, got 'fast'$"):
        load_text(tmp_path, text, TYPES)


def test_unknown_key_suggests_the_close_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, MINIMAL + "seedz: [1]\n")
    msg = str(err.value)
    assert "config.yaml:5: seedz:" in msg and "did you mean 'seeds'" in msg
    with pytest.raises(ConfigError, match=r"config\.yaml:6: train\.lrr: .*did you mean 'lr'"):
        load_text(tmp_path, MINIMAL + "train:\n  lrr: 0.1\n", TYPES)
    with pytest.raises(ConfigError, match=r"config\.yaml:7: train\.sched\.warmpu: .*did you mean 'warmup'"):
        load_text(tmp_path, MINIMAL + "train:\n  sched:\n    warmpu: 3\n", TYPES)


def test_literal_values_are_checked_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.yaml:5: dtype: expected one of 'float32', 'bfloat16', "
                                          r"'float16', got 'float61' \(did you mean 'float16'\?\)"):
        load_text(tmp_path, MINIMAL + "dtype: float61\n")
    with pytest.raises(ConfigError, match=r":6: freeze: expected one of"):
        load_text(tmp_path, MINIMAL + "dtype: bfloat16\nfreeze: all\n")


def test_nested_types_are_converted_and_checked(tmp_path):
    cfg = load_text(tmp_path, MINIMAL + "train:\n  betas: [0.8, 1]\n  max_tokens: null\n  tasks: [navigate]\n", TYPES)
    assert cfg.train.betas == (0.8, 1.0) and isinstance(cfg.train.betas[1], float)
    assert cfg.train.max_tokens is None and cfg.train.tasks == ["navigate"]
    cases = {
        "  betas: [0.8]\n": r":6: train\.betas: expected a list of 2 items",
        "  steps: 2.5\n": r":6: train\.steps: expected an integer, got 2\.5",
        "  steps: true\n": r":6: train\.steps: expected an integer, got True",
        "  tasks: [navigate, 3]\n": r":6: train\.tasks\[1\]: expected a string, got 3",
        "  max_tokens: lots\n": r":6: train\.max_tokens: expected an integer or null, got 'lots'",
        "  sched: 3\n": r":6: train\.sched: expected a mapping, got 3",
    }
    for line, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern):
            load_text(tmp_path, MINIMAL + "train:\n" + line, TYPES)


def test_post_init_errors_are_located(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.yaml:7: train\.lr: must be positive, got -1\.0"):
        load_text(tmp_path, MINIMAL + "train:\n  steps: 3\n  lr: -1\n", TYPES)
    # A section type that raises a plain KallmError is located at the section.
    with pytest.raises(ConfigError, match=r"config\.yaml:5: eval: limit must be at least 1, got 0"):
        load_text(tmp_path, MINIMAL + "eval: {limit: 0}\n", TYPES)


@pytest.mark.parametrize("variant, pattern", [
    ("{name: base, spec: baseline, budget: match}", r":4: variants\[0\]\.budget: variant 'base' is the untouched baseline"),
    ("{name: base, spec: baseline, init: distill}", r":4: variants\[0\]\.init: variant 'base' is the untouched"),
    ("{name: lin, spec: linear, budget: 0.5}", r":4: variants\[0\]\.budget: only KAN variants .* 'lin'"),
    ("{name: lin, spec: linear, curriculum: [[0, 1]]}", r":4: variants\[0\]\.curriculum: only KAN variants"),
    ("{name: k, spec: 'kan:chebyshev2:2', budget: half}", r":4: variants\[0\]\.budget: expected 'match'"),
    ("{name: k, spec: 'kan:chebyshev2:2', budget: -2}", r":4: variants\[0\]\.budget: must be positive, got -2"),
    ("{name: k, spec: 'kan:chebyshev2:2', curriculum: [[5, 1], [5, 2]]}",
     r":4: variants\[0\]\.curriculum\[1\]: steps must be >= 0 and strictly increasing"),
    ("{name: k, spec: 'kan:chebyshev2:2', curriculum: [[0, 0]]}", r"curriculum\[0\]: degree must be a positive"),
    ("{name: k, spec: 'kan:chebyshev2:2', curriculum: [[0, 1, 2]]}", r"curriculum\[0\]: expected a list of 2 items"),
    ("{name: k, spec: 'kan:chebyshev2:2', init: zeros}", r":4: variants\[0\]\.init: expected one of 'random', "),
    ("{name: k, spec: mlp}", r":4: variants\[0\]\.spec: expected 'baseline', 'linear' or 'kan:<spec>'"),
    ("{name: 'a b', spec: linear}", r":4: variants\[0\]\.name: 'a b' is not a valid variant name"),
    ("{spec: linear}", r":4: variants\[0\]: missing required key 'name'"),
])
def test_impossible_variants_name_the_variant_and_line(tmp_path, variant, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_text(tmp_path, f"name: t\nmodel: m\nvariants:\n  - {variant}\n")


def test_budget_keeps_int_count_and_float_ratio(tmp_path):
    cfg = load_text(tmp_path, "name: t\nmodel: m\nvariants:\n  - {name: a, spec: 'kan:chebyshev2:2', budget: 2000}\n"
                              "  - {name: b, spec: 'kan:chebyshev2:2', budget: 0.5}\n")
    assert cfg.variants[0].budget == 2000 and isinstance(cfg.variants[0].budget, int)
    assert cfg.variants[1].budget == 0.5 and isinstance(cfg.variants[1].budget, float)


def test_experiment_level_checks(tmp_path):
    cases = {
        "seeds: [0, 1, 0]\n": r":5: seeds\[2\]: seed 0 is listed twice",
        "seeds: []\n": r":5: seeds: must list at least one seed",
        "device: gpu\n": r":5: device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'",
        "layers: ''\n": r":5: layers: must not be empty",
        "train: [1, 2]\n": r":5: train: expected a mapping, got \[1, 2\]",
        "include: nope.yaml\n": r"config\.yaml:5: include: included file not found",
    }
    for line, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern):
            load_text(tmp_path, MINIMAL + line)
    with pytest.raises(ConfigError, match=r"config\.yaml:4: name: duplicate key \(first given on line 1\)"):
        load_text(tmp_path, "name: t\nmodel: m\nvariants: [{name: a, spec: linear}]\nname: u\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:3: variants: must list at least one variant"):
        load_text(tmp_path, "name: t\nmodel: m\nvariants: []\n")
    with pytest.raises(ConfigError, match=r":5: variants\[1\]\.name: variant name 'a' is used twice"):
        load_text(tmp_path, "name: t\nmodel: m\nvariants:\n  - {name: a, spec: linear}\n  - {name: a, spec: baseline}\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:1: missing required key 'model'"):
        load_text(tmp_path, "name: t\nvariants: [{name: a, spec: linear}]\n")


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_experiment_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="the config is empty"):
        load_text(tmp_path, "# nothing\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:1: the config must be a mapping"):
        load_text(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:3: invalid YAML: expected .,. or .\]."):
        load_text(tmp_path, "name: t\nmodel: [m\n")
    write(tmp_path, "a.yaml", "include: b.yaml\n")
    write(tmp_path, "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_experiment_config(tmp_path / "a.yaml")


def test_sections_stay_dicts_without_types(tmp_path):
    cfg = load_text(tmp_path, MINIMAL + "train: {lr: 0.1, anything: [1]}\ndistill: {steps: 3}\n")
    assert cfg.train == {"lr": 0.1, "anything": [1]} and cfg.eval == {} and cfg.distill == {"steps": 3}


def test_missing_sections_get_their_defaults(tmp_path):
    cfg = load_text(tmp_path, MINIMAL, TYPES)
    assert cfg.train == TrainCfg() and cfg.eval == EvalCfg()


def test_to_dict_is_json_ready_and_round_trips(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    cfg = load_experiment_config(write(tmp_path, "demo.yaml", DEMO), TYPES)
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["train"]["sched"] == {"warmup": 2, "kind": "constant"}
    assert data["variants"][3]["curriculum"] == [[0, 1], [100, 2]]
    assert "source" not in data and "include" not in data
    again = experiment_from_mapping(data, None, TYPES)
    assert again == cfg and again.config_hash == cfg.config_hash
    assert len(cfg.config_hash) == 12
    # Rewriting the same config in another key order keeps the hash; changing a value changes it.
    again.train.lr = 2e-4
    assert again.config_hash != cfg.config_hash


def test_output_path_is_relative_to_the_working_directory(tmp_path):
    cfg = load_text(tmp_path, MINIMAL + "output_dir: out/x\n")
    assert cfg.output_path(tmp_path / "cwd") == tmp_path / "cwd" / "out" / "x"
    assert cfg.output_path() == Path.cwd() / "out" / "x"


def test_variant_lookup_suggests_names(tmp_path):
    cfg = load_text(tmp_path, MINIMAL)
    with pytest.raises(KallmError, match="did you mean 'lin'"):
        cfg.variant("lim")


def test_python_construction_validates_too():
    with pytest.raises(FieldError, match="budget: only KAN variants"):
        VariantConfig("lin", "linear", budget="match")
    with pytest.raises(KallmError, match="expected 'baseline', 'linear' or 'kan:<spec>'"):
        validate_spec("kan:")


def test_from_mapping_without_lines_names_the_key():
    with pytest.raises(ConfigError, match=r"^train\.steps: expected an integer, got 'x'$"):
        from_mapping(TrainCfg, {"steps": "x"}, "train")


def test_yaml_lines_cover_keys_and_list_items(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    _, lines = load_yaml_mapping(write(tmp_path, "demo.yaml", DEMO))
    assert (lines["train.lr"].file, lines["train.lr"].line) == (str(tmp_path / "base.yaml"), 4)
    assert lines["train.steps"].line == 4 and lines["train.steps"].file.endswith("demo.yaml")
    assert lines["variants[3].curriculum"].line == 15
    assert "variants[0].name" in lines and lines["variants[0].name"].file.endswith("demo.yaml")
    assert not any(p.startswith("include") for p in lines)


def test_kan_specs_are_checked_by_the_kan_library_when_it_is_there():
    kan = pytest.importorskip("kallm.kan")
    if not hasattr(kan, "parse_kan_spec"):
        pytest.skip("kallm.kan does not export parse_kan_spec yet")
    validate_spec("kan:chebyshev2:2")
    with pytest.raises(KallmError, match=r"invalid KAN spec in 'kan:chebyshv2:2'"):
        validate_spec("kan:chebyshv2:2")
