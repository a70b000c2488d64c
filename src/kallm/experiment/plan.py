"""The plan of an experiment grid: which runs, in which order, on which shard, with which final variant.

Planning is pure (no model, no data) except for one step: `same_as_counts` reads the model's
structure (on the meta device: its config, no weights) to size a variant to another's parameter count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kallm.errors import KallmError
from kallm.experiment.schema import ExperimentConfig, VariantConfig
from kallm.retrofitting.curriculum import start_variant
from kallm.retrofitting.variant import Budget, VariantSpec


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    variant: VariantConfig
    seed: int | None  # None: the untrained baseline, evaluated once
    spec: VariantSpec  # the variant at the end of training (a same-as budget resolved to a count)

    @property
    def build_spec(self) -> VariantSpec:
        """The variant to build with: the final one, at the curriculum's first degree if any."""
        return start_variant(self.spec, self.variant.curriculum) if self.variant.curriculum else self.spec


def final_spec(variant: VariantConfig, counts: Mapping[str, int] | None = None) -> VariantSpec:
    """The variant's spec with a `same-as` budget replaced by the count it refers to."""
    if variant.same_as is None:
        return variant.spec
    if counts is None or variant.same_as not in counts:
        raise KallmError(f"variant {variant.name!r} is sized same-as {variant.same_as!r}: its parameter count must "
                         "be resolved against the model first (same_as_counts)")
    return variant.spec.with_budget(Budget("count", counts[variant.same_as]))


def plan_runs(config: ExperimentConfig, counts: Mapping[str, int] | None = None) -> list[PlannedRun]:
    """Deterministic order: variants as listed (budgets expanded, then controls), seeds as listed (a variant's
    own subset in the same order); the baseline once."""
    runs = []
    for v in config.variants:
        spec = final_spec(v, counts)
        if v.trained:
            runs += [PlannedRun(f"{v.name}.seed{s}", v, s, spec) for s in v.seeds or config.seeds]
        else:
            runs.append(PlannedRun(v.name, v, None, spec))
    return runs


def same_as_counts(config: ExperimentConfig) -> dict[str, int]:
    """New-FFN parameters per layer of every variant another one is sized `same-as` (empty if none is)."""
    from kallm.models.loading import load_model_skeleton
    from kallm.retrofitting import retrofit

    targets = sorted({v.same_as for v in config.variants if v.same_as is not None})
    counts = {}
    for name in targets:
        report = retrofit(load_model_skeleton(config.model_path()), layers=config.layers, variant=config.variant(name).spec,
                          freeze=config.freeze)
        counts[name] = report.new_params_per_layer
    return counts


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' (1-based) -> (I, N)."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise KallmError(f"--shard must look like I/N (e.g. 1/2), got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise KallmError(f"--shard {text}: need 1 <= I <= N")
    return i, n


def shard_runs(runs: list[PlannedRun], shard: tuple[int, int] | None) -> list[PlannedRun]:
    if shard is None:
        return runs
    i, n = shard
    return runs[i - 1:: n]


def dry_run_rows(config: ExperimentConfig, runs: list[PlannedRun]) -> list[dict[str, Any]]:
    """Parameter counts per planned run, from the model built on the meta device (no weights)."""
    from kallm.models.loading import load_model_skeleton
    from kallm.retrofitting import retrofit

    rows, seen = [], {}
    for run in runs:
        if run.variant.name not in seen:
            seen[run.variant.name] = retrofit(load_model_skeleton(config.model_path()), layers=config.layers,
                                              variant=run.spec, freeze=config.freeze)
        report = seen[run.variant.name]
        rows.append({"run_id": run.run_id, "variant": run.variant.name, "spec": str(run.spec),
                     "seed": run.seed, "init": run.variant.init, "total": report.total_params,
                     "trainable": report.trainable_params if run.variant.trained else 0,
                     "replaced_new": report.replaced_new_params, "hidden_width": report.hidden_width})
    return rows
