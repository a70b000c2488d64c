"""Every file and folder name kallm writes, in one place, with small typed path helpers.

    <experiment>/                     ExperimentFolder (`kallm run`)
      config.json                     the resolved config, its hash and provenance
      results.jsonl                   one RunRecord per finished run (kallm.folders.records)
      results.lock                    the books' lock
      notes.md, report.md, plots/     free-text notes; the report and its figures (`kallm report`)
      cache/                          frozen-prefix states, distillation activations (`cache_file`)
      runs/<run_id>/                  GridRunFolder: .lock, heldout.json, distill.json,
                                      train/ (TrainingFolder), retrofit/ (RetrofitFolder), eval/ (EvalFolder)
    <training run>/                   TrainingFolder (`kallm train --out`)
      config.json, run_info.json, metrics.jsonl, result.json, .lock, tracking/,
      checkpoints/step-NNNNNNNN/      CheckpointFolder: trainable.safetensors, optimizer.safetensors,
                                      optimizer.json, rng.json, state.json
      retrofit/                       RetrofitFolder: manifest.json, retrofit.safetensors
    <evaluation>/                     EvalFolder (`kallm eval --out`): predictions.jsonl, scores.json
    <Hugging Face model folder>       config.json (HF_CONFIG), model.safetensors, README.md (the model card)

No other module spells one of these names (tests/test_code_shape.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- an experiment folder
CONFIG = "config.json"
CONFIG_BINDING = "config.lock"  # held (shared) by every process running the grid: another config is refused
RESULTS = "results.jsonl"
NOTES = "notes.md"
REPORT = "report.md"
PLOTS = "plots"
FRONTIER_PLOT = "frontier.png"  # in plots/: the report's quality-parameter frontier
CACHE = "cache"
RUNS = "runs"
LOCK = ".lock"  # a folder's own lock file
LOCK_SUFFIX = ".lock"  # the lock of one file: results.jsonl -> results.lock

# ---------------------------------------------------------------- one run of a grid
HELDOUT = "heldout.json"
DISTILL = "distill.json"
TRAIN = "train"
RETROFIT = "retrofit"
EVAL = "eval"

# ---------------------------------------------------------------- a training run folder
RUN_INFO = "run_info.json"
METRICS = "metrics.jsonl"
RESULT = "result.json"
CHECKPOINTS = "checkpoints"
TRACKING = "tracking"  # experiment trackers' own files (tensorboard, ...)
CHECKPOINT_PREFIX = "step-"
CHECKPOINT_WEIGHTS = "trainable.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.safetensors"
CHECKPOINT_OPTIMIZER_META = "optimizer.json"
CHECKPOINT_RNG = "rng.json"
CHECKPOINT_STATE = "state.json"
LEGACY_CHECKPOINT_PICKLES = ("optimizer.pt", "rng.pt")  # what earlier kallm versions wrote; refused, never loaded

# ---------------------------------------------------------------- a retrofit folder
MANIFEST = "manifest.json"
RETROFIT_WEIGHTS = "retrofit.safetensors"

# ---------------------------------------------------------------- an evaluation folder
PREDICTIONS = "predictions.jsonl"
SCORES = "scores.json"

# ---------------------------------------------------------------- a Hugging Face model folder
HF_CONFIG = "config.json"  # the same name as an experiment's config.json, another file
HF_WEIGHTS = "model.safetensors"
MODEL_CARD = "README.md"

# ---------------------------------------------------------------- held-out sets
DEFAULT_HELDOUT_SET = "heldout"  # the set carved from the training data; user files are named by their stem

# ---------------------------------------------------------------- cache files
FP32 = "fp32"  # kallm.runtime.precision's name for float32 (not imported: this module stays torch-free)


def default_experiment_folder(name: str) -> str:
    """An experiment's output folder when its config names none (relative to the config file)."""
    return f"{RUNS}/{name}"


DEFAULT_TRAINING_FOLDER = f"{RUNS}/{TRAIN}"  # `kallm.train`'s output folder when none is given


def source_set_name(source: str) -> str:
    """The name of the carved set's part from one training source file: `heldout:<source name>`."""
    return f"{DEFAULT_HELDOUT_SET}:{source}"


def is_carved_set(name: str) -> bool:
    """Whether a set name is the carved set or one of its parts by source (names user files may not take)."""
    return name == DEFAULT_HELDOUT_SET or name.startswith(f"{DEFAULT_HELDOUT_SET}:")


_SPLIT_NAMES = frozenset({"train", "valid", "validation", "dev", "test", "eval"})


def heldout_set_name(path: str | Path) -> str:
    """A user file's held-out set name in records and tables: its file name without the extension, after its
    folder's name when the file is only a split's name (`wikitext-2/test.txt` -> `wikitext-2-test`)."""
    path = Path(path)
    if path.stem.lower() in _SPLIT_NAMES and path.parent.name not in ("", ".", ".."):
        return f"{path.parent.name}-{path.stem}"
    return path.stem


def cache_file(cache_dir: Path, stem: str, precision: str) -> Path:
    """A grid cache file: states computed in another precision than float32 are kept apart (`-bf16`)."""
    suffix = "" if precision == FP32 else f"-{precision}"
    return cache_dir / f"{stem}{suffix}.safetensors"


def lock_of(path: Path) -> Path:
    """The lock file guarding read-modify-write of `path` (results.jsonl -> results.lock)."""
    return path.with_suffix(LOCK_SUFFIX)


@dataclass(frozen=True)
class RetrofitFolder:
    """A saved retrofit (`save_retrofit`)."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def weights(self) -> Path:
        return self.root / RETROFIT_WEIGHTS


@dataclass(frozen=True)
class CheckpointFolder:
    """One training checkpoint (`checkpoints/step-NNNNNNNN`)."""

    root: Path

    @staticmethod
    def name(step: int) -> str:
        return f"{CHECKPOINT_PREFIX}{step:08d}"

    @property
    def weights(self) -> Path:
        return self.root / CHECKPOINT_WEIGHTS

    @property
    def optimizer(self) -> Path:
        return self.root / CHECKPOINT_OPTIMIZER

    @property
    def optimizer_meta(self) -> Path:
        return self.root / CHECKPOINT_OPTIMIZER_META

    @property
    def rng(self) -> Path:
        return self.root / CHECKPOINT_RNG

    @property
    def state(self) -> Path:
        return self.root / CHECKPOINT_STATE


@dataclass(frozen=True)
class TrainingFolder:
    """A training run folder (`kallm train --out`, or a grid run's `train/`)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def run_info(self) -> Path:
        return self.root / RUN_INFO

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def result(self) -> Path:
        return self.root / RESULT

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def tracking(self) -> Path:
        return self.root / TRACKING

    def checkpoint(self, step: int) -> CheckpointFolder:
        return CheckpointFolder(self.checkpoints / CheckpointFolder.name(step))

    @property
    def retrofit(self) -> Path:
        return self.root / RETROFIT


@dataclass(frozen=True)
class EvalFolder:
    """What `evaluate_bbh(out_dir=...)` writes."""

    root: Path

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS

    @property
    def scores(self) -> Path:
        return self.root / SCORES


@dataclass(frozen=True)
class GridRunFolder:
    """`runs/<run_id>/` of an experiment folder."""

    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def heldout(self) -> Path:
        return self.root / HELDOUT

    @property
    def distill(self) -> Path:
        return self.root / DISTILL

    @property
    def train(self) -> TrainingFolder:
        return TrainingFolder(self.root / TRAIN)

    @property
    def retrofit(self) -> RetrofitFolder:
        return RetrofitFolder(self.root / RETROFIT)

    @property
    def eval(self) -> EvalFolder:
        return EvalFolder(self.root / EVAL)

    def folders(self) -> list[Path]:
        """The run folder and the folders its writers own (whose stale temporary files a new owner removes)."""
        return [self.root, self.train.root, self.retrofit.root, self.eval.root]


@dataclass(frozen=True)
class ExperimentFolder:
    """An experiment grid's output folder (`kallm run`)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def binding(self) -> Path:
        return self.root / CONFIG_BINDING

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def notes(self) -> Path:
        return self.root / NOTES

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def plots(self) -> Path:
        return self.root / PLOTS

    @property
    def cache(self) -> Path:
        return self.root / CACHE

    @property
    def cache_lock(self) -> Path:
        """Held while a cache file is written: processes running one grid share cache/."""
        return self.cache / f"{CACHE}{LOCK_SUFFIX}"

    @property
    def runs(self) -> Path:
        return self.root / RUNS

    def run(self, run_id: str) -> GridRunFolder:
        return GridRunFolder(self.runs / run_id)

    @classmethod
    def of_run(cls, run_dir: Path) -> ExperimentFolder | None:
        """The experiment folder holding grid run folder `run_dir` (None when it is not `<grid>/runs/<id>`)."""
        return cls(run_dir.parent.parent) if run_dir.parent.name == RUNS else None
