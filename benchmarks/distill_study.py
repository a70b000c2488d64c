"""Distilled vs random starts for retrofitted FFNs, on the embedded SmolLM2-135M-Instruct.

    .venv/bin/python benchmarks/distill_study.py [--tokens 8192] [--layers last:5] [--out runs/distill_study]

1. One pass of the frozen original model over chat training conversations records the (input,
   output) pairs of the selected layers' MLPs (`kallm.distill.collect_ffn_io`).
2. Each replacement is fitted to them (`distill_retrofit`); reported: every layer's held-out
   fraction of variance unexplained (FVU) for
     kan:chebyshev2:2                                        single KAN layer, closed-form ridge lstsq
     kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match  two KAN layers, AdamW (last layer warm-started)
     linear                                                  a fresh SwiGLU MLP of the model's class, AdamW
   A single KAN layer is an additive model (a sum of univariate functions of each input); the
   SwiGLU MLP multiplies features, which a two-layer KAN can approximate and one layer cannot.
3. Held-out chat loss (assistant tokens of conversations none of the fits saw) of the original
   model and of every variant right after random init and right after distillation, without any
   end-to-end training.
4. BBH in likelihood (mc) mode on the demo's tasks for the original, random and distilled models.
5. The lstsq ridge sweep for the single KAN layer (held-out FVU per layer and ridge strength).

Tables are printed as markdown and written to OUT/distill_study.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KALLM_SHARED_DATA", REPO.parent / "shared" / "data"))
SINGLE = "kan:chebyshev2:2"
TWO_LAYER = "kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match"
VARIANTS = {SINGLE: "lstsq", TWO_LAYER: "adamw", "linear": "adamw"}
BBH_TASKS = ["boolean_expressions", "navigate", "sports_understanding", "causal_judgement"]

log = logging.getLogger("distill_study")


def held_out_loss(model, examples, pad_id: int, layer_index: int, states: list[torch.Tensor]) -> float:
    """Mean next-token CE over assistant tokens, running only the layers from `layer_index` on."""
    from kallm.data import collate
    from kallm.models.prefix import tail_hidden_states
    from kallm.training.loss import check_lm_head, labelled_lm_loss

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start, prefix in zip(range(0, len(examples), 8), states):
            batch = collate(examples[start:start + 8], pad_id)
            hidden = tail_hidden_states(model, batch["input_ids"], batch["attention_mask"], layer_index, prefix)
            loss_sum, n = labelled_lm_loss(hidden, batch["labels"], check_lm_head(model))
            total, count = total + float(loss_sum), count + n
    return total / count


def prefix_states(model, examples, pad_id: int, layer_index: int) -> list[torch.Tensor]:
    from kallm.data import collate
    from kallm.models.prefix import prefix_hidden_states

    out = []
    for start in range(0, len(examples), 8):
        batch = collate(examples[start:start + 8], pad_id)
        out.append(prefix_hidden_states(model, batch["input_ids"], batch["attention_mask"], layer_index))
    return out


def bbh_score(model, tokenizer, limit: int) -> dict:
    from kallm.evaluation.bbh import evaluate_bbh

    with torch.inference_mode():
        scores = evaluate_bbh(model, tokenizer, tasks=BBH_TASKS, mode="mc", limit=limit,
                              data_dir=SHARED / "bbh", progress=False)
    metric = scores["headline_metric"]
    return {"average": scores["macro"][metric], "per_task": {t: row[metric] for t, row in scores["tasks"].items()}}


def table(header: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="(input, output) pairs collected per layer")
    parser.add_argument("--layers", default="last:5")
    parser.add_argument("--data", default=str(SHARED / "chat"))
    parser.add_argument("--max-conversations", type=int, default=1200)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--val-size", type=int, default=32, help="held-out conversations for the chat loss")
    parser.add_argument("--adamw-steps", type=int, default=150)
    parser.add_argument("--adamw-lr", type=float, default=3e-3)
    parser.add_argument("--batch-tokens", type=int, default=512, help="AdamW mini-batch (tokens)")
    parser.add_argument("--ridges", default="1e-4,1e-3,1e-2,1e-1", help="ridge strengths for the sweep")
    parser.add_argument("--bbh-limit", type=int, default=20, help="examples per BBH task (0: skip BBH)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--ridge", type=float, default=None, help="lstsq ridge (default: DistillConfig's, auto)")
    parser.add_argument("--bbh-models", default="original,random,distilled",
                        help="of original, random, distilled, distilled two-layer")
    parser.add_argument("--out", default="runs/distill_study")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "accelerate", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.manual_seed(0)

    from kallm.data import collate, load_conversations
    from kallm.distill.layerwise import DistillConfig, collect_ffn_io, distill_retrofit, fvu
    from kallm.distill.solve import FitRows, solve_layer
    from kallm.io import write_json_atomic, write_text_atomic
    from kallm.models.loading import load_model
    from kallm.retrofitting.arch import find_decoder_layers
    from kallm.retrofitting.layers import parse_layer_spec
    from kallm.retrofitting.surgery import RetrofitFFN, retrofit
    from kallm.training.config import TrainConfig
    from kallm.training.examples import prepare_data

    t_start = time.perf_counter()
    original, tok = load_model("smollm2-135m-instruct")
    original.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    convs = load_conversations(args.data, max_conversations=args.max_conversations)
    # The same split as a training run with these settings: distillation sees training conversations only.
    train, val = prepare_data(tok, convs, TrainConfig(max_length=args.max_length, val_size=args.val_size, seed=0),
                              progress=False)
    _, layers = find_decoder_layers(original)
    indices = parse_layer_spec(args.layers, len(layers))
    batches = (collate(train[i:i + 8], pad) for i in range(0, len(train), 8))
    t0 = time.perf_counter()
    io = collect_ffn_io(original, batches, indices, args.tokens, progress=False)
    collect_s = time.perf_counter() - t0
    first = min(indices)
    val_states = prefix_states(original, val, pad, first)
    fits: dict = {}
    models: dict = {}
    results: dict = {"settings": vars(args), "layers": list(indices), "collect_s": collect_s,
                     "val_conversations": len(val), "val_labels": sum(e.num_labels for e in val)}
    results["loss"] = {"original": held_out_loss(original, val, pad, first, val_states)}
    out = Path(args.out)

    def save_partial() -> None:  # a long CPU run keeps what it measured so far
        results["fits"] = fits
        write_json_atomic(out / "distill_study.json", json.loads(json.dumps(results, default=str)))

    log.info("original held-out loss %.4f", results["loss"]["original"])

    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown or SINGLE not in chosen:
        parser.error(f"--variants must include {SINGLE} and name only {', '.join(VARIANTS)}; got {unknown or chosen}")
    for variant, method in ((v, VARIANTS[v]) for v in chosen):
        cfg = DistillConfig(tokens=args.tokens, method=method, steps=args.adamw_steps, lr=args.adamw_lr,
                            batch_tokens=args.batch_tokens,
                            ridge=DistillConfig().ridge if args.ridge is None else args.ridge)
        model = load_model("smollm2-135m-instruct")[0]
        retrofit(model, layers=args.layers, variant=variant, seed=0)
        results["loss"][f"{variant} random"] = held_out_loss(model, val, pad, first, val_states)
        if variant == SINGLE:
            models["random"] = model
            model = load_model("smollm2-135m-instruct")[0]
            retrofit(model, layers=args.layers, variant=variant, seed=0)
        t0 = time.perf_counter()
        layer_fits = distill_retrofit(model, io, cfg, seed=0, progress=False)
        fits[variant] = {"method": method, "fit_s": time.perf_counter() - t0,
                         "fvu": {f.layer: f.fvu for f in layer_fits}, "train_fvu": {f.layer: f.train_fvu
                                                                                     for f in layer_fits}}
        results["loss"][f"{variant} distilled"] = held_out_loss(model, val, pad, first, val_states)
        log.info("%s: FVU %s, loss random %.4f distilled %.4f", variant, fits[variant]["fvu"],
                 results["loss"][f"{variant} random"], results["loss"][f"{variant} distilled"])
        save_partial()
        if variant == SINGLE:
            models["distilled"] = model
        elif variant == TWO_LAYER:
            models["distilled two-layer"] = model
        else:
            del model
    results["fits"] = fits

    # Ridge sweep for the single KAN layer, every selected layer, same split as distill_retrofit.
    ridges = [float(r) for r in args.ridges.split(",") if r.strip()]
    sweep: dict[float, dict[int, float]] = {r: {} for r in ridges}
    for layer in indices:
        x, y = io[layer]
        n_hold = max(1, int(len(x) * DistillConfig().holdout_fraction))
        kan = copy.deepcopy(next(m for m in find_decoder_layers(models["distilled"])[1][layer].children()
                                 if isinstance(m, RetrofitFFN)).kallm_ffn)
        for ridge in ridges:  # an empty --ridges skips the sweep
            rows = FitRows.split(x[:-n_hold], y[:-n_hold], DistillConfig().validation_fraction)
            solve_layer(kan, rows, ridge, refit_all=True)  # as distill_retrofit fits, at this fixed ridge
            with torch.no_grad():
                sweep[ridge][layer] = fvu(kan(x[-n_hold:]), y[-n_hold:])
    results["ridge_sweep"] = {"features": kan.n_features, "fit_tokens": len(x) - n_hold,
                              "fvu": {str(r): v for r, v in sweep.items()}}
    save_partial()

    if args.bbh_limit > 0:
        results["bbh"] = {}
        models["original"] = original
        for name in args.bbh_models.split(","):
            t0 = time.perf_counter()
            results["bbh"][name] = bbh_score(models[name], tok, args.bbh_limit)
            save_partial()
            log.info("BBH %s: %.4f (%.0f s)", name, results["bbh"][name]["average"], time.perf_counter() - t0)
    results["wall_s"] = time.perf_counter() - t_start

    md = [f"# Distillation study (SmolLM2-135M-Instruct, layers {args.layers} = {list(indices)})", "",
          f"{args.tokens} tokens collected per layer ({collect_s:.0f} s), 10% of them held out for the FVU; "
          f"chat loss on {len(val)} held-out conversations ({results['val_labels']} assistant tokens).", "",
          "## Held-out FVU per layer after distillation", "",
          table(["variant", "method", *map(str, indices), "mean", "fit s"],
                [[v, f["method"], *[f["fvu"][i] for i in indices], sum(f["fvu"].values()) / len(indices),
                  f"{f['fit_s']:.0f}"] for v, f in fits.items()]), "",
          "## Held-out chat loss (no end-to-end training)", "",
          table(["model", "loss"], [[k, v] for k, v in results["loss"].items()]), "",
          f"## Ridge sweep, {SINGLE} lstsq ({kan.n_features} features, {len(x) - n_hold} fit tokens)", "",
          table(["ridge", *map(str, indices), "mean"],
                [[r, *[v[i] for i in indices], sum(v.values()) / len(v)] for r, v in sweep.items()])]
    if "bbh" in results:
        md += ["", f"## BBH mc ({args.bbh_limit} examples per task)", "",
               table(["model", "average", *BBH_TASKS],
                     [[k, v["average"], *[v["per_task"][t] for t in BBH_TASKS]] for k, v in results["bbh"].items()])]
    md += ["", f"Wall time {results['wall_s']:.0f} s."]
    text = "\n".join(md) + "\n"
    print(text)
    write_text_atomic(out / "distill_study.md", text)
    write_json_atomic(out / "distill_study.json", json.loads(json.dumps(results, default=str)))


if __name__ == "__main__":
    main()
