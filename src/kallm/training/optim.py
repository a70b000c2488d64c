"""AdamW with decay only on weight matrices, the warmup + cosine schedule, and optimizer rebuilds.

The learning rate is a pure function of the step (no scheduler object with hidden state), which
makes resume exact and lets a rebuilt optimizer (after a callback replaced parameters) continue on
the same schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from kallm.errors import KallmError
from kallm.kan.mixing import LR_SCALE_ATTR
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


def lr_scales(model: nn.Module) -> dict[int, float]:
    """{id(parameter): scale} for the parameters of modules that ask for a multiple of the lr other than 1
    (`LR_SCALE_ATTR`, e.g. a SequentialKAN's inner layers): a module's own parameters, not its children's."""
    scales: dict[int, float] = {}
    for module in model.modules():
        scale = getattr(module, LR_SCALE_ATTR, None)
        if scale is not None and float(scale) != 1.0:
            scales.update({id(p): float(scale) for p in module.parameters(recurse=False)})
    return scales


def split_by_lr_scale(params: Iterable[nn.Parameter], scales: dict[int, float]
                      ) -> list[tuple[float, list[nn.Parameter]]]:
    """`params` grouped by their lr scale (1 first), in first-seen order within each group; empty groups dropped."""
    groups: dict[float, list[nn.Parameter]] = {1.0: []}
    for p in params:
        groups.setdefault(scales.get(id(p), 1.0), []).append(p)
    return [(scale, ps) for scale, ps in groups.items() if ps]


def trainable_named_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    named = trainable_named_params(model)
    if not named:
        raise KallmError("the model has no trainable parameters (check the freeze policy)")
    scales = lr_scales(model)
    groups = []
    for decays, weight_decay in ((True, config.weight_decay), (False, 0.0)):
        members = [p for n, p in named if _no_decay(n, p) != decays]
        groups += [{"params": ps, "weight_decay": weight_decay, "lr_scale": scale}
                   for scale, ps in split_by_lr_scale(members, scales)]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    set_lr(optimizer, lr_at(0, config))
    return optimizer


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
    first = old.param_groups[0]
    set_lr(new, first["lr"] / first.get("lr_scale", 1.0))
    return new


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group at `lr` times its `lr_scale` (a module's own scale, `lr_scales`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
