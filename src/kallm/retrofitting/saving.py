"""Save only what a retrofit changed or trains (safetensors + JSON manifest); rebuild it on the base model.

A retrofit folder holds:
    manifest.json          base model (absolute folder, or hub id + revision) and its fingerprint, layers,
                           variant, freeze policy, seed, kallm version, tensor list
    retrofit.safetensors   new FFN parameters and every trainable parameter (no frozen backbone weights)
No pickle anywhere. Loading checks the base model's fingerprint (`kallm.retrofitting.fingerprint`): a retrofit
is refused on a model with other weights unless `allow_other_base=True`. A retrofit file sets only the tensors
its manifest declares, in the manifest's dtypes and the rebuilt model's shapes, finite: new FFN tensors, and
base tensors its freeze policy trained only with `allow_trained_base=True` (anything else could silently
replace the base model's weights). A non-finite tensor is never saved.
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
from kallm.io import (
    check_not_source,
    read_json,
    read_tensors,
    remove_stale_temps,
    write_json_atomic,
    write_with_atomic,
)
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
TRAINED_BASE_OVERRIDE = "--allow-trained-base (Python: allow_trained_base=True)"


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
        raise KallmError(f"{out} already holds a retrofit; pass overwrite=True (CLI: --overwrite) to replace it")
    base = base_model or loaded_from(model) or getattr(model.config, "_name_or_path", None)
    if not base:
        raise KallmError("cannot tell which base model this retrofit belongs to; pass base_model=")
    base = model_source(base)
    check_not_source(out, [("the base model folder", base)], "retrofit folder")
    state = {k: v.contiguous().cpu() for k, v in retrofit_state_dict(model).items()}
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise KallmError(f"refusing to save the retrofit to {out}: tensor {bad} holds non-finite values (nan/inf; "
                         "training diverged?)")
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
        "tensor_dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()},
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


def check_declared(state: dict[str, torch.Tensor], manifest: dict[str, Any], weights: Path) -> None:
    """Before the base is loaded: every tensor of the file is declared by the manifest, in the recorded dtype
    (older manifests: one dtype for the floating ones) and finite."""
    declared = manifest.get("tensors") if isinstance(manifest.get("tensors"), dict) else {}
    recorded = manifest.get("tensor_dtypes")
    for name in sorted(state):
        tensor, where = state[name], f"{weights}: tensor {name}"
        if name not in declared:
            raise KallmError(f"{where} is not in the manifest's tensor list; the file was changed after saving")
        dtype = str(tensor.dtype).removeprefix("torch.")
        if isinstance(recorded, dict):
            expected = recorded.get(name)
        else:
            expected = manifest.get("dtype") if tensor.is_floating_point() else None
        if expected is not None and dtype != expected:
            raise KallmError(f"{where} is stored as {dtype}, but the manifest says {expected}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise KallmError(f"{where} holds non-finite values (nan/inf)")


def check_retrofit_tensor(name: str, tensor: torch.Tensor, manifest: dict[str, Any], own: dict[str, torch.Tensor],
                          allowed: set[str], weights: Path, allow_trained_base: bool) -> None:
    """One (declared) tensor on the rebuilt model: one the retrofit adds or, by choice, trained; its shape."""
    where = f"{weights}: tensor {name}"
    if name not in allowed and (is_new_param(name) or name not in own):
        raise KallmError(f"{weights} does not match the rebuilt model: unexpected tensor {name}")
    if name not in allowed:
        raise KallmError(f"{where} is a base model weight that the retrofit (variant {manifest['variant']}, layers "
                         f"{manifest['layers']}, freeze {manifest['freeze']}) neither replaces nor trains; "
                         "a retrofit may not change it")
    if not is_new_param(name) and not allow_trained_base:
        raise KallmError(f"{where} replaces a base model weight (trained under freeze {manifest['freeze']!r}); "
                         f"load trained base weights only from a retrofit you trust, with {TRAINED_BASE_OVERRIDE}")
    declared = manifest["tensors"][name]
    shapes = {tuple(tensor.shape), tuple(own[name].shape), tuple(declared or ())}
    if len(shapes) != 1:
        raise KallmError(f"{where} has shape {tuple(tensor.shape)}; the manifest declares {tuple(declared)} "
                         f"and the rebuilt model expects {tuple(own[name].shape)}")


def _copy_state(model: nn.Module, state: dict[str, torch.Tensor], manifest: dict[str, Any], weights: Path,
                allow_trained_base: bool = False) -> None:
    own = dict(model.named_parameters())
    own.update(dict(model.named_buffers()))
    allowed = set(retrofit_state_dict(model))  # new tensors and what the recorded freeze policy trains
    for name in sorted(state):
        check_retrofit_tensor(name, state[name], manifest, own, allowed, weights, allow_trained_base)
    needed = allowed if allow_trained_base else {n for n in allowed if is_new_param(n)}
    missing = sorted(needed - set(state))
    if missing:
        raise KallmError(f"{weights} does not match the rebuilt model: missing {missing[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor.to(own[name].dtype))


def load_retrofit(path: str | Path, dtype: str | torch.dtype | None = None, device: str | None = None,
                  base_model: str | None = None, allow_other_base: bool = False, allow_trained_base: bool = False):
    """Rebuild a saved retrofit on its base model: `(model, tokenizer)`.

    `base_model` overrides the manifest's base (e.g. a local copy of a hub model). Either way the base's
    weights must match the fingerprint the manifest recorded; `allow_other_base=True` loads onto another
    model anyway (with a warning). Base tensors the retrofit trained (freeze `blocks`, `blocks+embeddings`,
    `none`) replace the base's only with `allow_trained_base=True`.
    """
    folder = Path(path)
    if device is not None:
        device = resolve_device(device)  # an unavailable device fails before anything is loaded
    files = RetrofitFolder(folder)
    manifest = read_manifest(folder)
    state = read_tensors(files.weights, "retrofit weights")
    check_declared(state, manifest, files.weights)
    base = base_model or manifest["base_model"]
    revision = manifest.get("base_revision") if base_model is None else None
    model, tokenizer = load_model(base, dtype=dtype or manifest.get("dtype"), device=None, revision=revision)
    record_source(model, base)
    check_base(manifest.get("base_fingerprint"), model, str(files.manifest), manifest["base_model"], base,
               allow_other_base)
    _rebuild(model, manifest, files.manifest)
    _copy_state(model, state, manifest, files.weights, allow_trained_base)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer
