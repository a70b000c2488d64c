"""Per-module learning-rate scales, honoured by the training optimiser (`kallm.training.optim`).

A module that sets the attribute `kallm_lr_scale` asks that its *own* parameters (not its children's)
move at that multiple of the learning rate. The scale is set where the module is built (e.g. the inner
layers of a `SequentialKAN`), so a retrofit loaded back trains the same way without any saved state.
Distillation's AdamW stage does not need it: it finds its lr itself, halving it while the fit gets worse.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

LR_SCALE_ATTR = "kallm_lr_scale"


def lr_scales(model: nn.Module) -> dict[int, float]:
    """{id(parameter): scale} for the parameters of modules that declare a scale other than 1."""
    scales: dict[int, float] = {}
    for module in model.modules():
        scale = getattr(module, LR_SCALE_ATTR, None)
        if scale is None or float(scale) == 1.0:
            continue
        for p in module.parameters(recurse=False):
            scales[id(p)] = float(scale)
    return scales


def split_by_lr_scale(params: Iterable[nn.Parameter], scales: dict[int, float]) -> list[tuple[float, list[nn.Parameter]]]:
    """`params` grouped by their lr scale (1 first), in first-seen order within each group; empty groups dropped."""
    groups: dict[float, list[nn.Parameter]] = {1.0: []}
    for p in params:
        groups.setdefault(scales.get(id(p), 1.0), []).append(p)
    return [(scale, ps) for scale, ps in groups.items() if ps]
