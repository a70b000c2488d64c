"""The rules an experiment config must meet before any run starts, one function per rule.

The rules about names (BBH tasks, the headline metric, a curriculum's steps) need nothing but the
config and run when it is loaded (`kallm.experiment.schema`); the rules about things outside it
(data files, the BBH folder, the model, the output folder) run when the grid is started or dry-run
(`kallm.experiment.preflight`), so a config can be loaded and planned on a machine without the data.
Either way the same function decides, and its KallmError names what is wrong and what would be valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kallm.data.loading import source_files
from kallm.data.text import TEXT_SUFFIX
from kallm.errors import KallmError
from kallm.evaluation.bbh import get_mode, list_tasks, load_tasks, select_tasks
from kallm.evaluation.bbh.tasks import resolve_data_dir
from kallm.io import check_output_dir
from kallm.models.loading import checked_model_path
from kallm.registry import unknown_name_message
from kallm.retrofitting.curriculum import DegreeSchedule


def check_tasks(tasks: str | Sequence[str]) -> list[str]:
    """BBH task names, groups or 'all' (a misspelt name gets a did-you-mean and the valid names)."""
    return select_tasks(list(tasks) if not isinstance(tasks, str) else tasks)


def check_metric(mode: str, metric: str | None) -> None:
    """The headline metric must be one that `mode` reports (None: the mode's own headline)."""
    if metric is None:
        return
    metrics = list(get_mode(mode).metrics)
    if metric not in metrics:
        raise KallmError(f"{unknown_name_message('metric', metric, metrics)} (the metrics of mode {mode!r})")


def check_curriculum_steps(schedule: DegreeSchedule, steps: int) -> None:
    """Every degree raise must happen within training, or the saved variant would not be the trained one."""
    late = [s for s, _ in schedule if s >= steps]
    if late:
        raise KallmError(f"curriculum raises the degree at step {late[0]}, but training has only {steps} steps "
                         f"(0..{steps - 1}); raise train.steps or move the step")


def check_data(sources: Sequence[str | Path]) -> None:
    """Every local data source exists and holds .jsonl/.json/.parquet files, or is a plain-text .txt file
    (hub ids are checked on loading)."""
    for source in sources:
        if str(source).endswith(TEXT_SUFFIX) and Path(str(source)).expanduser().is_file():
            continue
        source_files(source)


def check_bbh_data(data_dir: str | Path | None, tasks: str | Sequence[str], limit: int | None) -> None:
    """The BBH folder exists, holds every selected task, and its task files read (a hub id is read on use)."""
    where = resolve_data_dir(data_dir)
    if isinstance(where, str):
        return
    chosen = check_tasks(tasks)
    present = set(list_tasks(where))
    missing = [t for t in chosen if t not in present]
    if missing:
        raise KallmError(f"BBH data folder {where} lacks {len(missing)} selected task file(s): "
                         f"{', '.join(f'{t}.json' for t in missing[:5])}")
    load_tasks(chosen, where, limit)


def check_model(model: str) -> str:
    """A local model folder exists, is a Hugging Face folder, and its safetensors files are whole (their
    headers read; no weights are loaded). Its config is read when the variants are built on its skeleton."""
    from safetensors import SafetensorError, safe_open

    path = checked_model_path(model)
    for file in sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise KallmError(f"model weights {file} are damaged: {exc}") from None
    return path


def check_output(path: Path) -> None:
    """The output folder can be created and written."""
    check_output_dir(path, "output_dir")
