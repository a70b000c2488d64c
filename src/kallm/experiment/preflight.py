"""Everything an experiment needs, checked before its first run starts (and by `--dry-run`).

A config that loads has valid names (`kallm.experiment.schema` applies the name rules of
`kallm.experiment.validate`). Before any run, `preflight` applies the rules about what lies outside the
config: the data, the BBH folder and tasks, the model and every variant built on it (on the meta device:
its config, no weights), the output folder. Each error is one line that points at the config line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kallm.config.yamlsrc import located
from kallm.errors import ConfigError, KallmError
from kallm.experiment.plan import PlannedRun, dry_run_rows, plan_runs, same_as_counts, shard_runs
from kallm.experiment.schema import ExperimentConfig
from kallm.experiment.validate import (
    check_bbh_data,
    check_curriculum_steps,
    check_data,
    check_metric,
    check_model,
    check_output,
    check_tasks,
)
from kallm.folders.layout import HF_WEIGHTS, MANIFEST
from kallm.io import check_not_source
from kallm.models.loading import resolve_device


def _at(config: ExperimentConfig, key: str, check: Callable[[], Any]) -> Any:
    """Run one rule; its error is located at `key`'s line of the config."""
    try:
        return check()
    except ConfigError:
        raise
    except KallmError as exc:
        raise ConfigError(located(str(exc), key, config.lines)) from None


def check_not_a_source(out: Path, model: str) -> None:
    """The output folder is neither (nor holds, nor lies in) the model folder, nor a model or retrofit folder."""
    check_not_source(out, [("the model folder", model)], "output folder")
    if (out / MANIFEST).is_file() or (out / HF_WEIGHTS).is_file():
        raise KallmError(f"output folder {out} is a {'retrofit' if (out / MANIFEST).is_file() else 'model'} "
                         "folder; choose another")


def check_inputs(config: ExperimentConfig, out: Path | None = None) -> None:
    """Names, data, BBH folder and tasks, device, output folder and model, before anything is loaded."""
    ecfg = config.eval
    _at(config, "eval.tasks", lambda: check_tasks(ecfg.tasks))
    _at(config, "eval.metric", lambda: check_metric(ecfg.mode, ecfg.metric))
    for i, v in enumerate(config.variants):
        if v.curriculum is not None:
            _at(config, f"variants[{i}].curriculum", lambda v=v: check_curriculum_steps(v.curriculum, config.train.steps))
    if any(v.trained for v in config.variants) or ecfg.heldout_size > 0:  # held-out sets come from it too
        _at(config, "train.data", lambda: check_data(config.data_sources()))
    for i, path in enumerate(config.heldout_paths()):
        _at(config, f"eval.heldout[{i}]", lambda path=path: check_data([path]))
    if any(v.init == "distill" for v in config.variants):  # a distill.text file that is held out is refused
        for i, path in enumerate(_at(config, "distill.text", config.distill_text_paths)):
            _at(config, f"distill.text[{i}]", lambda path=path: check_data([path]))
    _at(config, "eval.data_dir", lambda: check_bbh_data(config.bbh_data_dir(), ecfg.tasks, ecfg.limit))
    _at(config, "device", lambda: resolve_device(config.device))
    _at(config, "output_dir", lambda: check_output(out or config.output_path()))
    _at(config, "output_dir", lambda: check_not_a_source(out or config.output_path(), config.model_path()))
    _at(config, "model", lambda: check_model(config.model_path()))


def preflight(config: ExperimentConfig, shard: tuple[int, int] | None = None,
              out: Path | None = None) -> tuple[list[PlannedRun], list[dict[str, Any]]]:
    """`check_inputs`, then the shard's planned runs with every variant built on the model's skeleton (meta
    device, no weights: the check of layers, freeze policy and sizes) as the dry-run rows."""
    check_inputs(config, out)
    runs = shard_runs(plan_runs(config, same_as_counts(config)), shard)
    return runs, dry_run_rows(config, runs)
