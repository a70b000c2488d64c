"""Held-out quality per set, and the data behind it: what a retrofit was trained on and what it never saw.

A grid scores every run on several held-out sets: the set carved from the training data (`heldout`), its
parts by source file (`heldout:<file>`, when the training data has several files) and each `eval.heldout`
file (chat or plain text). Sets carved from the training sources measure quality on data like the training
data; the other files measure quality on text the retrofit never saw. Each set is compared with the
original model by the verdict's paired statistics (kallm.report.stats.nll_difference_ci).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kallm.folders.layout import DEFAULT_HELDOUT_SET as CARVED
from kallm.folders.layout import is_carved_set
from kallm.report.heldout_comparisons import N_RESAMPLES, load_runs, original_of
from kallm.report.records import VariantSummary, get
from kallm.report.stats import DifferenceCI, nll_difference_ci
from kallm.report.tables import DASH, md_table

TRAINED, UNSEEN = "from the training sources", "never seen in training"


@dataclass(frozen=True)
class SetComparison:
    """One variant against the original model on one held-out set."""

    set_name: str
    variant: str
    original_nll: float
    ci: DifferenceCI

    def pct(self, value: float) -> float:
        return 100 * value / self.original_nll

    def describe(self) -> str:
        """'+4.2% [+1.0, +7.5]': Δ NLL in percent of the original's, with its 95% interval."""
        return f"{self.pct(self.ci.mean):+.1f}% [{self.pct(self.ci.low):+.1f}, {self.pct(self.ci.high):+.1f}]"


def set_names(summaries: list[VariantSummary]) -> list[str]:
    """Every held-out set the runs were scored on, in recorded order (the carved set first)."""
    names: list[str] = []
    for s in summaries:
        for r in s.records:
            sets = get(r, "heldout.sets") or ({get(r, "heldout.set") or CARVED: {}} if get(r, "heldout") else {})
            names += [n for n in sets if n not in names]
    return sorted(names, key=lambda n: (n != CARVED, not is_carved_set(n)))


def training_sources(summaries: list[VariantSummary]) -> list[str]:
    """The source files (by name) the runs' training sample was drawn from (record `data.train`)."""
    sources: list[str] = []
    for s in summaries:
        for r in s.records:
            sources += [str(k) for k in (get(r, "data.train") or {}) if str(k) not in sources]
    return sources


def origin(set_name: str, sources: list[str]) -> str:
    """Whether a set comes from the training sources (carved from them, or the same file) or was never seen."""
    if is_carved_set(set_name) or set_name in sources:
        return TRAINED
    return UNSEEN


def versus_original_by_set(run_dir: Path, summaries: list[VariantSummary]) -> dict[str, list[SetComparison]]:
    """set -> every trained variant against the original on it (paired over the set's examples)."""
    original = original_of(summaries)
    out: dict[str, list[SetComparison]] = {}
    if original is None:
        return out
    for name in set_names(summaries):
        ref = load_runs(run_dir, original, "final", name)
        if ref is None:
            continue
        for s in summaries:
            if s is original or s.variant is None or not s.variant.trained:
                continue
            runs = load_runs(run_dir, s, "final", name)
            if runs is None or runs[0] != ref[0]:
                continue
            ci = nll_difference_ci(runs[1], ref[1], N_RESAMPLES)
            out.setdefault(name, []).append(SetComparison(name, s.name, float(ref[1].per_run_nll.mean()), ci))
    return out


def _set_nll(summary: VariantSummary, name: str) -> float | None:
    values = [v for r in summary.records if isinstance(v := (get(r, "heldout.sets") or {}).get(name, {}).get("nll"),
                                                       (int, float))]
    if not values and name == CARVED:
        values = summary.numbers("heldout.nll")
    return sum(values) / len(values) if values else None


def per_set_table(summaries: list[VariantSummary], by_set: dict[str, list[SetComparison]]) -> str | None:
    """One row per variant, one column per held-out set: mean NLL, and Δ% vs the original [95% interval]."""
    names = set_names(summaries)
    if not names:
        return None
    sources = training_sources(summaries)
    header = ["variant", *(f"{n} ({'trained-on source' if origin(n, sources) == TRAINED else 'unseen'})"
                           for n in names)]
    lookup = {(c.set_name, c.variant): c for cs in by_set.values() for c in cs}
    rows = []
    for s in summaries:
        cells = []
        for n in names:
            nll, c = _set_nll(s, n), lookup.get((n, s.name))
            cells.append(DASH if nll is None else f"{nll:.3f}" + (f" ({c.describe()})" if c else ""))
        rows.append([s.name, *cells])
    return md_table(header, rows)


def per_set_sentences(summaries: list[VariantSummary], by_set: dict[str, list[SetComparison]],
                      references: set[str]) -> list[str]:
    """Which sets come from the training sources and which were never seen; each retrofit's worst set."""
    names, sources = set_names(summaries), training_sources(summaries)
    if not names:
        return []
    trained = [n for n in names if origin(n, sources) == TRAINED]
    unseen = [n for n in names if origin(n, sources) == UNSEEN]
    out = []
    if trained:
        out.append(f"The retrofits were trained on {', '.join(sources) or 'the training data'}; held-out sets "
                   f"from those sources: {', '.join(trained)}.")
    out.append(f"Sets never seen in training: {', '.join(unseen)}." if unseen else
               "No held-out set comes from outside the training sources (add files to eval.heldout).")
    worst: dict[str, SetComparison] = {}
    for comparisons in by_set.values():
        for c in comparisons:
            if c.variant not in references and (c.variant not in worst or
                                                c.pct(c.ci.mean) > worst[c.variant].pct(worst[c.variant].ci.mean)):
                worst[c.variant] = c
    if len(names) > 1 and worst:
        out.append("Worst set per retrofit (Δ NLL vs the original [95% interval]): " + "; ".join(
            f"{v} on {c.set_name} {c.describe()}" for v, c in worst.items()) + ".")
    return out


def _count(row: Any) -> str:
    if not isinstance(row, dict):
        return DASH
    tokens = row.get("tokens")
    return f"{row.get('conversations', DASH)}" + (f" / {tokens:,}" if isinstance(tokens, int) else "")


def data_section(summaries: list[VariantSummary]) -> list[str]:
    """The "Data" section: per source file, the conversations / tokens of training, fitting and held-out."""
    data = next((get(r, "data") for s in summaries for r in s.records if isinstance(get(r, "data"), dict)), None)
    if data is None:
        return []
    fit = next((get(r, "data.fit") for s in summaries for r in s.records if get(r, "data.fit")), None) or {}
    sources = list(dict.fromkeys([*(data.get("loaded") or {}), *(data.get("train") or {}),
                                  *(data.get("heldout") or {})]))
    rows = [[src, _count((data.get("loaded") or {}).get(src)), _count((data.get("train") or {}).get(src)),
             _count(fit.get(src)), _count((data.get("heldout") or {}).get(src))] for src in sources]
    first = next((r for s in summaries for r in s.records if get(r, "heldout.sets")), {})
    for name, summary in (get(first, "heldout.sets") or {}).items():
        if name != CARVED and not name.startswith(f"{CARVED}:"):
            rows.append([f"{name} (eval.heldout)", DASH, DASH, DASH,
                         _count({"conversations": summary.get("n_conversations"), "tokens": summary.get("n_tokens")})])
    mix = data.get("mix")
    return ["## Data", "",
            f"Training sample: {data.get('max_conversations') or 'all'} conversations drawn with data seed "
            f"{data.get('seed')}, stratified by file {'by the mix ' + str(mix) if mix else 'in proportion to its size'}. "
            "Cells are conversations / tokens (training: after truncation, training and validation split together; "
            "fitting: what distillation fitted on; held-out: the assistant tokens scored, or for text the blocks "
            "and tokens scored).", "",
            md_table(["source", "sampled", "training", "fitting", "held-out"], rows), ""]
