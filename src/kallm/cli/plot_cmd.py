"""`kallm plot-functions RETROFIT_DIR --layer L`: PNG of a KAN layer's learned univariate functions."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot-functions", help="plot the univariate functions a KAN layer learned")
    p.add_argument("retrofit_dir", help="a folder written by save_retrofit, or a run folder holding one in retrofit/")
    p.add_argument("--layer", type=int, required=True, help="decoder layer index (a retrofitted one)")
    p.add_argument("--sublayer", type=int, default=0, help="which KAN layer inside a stacked FFN (default 0)")
    p.add_argument("--inputs", type=int, default=4, help="input channels to show (rows)")
    p.add_argument("--outputs", type=int, default=4, help="output units to show (columns)")
    p.add_argument("--xlim", type=float, nargs=2, default=(-4.0, 4.0), metavar=("LO", "HI"))
    p.add_argument("--out", default=None, help="PNG path (default RETROFIT_DIR/functions-layerL.png)")
    p.add_argument("--allow-other-base", action="store_true",
                   help="load the retrofit onto a base model whose weights differ from the one it was trained on")
    p.add_argument("--allow-trained-base", action="store_true",
                   help="load base model weights the retrofit trained (freeze blocks, blocks+embeddings, none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kallm.io import check_output_dir
    from kallm.models.sources import retrofit_folder
    from kallm.report.kan_functions import find_kan_layer, plot_kan_functions
    from kallm.retrofitting import load_retrofit

    out = Path(args.out) if args.out else Path(args.retrofit_dir) / f"functions-layer{args.layer}.png"
    check_output_dir(out.parent, "folder for --out")
    model, _ = load_retrofit(retrofit_folder(args.retrofit_dir), allow_other_base=args.allow_other_base,
                             allow_trained_base=args.allow_trained_base)
    kan = find_kan_layer(model, args.layer, args.sublayer)
    plot_kan_functions(kan, out, n_inputs=args.inputs, n_outputs=args.outputs, x_range=tuple(args.xlim),
                       title=f"layer {args.layer}: learned univariate functions")
    print(out)
    return 0
