"""Per-module lr scales (`kallm.training.optim.lr_scales`): a module's own parameters only, unscaled first."""

from __future__ import annotations

from torch import nn

from kallm.kan.mixing import LR_SCALE_ATTR
from kallm.training.optim import lr_scales, split_by_lr_scale


def test_a_scale_covers_the_modules_own_parameters_not_its_childrens():
    outer = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    setattr(outer, LR_SCALE_ATTR, 0.5)  # a container: owns no parameters itself
    setattr(outer[0], LR_SCALE_ATTR, 0.1)
    setattr(outer[1], LR_SCALE_ATTR, 1.0)  # the default: not listed
    assert lr_scales(outer) == {id(outer[0].weight): 0.1, id(outer[0].bias): 0.1}


def test_split_keeps_order_within_a_scale_and_drops_empty_groups():
    a, b, c = (nn.Parameter(nn.init.zeros_(nn.Linear(2, 2).weight)) for _ in range(3))
    assert split_by_lr_scale([a, b, c], {id(b): 0.1}) == [(1.0, [a, c]), (0.1, [b])]
    assert split_by_lr_scale([b], {id(b): 0.1}) == [(0.1, [b])]
