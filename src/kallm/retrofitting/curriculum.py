"""Degree curriculum: start a KAN at a low polynomial degree and raise it during training.

For bases whose lower-degree terms do not change when the degree grows (the orthogonal polynomial
families), the new coefficients start at zero, so each raise leaves the model's function unchanged.
The schedule is a list of [step, degree] pairs: the degree in force at step s is the one of the
last pair whose step is <= s. Each rule about schedules is one function here, used by the config
(at load time) and by the training callback alike.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from kallm.errors import KallmError
from kallm.kan import BasisSpec, KANLinear
from kallm.kan.bases import BASES, Basis, raisable_bases
from kallm.retrofitting.variant import VariantSpec

log = logging.getLogger(__name__)

DegreeSchedule = tuple[tuple[int, int], ...]


def validate_schedule(schedule: Sequence[Sequence[int]]) -> DegreeSchedule:
    """[[step, degree], ...] starting at step 0, steps and degrees strictly increasing, degrees >= 0."""
    pairs = []
    for i, pair in enumerate(schedule):
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
            raise KallmError(f"curriculum entry {i} must be [step, degree] integers, got {pair!r}")
        pairs.append((int(pair[0]), int(pair[1])))
    if not pairs:
        raise KallmError("curriculum must have at least one [step, degree] pair")
    if pairs[0][0] != 0:
        raise KallmError(f"curriculum must start at step 0 (the degree the KAN is built with), got {pairs[0][0]}")
    if pairs[0][1] < 0:
        raise KallmError(f"curriculum degrees must be >= 0, got {pairs[0][1]}")
    for (s0, d0), (s1, d1) in zip(pairs, pairs[1:]):
        if s1 <= s0:
            raise KallmError(f"curriculum steps must increase strictly: {s0} then {s1}")
        if d1 <= d0:
            raise KallmError(f"curriculum degrees must increase: {d0} then {d1} at step {s1}")
    return tuple(pairs)


def check_schedule_for(spec: VariantSpec, schedule: DegreeSchedule) -> None:
    """The variant must be a single-basis KAN whose basis can raise its degree, ending at the spec's degree."""
    if spec.kind != "kan" or not isinstance(spec.kan, BasisSpec):
        raise KallmError(f"a degree curriculum needs a single-basis KAN variant like 'kan:chebyshev2:2', got '{spec}'")
    if BASES.get(spec.kan.name).elevation_matrix is Basis.elevation_matrix:
        raise KallmError(f"basis {spec.kan.name!r} cannot raise its degree without changing the function; bases "
                         f"that can: {', '.join(raisable_bases())}")
    final = schedule[-1][1]
    if spec.kan.degree != final:
        raise KallmError(f"curriculum ends at degree {final} but the variant '{spec}' has degree {spec.kan.degree}; "
                         "make them agree")


def start_variant(spec: VariantSpec, schedule: DegreeSchedule) -> VariantSpec:
    """The variant to build with: the final one at the curriculum's first degree."""
    check_schedule_for(spec, schedule)
    return dataclasses.replace(spec, kan=dataclasses.replace(spec.kan, degree=schedule[0][1]))


def kan_layers(model: nn.Module) -> list[KANLinear]:
    """Every KANLinear inside the model's retrofitted FFNs."""
    return [m for m in model.modules() if isinstance(m, KANLinear)]


@dataclass
class DegreeCurriculum:
    """A training callback (`on_step_start`) that raises every KAN layer's degree on schedule."""

    schedule: DegreeSchedule

    def __post_init__(self) -> None:
        self.schedule = validate_schedule(self.schedule)

    @property
    def start_degree(self) -> int:
        return self.schedule[0][1]

    def degree_at(self, step: int) -> int:
        return max((d for s, d in self.schedule if s <= step), default=self.start_degree)

    def on_step_start(self, step: int, model: nn.Module) -> bool:
        """Bring every KAN layer to the degree of `step`; True when parameters were replaced."""
        target = self.degree_at(step)
        changed = False
        for layer in kan_layers(model):
            if layer.degree < target:
                layer.raise_degree(target)
                changed = True
        if changed:
            log.info("curriculum: KAN degree raised to %d at step %d", target, step)
        return changed

    def on_log(self, record: dict[str, Any]) -> None:
        """Metrics are not this callback's concern."""
