"""Retrofit: replace chosen FFNs of any decoder-only HF model, freeze the rest, count parameters.

    report = retrofit(model, layers="last:5", variant="kan:chebyshev2:2", freeze="ffn", seed=0)

New modules are wrapped in `RetrofitFFN`, whose single child is called `kallm_ffn`: every new
parameter's name contains `.kallm_ffn.`, so "what is new" is one filter (`is_new_param`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from kallm.arch import FFNSite, find_decoder_layers, find_ffn, model_dims
from kallm.errors import KallmError
from kallm.layer_select import parse_layer_spec
from kallm.prefix import first_trainable_layer
from kallm.registry import Registry
from kallm.variants import VariantSpec, parse_variant

log = logging.getLogger(__name__)

NEW_PARAM_MARKER = ".kallm_ffn."


class RetrofitFFN(nn.Module):
    """Holds a replacement FFN under the recognisable name `kallm_ffn`."""

    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.kallm_ffn = inner
        self.kind = kind

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.kallm_ffn(hidden_states)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def is_new_param(name: str) -> bool:
    return NEW_PARAM_MARKER in f".{name}"


# ---------------------------------------------------------------- replacement builders

def _reinit_like_model(model: nn.Module, module: nn.Module) -> None:
    """Re-initialise `module` with the model's own `_init_weights` (what from-scratch training would use)."""
    init = getattr(model, "_init_weights", None)
    if init is None:
        raise KallmError(f"{type(model).__name__} has no _init_weights; cannot initialise a linear restart")
    for sub in module.modules():
        for p in sub.parameters(recurse=False):
            # transformers skips modules it marks as already initialised
            if hasattr(p, "_is_hf_initialized"):
                p._is_hf_initialized = False
        if hasattr(sub, "_is_hf_initialized"):
            sub._is_hf_initialized = False
        init(sub)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _site_modules(site: FFNSite) -> list[nn.Module]:
    return [site.module] + [getattr(site.layer, name) for name in site.bypass]


def ffn_param_count(site: FFNSite) -> int:
    return sum(_count(m) for m in _site_modules(site))


def _solve_hidden(variant: VariantSpec, d: int, old_params: int) -> int | None:
    from kallm.kan import kan_num_params

    if variant.hidden is not None:
        return variant.hidden
    if variant.budget is None:
        return None
    if variant.budget == "match":
        target = old_params
    elif isinstance(variant.budget, float):
        target = int(round(variant.budget * old_params))
    else:
        target = int(variant.budget)

    def count(h: int) -> int:
        return kan_num_params(variant.kan, d, d, h)

    if count(1) == count(2):
        raise KallmError(f"budget= needs a multi-layer KAN spec with a hidden width (e.g. "
                         f"'kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match'), got {variant}")
    if count(1) > target:
        raise KallmError(f"budget {variant.budget} ({target:,} parameters) is below the smallest {variant} "
                         f"({count(1):,} parameters at hidden width 1)")
    lo, hi = 1, 2
    while count(hi) <= target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # largest width whose parameter count stays within the budget
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= target else (lo, mid)
    return lo


def _build_linear(model: nn.Module, site: FFNSite, variant: VariantSpec) -> list[tuple[str, nn.Module]]:
    replacements = []
    for name in (site.attr, *(n for n in site.bypass if _count(getattr(site.layer, n)) > 0)):
        fresh = copy.deepcopy(getattr(site.layer, name))
        _reinit_like_model(model, fresh)
        replacements.append((name, RetrofitFFN(fresh, "linear")))
    return replacements


def _build_kan(model: nn.Module, site: FFNSite, variant: VariantSpec) -> list[tuple[str, nn.Module]]:
    from kallm.kan import build_kan

    d, _ = model_dims(model)
    hidden = _solve_hidden(variant, d, ffn_param_count(site))
    inner = build_kan(variant.kan, d, d, hidden_features=hidden)
    replacements: list[tuple[str, nn.Module]] = [(site.attr, RetrofitFFN(inner, "kan"))]
    replacements += [(name, nn.Identity()) for name in site.bypass]
    return replacements


VARIANT_BUILDERS: Registry[Callable[[nn.Module, FFNSite, VariantSpec], list[tuple[str, nn.Module]]]] = Registry(
    "variant"
)
VARIANT_BUILDERS.add("linear", _build_linear)
VARIANT_BUILDERS.add("kan", _build_kan)


# ---------------------------------------------------------------- freeze policies

def _embedding_params(model: nn.Module) -> list[nn.Parameter]:
    params = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter)()
        if module is not None:
            params += list(module.parameters())
    return params


def _freeze_ffn(model: nn.Module, layers: list[nn.Module], new: list[nn.Module]) -> list[nn.Parameter]:
    return [p for m in new for p in m.parameters()]


def _freeze_blocks(model: nn.Module, layers: list[nn.Module], new: list[nn.Module]) -> list[nn.Parameter]:
    return [p for layer in layers for p in layer.parameters()]


def _freeze_blocks_embeddings(model: nn.Module, layers: list[nn.Module], new: list[nn.Module]) -> list[nn.Parameter]:
    return _freeze_blocks(model, layers, new) + _embedding_params(model)


def _freeze_none(model: nn.Module, layers: list[nn.Module], new: list[nn.Module]) -> list[nn.Parameter]:
    return list(model.parameters())


# Each policy returns the parameters that train; everything else is frozen.
FREEZE_POLICIES: Registry[Callable[[nn.Module, list[nn.Module], list[nn.Module]], list[nn.Parameter]]] = Registry(
    "freeze policy"
)
FREEZE_POLICIES.add("ffn", _freeze_ffn)
FREEZE_POLICIES.add("blocks", _freeze_blocks)
FREEZE_POLICIES.add("blocks+embeddings", _freeze_blocks_embeddings)
FREEZE_POLICIES.add("none", _freeze_none)


# ---------------------------------------------------------------- report

@dataclass
class LayerReport:
    layer: int
    old_kind: str
    new_kind: str
    old_params: int
    new_params: int
    params: int  # the whole decoder layer after surgery
    trainable: int


@dataclass
class RetrofitReport:
    model_class: str
    n_layers: int
    layer_spec: str
    layer_indices: tuple[int, ...]
    variant: str
    freeze: str
    seed: int
    total_params: int
    trainable_params: int
    replaced_old_params: int
    replaced_new_params: int
    first_trainable_layer: int | None  # None: nothing trains, or something below the layers does
    layers: list[LayerReport] = field(default_factory=list)
    hidden_width: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layer_indices"] = list(self.layer_indices)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrofitReport:
        data = dict(data)
        data["layers"] = [LayerReport(**row) for row in data.get("layers", [])]
        data["layer_indices"] = tuple(data["layer_indices"])
        return cls(**data)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable), counting tied weights once."""
    params = list(model.parameters())  # deduplicated by identity
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def refresh_report(model: nn.Module, variant: str | None = None) -> RetrofitReport:
    """Recount a retrofit after its modules changed shape (a degree raise); optionally rename its variant.

    The saved manifest must describe the modules as they are now, or `load_retrofit` could not rebuild them.
    """
    report = getattr(model, "kallm_report", None)
    if report is None:
        raise KallmError("model has not been retrofitted")
    _, layer_list = find_decoder_layers(model)
    for row in report.layers:
        layer = layer_list[row.layer]
        new = [m for m in layer.children() if isinstance(m, RetrofitFFN)]
        if new:
            row.new_params = sum(_count(m) for m in new)
            row.new_kind = type(new[0].kallm_ffn).__name__
        row.params = _count(layer)
        row.trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    report.total_params, report.trainable_params = count_params(model)
    if any(isinstance(m, RetrofitFFN) for m in model.modules()):
        report.replaced_new_params = sum(r.new_params for r in report.layers)
    if variant is not None:
        report.variant = str(parse_variant(variant))
    return report


# ---------------------------------------------------------------- entry point

def retrofit(
    model: nn.Module,
    layers: str = "last:5",
    variant: str | VariantSpec = "kan:chebyshev2:2",
    freeze: str = "ffn",
    seed: int = 0,
) -> RetrofitReport:
    """Replace the FFNs of the selected decoder layers in place and set what trains.

    Returns a report of what was replaced and the parameter counts; it is also kept on the model as
    `model.kallm_report` so `save_retrofit` can write a manifest.
    """
    if getattr(model, "kallm_report", None) is not None:
        raise KallmError("this model was already retrofitted; load a fresh copy to apply another variant")
    spec = parse_variant(variant)
    policy = FREEZE_POLICIES.get(freeze)
    _, layer_list = find_decoder_layers(model)
    indices = parse_layer_spec(layers, len(layer_list))
    sites = [find_ffn(layer_list[i], i, type(model).__name__) for i in indices]
    ref = next(model.parameters())
    new_modules: list[nn.Module] = []
    rows: list[LayerReport] = []
    hidden_width = None
    with torch.random.fork_rng(devices=[]):
        for site in sites:
            old_params, old_kind = ffn_param_count(site), type(site.module).__name__
            new_kind, new_params = old_kind, old_params
            if spec.kind != "baseline":
                torch.manual_seed(seed * 100_003 + site.layer_index)  # distinct, reproducible per layer
                replacements = VARIANT_BUILDERS.get(spec.kind)(model, site, spec)
                for name, module in replacements:
                    module.to(device=ref.device, dtype=ref.dtype)
                    setattr(site.layer, name, module)
                    if isinstance(module, RetrofitFFN):
                        new_modules.append(module)
                built = [m for _, m in replacements if isinstance(m, RetrofitFFN)]
                new_kind = type(built[0].kallm_ffn).__name__
                new_params = sum(_count(m) for m in built)
                hidden = getattr(built[0].kallm_ffn, "hidden_features", None)  # stacked KANs only
                hidden_width = hidden[0] if isinstance(hidden, (list, tuple)) and hidden else hidden
            rows.append(LayerReport(site.layer_index, old_kind, new_kind, old_params, new_params, 0, 0))
    trainable = {id(p) for p in policy(model, [layer_list[i] for i in indices], new_modules)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    for row in rows:
        layer = layer_list[row.layer]
        row.params = _count(layer)
        row.trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    total, n_trainable = count_params(model)
    report = RetrofitReport(
        model_class=type(model).__name__, n_layers=len(layer_list), layer_spec=layers, layer_indices=indices,
        variant=str(spec), freeze=freeze, seed=seed, total_params=total, trainable_params=n_trainable,
        replaced_old_params=sum(r.old_params for r in rows) if spec.kind != "baseline" else 0,
        replaced_new_params=sum(r.new_params for r in rows) if spec.kind != "baseline" else 0,
        first_trainable_layer=first_trainable_layer(model), layers=rows, hidden_width=hidden_width,
    )
    model.kallm_report = report
    log.info("retrofit %s: %s on layers %s, freeze=%s: %s trainable of %s", report.model_class, report.variant,
             list(indices), freeze, f"{n_trainable:,}", f"{total:,}")
    return report
