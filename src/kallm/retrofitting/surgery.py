"""Retrofit: replace chosen FFNs of any decoder-only HF model, freeze the rest, count parameters.

    report = retrofit(model, layers="last:5", variant="kan:chebyshev2:2", freeze="ffn", seed=0)

What goes in is built by the variant's kind (`VariantKind.build`, kallm.retrofitting.kinds).
New modules are wrapped in `RetrofitFFN`, whose single child is called `kallm_ffn`: every new
parameter's name contains `.kallm_ffn.`, so "what is new" is one filter (`is_new_param`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from kallm.errors import KallmError
from kallm.retrofitting import defaults
from kallm.retrofitting.arch import FFNSite, find_decoder_layers, find_ffn
from kallm.retrofitting.displaced import keep_originals
from kallm.retrofitting.ffn import RetrofitFFN
from kallm.retrofitting.freeze import FREEZE_POLICIES, first_trainable_layer
from kallm.retrofitting.layers import parse_layer_spec
from kallm.retrofitting.sizing import check_fits_memory, ffn_param_count
from kallm.retrofitting.surgery_report import (
    LayerReport,
    RetrofitReport,
    attach_report,
    count_params,
    find_report,
    module_params,
    retrofit_report,
)
from kallm.retrofitting.variant import VARIANT_KINDS, VariantSpec, as_variant

log = logging.getLogger(__name__)

NEW_PARAM_MARKER = ".kallm_ffn."


def is_new_param(name: str) -> bool:
    return NEW_PARAM_MARKER in f".{name}"


def replacement_modules(layer: nn.Module) -> list[RetrofitFFN]:
    """The RetrofitFFN children of one decoder layer (empty when the layer was not replaced)."""
    return [m for m in layer.children() if isinstance(m, RetrofitFFN)]


# ---------------------------------------------------------------- entry point

def _replace_layer(model: nn.Module, site: FFNSite, spec: VariantSpec, seed: int, new_modules: list[nn.Module],
                   displaced: list[tuple[nn.Module, nn.Module]]) -> tuple[LayerReport, int | None]:
    old_params, old_kind = ffn_param_count(site), type(site.module).__name__
    if not spec.trained:
        return LayerReport(site.layer_index, old_kind, old_kind, old_params, old_params, 0, 0), None
    torch.manual_seed(seed * 100_003 + site.layer_index)  # distinct, reproducible per layer
    replacements, width = VARIANT_KINDS.get(spec.kind).build(model, site, spec)
    ref = next(model.parameters())
    for name, module in replacements:
        module.to(device=ref.device, dtype=ref.dtype)
        displaced.append((module, getattr(site.layer, name)))
        setattr(site.layer, name, module)
    built = [m for _, m in replacements if isinstance(m, RetrofitFFN)]
    if not built:
        raise KallmError(f"variant kind {spec.kind!r} put no RetrofitFFN into layer {site.layer_index}: its build "
                         "must wrap each new FFN in kallm.retrofitting.ffn.RetrofitFFN")
    new_modules += built
    new_params = sum(module_params(m) for m in built)
    return LayerReport(site.layer_index, old_kind, type(built[0].kallm_ffn).__name__, old_params, new_params,
                       0, 0), width


def retrofit(
    model: nn.Module,
    layers: str = defaults.LAYERS,
    variant: str | VariantSpec = defaults.VARIANT,
    freeze: str = defaults.FREEZE,
    seed: int = 0,
) -> RetrofitReport:
    """Replace the FFNs of the selected decoder layers in place and set what trains.

    Returns a report of what was replaced and the parameter counts; `retrofit_report(model)` gives it
    back later (save_retrofit writes it into the manifest).
    """
    if find_report(model) is not None or any(isinstance(m, RetrofitFFN) for m in model.modules()):
        raise KallmError("this model was already retrofitted; load a fresh copy to apply another variant")
    spec = as_variant(variant)
    policy = FREEZE_POLICIES.get(freeze)
    _, layer_list = find_decoder_layers(model)
    indices = parse_layer_spec(layers, len(layer_list))
    sites = [find_ffn(layer_list[i], i, type(model).__name__) for i in indices]
    if spec.trained:
        ref = next(model.parameters())
        check_fits_memory(sum(VARIANT_KINDS.get(spec.kind).new_params(model, site, spec) for site in sites), ref.dtype, ref.device,
                          f"variant '{spec}' on {len(sites)} layer(s)")
    new_modules: list[nn.Module] = []
    displaced: list[tuple[nn.Module, nn.Module]] = []
    with torch.random.fork_rng(devices=[]):
        built = [_replace_layer(model, site, spec, seed, new_modules, displaced) for site in sites]
    keep_originals(model, displaced)  # the untouched model stays at hand (distillation's teacher)
    rows = [row for row, _ in built]
    trainable = {id(p) for p in policy(model, [layer_list[i] for i in indices], new_modules)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    report = RetrofitReport(
        model_class=type(model).__name__, n_layers=len(layer_list), layer_spec=layers, layer_indices=indices,
        variant=spec, freeze=freeze, seed=seed, total_params=0, trainable_params=0,
        replaced_old_params=sum(r.old_params for r in rows) if spec.trained else 0,
        replaced_new_params=0, first_trainable_layer=first_trainable_layer(model), layers=rows,
        hidden_width=built[0][1] if built else None,
    )
    _recount(model, report)
    attach_report(model, report)
    # A skeleton (meta device, no weights) is retrofitted to plan and count: that is not news for the log.
    level = logging.DEBUG if next(model.parameters()).device.type == "meta" else logging.INFO
    log.log(level, "retrofit %s: %s on layers %s, freeze=%s: %s trainable of %s", report.model_class, spec,
            list(indices), freeze, f"{report.trainable_params:,}", f"{report.total_params:,}")
    return report


def _recount(model: nn.Module, report: RetrofitReport) -> None:
    """Fill the report's counts from the modules as they are now."""
    _, layer_list = find_decoder_layers(model)
    for row in report.layers:
        layer = layer_list[row.layer]
        new = replacement_modules(layer)
        if new:
            row.new_params = sum(module_params(m) for m in new)
            row.new_kind = type(new[0].kallm_ffn).__name__
        row.params = module_params(layer)
        row.trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    report.total_params, report.trainable_params = count_params(model)
    report.replaced_new_params = sum(r.new_params for r in report.layers) if report.variant.trained else 0


def refresh_report(model: nn.Module, variant: VariantSpec | None = None) -> RetrofitReport:
    """Recount a retrofit after its modules changed shape (a degree raise); optionally set its variant.

    The saved manifest must describe the modules as they are now, or `load_retrofit` could not rebuild them.
    """
    report = retrofit_report(model)
    if variant is not None:
        report.variant = variant
    _recount(model, report)
    return report
