"""`kallm export`: a retrofit as a self-contained Hugging Face model folder that needs no kallm.

    kallm.export_pretrained("runs/train/retrofit", "my-kan-model")
    AutoModelForCausalLM.from_pretrained("my-kan-model", trust_remote_code=True)   # anywhere

The folder holds the full weights (model.safetensors, tied weights as transformers saves them), a
config.json of the base architecture under a model type of its own (`kallm_<base>`) with an
`auto_map` to the folder's model code and a `kallm` section that records how each replaced FFN is
rebuilt, that code (see `kallm.export.bundle`), the tokenizer, the generation config and a
model card. The folder is built in a temporary sibling and, by default, loaded back through
transformers' remote-code path and compared with the source model before it replaces `out_dir`.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kallm import __version__
from kallm.errors import KallmError
from kallm.export.bundle import CONFIG_FILE, MODELING_FILE, class_names, write_code
from kallm.export.model_card import known_results, model_card
from kallm.export.portable import CONFIG_KEY, EXPORT_FORMAT, EXPORT_FORMAT_VERSION, REBUILDERS
from kallm.folders.layout import HF_CONFIG, MODEL_CARD, TrainingFolder
from kallm.io import (
    OUTPUT_MARKER,
    check_not_source,
    is_kallm_output,
    read_json,
    replace_dir_atomic,
    write_json_atomic,
    write_text_atomic,
)
from kallm.models.loading import loaded_from
from kallm.models.sources import retrofit_folder
from kallm.retrofitting.arch import find_decoder_layers, find_ffn
from kallm.retrofitting.ffn import RetrofitFFN
from kallm.retrofitting.saving import is_retrofit_dir, load_retrofit, read_manifest
from kallm.retrofitting.surgery_report import RetrofitReport, retrofit_report
from kallm.retrofitting.variant import VARIANT_KINDS

log = logging.getLogger(__name__)

# Logits of the export and of the source model on the check input: same modules, same weights, so
# they agree to rounding (float32: 1e-5 absolute or relative to the logit scale).
_VERIFY_TOL = {torch.float32: 1e-5, torch.float64: 1e-9}




def _describe_module(name: str, module: nn.Module, report: RetrofitReport) -> dict[str, Any] | None:
    """The config entry that rebuilds `module` (None: a module the retrofit left as it was)."""
    if isinstance(module, nn.Identity):
        entry: dict[str, Any] = {"attr": name, "kind": "identity"}
    elif isinstance(module, RetrofitFFN):
        entry = VARIANT_KINDS.get(report.variant.kind).describe(name, module, report.variant)
    else:
        return None
    if entry.get("kind") not in REBUILDERS:  # the shipped model code could not build it
        raise KallmError(f"variant kind {report.variant.kind!r} cannot be exported without kallm: its entry names "
                         f"rebuilder {entry.get('kind')!r}, and the exported model code has only "
                         f"{', '.join(REBUILDERS)} (kallm/export/portable.py)")
    return entry


def describe_retrofit(model: nn.Module, base_model: str) -> dict[str, Any]:
    """The config's `kallm` section: the retrofit, and how to rebuild each replaced FFN from nothing."""
    report = retrofit_report(model)
    _, layers = find_decoder_layers(model)
    replacements: dict[str, list[dict[str, Any]]] = {}
    for index in report.layer_indices if report.variant.trained else ():
        site = find_ffn(layers[index], index, type(model).__name__)
        entries = [_describe_module(name, getattr(site.layer, name), report) for name in (site.attr, *site.bypass)]
        replacements[str(index)] = [e for e in entries if e is not None]
    return {
        "format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "kallm_version": __version__,
        "base_model": base_model, "base_model_type": model.config.model_type, "base_class": type(model).__name__,
        "variant": str(report.variant), "layers": report.layer_spec, "layer_indices": list(report.layer_indices),
        "freeze": report.freeze, "seed": report.seed, "hidden_width": report.hidden_width,
        "replacements": replacements,
    }


def _check_exportable(model: nn.Module) -> tuple[str, str]:
    """(base class name, base config class name), both importable from transformers."""
    import transformers

    names = type(model).__name__, type(model.config).__name__
    for name, obj in zip(names, (type(model), type(model.config))):
        if getattr(transformers, name, None) is not obj:
            raise KallmError(f"cannot export a {names[0]}: {name} is not a class of transformers itself (a model "
                             "with its own remote code); the export's model code subclasses the transformers class")
    return names


def _write_config(folder: Path, model: nn.Module, info: dict[str, Any]) -> None:
    model_class, config_class, model_type = class_names(info["base_class"], type(model.config).__name__,
                                                        info["base_model_type"])
    config = read_json(folder / HF_CONFIG, "exported config")
    config.update({"model_type": model_type, "architectures": [model_class], CONFIG_KEY: info,
                   "auto_map": {"AutoConfig": f"{CONFIG_FILE.removesuffix('.py')}.{config_class}",
                                "AutoModelForCausalLM": f"{MODELING_FILE.removesuffix('.py')}.{model_class}"}})
    write_json_atomic(folder / HF_CONFIG, config)


def _check_input(model: nn.Module) -> torch.Tensor:
    """A fixed token sequence for the load-back check."""
    generator = torch.Generator().manual_seed(0)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    return torch.randint(0, vocab, (2, 12), generator=generator)


def release_dynamic_code(cls: type) -> None:
    """Remove the copies of the folder's code transformers made for the temporary folder (never reused).

    transformers copies a local folder's code to <HF_MODULES_CACHE>/transformers_modules/<folder name>/<hash>/
    (one hash for the config's code, one for the model's) and imports it from there.
    """
    from transformers.utils import HF_MODULES_CACHE

    parts = cls.__module__.split(".")
    if len(parts) != 4 or parts[0] != "transformers_modules":
        return
    package = ".".join(parts[:2])
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
    shutil.rmtree(Path(HF_MODULES_CACHE) / parts[0] / parts[1], ignore_errors=True)


def verify_export(folder: Path, model: nn.Module) -> float:
    """Load `folder` as transformers would for a user; returns the largest |logit difference| to `model`."""
    from transformers import AutoModelForCausalLM

    ref = next(model.parameters())
    try:
        loaded, loading = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=ref.dtype,
                                                               output_loading_info=True)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:  # a kallm bug: the export is not kept
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KallmError(f"the exported folder does not load back through transformers: {first}") from exc
    try:
        problems = {k: sorted(v)[:5] for k, v in loading.items() if v}
        if problems:
            raise KallmError(f"the exported folder does not load back cleanly: {problems}")
        ids = _check_input(model).to(ref.device)
        training = model.training
        model.eval()
        with torch.no_grad():
            expected = model(input_ids=ids).logits.float()
            got = loaded.to(ref.device).eval()(input_ids=ids).logits.float()
        model.train(training)
    finally:
        release_dynamic_code(type(loaded))
    diff = float((got - expected).abs().max())
    tol = _VERIFY_TOL.get(ref.dtype, 2e-2) * max(1.0, float(expected.abs().max()))
    if not diff <= tol:
        raise KallmError(f"the exported model's logits differ from the retrofit's by {diff:.3g} (tolerance {tol:.3g})")
    return diff


def _write_folder(folder: Path, model: nn.Module, tokenizer: Any, info: dict[str, Any], card: str,
                  verify: bool) -> None:
    # The weights under the module names they have in the model: transformers would rename some to the base
    # class's original checkpoint format (GPT-NeoX's lm_head -> embed_out), which the export's class, having
    # a name of its own, does not rename back on loading.
    model.save_pretrained(folder, save_original_format=False)
    _write_config(folder, model, info)
    write_code(folder, info["base_class"], type(model.config).__name__, info["base_model_type"])
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    write_text_atomic(folder / MODEL_CARD, card)
    write_text_atomic(folder / OUTPUT_MARKER, "kallm export\n")
    if verify:
        diff = verify_export(folder, model)
        log.info("export check: the folder loads through transformers' remote code; max |logit difference| to "
                 "the retrofit %.3g", diff)


def check_export_target(out: Path, source: str | Path | nn.Module, base_model: str | None,
                        overwrite: bool) -> None:
    """`out` may be replaced only when kallm wrote it (`OUTPUT_MARKER`) and it is none of the inputs."""
    if not isinstance(source, nn.Module):
        folder = Path(source)
        sources = [("the source", folder)]
        if is_retrofit_dir(folder) or is_retrofit_dir(TrainingFolder(folder).retrofit):
            manifest = read_manifest(retrofit_folder(folder))
            sources.append(("the base model folder", base_model or manifest["base_model"]))
        check_not_source(out, sources, "export folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise KallmError(f"{out} exists and is not empty; use --overwrite (Python: overwrite=True) to replace "
                             "an earlier export")
        if not out.is_dir() or not is_kallm_output(out):
            raise KallmError(f"{out} is not a folder kallm wrote (it has no {OUTPUT_MARKER}); --overwrite replaces "
                             "only an earlier export: choose another folder")


def export_pretrained(source: str | Path | nn.Module, out_dir: str | Path, *, tokenizer: Any = None,
                      base_model: str | None = None, overwrite: bool = False, verify: bool = True,
                      results: dict[str, Any] | None = None, allow_trained_base: bool = False) -> Path:
    """Write `source` (a retrofit folder, a run folder holding one, or a retrofitted model) as a
    self-contained Hugging Face model folder `out_dir`; returns its path.

    `base_model` overrides a retrofit folder's base (as for `load_retrofit`), `tokenizer` goes with a
    model given directly, `results` ({"held_out": ..., "bbh": ...}) replaces what the folder records,
    `verify` loads the export back and compares its logits with the retrofit's before it is kept.
    `overwrite` replaces only a folder kallm wrote, never the source, its base model or a folder around them;
    `allow_trained_base` as for `load_retrofit`.
    """
    out = Path(out_dir)
    check_export_target(out, source, base_model, overwrite)
    if isinstance(source, nn.Module):
        model = source
        base = base_model or loaded_from(source) or getattr(source.config, "_name_or_path", "") or "unknown"
    else:
        folder = retrofit_folder(source)
        manifest = read_manifest(folder)
        results = known_results(folder, manifest) if results is None else results
        base = base_model or manifest["base_model"]
        model, tokenizer = load_retrofit(folder, base_model=base_model, allow_trained_base=allow_trained_base)
    _check_exportable(model)
    info = describe_retrofit(model, str(base))
    card = model_card(out.name, str(base), info, retrofit_report(model), results or {})
    replace_dir_atomic(out, lambda tmp: _write_folder(tmp, model, tokenizer, info, card, verify))
    log.info("exported %s (%s) to %s", info["variant"], base, out)
    return out
