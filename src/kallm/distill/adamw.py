"""The AdamW stage of a distillation fit: mini-batch AdamW that keeps its best state.

The validation loss (FVU on the validation slice of the fit rows) is measured every `eval_every` steps
and the best state is kept, the start included, so the stage never ends worse than it began. If the
first measurement is already worse than the start, the lr was too high for this layer's scale: the
stage starts again from the start with half the lr (measured: a fresh SwiGLU control on SmolLM2's
layers 26-27 at lr 3e-3, and a two-layer KAN at 2e-3, only ever rose).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kallm.distill.solve import FitRows, fvu

log = logging.getLogger(__name__)

MAX_RESTARTS = 3


@dataclass
class AdamWStage:
    start: float  # validation FVU before the stage
    best: float  # validation FVU of the state it kept
    lr: float  # the lr of the last attempt
    restarts: int


@torch.no_grad()
def validation_fvu(module: nn.Module, rows: FitRows, chunk: int = 4096) -> float:
    pred = torch.cat([module(rows.x_val[s:s + chunk]) for s in range(0, len(rows.x_val), chunk)])
    return fvu(pred.double(), rows.y_val.double())


def eval_interval(steps: int) -> int:
    """Every 10-25 steps (a tenth of the stage), never more than the stage's length."""
    return max(1, min(steps, max(10, min(25, steps // 10))))


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _attempt(module: nn.Module, params: list[nn.Parameter], rows: FitRows, steps: int, lr: float,
             batch_tokens: int, seed: int, start_loss: float) -> tuple[float, dict[str, Tensor] | None, bool]:
    """One cosine-scheduled AdamW run of `params`: (best validation FVU, its state or None if none beat the
    start, whether the first measurement was worse than the start)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1))))
    gen = torch.Generator().manual_seed(seed)
    scale = rows.y.pow(2).mean().clamp_min(1e-12)  # normalised MSE keeps the lr meaningful across layers
    every = eval_interval(steps)
    best, best_state = start_loss, None
    with torch.enable_grad():
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(rows.x), (min(batch_tokens, len(rows.x)),), generator=gen)
            loss = (module(rows.x[idx]) - rows.y[idx]).pow(2).mean() / scale
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % every and step != steps:
                continue
            current = validation_fvu(module, rows)
            if step == every and not current <= start_loss:
                return best, None, True
            if current < best:
                best, best_state = current, _snapshot(module)
    return best, best_state, False


def fit_adamw(module: nn.Module, rows: FitRows, steps: int, lr: float, batch_tokens: int, seed: int,
              what: str = "", params: list[nn.Parameter] | None = None) -> AdamWStage:
    """Best-keeping AdamW of `params` (default: the module's trainable ones) on `rows.x`, restarted at half
    the lr, up to MAX_RESTARTS times, while its first measurement is worse than the start; the module ends
    in its best state."""
    if params is None:
        params = [p for p in module.parameters() if p.requires_grad] or list(module.parameters())
    start_state = _snapshot(module)
    start = validation_fvu(module, rows)
    best, state, restarts = start, None, 0
    while True:
        best, state, rose = _attempt(module, params, rows, steps, lr, batch_tokens, seed + restarts, start)
        if not rose or restarts == MAX_RESTARTS:
            break
        module.load_state_dict(start_state)
        restarts += 1
        lr /= 2
    module.load_state_dict(state if state is not None else start_state)
    for p in module.parameters():  # no gradient of the fit may leak into the training that follows
        p.grad = None
    log.info("distill%s: AdamW validation FVU %.4g -> %.4g (lr %g, %d restart%s at half the lr)", what, start,
             best, lr, restarts, "" if restarts == 1 else "s")
    return AdamWStage(start, best, lr, restarts)
