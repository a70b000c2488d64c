"""`kallm run CONFIG`: every (variant, seed) of an experiment — retrofit, train, evaluate, record.

    out/                      the experiment's output_dir
      config.json             resolved config, its hash, provenance (written once; a different config is refused)
      results.jsonl           one record per finished run, appended atomically under a file lock
      cache/                  frozen-prefix states and distillation activations, shared by all runs
      runs/<run_id>/train/    metrics.jsonl, checkpoints (resumable), result.json
      runs/<run_id>/eval/     predictions.jsonl, scores.json
      runs/<run_id>/retrofit/ the trained retrofit (load with kallm.load_retrofit)

Every variant keeps decoder layers below the first replaced one untouched, so their hidden states
are computed once for the training data (train.prefix_cache) and for the evaluation batches
(eval.prefix_cache, likelihood mode) and reused by every variant and seed. A run interrupted at any
point resumes from its last checkpoint; finished runs are skipped. `--shard I/N` takes every N-th
run of the deterministic plan, so N machines cover the grid exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kallm.config import ExperimentConfig, VariantConfig, load_experiment_config
from kallm.distill import DistillConfig
from kallm.errors import KallmError
from kallm.eval_settings import EvalConfig
from kallm.io import append_jsonl_atomic, read_jsonl, write_json_atomic
from kallm.runinfo import run_info
from kallm.train_config import TrainConfig

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"


@dataclass(frozen=True)
class TrainSection(TrainConfig):
    """An experiment's `train:` section: the training settings plus where the chat data comes from.

    `seed` is set per run from the experiment's `seeds`.
    """

    data: str | list[str] = "HuggingFaceTB/smol-smoltalk"

    def train_config(self, seed: int) -> TrainConfig:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**values, "seed": seed})


SECTION_TYPES = {"train": TrainSection, "eval": EvalConfig, "distill": DistillConfig}


def load_config(path: str | Path) -> ExperimentConfig:
    return load_experiment_config(path, SECTION_TYPES)


# ---------------------------------------------------------------- the plan

@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    variant: VariantConfig
    seed: int | None  # None: the untrained baseline, evaluated once


def plan_runs(config: ExperimentConfig) -> list[PlannedRun]:
    """Deterministic order: variants as listed, seeds as listed; the baseline once."""
    runs = []
    for v in config.variants:
        if v.trained:
            runs += [PlannedRun(f"{v.name}.seed{s}", v, s) for s in config.seeds]
        else:
            runs.append(PlannedRun(v.name, v, None))
    return runs


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' (1-based) -> (I, N)."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise KallmError(f"--shard must look like I/N (e.g. 1/2), got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise KallmError(f"--shard {text}: need 1 <= I <= N")
    return i, n


def shard_runs(runs: list[PlannedRun], shard: tuple[int, int] | None) -> list[PlannedRun]:
    if shard is None:
        return runs
    i, n = shard
    return runs[i - 1 :: n]


def final_variant_string(variant: VariantConfig) -> str:
    """The surgery variant (`kan:...@budget=...`) as it stands at the end of training."""
    return variant.spec + (f"@budget={variant.budget}" if variant.budget is not None else "")


def variant_string(variant: VariantConfig) -> str:
    """The surgery variant to build with: the final one, at the curriculum's first degree if any."""
    text = final_variant_string(variant)
    if variant.curriculum:
        from kallm.curriculum import check_final_degree, curriculum_variant

        check_final_degree(text, variant.curriculum)
        text = curriculum_variant(text, variant.curriculum[0][1])
    return text


# ---------------------------------------------------------------- bookkeeping

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock for read-modify-write of results (shards may share one folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def finished_runs(out: Path) -> set[str]:
    return {r["run_id"] for r in read_jsonl(out / RESULTS) if "run_id" in r}


def record_result(out: Path, record: dict[str, Any]) -> None:
    """Append one record unless that run is already recorded (exactly one record per run)."""
    results = out / RESULTS
    with _locked(results):
        if record["run_id"] in finished_runs(out):
            log.warning("run %s is already recorded; keeping the first record", record["run_id"])
            return
        append_jsonl_atomic(results, [record])


def prepare_output(config: ExperimentConfig, out: Path, force: bool = False) -> None:
    """Write config.json once; refuse to mix results of a different config into the same folder."""
    path = out / "config.json"
    resolved = config.to_dict()
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("config_hash") != config.config_hash and not force:
            raise KallmError(
                f"{out} holds results of another config (hash {saved.get('config_hash')}, now "
                f"{config.config_hash}); use another output_dir, or --force to add runs of the new config"
            )
        if saved.get("config_hash") == config.config_hash:
            return
    write_json_atomic(path, {"config": resolved, "config_hash": config.config_hash, "source": str(config.source),
                             "notes": config.notes, **run_info()})
    if config.notes:
        from kallm.io import write_text_atomic

        write_text_atomic(out / "notes.md", config.notes.strip() + "\n")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KallmError(f"device {device!r} was asked for but CUDA is not available")
    return device


def dry_run_rows(config: ExperimentConfig, runs: list[PlannedRun]) -> list[dict[str, Any]]:
    """Parameter counts per planned run, from the model built on the meta device (no weights)."""
    from kallm.models import load_model_skeleton
    from kallm.surgery import retrofit

    rows, seen = [], {}
    for run in runs:
        key = run.variant.name
        if key not in seen:
            model = load_model_skeleton(config.model)
            report = retrofit(model, layers=config.layers, variant=variant_string(run.variant) if run.variant.trained
                              else "baseline", freeze=config.freeze)
            seen[key] = report
        report = seen[key]
        rows.append({"run_id": run.run_id, "variant": run.variant.name, "spec": run.variant.spec,
                     "seed": run.seed, "init": run.variant.init, "total": report.total_params,
                     "trainable": report.trainable_params if run.variant.trained else 0,
                     "replaced_new": report.replaced_new_params})
    return rows


def run_experiment(
    config_path: str | Path, shard: str | None = None, dry_run: bool = False, force: bool = False,
    progress: bool | None = None,
) -> Path | list[dict[str, Any]]:
    """Run (or resume) the grid of `config_path`. Returns the output folder (the plan for dry runs)."""
    from kallm.runner import GridRunner

    config = load_config(config_path)
    runs = shard_runs(plan_runs(config), parse_shard(shard))
    if dry_run:
        return dry_run_rows(config, runs)
    out = config.output_path()
    prepare_output(config, out, force=force)
    done = finished_runs(out)
    todo = [r for r in runs if r.run_id not in done]
    log.info("%s: %d runs planned%s, %d already finished, %d to do", config.name, len(runs),
             f" (shard {shard})" if shard else "", len(runs) - len(todo), len(todo))
    start = time.perf_counter()
    GridRunner(config, out, progress=progress).run(todo)
    log.info("%s: done in %.1f s; results in %s", config.name, time.perf_counter() - start, out / RESULTS)
    return out
