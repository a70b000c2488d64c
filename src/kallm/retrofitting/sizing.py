"""Sizing replacement FFNs: the hidden width that meets a parameter budget, and narrower copies of MLPs.

A parameter-matched control is the model's own MLP class with a narrower intermediate size: every
projection *from* the hidden size d to the intermediate width (gate/up, or a fused gate_up of twice
the width) and every projection *back* to d is resized, so the architecture stays the same and only
the width changes. Counts are exact and closed-form; `kallm inspect` and dry runs show them.
Each variant kind's `size` (kallm.retrofitting.kinds) picks the function here that sizes it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kallm.errors import KallmError
from kallm.kan import kan_num_params
from kallm.retrofitting.arch import FFNSite
from kallm.retrofitting.ffn import named_projections, projection_shape, set_projection_shapes
from kallm.retrofitting.surgery_report import module_params
from kallm.retrofitting.variant import VariantSpec


def ffn_param_count(site: FFNSite) -> int:
    """The parameters of the FFN at `site` (a split FFN's parts included): what a budget of 'match' means."""
    return sum(module_params(m) for m in (site.module, *(getattr(site.layer, n) for n in site.bypass)))


def _new_shape(shape: tuple[int, int], d: int, inter: int, width: int) -> tuple[int, int]:
    """The projection's shape when the intermediate size `inter` becomes `width`."""
    n_in, n_out = shape
    if n_in == d and n_out != d and n_out % inter == 0:  # up (or fused gate_up) projection
        return n_in, n_out // inter * width
    if n_out == d and n_in == inter:  # down projection
        return width, n_out
    return shape


def _check_dims(d: int, inter: int) -> None:
    if d == inter:
        raise KallmError(f"cannot resize an MLP whose intermediate size equals its hidden size ({d}): "
                         "the projections into and out of it cannot be told apart")


def _linear_count(modules: list[nn.Module], d: int, inter: int, width: int) -> int:
    """Parameters of `modules` with their intermediate size changed to `width` (closed form)."""
    total = 0
    for module in modules:
        for sub in module.modules():
            shape = projection_shape(sub)
            if shape is None:
                total += sum(p.numel() for p in sub.parameters(recurse=False))
                continue
            n_in, n_out = _new_shape(shape, d, inter, width)
            total += n_in * n_out + (n_out if getattr(sub, "bias", None) is not None else 0)
    return total


def resize_mlp(module: nn.Module, d: int, inter: int, width: int) -> nn.Module:
    """`module` (a fresh copy, modified in place) with every projection through `inter` resized to `width`.

    The new projections are uninitialised in any meaningful sense; the caller re-initialises them the
    way the model initialises its own weights. A split FFN's own linear (OPT's fc1 / fc2) is replaced
    whole (its path is '').
    """
    _check_dims(d, inter)
    shapes = {name: _new_shape(shape, d, inter, width) for name, shape in named_projections(module).items()}
    return set_projection_shapes(module, shapes)


def largest_width(count: Callable[[int], int], target: int, what: str) -> int:
    """The largest width w >= 1 with count(w) <= target (count grows with w)."""
    if count(1) > target:
        raise KallmError(f"the budget of {target:,} parameters is below the smallest {what} "
                         f"({count(1):,} parameters at width 1)")
    if count(1) == count(2):
        raise KallmError(f"{what} has no width to size (its parameter count does not depend on it)")
    lo, hi = 1, 2
    while count(hi) <= target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= target else (lo, mid)
    return lo


def kan_hidden_width(spec: VariantSpec, d: int, replaced_params: int) -> int | None:
    """The hidden width of a budgeted multi-layer KAN (None: the spec's own widths)."""
    if spec.budget is None:
        return None
    target = spec.budget.target(replaced_params)
    return largest_width(lambda h: kan_num_params(spec.kan, d, d, h), target, f"'{spec}'")


def linear_width(spec: VariantSpec, modules: list[nn.Module], d: int, inter: int) -> int | None:
    """The intermediate size of a linear replacement (None: keep the model's own)."""
    if spec.hidden is not None:
        return spec.hidden
    if spec.budget is None:
        return None
    _check_dims(d, inter)
    target = spec.budget.target(_linear_count(modules, d, inter, inter))
    return largest_width(lambda w: _linear_count(modules, d, inter, w), target, f"'{spec}'")


def linear_params(modules: list[nn.Module], d: int, inter: int, width: int | None) -> int:
    """Parameters of a linear replacement of `modules` at intermediate size `width` (None: the model's own)."""
    return _linear_count(modules, d, inter, inter if width is None else width)


def check_fits_memory(n_params: int, dtype: torch.dtype, device: torch.device, what: str) -> None:
    """The one rule for every size a user can ask for (widths, budgets, degrees): the new parameters must fit
    in the memory available now, or the allocation would fail (or swap) long after the command started.
    Checked on the closed-form count, before anything is allocated (also for meta-device plans)."""
    import psutil

    need = n_params * torch.empty((), dtype=dtype, device="meta").element_size()
    available, where = psutil.virtual_memory().available, "RAM"
    if device.type == "cuda":
        available, where = torch.cuda.mem_get_info(device)[0], f"free memory on {device}"
    if need > available:
        raise KallmError(f"{what} needs {n_params:,} new parameters ({need / 2**30:,.1f} GiB), more than the "
                         f"{available / 2**30:,.1f} GiB of {where} available; choose a smaller width, budget or "
                         "degree")
