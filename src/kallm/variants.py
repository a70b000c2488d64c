"""What goes in place of an FFN: `baseline`, `linear`, or `kan:<spec>`, with options after '@'.

    baseline                                   untouched model
    linear                                     a fresh module of the model's own MLP class ("linear restart")
    kan:chebyshev2:2                           one KANLinear(d, d) with a SiLU base branch
    kan:parallel(chebyshev2:2,legendre:3)      channel groups with their own bases, one matmul
    kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match
                                               a d->h->d KAN whose width h matches the old MLP's parameters
    ...@budget=0.5 | @budget=2000000 | @hidden=1024

Budget: `match` (same parameters as the replaced FFN), a ratio of it (float), or an absolute count (int).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kallm.errors import KallmError
from kallm.registry import unknown_name_message

VARIANT_KINDS = ("baseline", "linear", "kan")
_OPTIONS = ("budget", "hidden")


@dataclass(frozen=True)
class VariantSpec:
    kind: str
    kan: Any = None  # a kallm.kan spec for kind == "kan"
    budget: str | float | int | None = None
    hidden: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in VARIANT_KINDS:
            raise KallmError(unknown_name_message("variant", self.kind, list(VARIANT_KINDS)))
        if self.kind != "kan" and (self.kan is not None or self.budget is not None or self.hidden is not None):
            raise KallmError(f"variant {self.kind!r} takes no KAN spec, budget or hidden width")
        if self.kind == "kan" and self.kan is None:
            raise KallmError("variant 'kan' needs a KAN spec, e.g. 'kan:chebyshev2:2'")
        if self.budget is not None and self.hidden is not None:
            raise KallmError("give either budget= or hidden=, not both")
        if isinstance(self.budget, str) and self.budget != "match":
            raise KallmError(f"budget must be 'match', a ratio (float) or a parameter count (int), got {self.budget!r}")
        if isinstance(self.budget, (int, float)) and not isinstance(self.budget, bool) and self.budget <= 0:
            raise KallmError(f"budget must be positive, got {self.budget}")
        if self.hidden is not None and self.hidden <= 0:
            raise KallmError(f"hidden width must be a positive integer, got {self.hidden}")

    def __str__(self) -> str:
        if self.kind != "kan":
            return self.kind
        text = f"kan:{self.kan}"
        if self.budget is not None:
            text += f"@budget={self.budget}"
        if self.hidden is not None:
            text += f"@hidden={self.hidden}"
        return text


def _parse_budget(value: str) -> str | float | int:
    if value == "match":
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise KallmError(
            f"cannot read budget {value!r}: use 'match', a ratio like 0.5, or a parameter count like 2000000"
        ) from None


def parse_variant(text: str | VariantSpec) -> VariantSpec:
    """Parse a variant string (see the module docstring); errors name the offending part."""
    if isinstance(text, VariantSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise KallmError(f"empty variant; valid kinds: {', '.join(VARIANT_KINDS)} (e.g. 'kan:chebyshev2:2')")
    body, *options = (part.strip() for part in text.strip().split("@"))
    kind, _, kan_text = body.partition(":")
    kind = kind.strip()
    if kind not in VARIANT_KINDS:
        raise KallmError(unknown_name_message("variant", kind, list(VARIANT_KINDS)))
    kwargs: dict[str, Any] = {}
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip()
        if not eq or key not in _OPTIONS:
            raise KallmError(f"cannot read variant option {option!r} in {text!r}; valid options: budget=, hidden=")
        if key in kwargs:
            raise KallmError(f"variant option {key!r} given twice in {text!r}")
        value = value.strip()
        if key == "budget":
            kwargs["budget"] = _parse_budget(value)
        else:
            if not value.isdigit():
                raise KallmError(f"hidden width must be a positive integer, got {value!r} in {text!r}")
            kwargs["hidden"] = int(value)
    if kind == "kan":
        if not kan_text.strip():
            raise KallmError("variant 'kan' needs a KAN spec after 'kan:', e.g. 'kan:chebyshev2:2'")
        from kallm.kan import parse_kan_spec

        kwargs["kan"] = parse_kan_spec(kan_text.strip())
    elif kan_text.strip():
        raise KallmError(f"variant {kind!r} takes no spec after ':', got {text!r}")
    return VariantSpec(kind=kind, **kwargs)
