"""Training checkpoints: trainable weights, optimizer, schedule, RNG states and data position.

Each checkpoint is a folder `checkpoints/step-NNNNNNNN/` built in a temporary sibling and renamed
into place, so a run killed at any moment (SIGKILL included) leaves only complete checkpoints; a
leftover temporary folder is ignored and removed on the next resume. Tensors are safetensors and the
rest JSON (`kallm.training.state_serialization`): nothing in a checkpoint is a pickle, so nothing in it runs.
A checkpoint whose files do not read (truncated, damaged) is skipped with a warning for the one before.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kallm.errors import KallmError
from kallm.folders import layout
from kallm.io import read_json, read_tensors, replace_dir_atomic
from kallm.training.state_serialization import (
    RngState,
    join_optimizer_state,
    parse_rng_state,
    rng_state,
    set_rng_state,
    split_optimizer_state,
)

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(rf"^{re.escape(layout.CHECKPOINT_PREFIX)}(\d{{8}})$")
WEIGHTS = layout.CHECKPOINT_WEIGHTS
OPTIMIZER = layout.CHECKPOINT_OPTIMIZER
OPTIMIZER_META = layout.CHECKPOINT_OPTIMIZER_META
RNG = layout.CHECKPOINT_RNG
STATE = layout.CHECKPOINT_STATE
_LEGACY_PICKLES = layout.LEGACY_CHECKPOINT_PICKLES  # what earlier kallm versions wrote; never loaded


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (cloned, so tied weights do not share storage in the file)."""
    return {n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def remove_partial(root: str | Path) -> None:
    """Remove temporary folders left by a run killed while writing a checkpoint."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def non_finite_tensor(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding nan or inf, if any."""
    return next((n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)


def save_checkpoint(root: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and keep only the newest `keep` ones (never a non-finite one: the
    checkpoints kept are the last finite ones)."""
    from safetensors.torch import save_file

    target = Path(root) / layout.CheckpointFolder.name(step)
    weights = trainable_state_dict(model)
    bad = non_finite_tensor(weights)
    if bad is not None:
        raise KallmError(f"training diverged by step {step}: parameter {bad} holds nan/inf; no checkpoint was "
                         f"written (the newest one in {root} is the last finite state); lower the learning rate")
    optim_tensors, optim_meta = split_optimizer_state(optimizer.state_dict())
    rng = rng_state()

    def write(tmp: Path) -> None:
        save_file(weights, str(tmp / WEIGHTS))
        save_file(optim_tensors, str(tmp / OPTIMIZER))
        (tmp / OPTIMIZER_META).write_text(json.dumps(optim_meta) + "\n", encoding="utf-8")
        (tmp / RNG).write_text(json.dumps(rng) + "\n", encoding="utf-8")
        (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n", encoding="utf-8")

    replace_dir_atomic(target, write)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint at step %d: %s", step, target)
    return target


def read_state(path: str | Path) -> dict[str, Any]:
    state = read_json(Path(path) / STATE, "checkpoint state")
    if not isinstance(state, dict) or isinstance(state.get("step"), bool) or not isinstance(state.get("step"), int):
        raise KallmError(f"{Path(path) / STATE} is not a checkpoint state (no integer 'step')")
    return state


@dataclass
class Checkpoint:
    """A checkpoint folder's contents, read and checked (nothing applied yet)."""

    path: Path
    state: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: RngState

    @property
    def step(self) -> int:
        return int(self.state["step"])


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read every file of checkpoint folder `path`; any damaged or missing one is a KallmError naming it."""
    path = Path(path)
    if not (path / OPTIMIZER_META).exists() and any((path / p).exists() for p in _LEGACY_PICKLES):
        raise KallmError(f"checkpoint {path} was written by an older kallm as pickles ({', '.join(_LEGACY_PICKLES)}), "
                         "which kallm does not load (loading a pickle can run code)")
    state = read_state(path)
    weights = read_tensors(path / WEIGHTS, "checkpoint file")
    optimizer = join_optimizer_state(read_tensors(path / OPTIMIZER, "checkpoint file"),
                                     read_json(path / OPTIMIZER_META, "checkpoint optimizer state"),
                                     path / OPTIMIZER_META)
    rng = parse_rng_state(read_json(path / RNG, "checkpoint RNG state"), path / RNG)
    return Checkpoint(path, state, weights, optimizer, rng)


def newest_readable_checkpoint(root: str | Path, warn: bool = True) -> Checkpoint | None:
    """The newest checkpoint under `root` whose files all read (None: there is none); damaged newer ones are
    skipped, with a warning each (`warn`). When none reads, the error names the newest one's damage."""
    skipped: list[tuple[Path, KallmError]] = []
    for path in reversed(checkpoint_dirs(root)):
        try:
            found = read_checkpoint(path)
        except KallmError as exc:
            skipped.append((path, exc))
            continue
        for bad, exc in skipped if warn else []:
            log.warning("skipping checkpoint %s: %s; resuming from %s instead", bad.name, exc, path.name)
        return found
    if skipped:
        raise KallmError(f"no readable checkpoint in {root} ({skipped[0][1]}); remove {root} to start the run over")
    return None


def apply_checkpoint(ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                     restore_rng: bool = True) -> dict[str, Any]:
    """Copy a read checkpoint into the model (and optimizer, RNG); returns its state record."""
    path, weights = ckpt.path, ckpt.weights
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != trainable:
        missing, extra = sorted(trainable - set(weights)), sorted(set(weights) - trainable)
        raise KallmError(
            f"checkpoint {path} does not match the model's trainable parameters "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); was it written by another configuration?"
        )
    for name, tensor in weights.items():
        if params[name].shape != tensor.shape:
            raise KallmError(f"checkpoint {path}: {name} has shape {tuple(tensor.shape)}, "
                             f"the model expects {tuple(params[name].shape)}")
    if optimizer is not None:
        try:
            optimizer.load_state_dict(ckpt.optimizer)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise KallmError(f"checkpoint {path / OPTIMIZER_META} does not fit this optimizer: {exc}") from None
    if restore_rng:
        set_rng_state(ckpt.rng)
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    return ckpt.state


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Load weights (and optimizer, RNG) from checkpoint folder `path`; returns its state record."""
    return apply_checkpoint(read_checkpoint(path), model, optimizer, restore_rng)
