"""Config files in general: YAML with include, typed conversion, errors that name file:line and key.

These tests use a small schema of their own; the experiment schema is tested in tests/experiment.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from kallm.config import FieldError, from_mapping, load_yaml_mapping
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


@dataclass
class Word:
    """A type written as text in config files: converted once by `from_text`."""

    text: str

    @classmethod
    def from_text(cls, text: str) -> Word:
        if not text.isalpha():
            raise KallmError(f"{text!r} is not a word")
        return cls(text.lower())


@dataclass
class Exp:
    name: str
    model: str
    seeds: list[int] = field(default_factory=lambda: [0])
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    variants: list[dict[str, Any]] = field(default_factory=list)
    word: Word | None = None


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

MINIMAL = "name: t\nmodel: m\nvariants:\n  - {name: lin, spec: linear}\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(path: Path) -> Exp:
    data, lines = load_yaml_mapping(path)
    return from_mapping(Exp, data, "", lines)


def load_text(tmp_path: Path, text: str) -> Exp:
    return load(write(tmp_path, "config.yaml", text))


def test_include_deep_merges_mappings_and_replaces_lists(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    cfg = load(write(tmp_path, "demo.yaml", DEMO))
    assert cfg.name == "demo" and cfg.model == "smollm2-135m-instruct"
    assert cfg.train == TrainCfg(lr=1e-4, steps=20, sched=Sched(warmup=2, kind="constant"))
    assert cfg.eval == EvalCfg(limit=20)
    assert cfg.seeds == [7]  # the list replaced, not appended
    assert [v["name"] for v in cfg.variants] == ["baseline", "linear-restart", "kan-cheb2", "kan-2layer"]


def test_include_path_is_relative_to_including_file(tmp_path):
    write(tmp_path, "configs/defaults/base.yaml", "model: from-base\n")
    path = write(tmp_path, "configs/exp.yaml", "include: defaults/base.yaml\n" + MINIMAL.replace("model: m\n", ""))
    assert load(path).model == "from-base"


def test_error_line_points_into_the_included_file(tmp_path):
    write(tmp_path, "base.yaml", "model: m\ntrain:\n  lr: fast\n")
    path = write(tmp_path, "exp.yaml", "include: base.yaml\nname: t\nvariants: [{name: a, spec: linear}]\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value) == f"{tmp_path / 'base.yaml'}:3: train.lr: expected a number, got 'fast'"


def test_type_error_names_file_line_and_key(tmp_path):
    text = MINIMAL + "train:\n  steps: 10\n  lr: fast\n"
    with pytest.raises(ConfigError, match=r"config\.yaml:7: train\.lr: expected a number, got 'fast'$"):
        load_text(tmp_path, text)


def test_unknown_key_suggests_the_close_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, MINIMAL + "seedz: [1]\n")
    msg = str(err.value)
    assert "config.yaml:5: seedz:" in msg and "did you mean 'seeds'" in msg
    with pytest.raises(ConfigError, match=r"config\.yaml:6: train\.lrr: .*did you mean 'lr'"):
        load_text(tmp_path, MINIMAL + "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:7: train\.sched\.warmpu: .*did you mean 'warmup'"):
        load_text(tmp_path, MINIMAL + "train:\n  sched:\n    warmpu: 3\n")


def test_literal_values_are_checked_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.yaml:5: dtype: expected one of 'float32', 'bfloat16', "
                                          r"'float16', got 'float61' \(did you mean 'float16'\?\)"):
        load_text(tmp_path, MINIMAL + "dtype: float61\n")


def test_nested_types_are_converted_and_checked(tmp_path):
    cfg = load_text(tmp_path, MINIMAL + "train:\n  betas: [0.8, 1]\n  max_tokens: null\n  tasks: [navigate]\n")
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
            load_text(tmp_path, MINIMAL + "train:\n" + line)


def test_text_typed_values_are_parsed_once_with_located_errors(tmp_path):
    assert load_text(tmp_path, MINIMAL + "word: Hello\n").word == Word("hello")
    with pytest.raises(ConfigError, match=r"config\.yaml:5: word: 'he llo' is not a word$"):
        load_text(tmp_path, MINIMAL + "word: he llo\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:5: word: expected a Word written as a string or null, got 3"):
        load_text(tmp_path, MINIMAL + "word: 3\n")


def test_post_init_errors_are_located(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.yaml:7: train\.lr: must be positive, got -1\.0"):
        load_text(tmp_path, MINIMAL + "train:\n  steps: 3\n  lr: -1\n")
    # A section type that raises a plain KallmError is located at the section.
    with pytest.raises(ConfigError, match=r"config\.yaml:5: eval: limit must be at least 1, got 0"):
        load_text(tmp_path, MINIMAL + "eval: {limit: 0}\n")


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="the config is empty"):
        load_text(tmp_path, "# nothing\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:1: the config must be a mapping"):
        load_text(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:3: invalid YAML: expected .,. or .\]."):
        load_text(tmp_path, "name: t\nmodel: [m\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:4: name: duplicate key \(first given on line 1\)"):
        load_text(tmp_path, "name: t\nmodel: m\nvariants: [{name: a, spec: linear}]\nname: u\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:5: include: included file not found"):
        load_text(tmp_path, MINIMAL + "include: nope.yaml\n")
    write(tmp_path, "a.yaml", "include: b.yaml\n")
    write(tmp_path, "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load(tmp_path / "a.yaml")


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
