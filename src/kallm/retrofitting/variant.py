"""What goes in place of an FFN: one typed `VariantSpec` and the one grammar that reads it.

    baseline                                   the untouched model
    linear                                     a fresh module of the model's own MLP class ("linear restart")
    linear@budget=match | 0.5 | 2000000        the same class, intermediate size chosen to meet a parameter budget
    linear@hidden=512                          the same class with this intermediate size
    kan:chebyshev2:2                           one KANLinear(d, d) with a SiLU base branch
    kan:parallel(chebyshev2:2,legendre:3)      channel groups with their own bases, one matmul
    kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match
                                               a d->h->d KAN whose width h meets the budget
    kan:sequential(a,b)@hidden=64              the same as kan:sequential(a,b;hidden=64) (canonical form)

Budget: `match` (the replaced FFN's parameter count), a ratio of it (a number with a '.'), or an absolute
count per layer (an integer). Text is parsed here once (CLI flags, config values, manifests); everything
downstream passes the `VariantSpec`, and `str(spec)` gives the canonical text back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, get_args

from kallm.errors import KallmError
from kallm.kan import KANSpec, SequentialSpec, parse_kan_spec
from kallm.registry import unknown_name_message

VariantKind = Literal["baseline", "linear", "kan"]
VARIANT_KINDS: tuple[str, ...] = get_args(VariantKind)
BudgetKind = Literal["match", "ratio", "count"]
_OPTIONS = ("budget", "hidden")


@dataclass(frozen=True)
class Budget:
    """How many parameters each new FFN may have, relative to (or instead of) the FFN it replaces."""

    kind: BudgetKind
    value: float = 1.0  # the ratio, or the count (an integer) per layer

    def __post_init__(self) -> None:
        if self.kind not in get_args(BudgetKind):
            raise KallmError(unknown_name_message("budget kind", str(self.kind), list(get_args(BudgetKind))))
        if isinstance(self.value, bool) or not isinstance(self.value, int | float) or not math.isfinite(self.value) \
                or self.value <= 0:
            raise KallmError(f"budget must be positive, got {self.value!r}")
        if self.kind == "count" and int(self.value) != self.value:
            raise KallmError(f"a parameter-count budget must be a whole number, got {self.value!r}")

    @classmethod
    def parse(cls, value: str | int | float) -> Budget:
        """'match', a ratio (float, or text with '.'/'e'), or a parameter count (int, or digits)."""
        if isinstance(value, bool):
            raise KallmError(f"budget must be 'match', a ratio or a parameter count, got {value!r}")
        if isinstance(value, int):
            return cls("count", value)
        if isinstance(value, float):
            return cls("ratio", value)
        text = str(value).strip()
        if text == "match":
            return cls("match")
        if text.isdigit():
            return cls("count", int(text))
        try:
            ratio = float(text)
        except ValueError:
            raise KallmError(f"cannot read budget {text!r}: use 'match', a ratio like 0.5, or a parameter count "
                             f"like 2000000") from None
        return cls("ratio", ratio)

    def target(self, replaced_params: int) -> int:
        """The parameter count this budget allows for a new FFN replacing one of `replaced_params`."""
        if self.kind == "match":
            return replaced_params
        if self.kind == "ratio":
            return int(round(self.value * replaced_params))
        return int(self.value)

    def __str__(self) -> str:
        if self.kind == "match":
            return "match"
        return repr(float(self.value)) if self.kind == "ratio" else str(int(self.value))


@dataclass(frozen=True)
class VariantSpec:
    """A replacement FFN: its kind, the KAN spec (kan), and its size (budget, or linear's hidden width)."""

    kind: VariantKind
    kan: KANSpec | None = None
    budget: Budget | None = None
    hidden: int | None = None  # linear: the intermediate size of the fresh MLP

    def __post_init__(self) -> None:
        if self.kind not in VARIANT_KINDS:
            raise KallmError(unknown_name_message("variant", str(self.kind), list(VARIANT_KINDS)))
        if (self.kind == "kan") != (self.kan is not None):
            raise KallmError("variant 'kan' needs a KAN spec (e.g. 'kan:chebyshev2:2'); other kinds take none")
        if self.budget is not None and self.hidden is not None:
            raise KallmError("give either budget= or hidden=, not both")
        if self.kind == "baseline" and (self.budget is not None or self.hidden is not None):
            raise KallmError("the baseline is the untouched model: it takes no budget or hidden width")
        if self.hidden is not None and (isinstance(self.hidden, bool) or not isinstance(self.hidden, int)
                                        or self.hidden < 1):
            raise KallmError(f"hidden width must be a positive integer, got {self.hidden!r}")
        if self.kind == "kan":
            self._check_kan_size()

    def _check_kan_size(self) -> None:
        if self.hidden is not None:
            raise KallmError("a KAN's hidden width belongs in its spec: 'kan:sequential(...;hidden=N)'")
        if self.budget is None:
            return
        if not isinstance(self.kan, SequentialSpec) or len(self.kan.layers) < 2:
            raise KallmError(f"budget= needs a multi-layer KAN with a hidden width to size, e.g. "
                             f"'kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match'; got 'kan:{self.kan}'")
        if self.kan.hidden is not None:
            raise KallmError(f"'kan:{self.kan}' fixes its hidden width; drop hidden= or budget=")

    @property
    def trained(self) -> bool:
        return self.kind != "baseline"

    def with_budget(self, budget: Budget | None) -> VariantSpec:
        return dataclasses.replace(self, budget=budget)

    def __str__(self) -> str:
        text = self.kind if self.kan is None else f"kan:{self.kan}"
        if self.budget is not None:
            text += f"@budget={self.budget}"
        if self.hidden is not None:
            text += f"@hidden={self.hidden}"
        return text

    @classmethod
    def from_text(cls, text: str) -> VariantSpec:
        """Config values are converted through this (see `kallm.config.mapping`)."""
        return parse_variant(text)


def _read_options(options: list[str], text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for option in options:
        key, eq, value = (part.strip() for part in option.partition("="))
        if not eq or key not in _OPTIONS or not value:
            raise KallmError(f"cannot read variant option {option!r} in {text!r}; valid options: budget=, hidden=")
        if key in values:
            raise KallmError(f"variant option {key!r} given twice in {text!r}")
        values[key] = value
    return values


def _hidden_width(value: str, text: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise KallmError(f"hidden width must be a positive integer, got {value!r} in {text!r}")
    return int(value)


def parse_variant(text: str) -> VariantSpec:
    """Parse variant text (see the module docstring); errors name the offending part."""
    if not isinstance(text, str) or not text.strip():
        raise KallmError(f"empty variant; valid kinds: {', '.join(VARIANT_KINDS)} (e.g. 'kan:chebyshev2:2')")
    body, *raw_options = (part.strip() for part in text.strip().split("@"))
    kind, _, kan_text = (part.strip() for part in body.partition(":"))
    if kind not in VARIANT_KINDS:
        raise KallmError(unknown_name_message("variant", kind, list(VARIANT_KINDS)))
    options = _read_options(raw_options, text)
    budget = Budget.parse(options["budget"]) if "budget" in options else None
    hidden = _hidden_width(options["hidden"], text) if "hidden" in options else None
    if kind != "kan":
        if kan_text:
            raise KallmError(f"variant {kind!r} takes no spec after ':', got {text!r}")
        return VariantSpec(kind, budget=budget, hidden=hidden)  # type: ignore[arg-type]
    if not kan_text:
        raise KallmError("variant 'kan' needs a KAN spec after 'kan:', e.g. 'kan:chebyshev2:2'")
    kan = parse_kan_spec(kan_text)
    if hidden is not None:  # canonical form: the width lives in the spec
        if not isinstance(kan, SequentialSpec) or len(kan.layers) < 2:
            raise KallmError(f"hidden= needs a multi-layer KAN ('kan:sequential(...)'); 'kan:{kan}' has no "
                             "hidden width")
        if kan.hidden is not None:
            raise KallmError(f"hidden width given twice in {text!r}")
        kan = dataclasses.replace(kan, hidden=(hidden,))
    return VariantSpec("kan", kan=kan, budget=budget)


def as_variant(value: str | VariantSpec) -> VariantSpec:
    """The Python API accepts text or a spec; text is parsed here, at the edge."""
    return value if isinstance(value, VariantSpec) else parse_variant(value)
