"""A quality-parameter frontier in a grid: variants written once with `budgets:`, expanded into one variant
per budget, and the matched controls (`controls:`) added once per distinct budget.

    variants:
      - {name: kan-cheb4, spec: "kan:chebyshev4:2", init: distill, budgets: [0.25, 0.5, 1.0]}
    controls: [pruned, linear]       # the default when a variant has budgets; [] for none
    budget_seeds: {0.5x: [0, 1]}     # the seeds of every variant and control at that budget

gives kan-cheb4-0.25x, kan-cheb4-0.5x, kan-cheb4-1x and pruned-0.25x, linear-0.25x, pruned-0.5x, ... (each
`<kind>@budget=<b>` with `init: distill`: fitted to the original blocks as a KAN of `init: distill` is).
The expanded list is the grid's variants (what `kallm run --dry-run` plans and the results record).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kallm.config.mapping import FieldError
from kallm.errors import KallmError
from kallm.registry import unknown_name_message
from kallm.retrofitting.variant import (
    VARIANT_KINDS,
    Budget,
    VariantSpec,
    budget_label,
    frontier_key,
    parse_variant,
)

# The schema's VariantConfig: this module is imported by kallm.experiment.schema, so it cannot import it back.
VariantConfig = Any

DEFAULT_CONTROLS = ("pruned", "linear")
CONTROL_INIT = "distill"
_SMALLEST_COUNT = 100  # an integer budget below this is a parameter count no FFN fits: surely a ratio meant


def read_budget(value: str | int | float) -> Budget:
    """A `budgets:` entry (Budget text: a ratio, 'match', a count), refusing `same-as` and tiny counts."""
    if isinstance(value, str) and value.strip().startswith("same-as"):
        raise KallmError("budgets take no 'same-as' (write it as `budget:` of one variant); use ratios like 0.5, "
                         "'match' or parameter counts")
    budget = Budget.parse(value)
    if budget.kind == "count" and budget.value < _SMALLEST_COUNT:
        raise KallmError(f"{value!r} reads as a parameter count of {int(budget.value)}; write a ratio with a '.', "
                         f"e.g. {float(budget.value)!r}")
    return budget


def read_budget_key(key: str) -> Budget:
    """A `budget_seeds:` key: a budget as its name suffix ('0.5x', '1x', 'match') or as Budget text ('0.5')."""
    text = str(key).strip()
    if text.endswith("x"):
        try:
            return Budget("ratio", float(text[:-1]))
        except ValueError:
            pass
    return read_budget(text)


def check_budgets(v: VariantConfig) -> None:
    """A variant's `budgets:`: each one it can be sized with, none twice, and no size of its own besides."""
    if v.budgets is None:
        return
    if v.budget is not None or v.spec.budget is not None or v.spec.hidden is not None:
        raise FieldError("budgets", f"give either budget or budgets; the spec '{v.spec}' has a size already"
                         if v.budget is None else "give either budget or budgets, not both")
    if not v.budgets:
        raise FieldError("budgets", "must list at least one budget, e.g. [0.25, 0.5, 1.0] (ratios of the "
                                    "replaced FFN's parameter count), 'match' or parameter counts")
    seen = []
    for k, value in enumerate(v.budgets):
        try:
            budget = read_budget(value)
            v.spec.with_budget(budget)  # the spec checks that it can take a budget at all
        except KallmError as exc:
            raise FieldError(f"budgets[{k}]", str(exc)) from None
        if frontier_key(budget) in seen:
            raise FieldError(f"budgets[{k}]", f"budget {value!r} is listed twice")
        seen.append(frontier_key(budget))


def control_kinds() -> list[str]:
    """The registered kinds that can be a matched control: role 'control' and sized by a budget."""
    return [name for name in VARIANT_KINDS.names()
            if VARIANT_KINDS.get(name).role == "control" and "budget" in VARIANT_KINDS.get(name).options]


def check_controls(controls: list[str]) -> None:
    valid = control_kinds()
    for i, name in enumerate(controls):
        if name not in valid:
            raise FieldError(f"controls[{i}]", unknown_name_message("control kind", str(name), valid))
        if name in controls[:i]:
            raise FieldError(f"controls[{i}]", f"control kind {name!r} is listed twice")


def read_budget_seeds(budget_seeds: dict[str, list[int]], budgets: list[Budget],
                      seeds: list[int]) -> dict[Budget, list[int]]:
    """`budget_seeds:` keyed by the frontier's budgets; each list a subset of the top-level seeds."""
    out: dict[Budget, list[int]] = {}
    valid = ", ".join(budget_label(b) for b in budgets) or "none (no variant has budgets)"
    for key, listed in budget_seeds.items():
        where = f"budget_seeds.{key}"
        try:
            budget = frontier_key(read_budget_key(key))
        except KallmError as exc:
            raise FieldError(where, str(exc)) from None
        if budget not in budgets:
            raise FieldError(where, f"{key!r} is not a budget of the grid's `budgets:`; valid: {valid}")
        out[budget] = check_seed_subset(listed, seeds, where)
    return out


def check_seed_subset(listed: list[int], seeds: list[int], where: str) -> list[int]:
    """A variant's seeds: a non-empty subset of the top-level seeds, planned in the top-level order."""
    if not listed:
        raise FieldError(where, f"must list at least one seed of the top-level seeds {seeds}")
    for i, seed in enumerate(listed):
        if seed not in seeds:
            raise FieldError(f"{where}[{i}]", f"seed {seed!r} is not one of the top-level seeds {seeds}; a "
                                              "variant runs a subset of them")
        if seed in listed[:i]:
            raise FieldError(f"{where}[{i}]", f"seed {seed} is listed twice")
    return [s for s in seeds if s in listed]


@dataclasses.dataclass(frozen=True)
class Expanded:
    """The grid's variants with the config key each came from (errors about one point at that key)."""

    variants: list[VariantConfig]
    keys: list[str]


def expand(variants: list[VariantConfig], controls: list[str] | None,
           budget_seeds: dict[str, list[int]] | None, seeds: list[int]) -> Expanded:
    """Each `budgets:` entry as one variant per budget, then the controls per distinct budget, in order."""
    budgets = list(dict.fromkeys(frontier_key(read_budget(b)) for v in variants for b in v.budgets or []))
    if controls is not None:
        check_controls(controls)
        if controls and not budgets:
            raise FieldError("controls", "matched controls are added at the budgets of `budgets:` entries, and no "
                                         "variant has budgets; remove controls or give a variant budgets")
    per_budget = read_budget_seeds(budget_seeds or {}, budgets, seeds)
    out, keys = [], []
    at_budget: dict[Budget, list[int]] = {}  # the seeds the forms at each budget run
    for i, v in enumerate(variants):
        if v.seeds is not None:
            v.seeds = check_seed_subset(v.seeds, seeds, f"variants[{i}].seeds")
        if not v.budgets:
            out.append(v)
            keys.append(f"variants[{i}]")
            continue
        for k, value in enumerate(v.budgets):
            budget = read_budget(value)
            point = per_budget.get(frontier_key(budget), v.seeds)
            at_budget.setdefault(frontier_key(budget), []).extend(point or seeds)
            point = None if point == seeds else point  # the default, written as such
            out.append(_point(v, budget, point, f"variants[{i}]"))
            keys.append(f"variants[{i}].budgets[{k}]")
    for budget in budgets:
        runs = per_budget.get(budget) or [s for s in seeds if s in at_budget[budget]]
        for kind in DEFAULT_CONTROLS if controls is None else controls:
            spec = parse_variant(kind).with_budget(budget)
            out.append(_point_config(type(variants[0]), f"{kind}-{budget_label(budget)}", spec, runs, seeds))
            keys.append("controls")
    return Expanded(out, keys)


def _point(v: VariantConfig, budget: Budget, seeds: list[int] | None, key: str) -> VariantConfig:
    try:
        return dataclasses.replace(v, name=f"{v.name}-{budget_label(budget)}", spec=v.spec.with_budget(budget),
                                   budgets=None, seeds=seeds)
    except FieldError as exc:
        raise FieldError(f"{key}.{exc.key}", exc.message) from None


def _point_config(cls: Any, name: str, spec: VariantSpec, runs: list[int], seeds: list[int]) -> VariantConfig:
    return cls(name=name, spec=spec, init=CONTROL_INIT, seeds=None if runs == seeds else runs)
