"""Experiment tracking (`train.report_to`): the training loop's metrics sent to Accelerate's trackers.

    train:
      report_to: tensorboard          # or [tensorboard, wandb], mlflow, comet_ml, aim, ...

Accelerate owns the integrations (`Accelerator(log_with=...)`); kallm checks the names when the
config is read and that the trackers are installed before any data is loaded (Accelerate itself
skips a missing one silently). Local trackers (tensorboard, aim, ...) write under
`<run folder>/tracking/<run name>/`. Every metrics.jsonl record is logged at its step: training
steps as `train/loss`, `train/lr`, ..., evaluations as `eval/loss`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kallm.errors import KallmError
from kallm.folders.layout import TrainingFolder
from kallm.registry import unknown_name_message

log = logging.getLogger(__name__)

# What to install for a tracker Accelerate cannot find (the package names differ from the tracker names).
_INSTALL = {"tensorboard": "tensorboardX (or tensorboard)", "comet_ml": "comet-ml"}


def tracker_names(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """'tensorboard', 'tensorboard,wandb' or a list -> checked names, in order, without repeats ('none': ())."""
    from accelerate.utils import LoggerType

    items = value.split(",") if isinstance(value, str) else list(value or ())
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise KallmError(f"tracker names must be strings, got {item!r}")
        name = item.strip()
        if name in ("", "none"):
            continue
        if name not in LoggerType.list():
            raise KallmError(unknown_name_message("tracker", name, LoggerType.list()))
        if name not in names:
            names.append(name)
    return tuple(names)


def check_installed(names: tuple[str, ...]) -> None:
    """Every tracker in `names` can run here (Accelerate would drop a missing one without a word)."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [n for n in names if n != "all" and n not in available]
    if missing:
        hints = ", ".join(_INSTALL.get(n, n) for n in missing)
        raise KallmError(f"train.report_to: {', '.join(missing)} is not installed here (pip install {hints}); "
                         f"installed trackers: {', '.join(sorted(available)) or 'none'}")


def tracking_dir(out_dir: Path) -> Path:
    return TrainingFolder(out_dir).tracking


def _hparam(value: Any) -> bool | int | float | str:
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def flat_hparams(meta: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The run's recorded settings as the flat scalar mapping trackers take ({'train.lr': 3e-4, ...})."""
    flat: dict[str, bool | int | float | str] = {}
    for section, values in meta.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{key}": _hparam(value) for key, value in values.items()})
        else:
            flat[section] = _hparam(values)
    return flat


def tracked_values(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record's numbers under tracker names: eval_loss -> eval/loss, loss -> train/loss."""
    values = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        values["eval/loss" if key == "eval_loss" else f"train/{key}"] = float(value)
    return values
