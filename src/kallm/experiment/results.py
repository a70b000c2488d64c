"""An experiment folder's books: its bound config, `results.jsonl` (one `RunRecord` per finished run), locks.

The folder's layout is `kallm.folders.layout.ExperimentFolder`: the bound config (once a result exists,
another config is refused), the results appended atomically under a file lock, one lock per run held by
the process working on it (shards and repeated starts share a folder), the shared cache, and each run's
train/, eval/ and retrofit/ folders.
While a process runs the grid it holds the folder's config binding (shared): another config is refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from kallm.errors import KallmError
from kallm.experiment.schema import ExperimentConfig
from kallm.folders.layout import ExperimentFolder, lock_of
from kallm.folders.records import RunRecord, read_run_records
from kallm.io import (
    append_jsonl_atomic,
    read_json,
    remove_stale_temps,
    write_json_atomic,
    write_text_atomic,
)
from kallm.locks import held, shared
from kallm.provenance import run_info

log = logging.getLogger(__name__)

@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock for read-modify-write of `path` (shards may share one folder)."""
    with held(lock_of(path)):
        yield


def read_results(out: Path) -> list[RunRecord]:
    """The records of the folder's results; a line cut off by an interrupted write is skipped with a warning."""
    return read_run_records(ExperimentFolder(out).results)


def finished_runs(out: Path) -> set[str]:
    return {r.run_id for r in read_results(out) if r.run_id is not None}


def record_result(out: Path, record: RunRecord) -> None:
    """Append one record unless that run is already recorded (exactly one record per run)."""
    results = ExperimentFolder(out).results
    with locked(results):
        if record.run_id in finished_runs(out):
            log.warning("run %s is already recorded; keeping the first record", record.run_id)
            return
        append_jsonl_atomic(results, [record.to_dict()])


def _bind(config: ExperimentConfig, folder: ExperimentFolder, force: bool) -> None:
    """Bind the folder to `config` (config.json); the caller holds the books' lock. Once it holds a result,
    another config is refused (unless `force`); until then it is rebound, so a config fixed after a failed
    start is welcome."""
    out, path = folder.root, folder.config
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
        write_text_atomic(folder.notes, config.notes.strip() + "\n")


@contextlib.contextmanager
def bound_output(config: ExperimentConfig, out: Path, force: bool = False) -> Iterator[None]:
    """Bind the folder to `config`, then keep it bound to `config` until the block ends: a process running
    another config on it meanwhile is refused (even with `force`), one running this config joins.

    Decided under the books' lock, so two processes started at the same moment cannot both bind the folder.
    """
    folder = ExperimentFolder(out)
    with contextlib.ExitStack() as binding:
        with locked(folder.results):
            alone = binding.enter_context(shared(folder.binding))
            saved = read_json(folder.config, "experiment config") if folder.config.is_file() else {}
            saved = saved if isinstance(saved, dict) else {}
            if not alone and saved.get("config_hash") != config.config_hash:
                raise KallmError(
                    f"{out} is in use by another process running config {saved.get('source', '?')} (hash "
                    f"{saved.get('config_hash')}, this one {config.config_hash}); use another output_dir, "
                    "or wait until it ends")
            _bind(config, folder, force)
        yield  # the books' lock is free for the runs' records; the binding is held
