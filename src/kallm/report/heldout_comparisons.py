"""Held-out comparisons for the report: each variant against the original model, each KAN against its
parameter-matched control and against the linear restart, from the runs' per-conversation NLLs.

Every run of a grid writes `runs/<run_id>/heldout.json` (per-conversation NLL sums by stage and set);
runs of one grid were scored on the same conversations in the same order, which is checked here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kallm.errors import KallmError
from kallm.folders.layout import DEFAULT_HELDOUT_SET, HELDOUT, ExperimentFolder
from kallm.folders.records import read_heldout_scores
from kallm.report.records import VariantSummary
from kallm.report.stats import DifferenceCI, HeldoutRuns, nll_difference_ci
from kallm.retrofitting.variant import VARIANT_KINDS

log = logging.getLogger(__name__)

N_RESAMPLES = 10_000
HELDOUT_FILE = HELDOUT


@dataclass(frozen=True)
class HeldoutComparison:
    variant: str
    reference: str
    role: str  # what the reference is: "original", "control" (parameter-matched linear), "linear restart"
    ci: DifferenceCI


def load_runs(run_dir: Path, summary: VariantSummary, stage: str = "final",
              set_name: str = DEFAULT_HELDOUT_SET) -> tuple[list[str], HeldoutRuns] | None:
    """(conversation keys, the variant's runs) on one held-out set, or None when its runs have none."""
    keys: list[str] | None = None
    sums, tokens = [], None
    for record in summary.records:
        path = ExperimentFolder(run_dir).run(str(record.run_id)).heldout
        scored = read_heldout_scores(path).get(stage, {}).get(set_name)
        if not scored:
            continue
        if keys is not None and scored.keys != keys:
            raise KallmError(f"{path}: scored on other held-out conversations than the variant's other runs")
        keys = scored.keys
        sums.append(np.asarray(scored.nll_sums, dtype=np.float64))
        tokens = np.asarray(scored.n_tokens, dtype=np.float64)
    if keys is None:
        return None
    return keys, HeldoutRuns(np.stack(sums), tokens)


def _compare(run_dir: Path, a: VariantSummary, b: VariantSummary, role: str, stage: str) -> HeldoutComparison | None:
    loaded_a, loaded_b = load_runs(run_dir, a, stage), load_runs(run_dir, b)
    if loaded_a is None or loaded_b is None:
        return None
    if loaded_a[0] != loaded_b[0]:
        log.warning("%s and %s were scored on different held-out conversations; not compared", a.name, b.name)
        return None
    return HeldoutComparison(a.name, b.name, role, nll_difference_ci(loaded_a[1], loaded_b[1], N_RESAMPLES))


def original_of(summaries: list[VariantSummary]) -> VariantSummary | None:
    """The untouched model (the baseline variant)."""
    return next((s for s in summaries if s.is_untouched), None)


def linear_restart_of(summaries: list[VariantSummary]) -> VariantSummary | None:
    """The full-size linear restart (kind linear, no size of its own, from its random init)."""
    return next((s for s in summaries if s.is_linear_restart), None)


def versus_original(run_dir: Path, summaries: list[VariantSummary], stage: str = "final") -> list[HeldoutComparison]:
    """Every trained variant against the untouched model, at the end of training (or right after init)."""
    original = original_of(summaries)
    if original is None:
        return []
    out = [_compare(run_dir, s, original, "original", stage) for s in summaries
           if s is not original and s.variant is not None and s.variant.trained]
    return [c for c in out if c is not None]


TUNED_ORIGINAL = "original trained the same way"


def matched_controls(kan: VariantSummary, summaries: list[VariantSummary]) -> list[VariantSummary]:
    """The variants sized `same-as` `kan`, and the controls (`VariantKind.role`) sized by the same budget."""
    def same_budget(c: VariantSummary) -> bool:
        if c.variant is None or kan.variant is None or kan.variant.budget is None:
            return False
        return VARIANT_KINDS.get(c.variant.kind).role == "control" and c.variant.budget == kan.variant.budget
    return [c for c in summaries if c is not kan and (c.same_as == kan.name or same_budget(c))]


def pairwise(run_dir: Path, summaries: list[VariantSummary]) -> list[HeldoutComparison]:
    """Each KAN against its parameter-matched control (a variant sized `same-as` it), the linear restart and
    the original trained by the same recipe (`init: original`), where the grid has them."""
    restart = linear_restart_of(summaries)
    tuned = next((s for s in summaries if s.is_tuned_original), None)
    out = []
    for s in summaries:
        if s.variant is None or VARIANT_KINDS.get(s.variant.kind).role != "kan":
            continue
        for control in matched_controls(s, summaries):
            out.append(_compare(run_dir, s, control, "control", "final"))
        for reference, role in ((restart, "linear restart"), (tuned, TUNED_ORIGINAL)):
            if reference is not None:
                out.append(_compare(run_dir, s, reference, role, "final"))
    return [c for c in out if c is not None]
