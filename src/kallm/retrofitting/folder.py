"""Save only what a retrofit changed or trains (safetensors + JSON manifest); rebuild it on the base model.

A retrofit folder holds:
    manifest.json          base model, layers, variant, freeze policy, seed, kallm version, tensor list
    retrofit.safetensors   new FFN parameters and every trainable parameter (no frozen backbone weights)
No pickle anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from kallm import __version__
from kallm.errors import KallmError
from kallm.io import read_json, write_json_atomic, write_with_atomic
from kallm.models import load_model, loaded_from, record_source
from kallm.retrofitting.report import retrofit_report
from kallm.retrofitting.surgery import is_new_param, retrofit
from kallm.retrofitting.variant import parse_variant

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHTS = "retrofit.safetensors"
FORMAT = "kallm-retrofit"
FORMAT_VERSION = 1


def retrofit_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """New FFN tensors (parameters and buffers) plus every trainable parameter, tied weights once."""
    state: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if p.requires_grad or is_new_param(name):
            state[name] = p.detach()
    for name, b in model.named_buffers():
        if is_new_param(name):
            state[name] = b.detach()
    return state


def save_retrofit(
    model: nn.Module, out_dir: str | Path, base_model: str | None = None, overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the retrofit of `model` (made by `kallm.retrofit`) to `out_dir`.

    `base_model` defaults to where the model was loaded from. An existing retrofit in `out_dir` is only
    replaced with `overwrite=True`.
    """
    report = retrofit_report(model)
    out = Path(out_dir)
    if (out / MANIFEST).exists() and not overwrite:
        raise KallmError(f"{out} already holds a retrofit; pass overwrite=True (CLI: --overwrite) to replace it")
    base = base_model or loaded_from(model) or getattr(model.config, "_name_or_path", None)
    if not base:
        raise KallmError("cannot tell which base model this retrofit belongs to; pass base_model=")
    state = {k: v.contiguous().cpu() for k, v in retrofit_state_dict(model).items()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kallm_version": __version__,
        "base_model": base,
        "base_revision": getattr(model.config, "_commit_hash", None),
        "model_class": type(model).__name__,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "layers": report.layer_spec,
        "layer_indices": list(report.layer_indices),
        "variant": str(report.variant),
        "freeze": report.freeze,
        "seed": report.seed,
        "report": report.to_dict(),
        "tensors": {k: list(v.shape) for k, v in state.items()},
        **(extra or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    # weights first, manifest last: a folder with a manifest always has matching weights
    write_with_atomic(out / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": FORMAT}))
    write_json_atomic(out / MANIFEST, manifest)
    log.info("saved retrofit (%d tensors, %s values) to %s", len(state), f"{sum(v.numel() for v in state.values()):,}", out)
    return out


def read_manifest(path: str | Path) -> dict[str, Any]:
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise KallmError(f"retrofit folder {folder} does not exist")
    if not manifest_path.is_file():
        raise KallmError(f"{folder} is not a retrofit folder: {MANIFEST} is missing")
    manifest = read_json(manifest_path, "retrofit manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise KallmError(f"{manifest_path} is not a kallm retrofit manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise KallmError(f"{manifest_path} has format version {version!r}; this kallm ({__version__}) reads "
                         f"version {FORMAT_VERSION}")
    missing = [k for k in ("base_model", "layers", "variant", "freeze", "seed") if k not in manifest]
    if missing:
        raise KallmError(f"{manifest_path} lacks {', '.join(missing)}")
    return manifest


def is_retrofit_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_retrofit(path: str | Path, dtype: str | torch.dtype | None = None, device: str | None = None,
                  base_model: str | None = None):
    """Rebuild a saved retrofit on its base model: `(model, tokenizer)`.

    `base_model` overrides the manifest's base (e.g. a local copy of a hub model).
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise KallmError(f"{folder} is missing {WEIGHTS}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise KallmError(f"{weights} is corrupted: {exc}") from None
    model, tokenizer = load_model(base_model or manifest["base_model"], dtype=dtype or manifest.get("dtype"))
    record_source(model, base_model or manifest["base_model"])
    retrofit(model, layers=manifest["layers"], variant=parse_variant(manifest["variant"]), freeze=manifest["freeze"],
             seed=manifest["seed"])
    own = dict(model.named_parameters())
    own.update(dict(model.named_buffers()))
    expected = set(retrofit_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise KallmError(f"{weights} does not match the rebuilt model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            target = own[name]
            if tuple(target.shape) != tuple(tensor.shape):
                raise KallmError(f"{weights}: tensor {name} has shape {tuple(tensor.shape)}, the rebuilt model "
                                 f"expects {tuple(target.shape)}")
            target.copy_(tensor.to(target.dtype))
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer
