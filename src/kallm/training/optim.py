"""AdamW with decay only on weight matrices, the warmup + cosine schedule, and optimizer rebuilds.

The learning rate is a pure function of the step (no scheduler object with hidden state), which
makes resume exact and lets a rebuilt optimizer (after a callback replaced parameters) continue on
the same schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kallm.errors import KallmError
from kallm.training.config import TrainConfig


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine from lr down to lr * min_lr_ratio at `steps`."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm scales and biases are not shrunk towards zero (it only fights their purpose)."""
    lowered = name.lower()
    return param.ndim < 2 or "norm" in lowered or lowered.endswith(".bias")


def trainable_named_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    named = trainable_named_params(model)
    if not named:
        raise KallmError("the model has no trainable parameters (check the freeze policy)")
    decay = [p for n, p in named if not _no_decay(n, p)]
    no_decay = [p for n, p in named if _no_decay(n, p)]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr_at(0, config))


def rebuild_optimizer(model: nn.Module, old: torch.optim.Optimizer, old_names: dict[int, str],
                      config: TrainConfig) -> torch.optim.AdamW:
    """A new optimizer for the model's current parameters; state of parameters that survived
    (same name and shape) is carried over, new parameters start fresh."""
    by_name = {old_names[id(p)]: p for group in old.param_groups for p in group["params"] if id(p) in old_names}
    new = build_optimizer(model, config)
    for name, p in trainable_named_params(model):
        prev = by_name.get(name)
        if prev is not None and prev in old.state and prev.shape == p.shape:
            new.state[p] = old.state[prev]
    for group in new.param_groups:
        group["lr"] = old.param_groups[0]["lr"]
    return new


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
