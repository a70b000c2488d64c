"""`kallm inspect MODEL`: the per-layer table and parameter totals of a retrofit, without training."""

from __future__ import annotations

import argparse

from kallm.retrofitting import defaults


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show what a retrofit would replace and train (no weights needed)")
    p.add_argument("model", help="hub id, local folder, or 'smollm2-135m-instruct' (embedded)")
    p.add_argument("--layers", default=defaults.LAYERS,
                   help=f"layer selection, e.g. last:5, 20-24, -1 (default {defaults.LAYERS})")
    p.add_argument("--variant", default="baseline", help="baseline | linear | kan:<spec>[@budget=...]")
    p.add_argument("--freeze", default=defaults.FREEZE,
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


def run(args: argparse.Namespace) -> int:
    import json

    from kallm.models.loading import load_model_skeleton
    from kallm.retrofitting import parse_variant, retrofit

    variant = parse_variant(args.variant)  # bad input fails before the model's config is fetched
    model = load_model_skeleton(args.model)
    report = retrofit(model, layers=args.layers, variant=variant, freeze=args.freeze)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0
