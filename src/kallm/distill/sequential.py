"""Sequential distillation: fit each new FFN, in order, on the inputs the retrofitted model really gives it.

`kallm.distill.layerwise` fits every replacement to (input, output) pairs recorded from the original
model. But a replaced layer's imperfect output shifts the inputs of every layer above it, and each of
those was fitted for inputs it will never see. Here the layers are fitted bottom-up: layer k's new FFN is
fitted on the hidden states the retrofitted model (layers below k already fitted) produces, so the
errors do not compound unseen. Two targets (`distill.target`):

    ffn     the original FFN's output on those same inputs (the teacher's FFN, run on the student's states)
    block   what makes layer k's *output* equal the original model's (its own states, its own layer k):
            original output - (student output - student FFN output), which also absorbs the error already
            accumulated below k

Each step runs one decoder layer of the student and of the teacher (`kallm.distill.teacher`) on the
states entering it (no prefix recomputation, no LM head), then one least-squares solve (or AdamW for
layers that are not linear in their weights), as `distill_retrofit` does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from kallm.distill.layerwise import (
    DistillConfig,
    LayerFit,
    fit_replacement,
    replacement_module,
    start_refiner,
)
from kallm.errors import KallmError
from kallm.models.prefix import PrefixCache, prefix_hidden_states, skip_prefix
from kallm.progress import progress_bar
from kallm.retrofitting.arch import find_decoder_layers, find_ffn
from kallm.retrofitting.surgery import RetrofitFFN
from kallm.retrofitting.surgery_report import retrofit_report

log = logging.getLogger(__name__)


@contextmanager
def _grab(module: nn.Module, store: dict[str, list[Tensor]], key: str, mask: Tensor, inputs: bool = False):
    """Record `module`'s input (or output) at the real tokens of the current batch."""

    def keep(t: Tensor) -> None:  # some layers (OPT) flatten (batch, seq) before their FFN
        store[key].append(t.reshape(*mask.shape, t.shape[-1])[mask].float())

    def pre(_m, args):
        keep(args[0])

    def post(_m, _args, out):
        keep(out[0] if isinstance(out, tuple) else out)

    handle = module.register_forward_pre_hook(pre) if inputs else module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def _run_layer(model: nn.Module, k: int, states: Tensor, batch: dict[str, Tensor]) -> Tensor | None:
    """Decoder layer k of `model` on `states` (the hidden states entering it): the states entering k + 1
    (None for the last layer, whose output nothing here needs)."""
    _, layers = find_decoder_layers(model)
    with skip_prefix(model, k, states):
        if k + 1 < len(layers):
            return prefix_hidden_states(model, batch["input_ids"], batch["attention_mask"], k + 1)
        model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return None


def _ffn_ends(model: nn.Module, k: int) -> tuple[nn.Module, nn.Module]:
    """(module whose input is layer k's FFN input, module whose output is the FFN's output)."""
    _, layers = find_decoder_layers(model)
    layer = layers[k]
    new = [m for m in layer.children() if isinstance(m, RetrofitFFN)]
    if new:
        return new[0], new[0]
    site = find_ffn(layer, k, type(model).__name__)
    return site.module, getattr(layer, site.bypass[-1]) if site.bypass else site.module


def _layer_pairs(student: nn.Module, teacher: nn.Module, k: int, batches: Sequence[dict[str, Tensor]],
                 s_states: list[Tensor], t_states: list[Tensor], target: str
                 ) -> tuple[Tensor, Tensor, list[Tensor | None] | None]:
    """(FFN inputs, fit targets) of layer k over the real tokens of all batches, and for the block target
    the teacher's states entering layer k + 1 (its layer k ran here on them: not run twice)."""
    store: dict[str, list[Tensor]] = {"x": [], "m": [], "o": [], "y": []}
    t_next: list[Tensor | None] = []
    s_in, s_out = _ffn_ends(student, k)
    t_in, t_out = _ffn_ends(teacher, k)
    _, s_layers = find_decoder_layers(student)
    _, t_layers = find_decoder_layers(teacher)
    for batch, hs, ht in zip(batches, s_states, t_states, strict=True):
        mask = batch["attention_mask"].bool()
        with _grab(s_in, store, "x", mask, inputs=True), _grab(s_out, store, "m", mask), \
                _grab(s_layers[k], store, "o", mask):
            _run_layer(student, k, hs, batch)
        if target == "ffn":  # the original FFN on the student's own inputs
            with _grab(t_out, store, "y", mask):
                _run_layer(teacher, k, hs, batch)
        else:  # the original layer's output, minus what the student's layer adds besides its FFN
            with _grab(t_layers[k], store, "y", mask):
                t_next.append(_run_layer(teacher, k, ht, batch))
    x, y = torch.cat(store["x"]), torch.cat(store["y"])
    if target == "block":
        return x, y - (torch.cat(store["o"]) - torch.cat(store["m"])), t_next
    return x, y, None


def _entering_states(model: nn.Module, batch: dict, layer_index: int, cache: PrefixCache | None,
                      device: torch.device) -> Tensor:
    if cache is not None and cache.layer_index == layer_index and "cache_keys" in batch:
        cache.fill(model, batch)
        return cache.batch_states(batch, device)
    return prefix_hidden_states(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                layer_index)


def sequential_distill(model: nn.Module, teacher: nn.Module, batches: Sequence[dict],
                       config: DistillConfig | None = None, *, target: str = "ffn", seed: int = 0,
                       cache: PrefixCache | None = None, progress: bool | None = None) -> list[LayerFit]:
    """Fit every replacement FFN of `model`, bottom-up, on `batches` (collated; real tokens only are used).

    `teacher` is `build_teacher(model)` (the untouched model); `cache` a prefix cache at the first replaced
    layer (shared with training: the states entering it are computed once). One `LayerFit` per layer.
    """
    if target not in ("ffn", "block"):
        raise KallmError(f"distill target must be 'ffn' or 'block', got {target!r}")
    cfg = config or DistillConfig()
    report = retrofit_report(model)
    first = min(report.layer_indices)
    if first == 0:
        raise KallmError("sequential distillation starts from the states entering the first replaced layer; "
                         "layer 0 cannot be one of them")
    device = next(model.parameters()).device
    states = [_entering_states(model, b, first, cache, device) for b in batches]
    batches = [{k: v.to(device) for k, v in b.items() if isinstance(v, Tensor)} for b in batches]
    was_training = model.training
    model.eval()
    try:
        s_states, t_states = list(states), list(states)
        fits = []
        _, layers = find_decoder_layers(model)
        for k in progress_bar(range(first, len(layers)), desc="distill (sequential)", unit="layer",
                              progress=progress):
            t_next = None
            if k in report.layer_indices:
                x, y, t_next = _layer_pairs(model, teacher, k, batches, s_states, t_states, target)
                x, y = x[: cfg.tokens], y[: cfg.tokens]
                fits.append(fit_replacement(replacement_module(layers, k), x, y, cfg, seed * 1000 + k, k,
                                            start_refiner(model, layers, k)))
            s_states = [_run_layer(model, k, h, b) for h, b in zip(s_states, batches)]
            if target == "block":
                # a fitted layer's pairs already ran the teacher's layer k; other layers run it here
                t_states = t_next if t_next is not None else [_run_layer(teacher, k, h, b)
                                                              for h, b in zip(t_states, batches)]
    finally:
        model.train(was_training)
    return fits
