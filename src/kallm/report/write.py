"""`write_report(DIR)`: `report.md` and PNG plots, generated only from `DIR/results.jsonl`.

Modules: `records` (reading and per-variant summaries), `stats` (mean ± std, paired bootstrap),
`tables` (markdown), `plots` (figures), `per_set` (held-out quality per set, and the Data section). Free-text notes (what the run was sized to) come from
`DIR/notes.md`, or else from the `notes` key of `DIR/config.json` (the resolved config).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kallm.errors import KallmError
from kallm.folders import layout
from kallm.folders.layout import PLOTS, REPORT, ExperimentFolder
from kallm.folders.records import RunRecord
from kallm.io import check_output_dir, read_json, write_text_atomic
from kallm.report import frontier, per_set, plots, tables, verdict
from kallm.report import heldout_comparisons as heldout
from kallm.report.heldout_comparisons import HeldoutComparison
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

REPORT_FILE = REPORT
PLOTS_DIR = PLOTS
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
PLOT_NAMES = ("heldout_vs_params", "accuracy_vs_params", "per_task", "paired_differences", "loss_curves")

__all__ = ["comparisons", "write_report"]


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
    folder = ExperimentFolder(run_dir)
    if folder.notes.is_file():
        return folder.notes.read_text(encoding="utf-8").strip() or None
    config = folder.config
    if config.is_file():
        try:
            data = read_json(config, "experiment config")
        except KallmError:  # notes are optional: a damaged config must not stop the report
            return None
        text = data.get("notes") if isinstance(data, dict) else None
        return text.strip() if isinstance(text, str) and text.strip() else None
    return None


def _provenance(records: list[RunRecord]) -> str:
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


@dataclass
class _Analysis:
    """Everything the report says, computed once from the results and the runs' held-out files."""

    summaries: list[VariantSummary]
    comps: list[PairedComparison]
    original: VariantSummary | None
    final: list[HeldoutComparison]
    pairs: list[HeldoutComparison]
    bbh: verdict.BBHSummary


def _analyse(run_dir: Path, records: list[RunRecord]) -> _Analysis:
    summaries = summarise(records)
    return _Analysis(summaries, comparisons(summaries), heldout.original_of(summaries),
                     heldout.versus_original(run_dir, summaries), heldout.pairwise(run_dir, summaries),
                     verdict.bbh_summary(summaries))


def _save_plots(run_dir: Path, plot_dir: Path, a: _Analysis) -> dict[str, Path]:
    tests = list(a.bbh.tests.values())
    chance = tests[0].chance if tests else None
    per_task_chance = next((s.first("scores.chance") for s in a.summaries if s.first("scores.chance")), None)
    figures = {
        "heldout_vs_params": plots.heldout_vs_params_figure(a.summaries),
        "accuracy_vs_params": plots.accuracy_vs_params_figure(a.summaries, chance),
        "per_task": plots.per_task_figure(a.summaries, per_task_chance),
        "paired_differences": plots.comparison_figure(a.comps),
        "loss_curves": plots.loss_curves_figure(run_dir, a.summaries),
    }
    saved = {}
    for name, fig in figures.items():
        path = plot_dir / f"{name}.png"
        if fig is None:
            path.unlink(missing_ok=True)  # a stale plot from an earlier report would contradict this one
            continue
        saved[name] = plots.save_figure(fig, path)
    return saved


def _heldout_section(a: _Analysis, image) -> list[str]:
    md = ["## Held-out quality", "",
          "Mean NLL per assistant token on the held-out conversations (never trained on); Δ is the difference "
          "from the original model, gap the same in percent of the original's NLL, retained the original's NLL "
          "over the variant's (1 = as good as the original), right after initialisation and after training. "
          + verdict.INTERVAL_NOTE, "",
          verdict.heldout_table(a.summaries, a.final, a.original), ""]
    md += image("heldout_vs_params", "held-out NLL vs trainable parameters")
    if a.pairs:
        md += ["### Fair comparisons", "", "Each KAN (a KAN layer, or KAN functions on projections) against its "
               "parameter-matched controls (a variant sized `same-as` it, and the fresh or pruned MLP of the "
               "model's own class at its budget), the full-size linear restart and the original trained the same "
               "way, where the grid has them; negative Δ means the KAN is better.", "",
               verdict.pairwise_table(a.pairs), ""]
    return md


def _bbh_section(a: _Analysis, image) -> list[str]:
    ref = reference_variant(a.summaries)
    md = ["## BIG-Bench Hard", ""]
    if a.bbh.detectable is not None:
        md += [f"Chance is each task's mean over examples of 1 / (number of answers), macro-averaged; p is a "
               f"two-sided test of the macro accuracy against it (normal approximation). With "
               f"{a.bbh.n_examples} examples per run, two variants would have to differ by about "
               f"{100 * a.bbh.detectable:.0f} points to be told apart (α = 0.05, power 0.8, worst case p = 0.5).",
               "", verdict.bbh_table(a.summaries, a.bbh), ""]
    md += ["### Cost", "", tables.main_table(a.summaries), ""]
    md += image("accuracy_vs_params", "accuracy vs trainable parameters")
    if a.comps and ref is not None:
        md += [f"Paired comparison with `{ref.name}` (spec `{ref.spec}`) on matched (seed, task) pairs: the mean "
               f"difference of task accuracies (points) and a 95% percentile bootstrap interval over pairs "
               f"({N_RESAMPLES:,} resamples, rng seed {BOOTSTRAP_SEED}); pairs from one seed share a model, so "
               "the interval is optimistic when there are few seeds.", "", tables.comparison_table(a.comps), ""]
        md += image("paired_differences", "paired differences")
    else:
        md += ["No comparison: there is no linear-restart or baseline variant with per-task scores to compare "
               "with.", ""]
    md += ["### Per task", "", "Mean accuracy (%) over each variant's runs.", "",
           tables.per_task_table(a.summaries), ""]
    md += image("per_task", "accuracy per task")
    return md


def check_report_target(run_dir: Path, out: Path) -> None:
    """The report may not replace what it is made from: the folder, its results, config, notes or runs."""
    inputs = [run_dir / name for name in (RESULTS_FILE, layout.CONFIG, layout.NOTES)]
    target, runs = out.expanduser().resolve(), (run_dir / layout.RUNS).resolve()
    if out.is_dir() or target == run_dir.resolve():
        raise KallmError(f"report file {out} is a folder; name a file such as {run_dir / REPORT_FILE}")
    if any(target == p.resolve() for p in inputs) or runs in target.parents:
        raise KallmError(f"report file {out} is one of the report's inputs in {run_dir}; name another file such "
                         f"as {run_dir / REPORT_FILE}")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of experiment folder `run_dir` (default `run_dir/report.md`); return its path.

    Plots go to `plots/` beside the report and are linked relatively.
    """
    run_dir = Path(run_dir)
    records = load_results(run_dir)
    out = Path(out) if out is not None else ExperimentFolder(run_dir).report
    check_report_target(run_dir, out)
    check_output_dir(out.parent, "report folder")
    a = _analyse(run_dir, records)
    saved = _save_plots(run_dir, out.parent / PLOTS_DIR, a)

    def image(name: str, alt: str) -> list[str]:
        return [f"![{alt}]({PLOTS_DIR}/{saved[name].name})", ""] if name in saved else []

    md: list[str] = [f"# Experiment report: {run_dir.resolve().name}", ""]
    md += [f"Generated by `kallm report` from `{RESULTS_FILE}` ({len(records)} runs, {len(a.summaries)} variants) "
           f"and each run's `{heldout.HELDOUT_FILE}`. ± is the sample standard deviation over seeds, (n) the "
           f"number of runs; {tables.DASH} means not recorded or not applicable.", ""]
    references = {s.name for s in a.summaries if s.is_tuned_original}
    by_set = per_set.versus_original_by_set(run_dir, a.summaries)
    paragraph = verdict.verdict_paragraph(a.final, a.pairs, a.original, a.bbh, references)
    md += ["## Verdict", "", " ".join([paragraph, *per_set.per_set_sentences(a.summaries, by_set, references)]), ""]
    md += verdict.per_set_block(per_set.per_set_table(a.summaries, by_set))
    notes = _notes(run_dir)
    if notes:
        md += ["## Notes", "", notes, ""]
    md += _heldout_section(a, image)
    md += frontier.section(run_dir, a.summaries, by_set, out.parent / PLOTS_DIR)
    md += _bbh_section(a, image)
    training = tables.training_table(a.summaries)
    if training or "loss_curves" in saved:
        md += ["## Training", ""] + ([training, ""] if training else []) + image("loss_curves", "training losses")
    distill = tables.distill_table(a.summaries)
    if distill:
        md += ["## Distillation", "", distill, ""]
    md += per_set.data_section(a.summaries)
    md += ["## Provenance", "", _provenance(records), ""]
    write_text_atomic(out, "\n".join(md))
    logger.info("wrote %s (%d plots)", out, len(saved))
    return out
