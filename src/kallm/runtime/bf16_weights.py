"""Frozen matmul weights kept as bf16 copies while bf16 autocast runs on a CPU.

CPU autocast casts a Linear's float32 weight to bf16 on every call and caches the cast only for leaf
tensors that require grad, so a frozen weight is cast again in every forward: for SmolLM2-135M with
last:5 trainable, 8% of a training step's time (`aten::copy_` in the profiler) went to re-casting the
same 135M frozen numbers, and the tied LM head's 28M on every forward of an evaluation. Here each
frozen weight is cast once and the copy swapped into its module for the duration of a bf16 block; the
float32 parameter goes back on exit, so saving, float32 evaluation and exactness tests never see bf16.

The copy is exactly what autocast would compute (the same rounding), so results do not change. It is
remembered per parameter (weakly: it dies with the parameter) and made again when the parameter is
changed in place or given new storage. Only frozen float32 weights (`requires_grad=False`, or any
while autograd is off) of modules that autocast runs as matmuls are swapped; embeddings stay float32
(a lookup, and a bf16 embedding would make the residual stream bf16). Not done on CUDA, where the
cast is cheap and the copies would hold GPU memory that large models need.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

# keyed by identity: a tensor's == is elementwise, which a plain WeakKeyDictionary would call
_COPIES = WeakIdKeyDictionary()
# swapped-in bf16 parameter -> a weak reference to the float32 parameter it stands for. Weak both ways: the
# float32 parameter holds its copy (through _COPIES), so a strong reference back would keep both alive
# after the model is gone (weak-keyed tables hold their values strongly): every model a grid ran leaked.
_ORIGINALS = WeakIdKeyDictionary()


def _matmul_module(module: nn.Module) -> bool:
    """A module whose weight autocast multiplies: nn.Linear, or GPT-2-style Conv1D (addmm on `weight`)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def bf16_copy(param: torch.Tensor) -> nn.Parameter:
    """`param` cast to bf16 (a frozen Parameter), cast once and reused until `param` changes (in place or
    new storage)."""
    key = (param._version, param.data_ptr(), tuple(param.shape))
    hit = _COPIES.get(param)
    if hit is None or hit[0] != key:
        # never an inference tensor, even when first made during an evaluation: training reuses the copy,
        # and autograd cannot save inference tensors for backward
        with torch.inference_mode(False):
            copy = nn.Parameter(param.detach().to(torch.bfloat16), requires_grad=False)
        _ORIGINALS[copy] = weakref.ref(param)
        hit = (key, copy)
        _COPIES[param] = hit
    return hit[1]


def frozen_weights(*modules: nn.Module | None) -> list[tuple[nn.Module, torch.Tensor]]:
    """(module, weight) for every frozen float32 matmul weight in `modules` (each module once).

    Frozen: `requires_grad=False`, or any weight while autograd is off (evaluation): nothing can
    train it there, and a changed weight is copied again (`bf16_copy`)."""
    found, seen = [], set()
    grad_on = torch.is_grad_enabled()
    for root in modules:
        if root is None:
            continue
        for module in root.modules():
            if id(module) in seen or not _matmul_module(module):
                continue
            seen.add(id(module))
            weight = module._parameters.get("weight")
            if weight is not None and weight.dtype == torch.float32 and not (grad_on and weight.requires_grad):
                found.append((module, weight))
    return found


@contextlib.contextmanager
def frozen_weights_in_bf16(*modules: nn.Module | None) -> Iterator[int]:
    """Swap the frozen matmul weights of `modules` for their bf16 copies until exit; yields how many.

    Only for code running under bf16 autocast: outside it a bf16 weight meets float32 inputs."""
    swapped = []
    try:
        for module, weight in frozen_weights(*modules):
            module._parameters["weight"] = bf16_copy(weight)
            swapped.append((module, weight))
        yield len(swapped)
    finally:
        for module, weight in reversed(swapped):
            module._parameters["weight"] = weight


def float32_weight(weight: torch.Tensor) -> torch.Tensor:
    """The float32 parameter a swapped-in bf16 copy stands for (else `weight` in float32)."""
    ref = _ORIGINALS.get(weight)
    original = ref() if ref is not None else None
    return (weight if original is None else original).float()


@contextlib.contextmanager
def float32_output_head(model: nn.Module) -> Iterator[None]:
    """The model's output head computes in float32 inside the block, under autocast and swaps alike.

    For log-likelihood scoring under bf16: the head is a small share of the work there (a few positions
    per candidate) but rounding its 576-wide inputs and its logits to bf16 doubled the candidates'
    log-probability error against float32 (measured on the embedded SmolLM2: mean 0.034 -> 0.017 nats).
    """
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        yield
        return
    own = head.__dict__.get("forward")

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        bias = None if head.bias is None else float32_weight(head.bias)
        with torch.autocast(hidden.device.type, enabled=False):
            return nn.functional.linear(hidden.float(), float32_weight(head.weight), bias)

    head.forward = forward
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own
