"""kallm eval and lm-evaluation-harness side by side on BBH: same model, tasks, limits and modes.

    .venv/bin/python benchmarks/lm_eval_side_by_side.py --lm-eval-python /work/lmeval-venv/bin/python \\
        --tasks movie_recommendation,object_counting,web_of_lies --limit 5

For each generation mode (zeroshot, fewshot, cot) it runs lm-eval's HF backend (`python -m lm_eval run` in
the side virtualenv, on offline copies of lm-eval's own BBH task files reading the official JSON) and
`python -m kallm eval` on the embedded model folder, one after the other, each as a whole process timed from
start to exit (model load included), with the same environment and thread count. It then prints, per mode:
identical prompts, identical raw outputs, per-example agreement of every lm-eval metric with the kallm metric
that reproduces it, the scores, and the wall-time ratio. Everything is written under --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kallm.evaluation.bbh.prompts import get_mode
from kallm.evaluation.bbh.tasks import resolve_data_dir, select_tasks
from kallm.models.loading import embedded_model_dir

REPO = Path(__file__).resolve().parents[1]
MODES = ("zeroshot", "fewshot", "cot")


def offline_tasks(lm_eval_python: str, data_dir: Path, work: Path) -> Path:
    """lm-eval's own BBH task folders, copied to read the official JSON (scripts/make_bbh_fixtures.py)."""
    spec = importlib.util.spec_from_file_location("make_bbh_fixtures", REPO / "scripts" / "make_bbh_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    where = subprocess.run([lm_eval_python, "-c", "import lm_eval, pathlib; print(pathlib.Path(lm_eval.__file__).parent)"],
                           check=True, capture_output=True, text=True).stdout.strip()
    return module.write_offline_tasks(Path(where) / "tasks" / "bbh", data_dir, work)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Wall and CPU seconds of a whole process (interpreter start, imports, model load, evaluation, exit).

    CPU seconds are reported too because on a shared machine the wall time depends on what else runs.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        cpu, start = _children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"{cmd[0]} ... exited {proc.returncode}; see {log}:\n" + "\n".join(tail))
    return wall, cpu


def read_lm_eval(out_dir: Path, family: str, tasks: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """(task, doc_id) -> prompt, raw output, and per filter the extracted answer and exact_match."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for task in tasks:
        files = sorted(out_dir.rglob(f"samples_{family}_{task}_*.jsonl"))
        if not files:
            raise SystemExit(f"lm-eval wrote no samples for {family}_{task} under {out_dir}")
        for line in files[-1].read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            args = row["arguments"]
            prompt = args["gen_args_0"]["arg_0"] if isinstance(args, dict) else args[0][0]
            entry = found.setdefault((task, row["doc_id"]), {"prompt": prompt, "output": row["resps"][0][0],
                                                              "filters": {}})
            entry["filters"][row["filter"]] = {"filtered": row["filtered_resps"][0],
                                               "exact_match": float(row["exact_match"])}
    return found


def read_kallm(out_dir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    rows = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return {(r["task"], r["index"]): r for r in rows}


def compare(mode: str, lm: dict, kallm: dict) -> dict[str, Any]:
    """Per-example agreement: prompts, raw outputs, and each lm-eval filter's score vs kallm's metric."""
    filters = get_mode(mode).lm_eval_filters
    if set(lm) != set(kallm):
        raise SystemExit(f"{mode}: lm-eval and kallm scored different examples")
    same_prompt = same_output = same_scores = 0
    differences = []
    for key in sorted(lm):
        ours, theirs = kallm[key], lm[key]
        same_prompt += ours["prompt"] == theirs["prompt"]
        same_output += ours["output"] == theirs["output"]
        agree = all(bool(ours["correct"][metric]) == (theirs["filters"][name]["exact_match"] == 1.0)
                    for name, metric in filters)
        same_scores += agree
        if not agree or ours["output"] != theirs["output"]:
            differences.append({"example": key, "kallm": ours["output"], "lm_eval": theirs["output"],
                                "kallm_correct": ours["correct"], "lm_eval_filters": theirs["filters"]})
    n = len(lm)
    score = {name: sum(theirs["filters"][name]["exact_match"] for theirs in lm.values()) / n for name, _ in filters}
    kallm_score = {metric: sum(bool(r["correct"][metric]) for r in kallm.values()) / n for _, metric in filters}
    return {"mode": mode, "examples": n, "identical_prompts": same_prompt, "identical_outputs": same_output,
            "score_agreement": same_scores, "lm_eval_scores": score, "kallm_scores": kallm_score,
            "differences": differences}


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["| mode | examples | identical prompts | identical outputs | per-example score agreement | "
             "lm-eval score (kallm) | lm-eval wall s | kallm wall s | wall lm-eval / kallm | CPU s lm-eval / kallm |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in results:
        n = r["examples"]
        scores = ", ".join(f"{name} {100 * r['lm_eval_scores'][name]:.0f}% ({100 * r['kallm_scores'][metric]:.0f}%)"
                           for name, metric in get_mode(r["mode"]).lm_eval_filters)
        lines.append(f"| {r['mode']} | {n} | {r['identical_prompts']}/{n} | {r['identical_outputs']}/{n} | "
                     f"{r['score_agreement']}/{n} | {scores} | {r['lm_eval_wall_s']:.1f} | {r['kallm_wall_s']:.1f} | "
                     f"{r['lm_eval_wall_s'] / r['kallm_wall_s']:.2f}x | {r['lm_eval_cpu_s']:.0f} / {r['kallm_cpu_s']:.0f} |")
    lines.append(f"\ntasks: {args.tasks}; limit {args.limit}; lm-eval batch size {args.lm_eval_batch_size}, "
                 f"kallm batch size {args.kallm_batch_size}; OMP_NUM_THREADS={args.threads} for both")
    return "\n".join(lines)


def commands(mode: str, args: argparse.Namespace, model: Path, include: Path, data_dir: Path,
             out: Path) -> tuple[list[str], list[str]]:
    family = get_mode(mode).lm_eval_task
    tasks = select_tasks(args.tasks)
    lm_eval = [args.lm_eval_python, "-m", "lm_eval", "run", "--model", "hf",
               "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu",
               "--tasks", ",".join(f"{family}_{t}" for t in tasks), "--include_path", str(include),
               "--limit", str(args.limit), "--batch_size", str(args.lm_eval_batch_size),
               "--log_samples", "--output_path", str(out / "lm_eval" / mode)]
    kallm = [sys.executable, "-m", "kallm", "eval", str(model), "--tasks", ",".join(tasks), "--mode", mode,
             "--limit", str(args.limit), "--data-dir", str(data_dir), "--batch-size", str(args.kallm_batch_size),
             "--dtype", "float32", "--device", "cpu", "--out", str(out / "kallm" / mode)]
    return lm_eval, kallm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm-eval-python", required=True, help="python of a virtualenv with lm_eval[hf] 0.4.13")
    parser.add_argument("--tasks", default="movie_recommendation,object_counting,web_of_lies")
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--lm-eval-batch-size", type=int, default=1, help="lm-eval's own default: 1")
    parser.add_argument("--kallm-batch-size", type=int, default=16, help="kallm's own default: 16")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of both processes (1 copes best with a CPU shared with other jobs)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/lm_eval_side_by_side"))
    args = parser.parse_args()
    data_dir = Path(resolve_data_dir(args.data_dir)).resolve()
    model = embedded_model_dir()
    include = offline_tasks(args.lm_eval_python, data_dir, args.out / "lm_eval_offline")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str((args.out / "hf_datasets_cache").resolve()), "KALLM_NO_PROGRESS": "1",
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    for weights in model.glob("*.safetensors"):  # both start with the weights in the page cache
        weights.read_bytes()
    results = []
    for i, mode in enumerate(args.modes.split(",")):
        lm_cmd, kallm_cmd = commands(mode, args, model, include, data_dir, args.out)
        order = [("lm_eval", lm_cmd), ("kallm", kallm_cmd)]
        walls, cpus = {}, {}
        for name, cmd in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
            walls[name], cpus[name] = run_timed(cmd, env, args.out / "logs" / f"{mode}_{name}.log")
            print(f"{mode}: {name} {walls[name]:.1f} s wall, {cpus[name]:.1f} s CPU", flush=True)
        lm = read_lm_eval(args.out / "lm_eval" / mode, get_mode(mode).lm_eval_task, select_tasks(args.tasks))
        result = compare(mode, lm, read_kallm(args.out / "kallm" / mode))
        result.update(lm_eval_wall_s=walls["lm_eval"], kallm_wall_s=walls["kallm"], lm_eval_cpu_s=cpus["lm_eval"],
                      kallm_cpu_s=cpus["kallm"], load_average=os.getloadavg())
        results.append(result)
    table = render(results, args)
    (args.out / "summary.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "results": results}, indent=1, ensure_ascii=False))
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    for r in results:
        for d in r["differences"][:5]:
            print(f"{r['mode']} {d['example']}: kallm {d['kallm'][:80]!r} vs lm-eval {d['lm_eval'][:80]!r}")


if __name__ == "__main__":
    main()
