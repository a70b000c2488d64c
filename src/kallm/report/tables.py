"""Markdown tables for the report. Accuracies are shown in percent; anything unknown is '—'."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kallm.report.records import VariantSummary, all_tasks, number
from kallm.report.stats import PairedComparison

DASH = "—"


def fmt_pct(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{100 * value:.{digits}f}"


def fmt_acc(mean: float | None, std: float | None, n: int) -> str:
    """'41.0 ± 2.3 (3)'; std is '—' with a single run."""
    if mean is None:
        return f"{DASH} (0)"
    return f"{fmt_pct(mean)} ± {fmt_pct(std)} ({n})"


def fmt_count(value: Any) -> str:
    """Parameter counts: 134,515,008 -> '134.5M'."""
    v = number(value)
    if v is None:
        return DASH
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.1f}{unit}"
    return f"{v:.0f}"


def fmt_bytes(value: Any, kind: str | None = None) -> str:
    v = number(value)
    if v is None:
        return DASH
    text = f"{v / 2**30:.2f} GiB" if v >= 2**30 else f"{v / 2**20:.0f} MiB"
    return f"{text} ({kind})" if kind else text


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_float(value: Any, digits: int = 3) -> str:
    v = number(value)
    return DASH if v is None else f"{v:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def clean(cell: str) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(clean(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main_table(summaries: list[VariantSummary]) -> str:
    header = ["variant", "spec", "accuracy % (mean ± std (n))", "trainable params", "total params",
              "peak memory", "train time (mean)"]
    rows = []
    for s in summaries:
        kinds = sorted({str(r.train["memory_kind"]) for r in s.records
                        if isinstance(r.train, dict) and r.train.get("memory_kind")})
        rows.append([
            s.name, f"`{s.spec}`" if s.spec else DASH, fmt_acc(*s.accuracy),
            fmt_count(s.first("params.trainable")), fmt_count(s.first("params.total")),
            fmt_bytes(s.peak_memory, "/".join(kinds) or None), fmt_duration(s.train_time[0]),
        ])
    return md_table(header, rows)


def per_task_table(summaries: list[VariantSummary]) -> str:
    """Rows are tasks, columns variants; each cell the mean accuracy (%) over that variant's runs."""
    per_task = {s.name: s.per_task() for s in summaries}
    rows = []
    for task in all_tasks(summaries):
        rows.append([task] + [fmt_pct(per_task[s.name].get(task, (None, None, 0))[0]) for s in summaries])
    return md_table(["task", *(s.name for s in summaries)], rows)


def comparison_table(comparisons: list[PairedComparison]) -> str:
    header = ["variant", "compared with", "pairs", "mean difference (points)", "95% CI",
              "better / worse / tied"]
    rows = []
    for c in comparisons:
        ci = c.ci
        rows.append([
            c.variant, c.reference, str(ci.n), f"{100 * ci.mean:+.1f}",
            f"[{100 * ci.low:+.1f}, {100 * ci.high:+.1f}]", f"{c.better} / {c.worse} / {c.tied}",
        ])
    return md_table(header, rows)


def training_table(summaries: list[VariantSummary]) -> str | None:
    """Throughput and losses of the trained variants (None when nothing was trained)."""
    trained = [s for s in summaries if s.numbers("train.steps") or s.numbers("train.final_train_loss")]
    if not trained:
        return None
    header = ["variant", "steps", "tokens", "tokens/s", "final train loss",
              "held-out loss: initial → final", "eval time (mean)"]
    rows = []
    for s in trained:
        def mean(dotted: str, summary: VariantSummary = s) -> float | None:
            values = summary.numbers(dotted)
            return sum(values) / len(values) if values else None

        rows.append([
            s.name, fmt_count(mean("train.steps")), fmt_count(mean("train.tokens")),
            fmt_count(mean("train.tokens_per_s")), fmt_float(mean("train.final_train_loss")),
            f"{fmt_float(mean('train.initial_eval_loss'))} → {fmt_float(mean('train.final_eval_loss'))}",
            fmt_duration(mean("eval.wall_s")),
        ])
    return md_table(header, rows)


def distill_table(summaries: list[VariantSummary]) -> str | None:
    """Fraction of variance unexplained per layer after distillation (None when no variant distilled)."""
    rows = []
    for s in summaries:
        per_layer: dict[str, list[float]] = {}
        for r in s.records:
            fvu = r.distill.get("fvu") if isinstance(r.distill, dict) else None
            for layer, value in (fvu or {}).items():
                if number(value) is not None:
                    per_layer.setdefault(str(layer), []).append(float(value))
        if not per_layer:
            continue
        layers = ", ".join(f"{k}: {sum(v) / len(v):.3f}" for k, v in sorted(per_layer.items(),
                                                                          key=lambda kv: (len(kv[0]), kv[0])))
        after = s.numbers("distill.eval_loss_after")
        rows.append([s.name, layers, fmt_float(sum(after) / len(after) if after else None)])
    if not rows:
        return None
    return md_table(["variant", "FVU per layer (mean over seeds)", "held-out loss after distillation"], rows)
