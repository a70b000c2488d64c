"""`write_report(DIR)`: `report.md` and PNG plots, generated only from `DIR/results.jsonl`.

Modules: `records` (reading and per-variant summaries), `stats` (mean ± std, paired bootstrap),
`tables` (markdown), `plots` (figures). Free-text notes (what the run was sized to) come from
`DIR/notes.md`, or else from the `notes` key of `DIR/config.json` (the resolved config).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kallm.errors import KallmError
from kallm.io import check_output_dir, read_json, write_text_atomic
from kallm.report import plots, tables
from kallm.report.records import (
    RESULTS_FILE,
    VariantSummary,
    distinct,
    load_results,
    reference_variant,
    summarise,
)
from kallm.report.stats import PairedComparison, compare

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
PLOT_NAMES = ("accuracy_vs_params", "per_task", "paired_differences", "loss_curves")

__all__ = ["write_report", "comparisons", "load_results", "summarise"]


def comparisons(summaries: list[VariantSummary]) -> list[PairedComparison]:
    """Every variant against the reference (linear restart, else baseline), in results order."""
    ref = reference_variant(summaries)
    if ref is None:
        return []
    ref_scores = ref.task_scores()
    out = []
    for s in summaries:
        if s is ref:
            continue
        c = compare(s.name, s.task_scores(), ref.name, ref_scores, n_resamples=N_RESAMPLES, seed=BOOTSTRAP_SEED)
        if c is not None:
            out.append(c)
    return out


def _notes(run_dir: Path) -> str | None:
    notes = run_dir / "notes.md"
    if notes.is_file():
        return notes.read_text(encoding="utf-8").strip() or None
    config = run_dir / "config.json"
    if config.is_file():
        try:
            data = read_json(config, "experiment config")
        except KallmError:  # notes are optional: a damaged config must not stop the report
            return None
        text = data.get("notes") if isinstance(data, dict) else None
        return text.strip() if isinstance(text, str) and text.strip() else None
    return None


def _provenance(records: list[dict[str, Any]]) -> str:
    lines = []
    hashes = distinct(records, "config_hash")
    lines.append(f"- config hash: {', '.join(f'`{h}`' for h in hashes) if hashes else tables.DASH}")
    commits = distinct(records, "git_commit")
    lines.append(f"- git commit: {', '.join(f'`{c}`' for c in commits) if commits else tables.DASH}")
    times = sorted(str(t) for t in distinct(records, "time"))
    lines.append(f"- runs recorded: {times[0]} … {times[-1]}" if times else f"- runs recorded: {tables.DASH}")
    for versions in distinct(records, "versions"):
        if isinstance(versions, dict):
            text = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
            lines.append(f"- versions: {text or tables.DASH}")
    evals = distinct(records, "eval")
    modes = sorted({str(e.get("mode")) for e in evals if isinstance(e, dict) and e.get("mode")})
    limits = sorted({str(e.get("limit")) for e in evals if isinstance(e, dict) and e.get("limit") is not None})
    if modes or limits:
        lines.append(f"- evaluation: mode {', '.join(modes) or tables.DASH}; "
                     f"examples per task limited to {', '.join(limits) or 'none (all)'}")
    return "\n".join(lines)


def _save_plots(run_dir: Path, plot_dir: Path, summaries: list[VariantSummary],
                comps: list[PairedComparison]) -> dict[str, Path]:
    figures = {
        "accuracy_vs_params": plots.accuracy_vs_params_figure(summaries),
        "per_task": plots.per_task_figure(summaries),
        "paired_differences": plots.comparison_figure(comps),
        "loss_curves": plots.loss_curves_figure(run_dir, summaries),
    }
    saved = {}
    for name, fig in figures.items():
        path = plot_dir / f"{name}.png"
        if fig is None:
            path.unlink(missing_ok=True)  # a stale plot from an earlier report would contradict this one
            continue
        saved[name] = plots.save_figure(fig, path)
    return saved


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of experiment folder `run_dir` (default `run_dir/report.md`); return its path.

    Plots go to `plots/` beside the report and are linked relatively.
    """
    run_dir = Path(run_dir)
    records = load_results(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_FILE
    check_output_dir(out.parent, "report folder")
    summaries = summarise(records)
    comps = comparisons(summaries)
    saved = _save_plots(run_dir, out.parent / PLOTS_DIR, summaries, comps)

    def image(name: str, alt: str) -> list[str]:
        return [f"![{alt}]({PLOTS_DIR}/{saved[name].name})", ""] if name in saved else []

    metric = ", ".join(sorted({s.metric for s in summaries if s.metric})) or tables.DASH
    ref = reference_variant(summaries)
    title = run_dir.resolve().name
    md: list[str] = [f"# Experiment report: {title}", ""]
    md += [f"Generated by `kallm report` from `{RESULTS_FILE}` ({len(records)} runs, "
           f"{len(summaries)} variants). Accuracy is the macro average over BBH tasks of `{metric}`, "
           "in percent; ± is the sample standard deviation over seeds, (n) the number of runs. "
           f"{tables.DASH} means not recorded or not applicable.", ""]
    notes = _notes(run_dir)
    if notes:
        md += ["## Notes", "", notes, ""]
    md += ["## Results", "", tables.main_table(summaries), ""]
    md += image("accuracy_vs_params", "accuracy vs trainable parameters")
    md += ["## Paired comparison", ""]
    if comps and ref is not None:
        md += [f"Each variant is compared with `{ref.name}` (spec `{ref.spec}`) on matched (seed, task) pairs: "
               "the difference of task accuracies for the same seed and task (a run without a seed, such as "
               "the baseline, is matched to every seed). The table gives the mean difference in accuracy "
               f"points and a 95% percentile bootstrap interval: the pairs are resampled with replacement "
               f"{N_RESAMPLES:,} times (numpy, rng seed {BOOTSTRAP_SEED}) and the 2.5th and 97.5th "
               "percentiles of the resampled means are reported. Pairs from one seed share a model, so "
               "the interval is optimistic when there are few seeds.", "",
               tables.comparison_table(comps), ""]
        md += image("paired_differences", "paired differences")
    else:
        md += ["No comparison: there is no linear-restart or baseline variant with per-task scores "
               "to compare with.", ""]
    md += ["## Per task", "", "Mean accuracy (%) over each variant's runs.", "", tables.per_task_table(summaries), ""]
    md += image("per_task", "accuracy per task")
    training = tables.training_table(summaries)
    if training or "loss_curves" in saved:
        md += ["## Training", ""]
        md += [training, ""] if training else []
        md += image("loss_curves", "training and held-out loss")
    distill = tables.distill_table(summaries)
    if distill:
        md += ["## Distillation", "", distill, ""]
    md += ["## Provenance", "", _provenance(records), ""]
    write_text_atomic(out, "\n".join(md))
    logger.info("wrote %s (%d plots)", out, len(saved))
    return out
