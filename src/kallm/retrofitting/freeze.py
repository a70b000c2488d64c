"""Freeze policies (what trains after surgery) and where the frozen prefix of a model ends."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kallm.registry import Registry
from kallm.retrofitting.arch import find_decoder_layers


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


FreezePolicy = Callable[[nn.Module, list[nn.Module], list[nn.Module]], list[nn.Parameter]]
# Each policy returns the parameters that train (model, the selected decoder layers, the new modules);
# everything else is frozen.
FREEZE_POLICIES: Registry[FreezePolicy] = Registry("freeze policy")
FREEZE_POLICIES.add("ffn", _freeze_ffn)
FREEZE_POLICIES.add("blocks", _freeze_blocks)
FREEZE_POLICIES.add("blocks+embeddings", _freeze_blocks_embeddings)
FREEZE_POLICIES.add("none", _freeze_none)


def first_trainable_layer(model: nn.Module) -> int | None:
    """Lowest decoder-layer index holding a trainable parameter.

    None when nothing trains or when a parameter that acts before the first decoder layer trains
    (embeddings, input projections), since then no prefix can be skipped. Trainable parameters
    after the layers (final norm, an untied LM head) do not matter.
    """
    _, layers = find_decoder_layers(model)
    layer_ids = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
    found: int | None = None
    outside: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in layer_ids:
            found = layer_ids[id(p)] if found is None else min(found, layer_ids[id(p)])
        else:
            outside.append(p)
    if found is None or not outside:
        return found
    return None if _acts_before_layers(model, layers, {id(p) for p in outside}) else found


def _acts_before_layers(model: nn.Module, layers: nn.ModuleList, param_ids: set[int]) -> bool:
    """Whether a module owning one of `param_ids` runs before decoder layer 0 (a 2-token dry run)."""
    owners = [m for m in model.modules() if any(id(p) in param_ids for p in m.parameters(recurse=False))]
    device = next(model.parameters()).device
    if device.type == "meta":  # no dry run without weights (kallm inspect): judge by structure
        return any(m is model.get_input_embeddings() for m in owners)
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda *_: order.append("owner")) for m in owners]
    handles.append(layers[0].register_forward_pre_hook(lambda *_: order.append("layer0")))
    try:
        with torch.no_grad():
            model.base_model(input_ids=torch.ones((1, 2), dtype=torch.long, device=device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return bool(order) and order[0] == "owner"
