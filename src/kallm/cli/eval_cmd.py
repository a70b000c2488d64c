"""`kallm eval`: BIG-Bench Hard on a model (hub id, folder, the embedded default) or a retrofit folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kallm.folders import layout
from kallm.runtime.precision import PRECISIONS

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model or retrofit on BIG-Bench Hard",
        description="Evaluate on BIG-Bench Hard with lm-eval's prompts and scoring (zeroshot, fewshot, cot) or "
                    f"by answer log-likelihood (mc). Writes {layout.PREDICTIONS} and {layout.SCORES} to --out.",
    )
    p.add_argument("model", metavar="MODEL_OR_RETROFIT_DIR",
                   help="hub id, model folder, 'smollm2-135m-instruct', a retrofit folder, a `kallm train --out` "
                        "folder, an experiment's runs/<run_id> folder, or a `kallm export` folder")
    p.add_argument("--tasks", default="all",
                   help="comma-separated task names, groups (multiple_choice, binary, free_form) or 'all'")
    p.add_argument("--mode", default="mc", help="zeroshot, fewshot, cot or mc (default: mc)")
    p.add_argument("--limit", type=int, default=None, help="first N examples of each task (as lm-eval --limit)")
    p.add_argument("--out", type=Path, default=None, help=f"folder for {layout.PREDICTIONS} and {layout.SCORES}")
    p.add_argument("--data-dir", default=None,
                   help="BBH folder in the official layout, or hf:lukaemon/bbh (default: $KALLM_BBH_DIR, "
                        "else ../shared/data/bbh)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chat-template", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--max-gen-toks", type=int, default=None, help="generation budget (default: lm-eval's)")
    p.add_argument("--dtype", default="float32", help="dtype the weights are loaded in (default float32)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="compute precision: bf16 autocast, fp32, or auto = bf16 where the CPU/GPU has native "
                        "bf16 (AVX512-BF16, AMX, Ampere+), else fp32 (default auto)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: where the model loads)")
    p.add_argument("--allow-other-base", action="store_true",
                   help="load a retrofit onto a base model whose weights differ from the one it was trained on")
    p.add_argument("--allow-trained-base", action="store_true",
                   help="load base model weights the retrofit trained (freeze blocks, blocks+embeddings, none)")
    p.set_defaults(func=run)


def format_table(scores: dict) -> str:
    metrics = scores["metrics"]
    lines = [f"| task | n | {' | '.join(metrics)} |", "|---|---:|" + "---:|" * len(metrics)]
    for name, entry in scores["tasks"].items():
        lines.append(f"| {name} | {entry['n']} | " + " | ".join(f"{entry[m]:.3f}" for m in metrics) + " |")
    lines.append(f"| **macro** | {scores['counts']['examples']} | "
                 + " | ".join(f"{scores['macro'][m]:.3f}" for m in metrics) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    from kallm.evaluation.bbh import EvalSettings, evaluate_bbh, select_tasks
    from kallm.evaluation.bbh.tasks import resolve_data_dir
    from kallm.io import check_output_dir, is_new_folder, mark_output
    from kallm.models.loading import resolve_device, resolve_dtype
    from kallm.models.sources import load_source, resolve_source
    from kallm.runtime.precision import resolve_precision

    # Check the cheap things before loading a model.
    EvalSettings(mode=args.mode, limit=args.limit, batch_size=args.batch_size, chat_template=args.chat_template,
                 max_gen_toks=args.max_gen_toks)
    select_tasks(args.tasks)
    resolve_data_dir(args.data_dir)
    resolve_dtype(args.dtype)
    device = resolve_device(args.device) if args.device is not None else None
    source = resolve_source(args.model)
    new_out = args.out is not None and is_new_folder(args.out)
    if args.out is not None:
        check_output_dir(args.out, "--out folder")
    model, tokenizer = load_source(source, args.dtype, device, args.allow_other_base, args.allow_trained_base)
    evaluated = source.record()
    device = next(model.parameters()).device
    precision = resolve_precision(args.precision, device)
    log.info("evaluating in %s", precision)
    with torch.inference_mode(), precision.autocast(device, model):
        scores = evaluate_bbh(model, tokenizer, tasks=args.tasks, mode=args.mode, limit=args.limit,
                              data_dir=args.data_dir, batch_size=args.batch_size, chat_template=args.chat_template,
                              max_gen_toks=args.max_gen_toks, out_dir=args.out, progress=args.progress,
                              evaluated=evaluated)
    if new_out:
        mark_output(args.out, "kallm eval")
    print(format_table(scores))
    head = scores["headline_metric"]
    print(f"\n{scores['mode']}: {head} {scores['headline']:.4f} over {scores['counts']['tasks']} tasks, "
          f"{scores['counts']['examples']} examples, {scores['wall_time_s']:.1f} s, {scores['precision']}"
          + (f"; wrote {args.out}" if args.out else ""))
    chat = scores["settings"]["chat_template"]
    if chat:
        print(f"chat template of {chat['tokenizer']} (sha256 {chat['sha256']}) wrapped every prompt")
    sys.stdout.flush()
    return 0
