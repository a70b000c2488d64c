"""The experiment config: which model, which layers, which variants, seeds, train/eval/distill settings.

Loaded from YAML by `load_experiment_config`; every error names the file, line and key. Values that
are text in the file but typed in kallm (a variant spec, a curriculum) are parsed and checked here,
once, when the config is loaded: a config that loads is one whose variants can be built.

Paths are kept as written (so the config hash is the same wherever the repository is checked out) and
resolved when used: a relative path (`model`, `train.data`, `eval.data_dir`, `output_dir`) is relative
to the folder of the file that sets it, as `include:` is; the default `output_dir` (runs/NAME) to the
config file's folder. Nothing depends on the working directory.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kallm.config.mapping import INTERNAL, FieldError, from_mapping
from kallm.config.yamlsrc import Lines, load_yaml_mapping, locate
from kallm.data import DEFAULT_DATASET
from kallm.data.loading import source_in
from kallm.distill.layerwise import DistillConfig
from kallm.errors import KallmError
from kallm.evaluation.bbh.evaluate import EvalSettings
from kallm.evaluation.bbh.tasks import DEFAULT_HUB_ID, HUB_PREFIX
from kallm.experiment.budgets import check_budgets, expand
from kallm.experiment.validate import check_curriculum_steps, check_metric, check_tasks
from kallm.folders.layout import default_experiment_folder, heldout_set_name, is_carved_set
from kallm.folders.relative import path_in
from kallm.models.loading import check_device_name, model_in
from kallm.provenance import config_hash
from kallm.registry import Registry, unknown_name_message
from kallm.retrofitting import defaults
from kallm.retrofitting.curriculum import DegreeSchedule, check_schedule_for, start_variant, validate_schedule
from kallm.retrofitting.variant import Budget, VariantSpec
from kallm.runtime.precision import precision_problem
from kallm.training.config import TrainConfig, check_seed

Dtype = Literal["float32", "bfloat16", "float16"]
Freeze = Literal["ffn", "blocks", "blocks+embeddings", "none"]
Init = Literal["random", "distill", "original"]

# A variant's name names its runs' folders (runs/<name>.seedN): it must not be '..' or start with '.'.
_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
SAME_AS = "same-as"


@dataclass(frozen=True)
class TrainSection(TrainConfig):
    """An experiment's `train:` section: the training settings plus where the chat data comes from.

    `seed` is set per run from the experiment's `seeds`. `max_conversations` draws a sample stratified by
    file with `data_seed`; `mix` (`{file name or glob: weight}`) sets each file's share instead of its size.
    """

    data: str | list[str] = DEFAULT_DATASET
    mix: dict[str, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mix is None:
            return
        if not self.mix:
            raise FieldError("mix", "must name at least one file or glob with a weight, e.g. {'gsm8k*': 1}")
        for pattern, weight in self.mix.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise FieldError(f"mix.{pattern}", f"weight must be a positive number, got {weight!r}")

    def train_config(self, seed: int) -> TrainConfig:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**values, "seed": seed})


@dataclass(frozen=True)
class EvalConfig(EvalSettings):
    """`EvalSettings` (mode, limit, batch_size, chat_template, max_gen_toks) plus what the runner needs."""

    data_dir: str | None = None  # BBH folder (official layout) or hub id; default $KALLM_BBH_DIR or ../shared/data/bbh
    tasks: str | list[str] = "all"  # names, 'all', or groups
    metric: str | None = None  # headline metric; default: the evaluator's headline for the mode
    prefix_cache: bool = True  # mc: reuse the frozen prefix's states across variants and seeds
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; auto: bf16 where the device has native bf16)
    # Held-out NLL (the verdict): conversations carved from train.data with a fixed seed and never trained
    # on (0: none), plus files of conversations, each scored as a set of its own (named by its file name).
    heldout_size: int = 128
    heldout: list[str] = field(default_factory=list)
    heldout_batch_size: int = 8
    heldout_before_training: bool = True  # also score each trained run right after its initialisation
    # Plain-text files in `heldout` (.txt, .jsonl rows with `text`): NLL per token in blocks of block_length
    # tokens over the first max_text_tokens tokens (null: all), windows every text_stride tokens (null:
    # block_length, no overlap); kallm.evaluation.heldout.text documents the protocol.
    block_length: int = 512
    max_text_tokens: int | None = 32768
    text_stride: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (problem := precision_problem(self.precision)) is not None:
            raise FieldError("precision", problem)
        if isinstance(self.heldout_size, bool) or not isinstance(self.heldout_size, int) or self.heldout_size < 0:
            raise FieldError("heldout_size", f"must be an integer >= 0 (0: no held-out split), got {self.heldout_size!r}")
        if isinstance(self.heldout_batch_size, bool) or self.heldout_batch_size < 1:
            raise FieldError("heldout_batch_size", f"must be an integer >= 1, got {self.heldout_batch_size!r}")
        self._check_text_protocol()
        names = [heldout_set_name(p) for p in self.heldout]
        for i, name in enumerate(names):
            ours = is_carved_set(name)
            if name in names[:i] or ours:
                raise FieldError(f"heldout[{i}]", f"held-out sets are named by file name: {name!r} is taken "
                                                  f"({'by the carved sets' if ours else 'by another file'})")
        for key, check in (("tasks", lambda: check_tasks(self.tasks)),
                           ("metric", lambda: check_metric(self.mode, self.metric))):
            try:
                check()
            except KallmError as exc:
                raise FieldError(key, str(exc)) from None


    def _check_text_protocol(self) -> None:
        for key, low in (("block_length", 2), ("max_text_tokens", 2), ("text_stride", 1)):
            value = getattr(self, key)
            if key != "block_length" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FieldError(key, f"must be an integer >= {low}{'' if key == 'block_length' else ' or null'}, "
                                      f"got {value!r}")
        if self.text_stride is not None and self.text_stride > self.block_length:
            raise FieldError("text_stride", f"must be at most block_length ({self.block_length}), got "
                                            f"{self.text_stride}")


@dataclass
class VariantConfig:
    """One arm of the experiment: a name, its typed variant, and how it starts and trains.

    `budget` may be written beside `spec` (`budget: match`, `0.5`, `2000000`): it is folded into `spec`.
    `budget: same-as NAME` sizes this variant to NAME's new-FFN parameter count; it is resolved when the
    grid is planned against the model (see `kallm.experiment.plan.resolve_budgets`). `budgets: [0.25, 0.5]`
    instead makes the entry one variant per budget (`kallm.experiment.budgets`). `seeds` runs a subset of the
    experiment's seeds.
    """

    name: str
    spec: VariantSpec
    # None means the default: 'random' for trained variants, nothing for the baseline.
    init: Init | None = None
    budget: str | int | float | None = None
    # [[step, degree], ...]: from `step` on, train with polynomial degree `degree`.
    curriculum: DegreeSchedule | None = None
    budgets: list[str | int | float] | None = None  # one variant per budget (a frontier); expanded by the experiment
    seeds: list[int] | None = None  # None: the experiment's seeds; else a subset of them

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise FieldError("name", f"{self.name!r} is not a valid variant name; use letters, digits, '_', '.', '-', "
                                     "not starting with '.'")
        if not self.spec.trained:
            for key in ("init", "budget", "curriculum", "budgets", "seeds"):
                if getattr(self, key) is not None:
                    raise FieldError(key, f"variant {self.name!r} is the untouched baseline; it cannot have {key!r}")
            return
        if self.init is None:
            self.init = "random"
        check_budgets(self)  # before the budget is folded into the spec
        self._fold_budget()
        if self.init == "original" and (self.spec.kind != "linear" or self.spec.budget is not None
                                        or self.spec.hidden is not None or self.same_as or self.curriculum):
            raise FieldError("init", f"init: original trains the original FFN weights themselves (the reference "
                                     f"for what the training data alone does); it needs spec: linear at full size, "
                                     f"got {self.spec}{' with a budget' if self.same_as else ''}")
        if self.curriculum is not None:
            try:
                self.curriculum = validate_schedule(self.curriculum)
                check_schedule_for(self.spec, self.curriculum)
            except KallmError as exc:
                raise FieldError("curriculum", str(exc)) from None

    def _fold_budget(self) -> None:
        if self.budget is None:
            return
        if self.spec.budget is not None or self.spec.hidden is not None:
            raise FieldError("budget", f"the spec '{self.spec}' already sets its size; give budget once")
        same_as = isinstance(self.budget, str) and self.budget.startswith(SAME_AS)
        try:
            budget = Budget("count", 1) if same_as else Budget.parse(self.budget)
            sized = self.spec.with_budget(budget)  # the spec checks that it can take a budget at all
        except KallmError as exc:
            raise FieldError("budget", str(exc)) from None
        if same_as:
            if not self.same_as:
                raise FieldError("budget", f"write '{SAME_AS} VARIANT' with the name of another variant")
            return
        self.spec, self.budget = sized, None

    @property
    def same_as(self) -> str | None:
        """The variant whose new-FFN parameter count this one matches (`budget: same-as NAME`)."""
        if isinstance(self.budget, str) and self.budget.startswith(SAME_AS):
            return self.budget[len(SAME_AS):].strip() or None
        return None

    @property
    def trained(self) -> bool:
        return self.spec.trained

    def build_spec(self) -> VariantSpec:
        """The variant to build with: the spec itself, or its curriculum's starting degree."""
        return start_variant(self.spec, self.curriculum) if self.curriculum else self.spec


@dataclass
class ExperimentConfig:
    """A whole experiment."""

    name: str
    model: str
    variants: list[VariantConfig]
    output_dir: str | None = None  # default: runs/<name>, relative to the working directory at run time
    dtype: Dtype = "float32"
    device: str = "auto"
    layers: str = defaults.LAYERS
    freeze: Freeze = defaults.FREEZE
    seeds: list[int] = field(default_factory=lambda: [0])
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig | None = None
    notes: str | None = None  # free text for the report: what the run was sized to, and why
    # The frontier (kallm.experiment.budgets): control kinds matched at every budget of `budgets:` entries
    # (None: pruned and linear when a variant has budgets), and the seeds per budget.
    controls: list[str] | None = None
    budget_seeds: dict[str, list[int]] | None = None  # {0.5x: [0, 1]}: keys as the variant names' suffixes
    source: Path | None = field(default=None, metadata=INTERNAL, compare=False)
    lines: Lines | None = field(default=None, metadata=INTERNAL, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise FieldError("name", "must not be empty")
        if self.output_dir is None:
            self.output_dir = default_experiment_folder(self.name)
        if not self.output_dir.strip():
            raise FieldError("output_dir", "must not be empty (leave it out for runs/<name>)")
        for key in ("output_dir", "model"):
            if "\0" in getattr(self, key):
                raise FieldError(key, "must not contain a NUL character")
        if not self.model.strip():
            raise FieldError("model", "must not be empty: a hub id, a local folder or 'smollm2-135m-instruct'")
        try:
            check_device_name(self.device)
        except KallmError as exc:
            raise FieldError("device", str(exc)) from None
        if not self.layers.strip():
            raise FieldError("layers", "must not be empty, e.g. 'last:5' or '20-24'")
        if not self.seeds:
            raise FieldError("seeds", "must list at least one seed, e.g. [0, 1, 2]")
        for i, seed in enumerate(self.seeds):
            check_seed(seed, f"seeds[{i}]")
            if seed in self.seeds[:i]:
                raise FieldError(f"seeds[{i}]", f"seed {seed} is listed twice")
        if self.variants:
            expanded = expand(self.variants, self.controls, self.budget_seeds, self.seeds)
            self.variants, self._keys = expanded.variants, expanded.keys
            # Expanded: the variants hold them now (so `dataclasses.replace` of the config sees the same grid).
            self.controls = self.budget_seeds = None
        self._check_variants()

    def _check_variants(self) -> None:
        if not self.variants:
            raise FieldError("variants", "must list at least one variant, e.g. {name: linear-restart, spec: linear}")
        names = [v.name for v in self.variants]
        for key, v, i in zip(self._keys, self.variants, range(len(names)), strict=True):
            if v.name in names[:i]:
                where = key if key == "controls" or ".budgets[" in key else f"{key}.name"
                raise FieldError(where, f"variant name {v.name!r} is used twice (names of budgets and controls "
                                        f"are <name>-<budget>, <kind>-<budget>)")
            if v.curriculum is not None:
                try:
                    check_curriculum_steps(v.curriculum, self.train.steps)
                except KallmError as exc:
                    raise FieldError(f"{key}.curriculum", str(exc)) from None
            if v.same_as is None:
                continue
            if v.same_as not in names:
                raise FieldError(f"{key}.budget", unknown_name_message("variant", v.same_as, names))
            target = self.variant(v.same_as)
            if target is v or not target.trained or target.same_as is not None:
                raise FieldError(f"{key}.budget", f"{SAME_AS} needs another trained variant with a size "
                                                  f"of its own; {v.same_as!r} is not one")

    def base_dir(self, key: str) -> Path:
        """The folder a relative path at `key` is relative to: that of the file setting it (else the config's)."""
        where = locate(self.lines, key)
        if where is not None:
            return Path(where.file).resolve().parent
        return self.source.resolve().parent if self.source is not None else Path.cwd()

    def _path(self, key: str, text: str) -> Path:
        return path_in(text, self.base_dir(key))

    def output_path(self) -> Path:
        """`output_dir` as an absolute path."""
        return self._path("output_dir", self.output_dir)  # type: ignore[arg-type]

    def model_path(self) -> str:
        """`model` to load: the embedded alias or a hub id as written, a local folder as an absolute path."""
        return model_in(self.model, self.base_dir("model"))

    def data_sources(self) -> list[str | Path]:
        """`train.data` as sources: local files or folders as absolute paths, hub dataset ids as written."""
        if isinstance(self.train.data, str):
            return [source_in(self.train.data, self.base_dir("train.data"))]
        return [source_in(text, self.base_dir(f"train.data[{i}]")) for i, text in enumerate(self.train.data)]

    def heldout_paths(self) -> list[Path]:
        """`eval.heldout` files as absolute paths."""
        return [self._path(f"eval.heldout[{i}]", text) for i, text in enumerate(self.eval.heldout)]

    def distill_text_paths(self) -> list[Path]:
        """`distill.text` files as absolute paths; one that is also an `eval.heldout` set is refused (a fit on
        the text it is scored on would flatter every fitted variant)."""
        if self.distill is None:
            return []
        paths = [self._path(f"distill.text[{i}]", text) for i, text in enumerate(self.distill.text)]
        heldout = {p.resolve() for p in self.heldout_paths()}
        for i, path in enumerate(paths):
            if path.resolve() in heldout:
                raise KallmError(f"distill.text[{i}]: {path} is also in eval.heldout; distil on other text "
                                 "(e.g. wikitext-2's valid.txt when test.txt is held out)")
        return paths

    def bbh_data_dir(self) -> str | Path | None:
        """`eval.data_dir`: a local folder as an absolute path; a hub id (and None, the default) as is."""
        text = self.eval.data_dir
        if text is None or text.startswith(HUB_PREFIX) or text == DEFAULT_HUB_ID:
            return text
        return self._path("eval.data_dir", text)

    def variant(self, name: str) -> VariantConfig:
        """The variant called `name` (an unknown name gets a did-you-mean error)."""
        registry: Registry[VariantConfig] = Registry("variant")
        for v in self.variants:
            registry.add(v.name, v)
        return registry.get(name)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (includes merged, defaults filled) as JSON-ready data, for recording."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("kallm_internal")}
        data = json.loads(json.dumps(_plain(data), default=str))
        # The frontier's keys are in the expanded variants; unset keys are left out, so a config that uses
        # none of them records (and hashes) as before they existed.
        del data["controls"], data["budget_seeds"]
        for variant in data["variants"]:
            for key in ("budgets", "seeds"):
                if variant.get(key) is None:
                    variant.pop(key, None)
        return data

    @property
    def config_hash(self) -> str:
        return config_hash(self.to_dict())


def _plain(value: Any) -> Any:
    if hasattr(type(value), "from_text"):  # typed values are written back as the text they were read from
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def experiment_from_mapping(data: dict[str, Any], lines: Any = None) -> ExperimentConfig:
    """Validate already-parsed config data (`lines` from the YAML loader, if any)."""
    return from_mapping(ExperimentConfig, data, "", lines)


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Load, merge (`include:`) and validate an experiment YAML file."""
    data, lines = load_yaml_mapping(path)
    if data.get("distill") is None:
        data.pop("distill", None)
    config = experiment_from_mapping(data, lines)
    config.source = Path(path)
    config.lines = lines
    return config
