"""Which base model a retrofit belongs to: a cheap fingerprint of the weights it leaves in place.

A retrofit folder holds only new and trainable tensors; everything else comes from the base model it
is loaded onto. Another model with the same shapes (another fine-tune, another seed, a wrong folder)
would load without complaint and give wrong results. The fingerprint samples a few of the tensors the
retrofit neither replaces nor trains (up to 8, evenly spread over the model, 32 values each at fixed
positions), which read the same on the base it was trained on and differ on any other. Values are
compared within the rounding of the coarser of the two dtypes, so a retrofit saved in float32 still
loads onto its base read in bfloat16; no file is hashed, nothing large is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import torch
from torch import nn

from kallm.errors import KallmError
from kallm.retrofitting.surgery import is_new_param

log = logging.getLogger(__name__)

TENSORS = 8
SAMPLES = 32
OVERRIDE = "--allow-other-base (Python: allow_other_base=True)"


def _frozen_base_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters the retrofit keeps from the base (frozen, not new), evenly spread, at most `TENSORS`."""
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad and not is_new_param(n)]
    if len(frozen) <= TENSORS:
        return frozen
    picks = sorted({round(i * (len(frozen) - 1) / (TENSORS - 1)) for i in range(TENSORS)})
    return [frozen[i] for i in picks]


def sample_indices(n: int, k: int) -> torch.Tensor:
    """min(k, n) indices spread evenly over 0..n-1, both ends included. float64, because float32 cannot hold
    every index of a large tensor (28,311,551 rounds up to 28,311,552, one past the end of a 49152x576 matrix)."""
    return torch.linspace(0, n - 1, min(k, n), dtype=torch.float64).round().long().clamp_(0, n - 1)


def _fingerprint(model: nn.Module, named: list[tuple[str, torch.Tensor | None]]) -> dict[str, Any]:
    tensors: dict[str, Any] = {}
    with torch.no_grad():
        for name, p in named:
            if p is None:
                tensors[name] = None
                continue
            flat = p.detach().reshape(-1)
            if flat.device.type == "meta":
                raise KallmError("cannot fingerprint a model without weights (meta device)")
            index = sample_indices(flat.numel(), SAMPLES).to(flat.device)
            tensors[name] = {"shape": list(p.shape), "samples": flat[index].float().cpu().tolist()}
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    body = {"model_type": getattr(getattr(model, "config", None), "model_type", None), "dtype": dtype,
            "tensors": tensors}
    return {**body, "digest": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]}


def base_fingerprint(model: nn.Module) -> dict[str, Any]:
    """The fingerprint recorded in a retrofit's manifest (JSON-ready) of a retrofitted `model`."""
    return _fingerprint(model, list(_frozen_base_tensors(model)))


def fingerprint_like(saved: dict[str, Any], base: nn.Module) -> dict[str, Any]:
    """The fingerprint of `base` (not retrofitted yet) over the tensors a saved fingerprint names: the
    frozen ones keep their names through the surgery, so the base can be checked before it is rebuilt."""
    params = dict(base.named_parameters())
    names = saved.get("tensors") if isinstance(saved.get("tensors"), dict) else {}
    return _fingerprint(base, [(name, params.get(name)) for name in names])


def _eps(dtype_name: Any) -> float:
    dtype = getattr(torch, str(dtype_name), None)
    return torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) and dtype.is_floating_point else 2.0 ** -7


def fingerprint_difference(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between two fingerprints (None: the same base, up to the coarser dtype's rounding)."""
    if saved.get("model_type") != now.get("model_type"):
        return f"model type {saved.get('model_type')!r}, not {now.get('model_type')!r}"
    tol = 2 * max(_eps(saved.get("dtype")), _eps(now.get("dtype")))
    theirs, ours = saved.get("tensors"), now["tensors"]
    if not isinstance(theirs, dict) or set(theirs) != set(ours):
        return "a different set of base tensors"
    for name, entry in ours.items():
        old = theirs[name]
        if entry is None:
            return f"it has no tensor {name}"
        if not isinstance(old, dict) or old.get("shape") != entry["shape"]:
            return f"{name} has another shape"
        try:
            a = torch.tensor(old.get("samples", []), dtype=torch.float64)
        except (TypeError, ValueError):
            return f"{name} has unreadable samples"
        b = torch.tensor(entry["samples"], dtype=torch.float64)
        if a.shape != b.shape:
            return f"{name} was sampled differently"
        scale = float(b.abs().max()) if b.numel() else 0.0
        if not torch.all((a - b).abs() <= tol * b.abs() + tol * 1e-3 * scale):
            return f"{name} holds other values"
    return None


def check_base(saved: Any, base: nn.Module, where: str, recorded: str, loaded: str, allow_other: bool) -> None:
    """Refuse (unless `allow_other`) a base model (as loaded, before the retrofit is rebuilt on it) whose
    weights are not the ones the retrofit was trained on."""
    if saved is None:
        log.warning("%s records no base fingerprint (saved by an older kallm): cannot check that %s is the base "
                    "model it was trained on", where, loaded)
        return
    if not isinstance(saved, dict):
        raise KallmError(f"{where}: base_fingerprint must be a mapping, got {type(saved).__name__}")
    diff = fingerprint_difference(saved, fingerprint_like(saved, base))
    if diff is None:
        return
    message = (f"{where}: this retrofit was trained on base model {recorded!r} (fingerprint {saved.get('digest')}), "
               f"but the model loaded from {loaded!r} is another one ({diff})")
    if allow_other:
        log.warning("%s; loading it anyway, as asked", message)
        return
    raise KallmError(f"{message}; load the right base model, or pass {OVERRIDE} to load it anyway")
