"""BBH score table of a model over all 27 tasks: modes x (plain prompt, chat template), with wall times.

    .venv/bin/python benchmarks/bbh_table.py --out runs/bbh_table            # embedded SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/bbh_table.py --runs mc:20,fewshot:10 --chat both

Each run writes its own folder (predictions.jsonl, scores.json); `table.md` is rewritten after every run,
so a long job that is stopped still leaves the finished rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from kallm.evaluation.bbh import evaluate_bbh
from kallm.io import write_text_atomic
from kallm.models.loading import load_model


def parse_runs(text: str) -> list[tuple[str, int | None]]:
    runs = []
    for item in text.split(","):
        mode, _, limit = item.strip().partition(":")
        runs.append((mode, int(limit) if limit else None))
    return runs


def render(results: list[dict], model: str) -> str:
    lines = [f"# BBH, {model}", "",
             "| mode | chat template | limit/task | tasks | examples | strict | flexible | stripped | acc | acc_norm "
             "| wall s | s/example |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        macro = r["macro"]

        def cell(m: str, macro: dict = macro) -> str:
            return f"{100 * macro[m]:.1f}" if macro.get(m) is not None else "-"

        n = r["counts"]["examples"]
        lines.append(
            f"| {r['mode']} | {'yes' if r['settings']['chat_template'] else 'no'} | {r['settings']['limit']} | "
            f"{r['counts']['tasks']} | {n} | {cell('strict')} | {cell('flexible')} | {cell('stripped')} | "
            f"{cell('acc')} | {cell('acc_norm')} | {r['wall_time_s']:.0f} | {r['wall_time_s'] / max(n, 1):.2f} |")
    lines += ["", "Macro averages over tasks, in %. strict / flexible: lm-eval's metrics (zeroshot: strict-match /",
              "flexible-extract; fewshot: raw exact match); stripped: kallm's headline (strict on the stripped",
              "output); acc / acc_norm: log-likelihood ranking of the enumerable answers (free-form tasks skipped).", ""]
    per_task = {}
    for r in results:
        key = f"{r['mode']}{'+chat' if r['settings']['chat_template'] else ''}"
        for task, entry in r["tasks"].items():
            per_task.setdefault(task, {})[key] = entry[r["headline_metric"]]
    keys = [f"{r['mode']}{'+chat' if r['settings']['chat_template'] else ''}" for r in results]
    lines += ["## Per task (headline metric: stripped for generation, acc for mc), in %", "",
              "| task | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for task in sorted(per_task):
        cells = [f"{100 * per_task[task][k]:.0f}" if k in per_task[task] else "-" for k in keys]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--runs", default="mc:20,fewshot:10,zeroshot:10", help="mode:limit,...")
    parser.add_argument("--chat", choices=("no", "yes", "both"), default="both")
    parser.add_argument("--out", type=Path, default=Path("runs/bbh_table"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 copes best with a shared CPU)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    chats = {"no": [False], "yes": [True], "both": [False, True]}[args.chat]
    results = []
    started = time.perf_counter()
    for mode, limit in parse_runs(args.runs):
        for chat in chats:
            name = f"{mode}{'_chat' if chat else ''}_limit{limit}"
            scores = evaluate_bbh(model, tokenizer, tasks="all", mode=mode, limit=limit, data_dir=args.data_dir,
                                  batch_size=args.batch_size, chat_template=chat, out_dir=args.out / name)
            results.append(scores)
            write_text_atomic(args.out / "table.md", render(results, args.model))
            logging.info("%s done: %s in %.0f s", name, json.dumps(scores["macro"]), scores["wall_time_s"])
    logging.info("all runs done in %.0f s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
