"""Save only what a retrofit changed or trains (safetensors + JSON manifest); rebuild it on the base model.

A retrofit folder holds:
    manifest.json          base model (absolute folder, or hub id + revision) and its fingerprint, layers,
                           variant, freeze policy, seed, kallm version, tensor list
    retrofit.safetensors   new FFN parameters and every trainable parameter (no frozen backbone weights)
No pickle anywhere. Loading checks the base model's fingerprint (`kallm.retrofitting.fingerprint`): a retrofit
is refused on a model with other weights unless `allow_other_base=True`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from kallm import __version__
from kallm.errors import KallmError
from kallm.folders.layout import MANIFEST, RetrofitFolder
from kallm.io import read_json, read_tensors, remove_stale_temps, write_json_atomic, write_with_atomic
from kallm.models.loading import (
    load_model,
    loaded_from,
    model_source,
    record_source,
    resolve_device,
    resolve_dtype,
)
from kallm.retrofitting.fingerprint import base_fingerprint, check_base
from kallm.retrofitting.surgery import is_new_param, retrofit
from kallm.retrofitting.surgery_report import retrofit_report
from kallm.retrofitting.variant import parse_variant

log = logging.getLogger(__name__)

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

    `base_model` defaults to where the model was loaded from (a local folder is recorded as an absolute path).
    An existing retrofit in `out_dir` is only replaced with `overwrite=True`.
    """
    report = retrofit_report(model)
    out = Path(out_dir)
    files = RetrofitFolder(out)
    if files.manifest.exists() and not overwrite:
        raise KallmError(f"{out} already holds a retrofit; pass overwrite=True to replace it")
    base = base_model or loaded_from(model) or getattr(model.config, "_name_or_path", None)
    if not base:
        raise KallmError("cannot tell which base model this retrofit belongs to; pass base_model=")
    base = model_source(base)
    state = {k: v.contiguous().cpu() for k, v in retrofit_state_dict(model).items()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kallm_version": __version__,
        "base_model": base,
        "base_revision": getattr(model.config, "_commit_hash", None),
        "base_fingerprint": base_fingerprint(model),
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
    remove_stale_temps(out)  # the writer owns the folder: a killed save's temporary files go
    # weights first, manifest last: a folder with a manifest always has matching weights
    write_with_atomic(files.weights, lambda tmp: save_file(state, str(tmp), metadata={"format": FORMAT}))
    write_json_atomic(files.manifest, manifest)
    log.info("saved retrofit (%d tensors, %s values) to %s", len(state), f"{sum(v.numel() for v in state.values()):,}", out)
    return out


# key -> (accepted types, what to tell the user); None in the types: the key may be null or absent
_MANIFEST_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "base_model": ((str,), "a model folder or hub id"),
    "layers": ((str,), "a layer selection such as 'last:5'"),
    "variant": ((str,), "a variant such as 'kan:chebyshev2:2'"),
    "freeze": ((str,), "a freeze policy such as 'ffn'"),
    "seed": ((int, type(None)), "an integer or null"),
    "dtype": ((str, type(None)), "a dtype name such as 'float32'"),
    "base_revision": ((str, type(None)), "a revision or null"),
    "base_fingerprint": ((dict, type(None)), "a mapping"),
}
_REQUIRED = ("base_model", "layers", "variant", "freeze", "seed")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A retrofit folder's manifest, its format and the types of its keys checked (errors name the file)."""
    folder = Path(path)
    manifest_path = RetrofitFolder(folder).manifest
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
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise KallmError(f"{manifest_path} lacks {', '.join(missing)}")
    for key, (types, what) in _MANIFEST_TYPES.items():
        value = manifest.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise KallmError(f"{manifest_path}: {key} must be {what}, got {value!r}")
    if manifest.get("dtype") is not None:
        try:
            resolve_dtype(manifest["dtype"])
        except KallmError as exc:
            raise KallmError(f"{manifest_path}: {exc}") from None
    return manifest


def is_retrofit_dir(path: str | Path) -> bool:
    return RetrofitFolder(Path(path)).manifest.is_file()


def _rebuild(model: nn.Module, manifest: dict[str, Any], where: Path) -> None:
    """The manifest's retrofit on the freshly loaded base; a value it cannot build from names the manifest."""
    try:
        retrofit(model, layers=manifest["layers"], variant=parse_variant(manifest["variant"]),
                 freeze=manifest["freeze"], seed=manifest["seed"])
    except KallmError as exc:
        raise KallmError(f"{where}: {exc}") from None


def _copy_state(model: nn.Module, state: dict[str, torch.Tensor], weights: Path) -> None:
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


def load_retrofit(path: str | Path, dtype: str | torch.dtype | None = None, device: str | None = None,
                  base_model: str | None = None, allow_other_base: bool = False):
    """Rebuild a saved retrofit on its base model: `(model, tokenizer)`.

    `base_model` overrides the manifest's base (e.g. a local copy of a hub model). Either way the base's
    weights must match the fingerprint the manifest recorded; `allow_other_base=True` loads onto another
    model anyway (with a warning).
    """
    folder = Path(path)
    if device is not None:
        device = resolve_device(device)  # an unavailable device fails before anything is loaded
    files = RetrofitFolder(folder)
    manifest = read_manifest(folder)
    state = read_tensors(files.weights, "retrofit weights")
    base = base_model or manifest["base_model"]
    revision = manifest.get("base_revision") if base_model is None else None
    model, tokenizer = load_model(base, dtype=dtype or manifest.get("dtype"), device=None, revision=revision)
    record_source(model, base)
    check_base(manifest.get("base_fingerprint"), model, str(files.manifest), manifest["base_model"], base,
               allow_other_base)
    _rebuild(model, manifest, files.manifest)
    _copy_state(model, state, files.weights)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer
