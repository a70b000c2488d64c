"""The report's "Frontier" section: can a smaller KAN do a larger MLP's job?

A grid with variants at several budgets (`budgets:` in the config, kallm.experiment.budgets) or with
budget-sized controls gets a plot (per held-out set: Δ NLL vs the original against new-FFN parameters per
layer, one line per form), a table per set (rows: budgets; the best KAN form against the pruned and the
fresh MLP of that count) and verdict lines. Everything is read from the records: the spec text gives the
kind (hence its role, `VariantKind.role`) and the budget; `params.new_per_layer` the size. Δ and its 95%
interval per variant and set are the per-set statistics (kallm.report.per_set); a KAN against a control is
the same paired interval (seeds and conversations, kallm.report.stats.nll_difference_ci).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from kallm.folders.layout import FRONTIER_PLOT, PLOTS
from kallm.report.heldout_comparisons import N_RESAMPLES, linear_restart_of, load_runs
from kallm.report.per_set import SetComparison
from kallm.report.plots import save_figure
from kallm.report.records import VariantSummary, number
from kallm.report.stats import DifferenceCI, nll_difference_ci
from kallm.report.tables import DASH, md_table
from kallm.retrofitting.variant import VARIANT_KINDS, Budget, budget_label, frontier_key

logger = logging.getLogger(__name__)

KAN, CONTROL = "kan", "control"
PRUNED, FRESH = "pruned", "linear"  # the control kinds the table has a column for
BEATS, WORSE, EVEN = "beats", "worse", "not distinguishable"


@dataclass(frozen=True)
class Point:
    """One variant on the frontier: its role, its budget (`match` as the ratio 1), its form and size."""

    summary: VariantSummary
    role: str
    kind: str
    budget: Budget
    form: str  # the variant's name without its budget suffix (one line of the plot per form)
    new_params: float | None  # new-FFN parameters per layer

    @property
    def name(self) -> str:
        return self.summary.name


def frontier_points(summaries: list[VariantSummary]) -> list[Point]:
    """The trained KANs and controls that were sized by a budget, in results order."""
    out = []
    for s in summaries:
        spec = s.variant
        if spec is None or not spec.trained or spec.kind not in VARIANT_KINDS.names():
            continue
        role = VARIANT_KINDS.get(spec.kind).role
        budget = spec.budget or (size_as_budget(s) if role == KAN else None)
        if role not in (KAN, CONTROL) or budget is None:
            continue
        suffix = f"-{budget_label(budget)}"
        form = s.name[:-len(suffix)] if s.name.endswith(suffix) and len(s.name) > len(suffix) else s.name
        out.append(Point(s, role, spec.kind, frontier_key(budget), form, number(s.first("params.new_per_layer"))))
    return out


def size_as_budget(summary: VariantSummary) -> Budget | None:
    """The budget a variant with a fixed size (a one-layer KAN of a given degree) sits at: its new FFNs'
    share of the replaced ones' parameters, to two decimals (SmolLM2's Chebyshev KAN of degree 6, 2 and 0
    are exactly 1, 0.5 and 0.25 of its SwiGLU). None: no counts recorded."""
    new, old = number(summary.first("params.replaced_new")), number(summary.first("params.replaced_old"))
    if not new or not old:
        return None
    return Budget("ratio", round(new / old, 2))


def applies(points: list[Point]) -> bool:
    """A frontier: two budgets or more, or a control sized by a ratio of the FFN (not only `same-as` ones)."""
    return len({p.budget for p in points}) >= 2 or any(p.role == CONTROL and p.budget.kind == "ratio"
                                                       for p in points)


def budget_order(budget: Budget) -> tuple[bool, float]:
    return budget.kind != "ratio", float(budget.value)


def difference(run_dir: Path, a: VariantSummary, b: VariantSummary, set_name: str) -> DifferenceCI | None:
    """NLL(a) - NLL(b) on one set with its paired interval; None when either has no per-example scores there
    or they were scored on different examples."""
    loaded_a, loaded_b = load_runs(run_dir, a, "final", set_name), load_runs(run_dir, b, "final", set_name)
    if loaded_a is None or loaded_b is None or loaded_a[0] != loaded_b[0]:
        return None
    return nll_difference_ci(loaded_a[1], loaded_b[1], N_RESAMPLES)


def outcome(ci: DifferenceCI | None) -> str:
    """A KAN against a control: beats (interval below 0), worse (above 0), else not distinguishable."""
    if ci is None or not ci.distinguishable:
        return EVEN
    return BEATS if ci.high < 0 else WORSE


@dataclass
class Frontier:
    """The frontier of one grid: its points, held-out sets and each variant's Δ vs the original per set."""

    run_dir: Path
    points: list[Point]
    sets: list[str]
    deltas: dict[tuple[str, str], SetComparison]  # (set, variant) -> Δ vs the original
    others: list[VariantSummary]  # the grid's variants off the frontier (the linear restart may be one)
    # (a, b, set) -> difference(a, b): the table and the verdict lines ask for the same pairs
    _differences: dict[tuple[str, str, str], DifferenceCI | None] = field(default_factory=dict, repr=False)

    @property
    def budgets(self) -> list[Budget]:
        return sorted({p.budget for p in self.points}, key=budget_order)

    def at(self, budget: Budget, role: str, kind: str | None = None) -> list[Point]:
        return [p for p in self.points if p.budget == budget and p.role == role and kind in (None, p.kind)]

    def best_kan(self, budget: Budget, set_name: str) -> Point | None:
        """The KAN of that budget with the lowest Δ NLL on the set."""
        scored = [p for p in self.at(budget, KAN) if (set_name, p.name) in self.deltas]
        return min(scored, key=lambda p: self.deltas[(set_name, p.name)].ci.mean, default=None)

    def best_overall(self, budget: Budget) -> Point | None:
        """The KAN of that budget with the lowest Δ% averaged over the sets it was scored on."""
        def mean_pct(p: Point) -> float:
            values = [c.pct(c.ci.mean) for n in self.sets if (c := self.deltas.get((n, p.name)))]
            return sum(values) / len(values) if values else math.inf
        kans = [p for p in self.at(budget, KAN) if mean_pct(p) < math.inf]
        return min(kans, key=mean_pct, default=None)

    def difference(self, a: VariantSummary, b: VariantSummary, set_name: str) -> DifferenceCI | None:
        """`difference(a, b)` on the set, computed (read from disk, resampled) once per pair."""
        key = (a.name, b.name, set_name)
        if key not in self._differences:
            self._differences[key] = difference(self.run_dir, a, b, set_name)
        return self._differences[key]

    def control(self, budget: Budget, kind: str) -> Point | None:
        return next(iter(self.at(budget, CONTROL, kind)), None)

    def versus(self, kan: Point, control: VariantSummary, set_name: str) -> str:
        """'beats: -2.1% [-3.0, -1.2]' (KAN minus control, in % of the original's NLL on the set)."""
        ci = self.difference(kan.summary, control, set_name)
        base = self.deltas.get((set_name, kan.name))
        if ci is None or base is None:
            return f"{EVEN} (no paired scores)"
        pct = base.pct
        return f"{outcome(ci)}: {pct(ci.mean):+.1f}% [{pct(ci.low):+.1f}, {pct(ci.high):+.1f}]"

    def full_size_fresh(self) -> VariantSummary | None:
        """The fresh MLP at the original's count: `linear` at budget 1.0 (or match), else the linear restart."""
        point = self.control(Budget("ratio", 1.0), FRESH)
        if point is not None:
            return point.summary
        return linear_restart_of(self.others)


def build(run_dir: Path, summaries: list[VariantSummary], by_set: dict[str, list[SetComparison]]) -> Frontier | None:
    points = frontier_points(summaries)
    if not applies(points):
        return None
    deltas = {(c.set_name, c.variant): c for cs in by_set.values() for c in cs}
    others = [s for s in summaries if all(s is not p.summary for p in points)]
    return Frontier(run_dir, points, list(by_set), deltas, others)


def set_table(f: Frontier, set_name: str) -> str:
    """Rows: budgets. The best KAN form and each control with Δ% vs the original, and the KAN against each."""
    rows = []
    for budget in f.budgets:
        best = f.best_kan(budget, set_name)
        cells = [budget_label(budget), DASH if best is None else f"{best.form} {f.deltas[(set_name, best.name)].describe()}"]
        for kind in (PRUNED, FRESH):
            control = f.control(budget, kind)
            delta = f.deltas.get((set_name, control.name)) if control else None
            cells.append(DASH if delta is None else f"{control.name} {delta.describe()}")  # type: ignore[union-attr]
        for kind in (PRUNED, FRESH):
            control = f.control(budget, kind)
            cells.append(DASH if best is None or control is None else f.versus(best, control.summary, set_name))
        rows.append(cells)
    return md_table(["budget", "best KAN (Δ vs original)", "pruned control", "fresh control",
                     "best KAN vs pruned", "best KAN vs fresh"], rows)


def _against(f: Frontier, kan: Point, control: Point | None, kind: str) -> str:
    if control is None:
        return f"there is no {kind} control at this budget"
    by_outcome: dict[str, list[str]] = {}
    for n in f.sets:
        ci = f.difference(kan.summary, control.summary, n)
        by_outcome.setdefault(outcome(ci), []).append(n)
    verbs = {BEATS: "beats", WORSE: "is worse than", EVEN: f"is {EVEN} from"}
    return "it " + " and ".join(f"{verbs[word]} {control.name} on {', '.join(names)}"
                                for word, names in by_outcome.items())


def verdict_lines(f: Frontier) -> list[str]:
    """Per budget the best form and whether it beats the pruned and the fresh MLP of that count; then the
    smallest KAN that matches the fresh MLP of the original's count on every set."""
    lines = []
    for budget in f.budgets:
        best = f.best_overall(budget)
        if best is None:
            lines.append(f"- {budget_label(budget)}: no KAN was scored at this budget.")
            continue
        pcts = [c.pct(c.ci.mean) for n in f.sets if (c := f.deltas.get((n, best.name)))]
        against = [_against(f, best, f.control(budget, kind), kind) for kind in (PRUNED, FRESH)]
        lines.append(f"- {budget_label(budget)}: the best KAN form is {best.form} (`{best.name}`, Δ NLL vs the "
                     f"original {sum(pcts) / len(pcts):+.1f}% averaged over {len(pcts)} set(s)); "
                     + "; ".join(against) + ".")
    return lines + [matching_line(f)]


def matching_line(f: Frontier) -> str:
    """The smallest KAN (fewest new parameters) not worse than the fresh MLP of the original's count on every
    set: each difference interval includes 0 or is below it."""
    fresh = f.full_size_fresh()
    if fresh is None:
        return ("- No fresh MLP of the original's count (linear at budget 1.0 or match, or a linear restart) in "
                "the grid: whether a smaller KAN matches one is not measured.")
    kans = sorted((p for p in f.points if p.role == KAN and p.new_params is not None), key=lambda p: p.new_params)
    for kan in kans:
        cis = [f.difference(kan.summary, fresh, n) for n in f.sets]
        if cis and all(ci is not None and ci.low <= 0 for ci in cis):
            return (f"- Smallest KAN matching the fresh MLP of the original's count (`{fresh.name}`) on every "
                    f"held-out set: `{kan.name}` ({kan.new_params:,.0f} new parameters per layer).")
    return f"- No KAN matched the fresh MLP of the original's count (`{fresh.name}`) on every held-out set."


def frontier_figure(f: Frontier):
    """One panel per set: Δ NLL % vs the original against new-FFN parameters per layer; controls dashed."""
    if not f.sets or not any(p.new_params for p in f.points):
        return None
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(f.sets), 4), layout="constrained")  # never pyplot (see kallm.report.plots)
    FigureCanvasAgg(fig)
    forms = list(dict.fromkeys((p.role, p.form) for p in f.points))
    cmap = colormaps["tab10"]
    for i, set_name in enumerate(f.sets):
        ax = fig.add_subplot(1, len(f.sets), i + 1)
        ax.axhline(0.0, color="black", linewidth=1, label="original")
        for j, (role, form) in enumerate(forms):
            pts = sorted((p for p in f.points if (p.role, p.form) == (role, form) and p.new_params
                          and (set_name, p.name) in f.deltas), key=lambda p: p.new_params)
            if pts:
                _draw_form(ax, f, set_name, pts, role, form, cmap(j % 10))
        ax.set_xscale("log")
        ax.set_ylim(*_y_range(f, set_name))
        ax.grid(True, alpha=0.3)
        ax.set_title(set_name)
        ax.set_xlabel("new-FFN parameters per layer")
        if i == 0:
            ax.set_ylabel("Δ held-out NLL vs original (%)")
            ax.legend(fontsize=7)
    return fig


OFF_SCALE = 60.0  # % above the original: a form that far off (diverged) is marked at the top, not drawn to scale


def _y_range(f: Frontier, set_name: str) -> tuple[float, float]:
    """The panel's Δ range: every interval up to OFF_SCALE, with a margin."""
    cs = [c for p in f.points if (c := f.deltas.get((set_name, p.name)))]
    lows = [c.pct(c.ci.low) for c in cs] + [0.0]
    highs = [min(c.pct(c.ci.high), OFF_SCALE) for c in cs] + [0.0]
    margin = 0.08 * (max(highs) - min(lows)) + 0.5
    return min(lows) - margin, max(highs) + margin


def _draw_form(ax, f: Frontier, set_name: str, pts: list[Point], role: str, form: str, color) -> None:
    """One form's points with their intervals; points past OFF_SCALE as a labelled arrowhead at the top."""
    cs = [f.deltas[(set_name, p.name)] for p in pts]
    xs, ys = [p.new_params for p in pts], [c.pct(c.ci.mean) for c in cs]
    shown = [k for k, y in enumerate(ys) if y <= OFF_SCALE]
    err = [[ys[k] - cs[k].pct(cs[k].ci.low) for k in shown], [cs[k].pct(cs[k].ci.high) - ys[k] for k in shown]]
    if shown:
        ax.errorbar([xs[k] for k in shown], [ys[k] for k in shown], yerr=err, fmt="o-" if role == KAN else "s--",
                    capsize=3, color=color, label=form)
    for k, y in enumerate(ys):
        if y > OFF_SCALE:
            ax.plot([xs[k]], [OFF_SCALE], marker="^", color=color, label=None if shown else form)
            ax.annotate(f"{form} {y:+.0f}%", (xs[k], OFF_SCALE), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color=color)


def section(run_dir: Path, summaries: list[VariantSummary], by_set: dict[str, list[SetComparison]],
            plot_dir: Path) -> list[str]:
    """The Frontier section's markdown (empty when the grid has no frontier); writes plots/frontier.png."""
    path = plot_dir / FRONTIER_PLOT
    f = build(run_dir, summaries, by_set)
    fig = frontier_figure(f) if f is not None else None
    if fig is None:
        path.unlink(missing_ok=True)  # a stale plot from an earlier report would contradict this one
    else:
        save_figure(fig, path)
    if f is None:
        return []
    md = ["## Frontier", "",
          "Can a smaller KAN do a larger MLP's job? Each KAN form and each control (the original MLP pruned to the "
          "count, `pruned`; a fresh MLP of the model's class at the count, `linear`) at each budget (a ratio of the "
          "replaced FFN's parameters). Δ is the held-out NLL difference from the original in % of its NLL [95% "
          "interval over seeds and examples]; a KAN against a control is the paired difference KAN minus control: "
          f"'{BEATS}' when its interval is below 0, '{WORSE}' above, else '{EVEN}'.", ""]
    md += verdict_lines(f) + [""]
    if fig is not None:
        md += [f"![held-out NLL vs new-FFN parameters per layer]({PLOTS}/{FRONTIER_PLOT})", ""]
    for set_name in f.sets:
        md += [f"### {set_name}", "", set_table(f, set_name), ""]
    return md
