"""Experiment grids: a config of variants x seeds, run (resumably, in shards) into one folder.

| module | concept |
| --- | --- |
| `schema` | the experiment config (`ExperimentConfig`, `VariantConfig`, its train/eval sections) |
| `budgets` | a frontier: `budgets:` entries expanded per budget, matched `controls:`, `budget_seeds:` |
| `plan` | the planned runs, shards, `same-as` sizing, dry-run counts |
| `results` | the folder's books: bound config, results.jsonl under a lock |
| `validate` | the rules a config must meet, one function each (names at load time, the rest before the runs) |
| `preflight` | every rule applied before the first run (and by --dry-run) |
| `runner` | `GridRunner`: one run = load, (distil), retrofit, train, save, evaluate, record; one lock per run |
| `eval_cache` | the frozen-prefix cache shared by every variant's likelihood evaluation |
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from kallm.experiment.plan import parse_shard, plan_runs, shard_runs
from kallm.experiment.preflight import preflight
from kallm.experiment.results import bound_output, finished_runs
from kallm.experiment.schema import ExperimentConfig, load_experiment_config
from kallm.folders.layout import ExperimentFolder

log = logging.getLogger(__name__)

__all__ = ["ExperimentConfig", "load_config", "parse_shard", "plan_runs", "run_experiment", "shard_runs"]


def load_config(path: str | Path) -> ExperimentConfig:
    return load_experiment_config(path)


def run_experiment(
    config_path: str | Path, shard: str | None = None, dry_run: bool = False, force: bool = False,
    progress: bool | None = None, out: str | Path | None = None,
) -> Path | list[dict[str, Any]]:
    """Run (or resume) the grid of `config_path`. Returns the output folder (the plan for dry runs).

    Every name and path of the config is checked before any run starts (`preflight`), and so is a dry run.
    Processes may share the output folder (shards, or the same grid started twice): each run is locked
    while one of them works on it, so no run is ever done twice.
    `out` runs it into another folder than the config's `output_dir`, without editing the file; the
    folder records the config as written (so its hash, and resuming, do not depend on where it ran).
    """
    from kallm.experiment.runner import GridRunner
    from kallm.training.tracking import check_installed

    config = load_config(config_path)
    runs, rows = preflight(config, parse_shard(shard), Path(out) if out is not None else None)
    if dry_run:
        return rows
    check_installed(config.train.report_to)
    out = Path(out) if out is not None else config.output_path()
    done = finished_runs(out)
    todo = [r for r in runs if r.run_id not in done]
    runner = GridRunner(config, out, progress=progress)
    if todo and (any(r.variant.trained for r in todo) or config.eval.heldout_size > 0):
        runner.loaded_data()  # a data file that does not read fails here, before anything is written
    with bound_output(config, out, force=force):  # held to the end: another config is refused meanwhile
        log.info("%s: %d runs planned%s, %d already finished, %d to do", config.name, len(runs),
                 f" (shard {shard})" if shard else "", len(runs) - len(todo), len(todo))
        start = time.perf_counter()
        runner.run(todo)
    log.info("%s: done in %.1f s; results in %s", config.name, time.perf_counter() - start,
             ExperimentFolder(out).results)
    return out
