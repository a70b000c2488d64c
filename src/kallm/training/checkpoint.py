"""Training checkpoints: trainable weights, optimizer, schedule, RNG states and data position.

Each checkpoint is a folder `checkpoints/step-NNNNNNNN/` built in a temporary sibling and renamed
into place, so a run killed at any moment (SIGKILL included) leaves only complete checkpoints; a
leftover temporary folder is ignored and removed on the next resume.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kallm.errors import KallmError
from kallm.io import read_json, replace_dir_atomic

log = logging.getLogger(__name__)

WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
STATE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (cloned, so tied weights do not share storage in the file)."""
    return {n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def save_checkpoint(root: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and keep only the newest `keep` ones."""
    from safetensors.torch import save_file

    target = Path(root) / f"step-{step:08d}"
    weights = trainable_state_dict(model)
    optim_state = optimizer.state_dict()
    rng = rng_state()

    def write(tmp: Path) -> None:
        save_file(weights, str(tmp / WEIGHTS))
        torch.save(optim_state, tmp / OPTIMIZER)
        torch.save(rng, tmp / RNG)
        (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n", encoding="utf-8")

    replace_dir_atomic(target, write)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint at step %d: %s", step, target)
    return target


def read_state(path: str | Path) -> dict[str, Any]:
    return read_json(Path(path) / STATE, "checkpoint state")


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Load weights (and optimizer, RNG) from checkpoint folder `path`; returns its state record."""
    from safetensors.torch import load_file

    path = Path(path)
    weights = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != trainable:
        missing, extra = sorted(trainable - set(weights)), sorted(set(weights) - trainable)
        raise KallmError(
            f"checkpoint {path} does not match the model's trainable parameters "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); was it written by another configuration?"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            if params[name].shape != tensor.shape:
                raise KallmError(f"checkpoint {path}: {name} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(params[name].shape)}")
            params[name].copy_(tensor)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / OPTIMIZER, map_location="cpu", weights_only=False))
    if restore_rng:
        set_rng_state(torch.load(path / RNG, weights_only=False))
    return read_state(path)
