"""An experiment folder's books: its bound config, `results.jsonl` (one record per finished run), locks.

    out/
      config.json             resolved config, its hash, provenance (once a result exists, another config is refused)
      config.lock             held (shared) by every process running the grid: while one runs, another config is refused
      results.jsonl           one record per finished run, appended atomically under a file lock (results.lock)
      runs/<run_id>/.lock     held by the process working on that run (shards and repeated starts share a folder)
      cache/                  frozen-prefix states and distillation activations, shared by all runs
      runs/<run_id>/train/    metrics.jsonl, checkpoints (resumable), result.json
      runs/<run_id>/eval/     predictions.jsonl, scores.json
      runs/<run_id>/retrofit/ the trained retrofit (load with kallm.load_retrofit)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kallm.errors import KallmError
from kallm.experiment.schema import ExperimentConfig
from kallm.io import (
    append_jsonl_atomic,
    read_json,
    read_jsonl,
    remove_stale_temps,
    write_json_atomic,
    write_text_atomic,
)
from kallm.locks import held, shared
from kallm.provenance import run_info

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
CONFIG = "config.json"
BINDING = "config.lock"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock for read-modify-write of `path` (shards may share one folder)."""
    with held(path.with_suffix(".lock")):
        yield


def read_results(out: Path) -> list[dict[str, Any]]:
    """The records of `out/results.jsonl`; a line cut off by an interrupted write is skipped with a warning."""
    return read_jsonl(out / RESULTS, skip_bad_lines=True)


def finished_runs(out: Path) -> set[str]:
    return {r["run_id"] for r in read_results(out) if "run_id" in r}


def record_result(out: Path, record: dict[str, Any]) -> None:
    """Append one record unless that run is already recorded (exactly one record per run)."""
    results = out / RESULTS
    with locked(results):
        if record["run_id"] in finished_runs(out):
            log.warning("run %s is already recorded; keeping the first record", record["run_id"])
            return
        append_jsonl_atomic(results, [record])


def prepare_output(config: ExperimentConfig, out: Path, force: bool = False) -> None:
    """Bind the folder to `config` (config.json). Once it holds a result, another config is refused (unless
    `force`); until then it is rebound, so a config fixed after a failed start is welcome."""
    with locked(out / RESULTS):
        _bind(config, out, force)


def _bind(config: ExperimentConfig, out: Path, force: bool) -> None:
    """prepare_output's work; the caller holds the books' lock."""
    path = out / CONFIG
    remove_stale_temps(out)  # under the books' lock: no other process is writing them now
    if path.is_file():
        saved = read_json(path, "experiment config")
        saved_hash = saved.get("config_hash") if isinstance(saved, dict) else None
        if saved_hash == config.config_hash:
            return
        if finished_runs(out) and not force:
            raise KallmError(
                f"{out} holds results of another config (hash {saved_hash}, now {config.config_hash}); "
                "use another output_dir, or --force to add runs of the new config"
            )
        log.info("%s is bound to config %s now (was %s)", out, config.config_hash, saved_hash)
    write_json_atomic(path, {"config": config.to_dict(), "config_hash": config.config_hash,
                             "source": str(config.source), "notes": config.notes, **run_info()})
    if config.notes:
        write_text_atomic(out / "notes.md", config.notes.strip() + "\n")


@contextlib.contextmanager
def bound_output(config: ExperimentConfig, out: Path, force: bool = False) -> Iterator[None]:
    """`prepare_output`, then keep the folder bound to `config` until the block ends: a process running
    another config on it meanwhile is refused (even with `force`), one running this config joins.

    Decided under the books' lock, so two processes started at the same moment cannot both bind the folder.
    """
    with contextlib.ExitStack() as binding:
        with locked(out / RESULTS):
            alone = binding.enter_context(shared(out / BINDING))
            saved = read_json(out / CONFIG, "experiment config") if (out / CONFIG).is_file() else {}
            saved = saved if isinstance(saved, dict) else {}
            if not alone and saved.get("config_hash") != config.config_hash:
                raise KallmError(
                    f"{out} is in use by another process running config {saved.get('source', '?')} (hash "
                    f"{saved.get('config_hash')}, this one {config.config_hash}); use another output_dir, "
                    "or wait until it ends")
            _bind(config, out, force)
        yield  # the books' lock is free for the runs' records; the binding is held
