"""The report's figures, drawn from the same summaries as its tables.

Figures are built with `matplotlib.figure.Figure` and the Agg canvas directly, never pyplot, so
the report neither changes nor depends on the process-wide matplotlib backend.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kallm.folders.records import RunRecord
from kallm.io import write_with_atomic
from kallm.report.records import VariantSummary, all_tasks, get, number
from kallm.report.stats import PairedComparison

logger = logging.getLogger(__name__)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(summaries: list[VariantSummary]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {s.name: cmap(i % 10) for i, s in enumerate(summaries)}


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    write_with_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path


def _value_vs_params(summaries: list[VariantSummary], values: dict[str, tuple[float | None, float | None, int]],
                     scale: float) -> Figure | None:
    """A value (error bar: std over seeds) against trainable parameters; a variant with none (the
    untouched model) is a dashed horizontal line, since it has no place on a parameter axis."""
    points = [(s, number(s.first("params.trainable")), *values[s.name]) for s in summaries]
    points = [p for p in points if p[2] is not None]
    if not any(p[1] for p in points):
        return None
    colors = _colors(summaries)
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    for s, trainable, mean, std, n in points:
        label = f"{s.name} (n={n})"
        if not trainable:
            ax.axhline(scale * mean, color=colors[s.name], linestyle="--", label=label)
            continue
        ax.errorbar([trainable / 1e6], [scale * mean], yerr=[scale * (std or 0.0)], fmt="o", capsize=4,
                    color=colors[s.name], label=label)
        ax.annotate(s.name, (trainable / 1e6, scale * mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("trainable parameters (millions)")
    ax.grid(alpha=0.3)
    return fig


def accuracy_vs_params_figure(summaries: list[VariantSummary], chance: float | None = None) -> Figure | None:
    """Mean BBH accuracy against trainable parameters, with the macro chance level as a dotted line."""
    fig = _value_vs_params(summaries, {s.name: s.accuracy for s in summaries}, 100)
    if fig is None:
        return None
    ax = fig.axes[0]
    if chance is not None:
        ax.axhline(100 * chance, color="black", linestyle=":", label=f"chance ({100 * chance:.1f}%)")
    ax.set_ylabel("BBH accuracy (%)")
    ax.set_title("Accuracy vs trainable parameters (mean ± std over seeds)")
    ax.legend(fontsize=8)
    return fig


def heldout_vs_params_figure(summaries: list[VariantSummary]) -> Figure | None:
    """Held-out NLL against trainable parameters (lower is better), the original model as a line."""
    fig = _value_vs_params(summaries, {s.name: s.heldout() for s in summaries}, 1)
    if fig is None:
        return None
    ax = fig.axes[0]
    ax.set_ylabel("held-out NLL (nats per assistant token)")
    ax.set_title("Held-out NLL vs trainable parameters (mean ± std over seeds)")
    ax.legend(fontsize=8)
    return fig


def per_task_figure(summaries: list[VariantSummary], chance: dict[str, float] | None = None) -> Figure | None:
    """Horizontal grouped bars: one group per task, one bar per variant (error bar: std); chance as a mark."""
    tasks = all_tasks(summaries)
    if not tasks:
        return None
    colors = _colors(summaries)
    fig = _figure(8, 1.5 + len(tasks) * (0.15 + 0.12 * len(summaries)))
    ax = fig.add_subplot()
    height = 0.8 / len(summaries)
    for i, s in enumerate(summaries):
        per_task = s.per_task()
        ys, means, errs = [], [], []
        for t, task in enumerate(tasks):
            mean, std, _ = per_task.get(task, (None, None, 0))
            if mean is None:
                continue
            ys.append(t + i * height - 0.4 + height / 2)
            means.append(100 * mean)
            errs.append(100 * (std or 0.0))
        ax.barh(ys, means, height=height, xerr=errs, color=colors[s.name], label=s.name,
                error_kw={"elinewidth": 0.8, "capsize": 1.5})
    if chance:
        known = [(t, chance[task]) for t, task in enumerate(tasks) if task in chance]
        ax.vlines([100 * p for _, p in known], [t - 0.45 for t, _ in known], [t + 0.45 for t, _ in known],
                  colors="black", linestyles=":", label="chance")
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_ylim(len(tasks) - 0.5, -0.5)  # first task on top, no empty margin
    ax.set_xlabel("accuracy (%)")
    ax.set_title("BBH accuracy per task (mean ± std over seeds)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=min(4, len(summaries)),
               fontsize=8)
    return fig


def comparison_figure(comparisons: list[PairedComparison]) -> Figure | None:
    """Mean paired difference with its 95% bootstrap CI, one row per variant."""
    if not comparisons:
        return None
    fig = _figure(7, 1.2 + 0.45 * len(comparisons))
    ax = fig.add_subplot()
    for i, c in enumerate(comparisons):
        ax.errorbar([100 * c.ci.mean], [i], xerr=[[100 * (c.ci.mean - c.ci.low)], [100 * (c.ci.high - c.ci.mean)]],
                    fmt="o", capsize=4, color="tab:blue")
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(range(len(comparisons)), [c.variant for c in comparisons])
    ax.invert_yaxis()
    ax.set_xlabel(f"accuracy difference vs {comparisons[0].reference} (points, 95% bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def read_metrics(run_dir: Path, record: RunRecord) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(train [(step, loss)], held-out [(step, eval_loss)]) from a run's metrics.jsonl, if present."""
    rel = get(record, "train.metrics_path")
    if not rel:
        return [], []
    path = Path(rel) if Path(rel).is_absolute() else run_dir / rel
    if not path.is_file():
        logger.warning("metrics file %s of run %s not found; no loss curve for it", path, record.run_id)
        return [], []
    train, held_out = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, RecursionError):
            continue  # a line cut short by a crash must not cost the whole figure
        if not isinstance(row, dict) or number(row.get("step")) is None:
            continue
        if number(row.get("loss")) is not None:
            train.append((float(row["step"]), float(row["loss"])))
        if number(row.get("eval_loss")) is not None:
            held_out.append((float(row["step"]), float(row["eval_loss"])))
    return train, held_out


def loss_curves_figure(run_dir: Path, summaries: list[VariantSummary]) -> Figure | None:
    """Training loss (left) and held-out loss (right) against step; one line per run, colour per variant."""
    colors = _colors(summaries)
    curves = []
    for s in summaries:
        for r in s.records:
            train, held_out = read_metrics(run_dir, r)
            if train or held_out:
                curves.append((s.name, train, held_out))
    if not curves:
        return None
    fig = _figure(11, 4.2)
    ax_train, ax_eval = fig.subplots(1, 2)
    labelled: set[tuple[str, str]] = set()  # one legend entry per variant, not per seed
    for name, train, held_out in curves:
        for ax, points, marker, kind in ((ax_train, train, None, "train"), (ax_eval, held_out, "o", "eval")):
            if not points:
                continue
            first = (name, kind) not in labelled
            labelled.add((name, kind))
            steps, losses = zip(*sorted(points))
            ax.plot(steps, losses, color=colors[name], alpha=0.8, linewidth=1, marker=marker, markersize=3,
                    label=name if first else None)
    for ax, title in ((ax_train, "training loss"), (ax_eval, "held-out loss")):
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{title} (one line per seed)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig
