"""`kallm inspect MODEL`: the per-layer table and parameter totals of a retrofit, without training."""

from __future__ import annotations

import argparse

from kallm.retrofitting import defaults

# inspect shows the model as it is unless told what to put in (training's default variant is a KAN)
INSPECT_VARIANT = "baseline"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show what a retrofit would replace and train (no weights needed)")
    p.add_argument("model", help="hub id, local folder, or 'smollm2-135m-instruct' (embedded); or a retrofit, "
                                 "run or export folder, whose own retrofit is shown")
    p.add_argument("--layers", default=None,
                   help=f"layer selection, e.g. last:5, 20-24, -1 (default {defaults.LAYERS})")
    p.add_argument("--variant", default=None,
                   help=f"baseline | linear | pruned | kan:<spec> | kat:<basis>[;groups=N][;ungated] "
                        f"[@budget=...] (default {INSPECT_VARIANT})")
    p.add_argument("--freeze", default=None,
                   help=f"ffn | blocks | blocks+embeddings | none (default {defaults.FREEZE})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def format_report(report) -> str:
    rows = [("layer", "old FFN", "new FFN", "old params", "new params", "layer params", "trainable")]
    for r in report.layers:
        rows.append((str(r.layer), r.old_kind, r.new_kind, f"{r.old_params:,}", f"{r.new_params:,}",
                     f"{r.params:,}", f"{r.trainable:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        "",
        f"model:      {report.model_class} ({report.n_layers} decoder layers)",
        f"variant:    {report.variant} on layers {list(report.layer_indices)}"
        + (f" (width {report.hidden_width})" if report.hidden_width else ""),
        f"freeze:     {report.freeze}",
        f"total:      {report.total_params:,}",
        f"trainable:  {report.trainable_params:,}",
        f"replaced:   {report.replaced_old_params:,} -> {report.replaced_new_params:,}",
    ]
    return "\n".join(lines)


_DEFAULTS = {"layers": defaults.LAYERS, "variant": INSPECT_VARIANT, "freeze": defaults.FREEZE}


def _export_skeleton(config: dict):
    """The base model of an export's config on the meta device (no code of the folder's is run)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kept = {k: v for k, v in config.items() if k not in ("model_type", "auto_map", "architectures", "kallm")}
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(config["kallm"]["base_model_type"], **kept))


def _recorded_retrofit(args: argparse.Namespace, source) -> tuple[object, dict]:
    """(base model skeleton, its recorded retrofit settings) of a retrofit, run or export folder."""
    from kallm.errors import KallmError
    from kallm.models.loading import load_model_skeleton

    given = [f"--{k}" for k in _DEFAULTS if getattr(args, k) is not None]
    if given:
        raise KallmError(f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to {args.model}: "
                         f"it is a {source.kind}, whose retrofit is shown as recorded")
    if source.retrofit is not None:
        from kallm.retrofitting.saving import read_manifest

        manifest = read_manifest(source.retrofit)
        return load_model_skeleton(manifest["base_model"]), manifest
    from kallm.export.trusted import check_export_code

    config = check_export_code(source.path)
    return _export_skeleton(config), config["kallm"]


def run(args: argparse.Namespace) -> int:
    import json

    from kallm.models.loading import load_model_skeleton
    from kallm.models.sources import resolve_source
    from kallm.retrofitting import parse_variant, retrofit

    source = resolve_source(args.model)
    if source.kind == "model":
        settings = {k: getattr(args, k) or v for k, v in _DEFAULTS.items()}
        variant = parse_variant(settings["variant"])  # bad input fails before the model's config is fetched
        model = load_model_skeleton(args.model)
    else:
        model, settings = _recorded_retrofit(args, source)
        variant = parse_variant(settings["variant"])
    report = retrofit(model, layers=settings["layers"], variant=variant, freeze=settings["freeze"],
                      seed=settings.get("seed") or 0)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0
