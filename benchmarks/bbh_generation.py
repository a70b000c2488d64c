"""Batched vs one-by-one greedy generation on BBH prompts: identical outputs, and the speed-up.

    .venv/bin/python benchmarks/bbh_generation.py                      # embedded SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/bbh_generation.py --mode fewshot --n 30 --max-gen-toks 256

Prints one JSON line: examples, seconds for batch size 1 and for --batch-size, speed-up, and whether every
output is the same.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kallm.evaluation.bbh import load_tasks
from kallm.evaluation.bbh.generation import generate_greedy
from kallm.evaluation.bbh.prompts import get_mode, render_prompt
from kallm.models.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--mode", default="zeroshot")
    parser.add_argument("--tasks", default="boolean_expressions,date_understanding,object_counting")
    parser.add_argument("--n", type=int, default=30, help="examples in all (split evenly over the tasks)")
    parser.add_argument("--max-gen-toks", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype="float32")
    tasks = load_tasks(args.tasks, args.data_dir)
    per_task = -(-args.n // len(tasks))
    prompts = [render_prompt(t, ex["input"], args.mode) for t in tasks for ex in t.examples[:per_task]][:args.n]
    stops = get_mode(args.mode).stops
    timings, outputs = {}, {}
    for bs in (1, args.batch_size):
        start = time.perf_counter()
        outputs[bs] = generate_greedy(model, tokenizer, prompts, stops=stops, max_new_tokens=args.max_gen_toks,
                                      batch_size=bs, progress=False)
        timings[bs] = time.perf_counter() - start
    same = sum(a == b for a, b in zip(outputs[1], outputs[args.batch_size]))
    print(json.dumps({
        "model": args.model, "mode": args.mode, "examples": len(prompts), "max_gen_toks": args.max_gen_toks,
        "threads": args.threads, "seconds_bs1": round(timings[1], 2),
        f"seconds_bs{args.batch_size}": round(timings[args.batch_size], 2),
        "speedup": round(timings[1] / timings[args.batch_size], 2),
        "identical_outputs": f"{same}/{len(prompts)}",
    }))


if __name__ == "__main__":
    main()
