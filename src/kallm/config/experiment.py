"""The experiment config: which model, which layers, which variants, seeds, train/eval settings.

Loaded from YAML by `load_experiment_config`; every error names the file, line and key. The
`train`, `eval` and `distill` sections are validated against dataclasses that the runner passes
in (`section_types`), so this module does not depend on the training or evaluation code.

`output_dir` is kept as written; a relative path is resolved against the current working
directory when the experiment runs (see `ExperimentConfig.output_path`), not against the file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kallm.config.mapping import INTERNAL, FieldError, from_mapping
from kallm.config.yamlsrc import Lines, load_yaml_mapping, located
from kallm.errors import ConfigError, KallmError
from kallm.registry import Registry
from kallm.runinfo import config_hash

Dtype = Literal["float32", "bfloat16", "float16"]
Freeze = Literal["ffn", "blocks", "blocks+embeddings", "none"]
Init = Literal["random", "distill"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
KAN_PREFIX = "kan:"
SECTIONS = ("train", "eval", "distill")


def validate_spec(spec: str) -> None:
    """Check a variant spec: 'baseline', 'linear' or 'kan:<KAN spec>' (the KAN part by `parse_kan_spec`)."""
    from kallm.kan import parse_kan_spec

    if spec in ("baseline", "linear"):
        return
    if not spec.startswith(KAN_PREFIX) or not spec[len(KAN_PREFIX):].strip():
        raise KallmError(f"expected 'baseline', 'linear' or 'kan:<spec>' (e.g. 'kan:chebyshev2:2'), got {spec!r}")
    try:
        parse_kan_spec(spec[len(KAN_PREFIX):])
    except ValueError as exc:  # KallmError included
        raise KallmError(f"invalid KAN spec in {spec!r}: {exc}") from None


@dataclass
class VariantConfig:
    """One arm of the experiment. `budget` and `curriculum` only make sense for KAN variants."""

    name: str
    spec: str
    # None means the default: 'random' for trained variants, nothing for the baseline.
    init: Init | None = None
    # 'match' (same parameter count as the replaced FFN), a ratio (float) or a count (int).
    budget: str | int | float | None = None
    # [[step, degree], ...]: from `step` on, train with polynomial degree `degree`.
    curriculum: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise FieldError("name", f"{self.name!r} is not a valid variant name; use letters, digits, '_', '.', '-'")
        try:
            validate_spec(self.spec)
        except KallmError as exc:
            raise FieldError("spec", str(exc)) from None
        if self.kind == "baseline":
            for key in ("init", "budget", "curriculum"):
                if getattr(self, key) is not None:
                    raise FieldError(key, f"variant {self.name!r} is the untouched baseline; it cannot have {key!r}")
            return
        if self.init is None:
            self.init = "random"
        if self.kind != "kan":
            for key in ("budget", "curriculum"):
                if getattr(self, key) is not None:
                    raise FieldError(key, f"only KAN variants (spec 'kan:...') take {key!r}; "
                                          f"variant {self.name!r} has spec {self.spec!r}")
        self._check_budget()
        self._check_curriculum()

    def _check_budget(self) -> None:
        b = self.budget
        if b is None:
            return
        if isinstance(b, str):
            if b != "match":
                raise FieldError("budget", f"expected 'match', a positive ratio (e.g. 0.5) or a positive "
                                           f"parameter count (e.g. 2000000), got {b!r}")
        elif not b > 0:
            raise FieldError("budget", f"must be positive, got {b!r}")

    def _check_curriculum(self) -> None:
        if self.curriculum is None:
            return
        if not self.curriculum:
            raise FieldError("curriculum", "must list at least one [step, degree] pair (or be left out)")
        previous = -1
        for i, (step, degree) in enumerate(self.curriculum):
            if step < 0 or step <= previous:
                raise FieldError(f"curriculum[{i}]", f"steps must be >= 0 and strictly increasing, got step {step} "
                                                     f"after {previous}")
            if degree < 1:
                raise FieldError(f"curriculum[{i}]", f"degree must be a positive integer, got {degree}")
            previous = step

    @property
    def kind(self) -> Literal["baseline", "linear", "kan"]:
        return "kan" if self.spec.startswith(KAN_PREFIX) else self.spec  # type: ignore[return-value]

    @property
    def kan_spec(self) -> str | None:
        """The KAN spec without the 'kan:' prefix (None for baseline/linear)."""
        return self.spec[len(KAN_PREFIX):] if self.kind == "kan" else None

    @property
    def trained(self) -> bool:
        return self.kind != "baseline"


@dataclass
class ExperimentConfig:
    """A whole experiment; `train`/`eval`/`distill` are dataclasses when the loader was given their types."""

    name: str
    model: str
    variants: list[VariantConfig]
    output_dir: str | None = None  # default: runs/<name>, relative to the working directory at run time
    dtype: Dtype = "float32"
    device: str = "auto"
    layers: str = "last:5"
    freeze: Freeze = "ffn"
    seeds: list[int] = field(default_factory=lambda: [0])
    train: Any = field(default_factory=dict)
    eval: Any = field(default_factory=dict)
    distill: Any = None
    notes: str | None = None  # free text for the report: what the run was sized to, and why
    source: Path | None = field(default=None, metadata=INTERNAL, compare=False)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise FieldError("name", "must not be empty")
        if self.output_dir is None:
            self.output_dir = f"runs/{self.name}"
        if not self.output_dir.strip():
            raise FieldError("output_dir", "must not be empty (leave it out for runs/<name>)")
        if not self.model.strip():
            raise FieldError("model", "must not be empty: a hub id, a local folder or 'smollm2-135m-instruct'")
        if not _DEVICE_RE.match(self.device):
            raise FieldError("device", f"expected auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if not self.layers.strip():
            raise FieldError("layers", "must not be empty, e.g. 'last:5' or '20-24'")
        if not self.seeds:
            raise FieldError("seeds", "must list at least one seed, e.g. [0, 1, 2]")
        for i, seed in enumerate(self.seeds):
            if seed in self.seeds[:i]:
                raise FieldError(f"seeds[{i}]", f"seed {seed} is listed twice")
        if not self.variants:
            raise FieldError("variants", "must list at least one variant, e.g. {name: linear-restart, spec: linear}")
        for i, v in enumerate(self.variants):
            if v.name in [w.name for w in self.variants[:i]]:
                raise FieldError(f"variants[{i}].name", f"variant name {v.name!r} is used twice")
        for section in SECTIONS:
            value = getattr(self, section)
            if not (value is None or isinstance(value, dict) or dataclasses.is_dataclass(value)):
                raise FieldError(section, f"expected a mapping, got {value!r}")

    def output_path(self, cwd: str | Path | None = None) -> Path:
        """`output_dir` as a path; relative ones are relative to `cwd` (default: the working directory)."""
        out = Path(self.output_dir)  # type: ignore[arg-type]
        return out if out.is_absolute() else Path(cwd or Path.cwd()) / out

    def variant(self, name: str) -> VariantConfig:
        """The variant called `name` (an unknown name gets a did-you-mean error)."""
        registry: Registry[VariantConfig] = Registry("variant")
        for v in self.variants:
            registry.add(v.name, v)
        return registry.get(name)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (includes merged, defaults filled) as JSON-ready data, for recording."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("kallm_internal")}
        return json.loads(json.dumps(_plain(data), default=str))

    @property
    def config_hash(self) -> str:
        return config_hash(self.to_dict())


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def experiment_from_mapping(data: dict[str, Any], lines: Lines | None = None,
                            section_types: dict[str, type] | None = None) -> ExperimentConfig:
    """Validate already-parsed config data (`lines` from the YAML loader, if any)."""
    data = dict(data)
    section_types = dict(section_types or {})
    for section, tp in section_types.items():
        if section not in SECTIONS:
            raise KallmError(f"section_types: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            raise KallmError(f"section_types[{section!r}] must be a dataclass type, got {tp!r}")
    for section in SECTIONS:
        value = data.get(section)
        if section not in data or value is None:
            # train/eval always exist (defaults); distill stays None unless given.
            if section == "distill":
                continue
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(located(f"expected a mapping, got {value!r}", section, lines))
        tp = section_types.get(section)
        data[section] = from_mapping(tp, value, section, lines) if tp else value
    return from_mapping(ExperimentConfig, data, "", lines)


def load_experiment_config(path: str | Path, section_types: dict[str, type] | None = None) -> ExperimentConfig:
    """Load, merge (`include:`) and validate an experiment YAML file.

    `section_types` maps 'train'/'eval'/'distill' to the dataclasses that validate those sections;
    sections without a type are kept as plain dicts.
    """
    data, lines = load_yaml_mapping(path)
    config = experiment_from_mapping(data, lines, section_types)
    config.source = Path(path)
    return config

