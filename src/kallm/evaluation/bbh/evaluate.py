"""`evaluate_bbh`: run a model on BBH tasks in one mode and write predictions.jsonl and scores.json."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kallm.errors import KallmError
from kallm.evaluation.bbh.candidates import candidates_for, target_candidate
from kallm.evaluation.bbh.filters import INVALID
from kallm.evaluation.bbh.generation import generate_greedy
from kallm.evaluation.bbh.likelihood import ForwardFn, loglikelihoods
from kallm.evaluation.bbh.metrics import METRICS, Example, score_example
from kallm.evaluation.bbh.prompts import (
    TARGET_DELIMITER,
    chat_template_info,
    get_mode,
    render_prompt,
    wrap_chat,
)
from kallm.evaluation.bbh.tasks import FREE_FORM, Task, load_tasks
from kallm.folders.layout import EvalFolder
from kallm.io import write_json_atomic, write_text_atomic
from kallm.provenance import run_info
from kallm.runtime.precision import precision_in_effect

log = logging.getLogger(__name__)

LM_EVAL_REFERENCE = "lm-evaluation-harness 0.4.x BBH task definitions (zeroshot/fewshot/cot_fewshot)"
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class EvalSettings:
    mode: str = "mc"
    limit: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    chat_template: bool = False
    max_gen_toks: int | None = None

    def __post_init__(self) -> None:
        get_mode(self.mode)
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit <= 0):
            raise KallmError(f"limit must be a positive integer (examples per task), or unset for all; "
                             f"got {self.limit!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise KallmError(f"batch_size must be a positive integer; got {self.batch_size!r}")
        if self.max_gen_toks is not None and (isinstance(self.max_gen_toks, bool)
                                              or not isinstance(self.max_gen_toks, int) or self.max_gen_toks <= 0):
            raise KallmError(f"max_gen_toks must be a positive integer, or unset for the mode's default; "
                             f"got {self.max_gen_toks!r}")

    @property
    def gen_toks(self) -> int:
        return self.max_gen_toks or get_mode(self.mode).max_gen_toks


def _prompt(task: Task, question: str, settings: EvalSettings, tokenizer) -> str:
    prompt = render_prompt(task, question, settings.mode)
    return wrap_chat(tokenizer, prompt) if settings.chat_template else prompt


def _run_generation(model, tokenizer, tasks: list[Task], settings: EvalSettings, progress) -> list[dict[str, Any]]:
    mode = get_mode(settings.mode)
    records = [{"task": t.name, "index": i, "input": ex["input"], "target": ex["target"],
                "prompt": _prompt(t, ex["input"], settings, tokenizer)}
               for t in tasks for i, ex in enumerate(t.examples)]
    outputs = generate_greedy(model, tokenizer, [r["prompt"] for r in records], stops=mode.stops,
                              max_new_tokens=settings.gen_toks, batch_size=settings.batch_size,
                              progress=progress, desc=f"BBH {mode.name}")
    for rec, output in zip(records, outputs):
        rec["output"] = output
        rec["extracted"], rec["correct"] = score_example(Example(rec["task"], mode, rec["target"], output,
                                                                 rec["input"]))
    return records


def _run_mc(model, tokenizer, tasks: list[Task], settings: EvalSettings, progress,
            forward_fn: ForwardFn | None) -> list[dict[str, Any]]:
    # In a chat turn the answer starts the assistant message, so no delimiter precedes it.
    delimiter = "" if settings.chat_template else TARGET_DELIMITER
    records, requests = [], []
    for t in tasks:
        for i, ex in enumerate(t.examples):
            cands = candidates_for(t, ex["input"])
            prompt = _prompt(t, ex["input"], settings, tokenizer)
            records.append({"task": t.name, "index": i, "input": ex["input"], "target": ex["target"],
                            "prompt": prompt, "candidates": cands,
                            "target_candidate": target_candidate(ex["target"], cands, ex["input"])})
            requests += [(prompt, delimiter + c) for c in cands]
    scores = loglikelihoods(model, tokenizer, requests, batch_size=settings.batch_size, forward_fn=forward_fn,
                            progress=progress, desc="BBH mc")
    pos, mode = 0, get_mode(settings.mode)
    for rec in records:
        cands = rec["candidates"]
        sums = scores[pos:pos + len(cands)]
        pos += len(cands)
        best = cands[max(range(len(cands)), key=sums.__getitem__)]
        example = Example(rec["task"], mode, rec["target"], best, rec["input"], tuple(cands), tuple(sums),
                          rec["target_candidate"])
        extracted, correct = score_example(example)
        rec.update(logprobs=sums, output=best, extracted=extracted, correct=correct)
    return records


def _aggregate(records: list[dict[str, Any]], task_names: list[str], metrics: tuple[str, ...]) -> dict[str, Any]:
    per_task: dict[str, dict[str, Any]] = {}
    for name in task_names:
        rows = [r for r in records if r["task"] == name]
        if not rows:
            continue
        entry: dict[str, Any] = {"n": len(rows)}
        for m in metrics:
            entry[m] = METRICS.get(m).aggregate([r["correct"][m] for r in rows])
        for m in (m for m in metrics if METRICS.get(m).counts_invalid):
            extracted = [r.get("extracted", {}).get(m) for r in rows]
            if any(e is not None for e in extracted):
                entry[f"{m}_invalid"] = sum(e == INVALID for e in extracted)
        per_task[name] = entry
    macro = {m: (sum(t[m] for t in per_task.values()) / len(per_task) if per_task else None) for m in metrics}
    micro = {m: (METRICS.get(m).aggregate([r["correct"][m] for r in records]) if records else None)
             for m in metrics}
    return {"tasks": per_task, "macro": macro, "micro": micro}


def evaluate_bbh(
    model,
    tokenizer,
    tasks: str | list[str] = "all",
    mode: str = "mc",
    limit: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    chat_template: bool = False,
    max_gen_toks: int | None = None,
    progress: bool | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    forward_fn: ForwardFn | None = None,
    evaluated: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate on BBH; returns the scores.json structure (and writes it with predictions.jsonl to out_dir).

    Modes: zeroshot, fewshot, cot (generation, scored as lm-eval) and mc (log-likelihood ranking of the
    enumerable answers after the few-shot prompt; free-form tasks are skipped and listed). `forward_fn`
    replaces the model's forward in mc mode only. `evaluated` (what was evaluated: path, fingerprint, ...) is
    recorded as the scores' `evaluated`.
    """
    settings = EvalSettings(mode=mode, limit=limit, batch_size=batch_size, chat_template=chat_template,
                            max_gen_toks=max_gen_toks)
    spec = get_mode(settings.mode)
    chat_info = chat_template_info(tokenizer) if chat_template else None
    loaded = load_tasks(tasks, data_dir, settings.limit)
    skipped: list[str] = []
    if not spec.generative:
        skipped = [t.name for t in loaded if t.group == FREE_FORM]
        loaded = [t for t in loaded if t.group != FREE_FORM]
        if skipped:
            log.info("mc mode skips free-form tasks (no enumerable answers): %s", ", ".join(skipped))
        if not loaded:
            raise KallmError(f"mc mode needs tasks with enumerable answers; all selected tasks are free-form: "
                             f"{', '.join(skipped)}")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        if spec.generative:
            records = _run_generation(model, tokenizer, loaded, settings, progress)
        else:
            records = _run_mc(model, tokenizer, loaded, settings, progress, forward_fn)
    finally:
        model.train(was_training)
    wall = time.perf_counter() - start
    agg = _aggregate(records, [t.name for t in loaded], spec.metrics)
    result: dict[str, Any] = {
        "mode": spec.name,
        "metrics": list(spec.metrics),
        "headline_metric": spec.headline,
        "headline": agg["macro"][spec.headline],
        **agg,
        "counts": {"tasks": len(agg["tasks"]), "examples": len(records), "skipped_tasks": skipped},
        "settings": {**asdict(settings), "max_gen_toks": settings.gen_toks if spec.generative else None,
                     "stops": list(spec.stops), "lm_eval_task": spec.lm_eval_task, "lm_eval": LM_EVAL_REFERENCE,
                     "data": loaded[0].source if loaded else None,
                     "chat_template": chat_info, "model": str(getattr(model, "name_or_path", "") or "")},
        "wall_time_s": round(wall, 3),
        "examples_per_s": round(len(records) / wall, 3) if wall > 0 else None,
        "precision": precision_in_effect(model),  # the caller's autocast (kallm eval --precision) or weights
        "run_info": run_info(),
        **({"evaluated": evaluated} if evaluated is not None else {}),
    }
    if out_dir is not None:
        write_outputs(out_dir, records, result)
    return result


def write_outputs(out_dir: str | os.PathLike[str], records: list[dict[str, Any]], scores: dict[str, Any]) -> None:
    import json

    out = EvalFolder(Path(out_dir))
    lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    write_text_atomic(out.predictions, lines)
    write_json_atomic(out.scores, scores)
