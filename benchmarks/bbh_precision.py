"""BBH mc evaluation in fp32 vs `precision: auto` (or forced bf16), side by side: examples/s and agreement.

    .venv/bin/python benchmarks/bbh_precision.py                       # fp32 vs auto, 9 per mc task (207)
    .venv/bin/python benchmarks/bbh_precision.py --arms fp32,bf16 --limit 2

The model (default: the embedded SmolLM2, float32 weights) is loaded once; `kallm eval --mode mc` is run
task by task, every arm on the same examples back to back, the arms' order alternating from task to
task, so load from other processes falls on every arm alike. An arm is a precision as `kallm eval
--precision` takes it (fp32 | auto | bf16: autocast around the evaluation). Reported per arm:
examples/s over the summed wall time, acc and acc_norm (macro over tasks), and against the first
arm: the share of examples whose chosen answer (argmax of the summed log-likelihood, lm-eval's acc)
and acc_norm answer are the same, and the largest change of a candidate's log-likelihood.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import precision_report as pr  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BBH = Path(os.environ.get("KALLM_SHARED_DATA", REPO.parent / "shared" / "data")) / "bbh"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default="fp32,auto", help="comma-separated precisions; the first is the reference")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tasks", default="all", help="task names or groups (free-form tasks have no mc answers)")
    p.add_argument("--limit", type=int, default=9, help="examples per task (9 x 23 mc tasks = 207)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data-dir", default=str(BBH))
    p.add_argument("--json", help="also write the results here")
    return p.parse_args()


def evaluate_arms(model, tokenizer, args: argparse.Namespace, precisions: dict) -> tuple[dict, dict, dict]:
    """Per arm: the predictions in order, the wall time, and the per-task scores."""
    from kallm.evaluation.bbh import evaluate_bbh, select_tasks
    from kallm.evaluation.bbh.tasks import FREE_FORM, load_tasks

    tasks = [t.name for t in load_tasks(select_tasks(args.tasks), args.data_dir, 1) if t.group != FREE_FORM]
    device = next(model.parameters()).device
    preds: dict[str, list[dict]] = {a: [] for a in precisions}
    wall = dict.fromkeys(precisions, 0.0)
    scores: dict[str, dict[str, dict]] = {a: {} for a in precisions}
    with tempfile.TemporaryDirectory(prefix="kallm-bbh-precision-") as tmp:
        for i, task in enumerate(tasks):
            order = list(precisions) if i % 2 == 0 else list(reversed(precisions))
            for arm in order:
                out = Path(tmp) / f"{arm}-{task}"
                t0 = time.perf_counter()
                with torch.inference_mode(), precisions[arm].autocast(device, model):
                    result = evaluate_bbh(model, tokenizer, tasks=[task], mode="mc", limit=args.limit,
                                          data_dir=args.data_dir, batch_size=args.batch_size, out_dir=out,
                                          progress=False)
                wall[arm] += time.perf_counter() - t0
                scores[arm][task] = result["tasks"][task]
                lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
                preds[arm] += [json.loads(line) for line in lines]
            print(f"{i + 1}/{len(tasks)} {task}: " + ", ".join(f"{a} {wall[a]:.0f} s" for a in precisions),
                  file=sys.stderr)
    return preds, wall, scores


def compare(preds: dict, wall: dict, scores: dict, precisions: dict) -> list[dict]:
    ref = next(iter(precisions))
    rows = []
    for arm, p in precisions.items():
        mine, theirs = preds[arm], preds[ref]
        assert [(r["task"], r["index"]) for r in mine] == [(r["task"], r["index"]) for r in theirs]
        n = len(mine)
        same = sum(a["extracted"]["acc"] == b["extracted"]["acc"] for a, b in zip(mine, theirs))
        same_norm = sum(a["extracted"]["acc_norm"] == b["extracted"]["acc_norm"] for a, b in zip(mine, theirs))
        delta = max(abs(x - y) for a, b in zip(mine, theirs) for x, y in zip(a["logprobs"], b["logprobs"]))
        macro = {m: sum(t[m] for t in scores[arm].values()) / len(scores[arm]) for m in ("acc", "acc_norm")}
        rows.append({"arm": arm, "computes_in": p.name, "reason": p.reason, "examples": n, "wall_s": wall[arm],
                     "examples_per_s": n / wall[arm], "speedup": wall[ref] / wall[arm], "acc": macro["acc"],
                     "acc_norm": macro["acc_norm"], "agree": same / n, "agree_norm": same_norm / n,
                     "max_abs_logprob_change": delta})
    return rows


def main() -> None:
    args = parse_args()
    pr.malloc_as_the_command_line()
    from kallm.models.loading import load_model
    from kallm.runtime.precision import resolve_precision

    model, tokenizer = load_model(args.model)
    device = next(model.parameters()).device
    precisions = {arm: resolve_precision(arm, device) for arm in args.arms.split(",")}
    preds, wall, scores = evaluate_arms(model, tokenizer, args, precisions)
    rows = compare(preds, wall, scores, precisions)
    ref = rows[0]["arm"]
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, BBH mc, {args.limit} per task, "
          f"{rows[0]['examples']} examples, batch size {args.batch_size}, arms alternating task by task; "
          f"{pr.conditions()}\n")
    pr.print_table(["arm", "computes in", "examples/s", f"x {ref}", "acc", "acc_norm", f"same answer as {ref}",
                    "same acc_norm answer", "max abs logprob change"],
                   [[r["arm"], r["computes_in"], f"{r['examples_per_s']:.2f}", f"{r['speedup']:.2f}x", f"{r['acc']:.3f}",
                     f"{r['acc_norm']:.3f}", f"{r['agree']:.1%}", f"{r['agree_norm']:.1%}",
                     f"{r['max_abs_logprob_change']:.3g}"] for r in rows])
    pr.print_resolutions(rows)
    auto = next((r for r in rows if r["arm"] == "auto"), None)
    if auto is not None and ref == "fp32":
        note = " (auto is fp32 on this machine)" if auto["computes_in"] == "fp32" else ""
        pr.verdict("auto >= 1.5x fp32 examples/s", auto["speedup"], auto["speedup"] >= 1.5, note)
        pr.verdict(f"auto's answer = fp32's on >= 97% of >= 200 examples (share of {auto['examples']})", auto["agree"],
                   auto["agree"] >= 0.97 and auto["examples"] >= 200)
    if args.json:
        pr.write_record(args.json, args, rows)


if __name__ == "__main__":
    main()
