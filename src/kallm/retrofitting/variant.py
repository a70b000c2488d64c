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

The text before ':' names a kind registered in `VARIANT_KINDS` (a `VariantKind`: kallm's own are in
`kallm.retrofitting.kinds`); the kind reads the text after ':', builds the modules, sizes them for a
budget and describes them for an export (docs/extending.md: how to add one).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from torch import Tensor, nn

from kallm.errors import KallmError
from kallm.kan import KANSpec
from kallm.registry import Registry, unknown_name_message
from kallm.retrofitting.arch import FFNSite

BudgetKind = Literal["match", "ratio", "count"]
KindRole = Literal["baseline", "kan", "control"]
KIND_ROLES: tuple[str, ...] = get_args(KindRole)
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


def budget_label(budget: Budget) -> str:
    """The budget as a variant-name suffix (a frontier's names): '0.5x' (a ratio), 'match', '2000000' (a count)."""
    if budget.kind == "ratio":
        return f"{budget.value:g}x"
    return str(budget)


def frontier_key(budget: Budget) -> Budget:
    """One point of a frontier per size: `match` is the ratio 1."""
    return Budget("ratio", 1.0) if budget.kind == "match" else budget


class VariantKind:
    """One kind of replacement FFN: its grammar, its modules, their size, and how an export rebuilds them.

    A kind is an instance registered in `VARIANT_KINDS` under its `name` (the text before ':' in a
    variant); kallm's own (baseline, linear, kan) are in `kallm.retrofitting.kinds`, and docs/extending.md
    shows how to add one. Surgery, sizing and export ask the kind; nothing else branches on its name.
    """

    name: str = ""
    trained: bool = True  # False: the untouched model, nothing to build
    # What the kind is in a study, for the report's frontier (kallm.report.frontier): "baseline" (the untouched
    # model), "kan" (a KAN layer or KAN functions in place of the FFN), "control" (an MLP a compression engineer
    # would try instead: a fresh or a pruned MLP of the model's own class, the KAN's rival at equal parameters).
    role: KindRole = "kan"
    options: tuple[str, ...] = ()  # which of budget=, hidden= the kind accepts

    def parse_arg(self, body: str, text: str) -> str | None:
        """The canonical form of `body`, the text after '<name>:' ('' without one); None: no argument.

        The result is `VariantSpec.arg`, printed back by `text`: parsing it again must give it unchanged.
        """
        if body:
            raise KallmError(f"variant {self.name!r} takes no spec after ':', got {text!r}")
        return None

    def parse(self, body: str, text: str, budget: Budget | None, hidden: int | None) -> VariantSpec:
        """The spec for `<name>[:body]@options`; `text` is the whole variant (for messages)."""
        return VariantSpec(self.name, arg=self.parse_arg(body, text), budget=budget, hidden=hidden)

    def check(self, spec: VariantSpec) -> None:
        """Kind-specific validation of a spec (run when a `VariantSpec` is constructed)."""
        if spec.kan is not None:
            raise KallmError(f"variant {self.name!r} takes no KAN spec; only 'kan:<spec>' does")
        for option in _OPTIONS:
            if getattr(spec, option) is not None and option not in self.options:
                valid = f"; it takes {', '.join(o + '=' for o in self.options)}" if self.options else ""
                raise KallmError(f"variant {self.name!r} takes no {option}= option{valid}")
        if spec.arg is not None:
            canonical = self.parse_arg(spec.arg, f"{self.name}:{spec.arg}") if isinstance(spec.arg, str) else None
            if canonical != spec.arg:
                raise KallmError(f"variant {self.name!r}: argument {spec.arg!r} is not in its canonical form "
                                 f"{canonical!r}")

    def text(self, spec: VariantSpec) -> str:
        """The canonical text of `spec` before its options."""
        return self.name if spec.arg is None else f"{self.name}:{spec.arg}"

    def size(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> int | None:
        """The hidden width the replacement of `site` gets (meeting `spec.budget`); None: no width to choose."""
        return None

    def new_params(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> int:
        """The parameters the replacement of `site` will have, in closed form (nothing is built): checked
        against the memory available before any allocation. 0: the kind adds nothing worth checking."""
        return 0

    def build(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> tuple[Replacement, int | None]:
        """[(layer attribute, new module)] for one FFN site, and the hidden width used (for the report).

        New FFNs are wrapped in `RetrofitFFN` (kallm.retrofitting.ffn), whose parameters are "what is new".
        """
        raise KallmError(f"variant kind {self.name!r} builds no modules")

    def refine_start(self, original: nn.Module, new: nn.Module, x: Tensor, dims: tuple[int, int]) -> bool:
        """Before a distillation fit (`init: distill`): improve `new`'s start from the FFN it replaced
        (`original`) and real inputs of the layer `x` (tokens, d); `dims` is (d, intermediate size). Kinds
        that prune the original choose their channels again here. False: nothing was changed."""
        return False

    def describe(self, attr: str, module: nn.Module, spec: VariantSpec) -> dict[str, Any]:
        """The config.json entry an export's model code rebuilds `module` from, without kallm.

        Its "kind" names a rebuilder of `kallm.export.portable.REBUILDERS` (the code an export ships).
        """
        raise KallmError(f"variant kind {self.name!r} cannot be exported without kallm: its modules have no "
                         "rebuilder in the exported model code (kallm/export/portable.py REBUILDERS; see "
                         "docs/extending.md)")


Replacement = list[tuple[str, nn.Module]]
VARIANT_KINDS: Registry[VariantKind] = Registry("variant")
_KIND_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def register_variant_kind(kind: VariantKind) -> VariantKind:
    """Make `kind` a variant (`<kind.name>[:spec][@options]`); returns it. Names are lower-case identifiers."""
    if not isinstance(kind, VariantKind) or not _KIND_NAME.match(kind.name):
        raise KallmError(f"a variant kind must be a VariantKind instance with a lower-case name, got {kind!r}")
    if kind.role not in KIND_ROLES:
        raise KallmError(f"variant kind {kind.name!r}: role must be one of {', '.join(KIND_ROLES)}, got {kind.role!r}")
    VARIANT_KINDS.add(kind.name, kind)
    return kind


@dataclass(frozen=True)
class VariantSpec:
    """A replacement FFN: its registered kind, the KAN spec (kan), another kind's own argument text (arg),
    and its size (budget, or a hidden width)."""

    kind: str
    kan: KANSpec | None = None
    budget: Budget | None = None
    hidden: int | None = None  # linear: the intermediate size of the fresh MLP
    arg: str | None = None  # the canonical spec text after '<kind>:' of a kind other than kan

    def __post_init__(self) -> None:
        kind = VARIANT_KINDS.get(self.kind) if isinstance(self.kind, str) else None
        if kind is None:
            raise KallmError(f"a variant kind is a name, got {self.kind!r}")
        if self.budget is not None and self.hidden is not None:
            raise KallmError("give either budget= or hidden=, not both")
        if self.hidden is not None and (isinstance(self.hidden, bool) or not isinstance(self.hidden, int)
                                        or self.hidden < 1):
            raise KallmError(f"hidden width must be a positive integer, got {self.hidden!r}")
        kind.check(self)

    @property
    def trained(self) -> bool:
        return VARIANT_KINDS.get(self.kind).trained

    def with_budget(self, budget: Budget | None) -> VariantSpec:
        return dataclasses.replace(self, budget=budget)

    def __str__(self) -> str:
        text = VARIANT_KINDS.get(self.kind).text(self)
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
        raise KallmError(f"empty variant; valid kinds: {', '.join(VARIANT_KINDS.names())} (e.g. 'kan:chebyshev2:2')")
    body, *raw_options = (part.strip() for part in text.strip().split("@"))
    name, _, spec_text = (part.strip() for part in body.partition(":"))
    kind = VARIANT_KINDS.get(name)
    options = _read_options(raw_options, text)
    budget = Budget.parse(options["budget"]) if "budget" in options else None
    hidden = _hidden_width(options["hidden"], text) if "hidden" in options else None
    return kind.parse(spec_text, text, budget, hidden)


def as_variant(value: str | VariantSpec) -> VariantSpec:
    """The Python API accepts text or a spec; text is parsed here, at the edge."""
    return value if isinstance(value, VariantSpec) else parse_variant(value)
