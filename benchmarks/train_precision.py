"""Training in fp32 vs `precision: auto` (and forced bf16), side by side: tokens/s and held-out loss.

    .venv/bin/python benchmarks/train_precision.py                  # fp32 vs auto, 12 steps of 4x256 tokens
    .venv/bin/python benchmarks/train_precision.py --arms fp32,bf16/cache:fp32,bf16/cache:bf16

Every arm is kallm's own training loop (`TrainLoop`: AdamW on float32 master weights, frozen prefix,
labelled-positions float32 loss) on its own copy of the embedded SmolLM2 retrofitted the same way
(default last:5, kan:chebyshev2:2, seed 0), with the same conversations, batches and held-out set.
The arms run in lockstep: step s of every arm (in an order that rotates each step) before step s+1
of any, so load from other processes falls on every arm alike. tokens/s counts training steps only
(what `kallm train` reports) after `--warmup` steps that are trained but not timed (the first bf16 step
compiles oneDNN's kernels: seconds, once per process; its time is reported apart); the held-out loss is
each loop's own evaluation after the last step.

An arm is PRECISION (fp32 | auto | bf16) or PRECISION/cache:DTYPE: train with the frozen prefix's
hidden states cached (computed in the arm's precision) and stored as DTYPE (fp32 | bf16) — the
question whether a bf16 run may keep its cache in bf16. On a CPU without native bf16 (no AVX512-BF16
or AMX) bf16 is emulated and slower: keep --steps and --length small there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_report import print_resolutions, print_table, verdict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHAT = Path(os.environ.get("KALLM_SHARED_DATA", REPO.parent / "shared" / "data")) / "chat" / "hh_helpful.jsonl"
STORAGE = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default="fp32,auto", help="comma-separated PRECISION or PRECISION/cache:DTYPE")
    p.add_argument("--steps", type=int, default=12, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="steps trained first, not timed")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=256, help="max_length in tokens")
    p.add_argument("--conversations", type=int, default=400, help="first N conversations of the data")
    p.add_argument("--val-size", type=int, default=32, help="held-out conversations (all evaluated)")
    p.add_argument("--layers", default="last:5")
    p.add_argument("--variant", default="kan:chebyshev2:2")
    p.add_argument("--data", default=str(CHAT))
    p.add_argument("--json", help="also write the results here")
    return p.parse_args()


def make_arm(label: str, args: argparse.Namespace, conversations, out: Path):
    from kallm.models import load_model
    from kallm.precision import resolve_precision
    from kallm.retrofitting import retrofit
    from kallm.training.config import TrainConfig
    from kallm.training.loop import TrainLoop
    from kallm.training.prefix import PrefixCache, prefix_fingerprint

    precision, _, storage = label.partition("/cache:")
    config = TrainConfig(steps=args.warmup + args.steps, batch_size=args.batch, max_length=args.length, warmup_steps=2,
                         eval_every=0, eval_batches=None, val_size=args.val_size, save_every=0, seed=0,
                         precision=precision, max_conversations=args.conversations)
    model, tokenizer = load_model()
    report = retrofit(model, layers=args.layers, variant=args.variant, freeze="ffn", seed=0)
    shared = None
    if storage:
        k = report.first_trainable_layer
        shared = PrefixCache(k, prefix_fingerprint(model, k), STORAGE[storage],
                             resolve_precision(precision, "cuda" if torch.cuda.is_available() else "cpu").name)
    loop = TrainLoop(model, tokenizer, config, out / label.replace("/", "_").replace(":", "-"), progress=False,
                     prefix_cache=shared)
    return loop, loop.setup(conversations, None, resume=False)


def main() -> None:
    args = parse_args()
    from kallm.data import load_conversations

    labels = args.arms.split(",")
    conversations = load_conversations(args.data, max_conversations=args.conversations)
    with tempfile.TemporaryDirectory(prefix="kallm-precision-") as tmp:
        arms = {label: make_arm(label, args, conversations, Path(tmp)) for label in labels}
        start = {}
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                start = {label: (state.tokens, state.train_s) for label, (_, state) in arms.items()}
            order = labels[step % len(labels):] + labels[:step % len(labels)]
            for label in order:
                loop, state = arms[label]
                record = loop.step(step, state)
                print(f"step {step + 1}/{args.warmup + args.steps} {label}: loss {record['loss']:.4f}, "
                      f"{record['tokens_per_s']:,.0f} tokens/s", file=sys.stderr)
        rows = []
        for label in labels:
            loop, state = arms[label]
            tokens, train_s = state.tokens - start[label][0], state.train_s - start[label][1]
            rows.append({"arm": label, "computes_in": loop.precision.name, "reason": loop.precision.reason,
                         "tokens": tokens, "train_s": train_s, "tokens_per_s": tokens / train_s,
                         "warmup_s": start[label][1],
                         "final_train_loss": state.last_loss, "held_out_loss": loop.evaluate()})
    report(args, rows)


def report(args: argparse.Namespace, rows: list[dict]) -> None:
    ref = rows[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; {args.layers} {args.variant}, "
          f"{args.steps} timed steps (after {args.warmup} untimed) of {args.batch}x{args.length} tokens of "
          f"{Path(args.data).name}, arms in lockstep; "
          f"held-out loss on {args.val_size} conversations; load average {load:.1f} at the end\n")
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / ref["tokens_per_s"]
        r["loss_change"] = r["held_out_loss"] / ref["held_out_loss"] - 1
    print_table(["arm", "computes in", "tokens/s", f"x {ref['arm']}", "untimed warm-up", "held-out loss",
                 f"vs {ref['arm']}", "last train loss"],
                [[r["arm"], r["computes_in"], f"{r['tokens_per_s']:,.0f}", f"{r['speedup']:.2f}x", f"{r['warmup_s']:.1f} s",
                  f"{r['held_out_loss']:.4f}", f"{r['loss_change']:+.2%}", f"{r['final_train_loss']:.4f}"]
                 for r in rows])
    print_resolutions(rows)
    auto = next((r for r in rows if r["arm"] == "auto"), None)
    if auto is not None and ref["arm"] == "fp32":
        note = " (auto is fp32 on this machine)" if auto["computes_in"] == "fp32" else ""
        verdict("auto >= 1.8x fp32 tokens/s", auto["speedup"], auto["speedup"] >= 1.8, note)
        verdict("auto's held-out loss within 2% of fp32's (relative change, %)", 100 * auto["loss_change"],
                abs(auto["loss_change"]) <= 0.02)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
