"""An experiment folder's books: its bound config, `results.jsonl` (one record per finished run), locks.

    out/
      config.json             resolved config, its hash, provenance (written once; a different config is refused)
      results.jsonl           one record per finished run, appended atomically under a file lock
      cache/                  frozen-prefix states and distillation activations, shared by all runs
      runs/<run_id>/train/    metrics.jsonl, checkpoints (resumable), result.json
      runs/<run_id>/eval/     predictions.jsonl, scores.json
      runs/<run_id>/retrofit/ the trained retrofit (load with kallm.load_retrofit)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kallm.errors import KallmError
from kallm.experiment.schema import ExperimentConfig
from kallm.io import append_jsonl_atomic, read_json, read_jsonl, write_json_atomic, write_text_atomic
from kallm.runinfo import run_info

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
CONFIG = "config.json"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock for read-modify-write of `path` (shards may share one folder)."""
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
    with locked(results):
        if record["run_id"] in finished_runs(out):
            log.warning("run %s is already recorded; keeping the first record", record["run_id"])
            return
        append_jsonl_atomic(results, [record])


def prepare_output(config: ExperimentConfig, out: Path, force: bool = False) -> None:
    """Write config.json once; refuse to mix results of a different config into the same folder."""
    path = out / CONFIG
    if path.is_file():
        saved = read_json(path, "experiment config")
        if saved.get("config_hash") != config.config_hash and not force:
            raise KallmError(
                f"{out} holds results of another config (hash {saved.get('config_hash')}, now "
                f"{config.config_hash}); use another output_dir, or --force to add runs of the new config"
            )
        if saved.get("config_hash") == config.config_hash:
            return
    write_json_atomic(path, {"config": config.to_dict(), "config_hash": config.config_hash,
                             "source": str(config.source), "notes": config.notes, **run_info()})
    if config.notes:
        write_text_atomic(out / "notes.md", config.notes.strip() + "\n")
