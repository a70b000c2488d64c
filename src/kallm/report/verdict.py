"""The report's verdict: held-out quality against the original model, the fair comparisons, BBH against
chance, and a paragraph written from those numbers."""

from __future__ import annotations

from dataclasses import dataclass

from kallm.report.heldout_comparisons import TUNED_ORIGINAL, HeldoutComparison
from kallm.report.records import VariantSummary
from kallm.report.stats import ChanceTest, chance_test, detectable_difference
from kallm.report.tables import DASH, fmt_count, fmt_pct, md_table

INTERVAL_NOTE = (
    "Intervals are 95%: conversations are resampled in pairs (10,000 bootstrap draws of the held-out "
    "conversations, the same draw for both sides), and the seed-to-seed spread of each side enters as its "
    "runs' sample variance, with a t quantile at Welch-Satterthwaite degrees of freedom (two or three seeds "
    "are too few to resample). A variant with one run has no measured seed spread: its interval covers the "
    "conversations only."
)


def fmt_nll(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return DASH
    return f"{mean:.3f} ± {std:.3f} ({n})" if std is not None else f"{mean:.3f} ({n})"


def fmt_delta(c: HeldoutComparison | None) -> str:
    if c is None:
        return DASH
    return f"{c.ci.mean:+.3f} [{c.ci.low:+.3f}, {c.ci.high:+.3f}]"


def _retained(original: float | None, value: float | None) -> str:
    return DASH if original is None or value is None else f"{original / value:.3f}"


def heldout_table(summaries: list[VariantSummary], final: list[HeldoutComparison],
                  original: VariantSummary | None) -> str:
    """The report's first table: held-out NLL, its distance from the original, and the parameters."""
    by_name = {c.variant: c for c in final}
    orig_nll = original.heldout()[0] if original is not None else None
    header = ["variant", "spec", "held-out NLL (mean ± std (n))", "Δ vs original (nats) [95% CI]", "gap",
              "retained: init → trained", "trainable params", "total params"]
    rows = []
    for s in summaries:
        mean = s.heldout()[0]
        comparison = by_name.get(s.name)
        gap = f"{100 * comparison.ci.mean / orig_nll:+.1f}%" if comparison and orig_nll else DASH
        retained = DASH if s is original else (f"{_retained(orig_nll, s.heldout('heldout_init')[0])} → "
                                               f"{_retained(orig_nll, mean)}")
        spec = (f"`{s.spec}`" + (" (original weights)" if s.is_tuned_original else "")) if s.spec else DASH
        rows.append([s.name, spec, fmt_nll(*s.heldout()), fmt_delta(comparison), gap,
                     retained, fmt_count(s.first("params.trainable")), fmt_count(s.first("params.total"))])
    return md_table(header, rows)


def per_set_block(table: str | None) -> list[str]:
    """The report's first table (kallm.report.per_set): every held-out set as a column, under the verdict."""
    if table is None:
        return []
    return ["Mean held-out NLL per set (per assistant token; per token for text), and in parentheses Δ vs the "
            "original in percent of its NLL with the 95% interval (see Held-out quality for how it is computed).",
            "", table, ""]


def _outcome(c: HeldoutComparison) -> str:
    if not c.ci.distinguishable:
        return "not distinguishable"
    return f"{c.variant} better" if c.ci.mean < 0 else f"{c.reference} better"


def pairwise_table(comparisons: list[HeldoutComparison]) -> str:
    header = ["variant", "compared with", "as", "Δ NLL (nats) [95% CI]", "outcome"]
    return md_table(header, [[c.variant, c.reference, c.role, fmt_delta(c), _outcome(c)] for c in comparisons])


@dataclass(frozen=True)
class BBHSummary:
    """BBH against chance for each variant, and what the evaluated examples could detect at all."""

    tests: dict[str, ChanceTest]
    detectable: float | None  # smallest detectable difference between two variants (accuracy, 0-1)
    n_examples: int


def bbh_summary(summaries: list[VariantSummary]) -> BBHSummary:
    tests, detectable, n_examples = {}, None, 0
    for s in summaries:
        chance, counts = s.first("scores.chance"), s.first("scores.n")
        mean = s.accuracy[0]
        if not chance or not counts or mean is None:
            continue
        counts = {t: int(n) for t, n in counts.items() if t in chance}
        tests[s.name] = chance_test(mean, chance, counts)
        detectable, n_examples = detectable_difference(counts), sum(counts.values())
    return BBHSummary(tests, detectable, n_examples)


def bbh_table(summaries: list[VariantSummary], bbh: BBHSummary) -> str:
    header = ["variant", "accuracy % (mean ± std (n))", "chance %", "above chance (points)", "p (vs chance)"]
    rows = []
    for s in summaries:
        test = bbh.tests.get(s.name)
        mean, std, n = s.accuracy
        acc = DASH if mean is None else f"{fmt_pct(mean)} ± {fmt_pct(std)} ({n})"
        rows.append([s.name, acc, fmt_pct(test.chance) if test else DASH,
                     f"{100 * (test.accuracy - test.chance):+.1f}" if test else DASH,
                     f"{test.p_value:.3f}" if test else DASH])
    return md_table(header, rows)


def _list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _heldout_sentences(final: list[HeldoutComparison], original: VariantSummary,
                       references: set[str]) -> list[str]:
    """`references`: variants that are the original trained further, not retrofits (never "the closest")."""
    nll, _, _ = original.heldout()
    n_conv = final[0].ci.conversations
    out = [f"The original model scores {nll:.3f} nats per assistant token on {n_conv} held-out conversations."]
    worse = [c for c in final if c.ci.distinguishable and c.ci.mean > 0]
    same = [c for c in final if not c.ci.distinguishable]
    better = [c for c in final if c.ci.distinguishable and c.ci.mean < 0]
    describe = [f"{c.variant} {c.ci.mean:+.3f} ({100 * c.ci.mean / nll:+.1f}%)" for c in final]
    if worse:
        out.append(f"{_list([c.variant for c in worse])} {'is' if len(worse) == 1 else 'are'} distinguishably worse "
                   "than the original (the 95% interval excludes 0).")
    if same:
        out.append(f"{_list([c.variant for c in same])} cannot be told apart from the original on this set.")
    if better:
        out.append(f"{_list([c.variant for c in better])} scores better than the original on this set.")
    retrofits = [c for c in final if c.variant not in references] or final
    closest = min(retrofits, key=lambda c: c.ci.mean)
    out.append(f"Distance from the original: {'; '.join(describe)}; the closest "
               f"{'retrofit ' if references else ''}is {closest.variant}.")
    return out


def _bbh_sentences(bbh: BBHSummary) -> list[str]:
    if not bbh.tests or bbh.detectable is None:
        return []
    above = [n for n, t in bbh.tests.items() if t.p_value < 0.05 and t.accuracy > t.chance]
    out = [f"BIG-Bench Hard ({bbh.n_examples} examples per run) could only detect a difference of about "
           f"{100 * bbh.detectable:.0f} accuracy points between two variants (α = 0.05, power 0.8);"]
    if above:
        out[-1] += f" only {_list(above)} {'is' if len(above) == 1 else 'are'} above chance (p < 0.05)."
    else:
        out[-1] += " no variant's accuracy is distinguishable from chance, so BBH cannot separate them here."
    return out


def verdict_paragraph(final: list[HeldoutComparison], pairs: list[HeldoutComparison],
                      original: VariantSummary | None, bbh: BBHSummary, references: set[str] | None = None) -> str:
    """A short paragraph written from the numbers: what is distinguishable from what, and by how much."""
    sentences: list[str] = []
    if original is not None and final:
        sentences += _heldout_sentences(final, original, references or set())
    for c in pairs:
        verb = "cannot be told apart from" if not c.ci.distinguishable else (
            "is better than" if c.ci.mean < 0 else "is worse than")
        who = c.role if c.role == TUNED_ORIGINAL else f"its {c.role}"  # not "its" original
        sentences.append(f"{c.variant} {verb} {c.reference} ({who}: {c.ci.mean:+.3f} nats "
                         f"[{c.ci.low:+.3f}, {c.ci.high:+.3f}]).")
    sentences += _bbh_sentences(bbh)
    return " ".join(sentences) if sentences else "No held-out scores or BBH results to judge from."
