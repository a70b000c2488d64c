"""Training in fp32 vs `precision: auto` (and forced bf16), side by side: tokens/s and held-out loss.

    .venv/bin/python benchmarks/train_precision.py                  # fp32 vs auto, 3 rounds of 12 steps of 4x256 tokens
    .venv/bin/python benchmarks/train_precision.py --arms fp32,bf16/cache:fp32,bf16/cache:bf16

Every arm is kallm's own training loop (`TrainLoop`: AdamW on float32 master weights, frozen prefix,
labelled-positions float32 loss) on the embedded SmolLM2 retrofitted the same way (default last:5,
kan:chebyshev2:2, seed 0), with the same conversations, batches and held-out set. Each arm runs in a
process of its own, as `kallm train --precision ...` does, after `keep_freed_memory()` as the command
line does; the arms alternate (their order rotating) and the whole is repeated `--rounds` times, so
load from other processes falls on every arm alike and the spread is seen. (Two arms in one process
measure the sharing instead: there the bf16 arm ran up to 20% slower after the float32 arm's steps,
on the second model's memory and the first arm's heap.) tokens/s counts training steps only (what
`kallm train` reports) after `--warmup` steps that are trained but not timed (the first bf16 step
compiles oneDNN's kernels: seconds, once per process); the table gives each arm's median over rounds
and the range of the per-round ratios; the held-out loss is each loop's own evaluation after the last
step (the same in every round: training is deterministic).

An arm is PRECISION (fp32 | auto | bf16) or PRECISION/cache:DTYPE: train with the frozen prefix's
hidden states cached (computed in the arm's precision) and stored as DTYPE (fp32 | bf16) — the
question whether a bf16 run may keep its cache in bf16. On a CPU without native bf16 (no AVX512-BF16
or AMX) bf16 is emulated and slower: keep --steps and --length small there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import precision_report as pr  # noqa: E402

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
    p.add_argument("--rounds", type=int, default=3, help="times every arm runs (in a fresh process each)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run this one arm here, write its row
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    return p.parse_args()


def make_arm(label: str, args: argparse.Namespace, conversations, out: Path):
    from kallm.models.loading import load_model
    from kallm.models.prefix import PrefixCache, prefix_fingerprint
    from kallm.retrofitting import retrofit
    from kallm.runtime.precision import resolve_precision
    from kallm.training.config import TrainConfig
    from kallm.training.loop import TrainLoop

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


def run_arm(label: str, args: argparse.Namespace) -> dict:
    """Train one arm in this process; its row of the table."""
    from kallm.data import load_conversations

    conversations = load_conversations(args.data, max_conversations=args.conversations)
    with tempfile.TemporaryDirectory(prefix="kallm-precision-") as tmp:
        loop, state = make_arm(label, args, conversations, Path(tmp))
        start = (0, 0.0)
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                start = (state.tokens, state.train_s)
            record = loop.step(step, state)
            print(f"step {step + 1}/{args.warmup + args.steps} {label}: loss {record['loss']:.4f}, "
                  f"{record['tokens_per_s']:,.0f} tokens/s", file=sys.stderr)
        tokens, train_s = state.tokens - start[0], state.train_s - start[1]
        return {"arm": label, "computes_in": loop.precision.name, "reason": loop.precision.reason,
                "tokens": tokens, "train_s": train_s, "tokens_per_s": tokens / train_s, "warmup_s": start[1],
                "final_train_loss": state.last_loss, "held_out_loss": loop.evaluate()}


def spawn_arm(label: str, out: Path) -> dict:
    """`run_arm` in a fresh process (the same arguments as this one's)."""
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", label, "--worker-out", str(out)], check=True)
    return json.loads(out.read_text(encoding="utf-8"))


def main() -> None:
    args = parse_args()
    pr.malloc_as_the_command_line()
    if args.worker:
        row = run_arm(args.worker, args)
        Path(args.worker_out).write_text(json.dumps(row), encoding="utf-8")
        return
    labels = args.arms.split(",")
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory(prefix="kallm-precision-") as tmp:
        for rnd in range(args.rounds):
            for label in labels[rnd % len(labels):] + labels[:rnd % len(labels)]:
                runs[label].append(spawn_arm(label, Path(tmp) / f"{rnd}-{label.replace('/', '_')}.json"))
                print(f"round {rnd + 1}/{args.rounds} {label}: {runs[label][-1]['tokens_per_s']:,.0f} tokens/s",
                      file=sys.stderr)
    report(args, [summarise(runs[label], runs[labels[0]]) for label in labels])


def summarise(arm_runs: list[dict], ref_runs: list[dict]) -> dict:
    """The arm's median over rounds, and the range of its per-round ratio to the reference arm."""
    ratios = [a["tokens_per_s"] / r["tokens_per_s"] for a, r in zip(arm_runs, ref_runs)]
    return {**arm_runs[0], "tokens_per_s": statistics.median(r["tokens_per_s"] for r in arm_runs),
            "runs_tokens_per_s": [r["tokens_per_s"] for r in arm_runs], "round_ratios": ratios,
            "held_out_losses": [r["held_out_loss"] for r in arm_runs]}


def report(args: argparse.Namespace, rows: list[dict]) -> None:
    ref = rows[0]
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; {args.layers} {args.variant}, "
          f"{args.steps} timed steps (after {args.warmup} untimed) of {args.batch}x{args.length} tokens of "
          f"{Path(args.data).name}, each arm in its own process, {args.rounds} rounds alternating; "
          f"held-out loss on {args.val_size} conversations; {pr.conditions()}\n")
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / ref["tokens_per_s"]
        r["loss_change"] = r["held_out_loss"] / ref["held_out_loss"] - 1
    pr.print_table(["arm", "computes in", "tokens/s (median)", f"x {ref['arm']}", "per-round ratio", "untimed warm-up",
                    "held-out loss", f"vs {ref['arm']}", "last train loss"],
                   [[r["arm"], r["computes_in"], f"{r['tokens_per_s']:,.0f}", f"{r['speedup']:.2f}x",
                     f"{min(r['round_ratios']):.2f}-{max(r['round_ratios']):.2f}", f"{r['warmup_s']:.1f} s",
                     f"{r['held_out_loss']:.4f}", f"{r['loss_change']:+.2%}", f"{r['final_train_loss']:.4f}"]
                    for r in rows])
    pr.print_resolutions(rows)
    auto = next((r for r in rows if r["arm"] == "auto"), None)
    if auto is not None and ref["arm"] == "fp32":
        note = " (auto is fp32 on this machine)" if auto["computes_in"] == "fp32" else ""
        pr.verdict("auto >= 1.8x fp32 tokens/s", auto["speedup"], auto["speedup"] >= 1.8, note)
        pr.verdict("auto's held-out loss within 2% of fp32's (relative change, %)", 100 * auto["loss_change"],
                   abs(auto["loss_change"]) <= 0.02)
    if args.json:
        pr.write_record(args.json, args, rows)


if __name__ == "__main__":
    main()
