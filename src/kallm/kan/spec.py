"""KAN specs by name: one small grammar for the CLI, configs and result tables.

    basis      := NAME ":" DEGREE [":" KEY "=" VALUE ("," KEY "=" VALUE)*]
    parallel   := "parallel(" basis ("," basis)* [";sizes=" INT ("," INT)*] ")"
    sequential := "sequential(" layer ("," layer)* [";hidden=" INT ("," INT)*] [";inner_lr=" NUMBER] ")"
    layer      := basis | parallel

Examples: `chebyshev2:2`, `jacobi:3:alpha=0.5,beta=0.5`, `chebyshev2:2:base=none`,
`parallel(chebyshev2:2,legendre:3;sizes=288,288)`, `sequential(bspline:3,chebyshev2:2;hidden=1024)`.
`inner_lr` is the multiple of the training lr for every layer of a stack but the last (default
`kallm.kan.mixing.INNER_LR_SCALE`).
Besides a basis's own parameters, a basis spec takes the layer options `base` (base activation or
`none`), `norm` (input map, `auto` or `none`) and `bias` (`true`/`false`). Whitespace is ignored;
`str(parse_kan_spec(s))` gives the canonical text and parses back to an equal spec.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Union

from kallm.errors import KallmError
from kallm.kan.bases import BASES, basis_param_names, get_basis
from kallm.kan.elementwise import ACTIVATIONS, INPUT_MAPS

Value = Union[int, float, str, bool]  # noqa: UP007 (a runtime alias; `|` on str/bool needs 3.10 types)
LAYER_OPTIONS = ("base", "norm", "bias")
_COMBINATORS = ("parallel", "sequential")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT = re.compile(r"[+-]?\d+\Z")


def _format_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _parse_value(token: str, where: str) -> Value:
    if token in ("true", "false"):
        return token == "true"
    if _INT.match(token):
        return int(token)
    try:
        number = float(token)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise KallmError(f"KAN spec {where!r}: value {token!r} must be finite")
        return number
    if _NAME.match(token):
        return token
    raise KallmError(f"KAN spec {where!r}: malformed value {token!r} (expected a number, true/false or a name)")


def _check_option(name: str, key: str, value: Value) -> None:
    if key == "base" and not (value == "none" or (isinstance(value, str) and value in ACTIVATIONS)):
        raise KallmError(f"KAN spec '{name}': base={_format_value(value)!r} is not a base activation; "
                         f"valid: none, {', '.join(ACTIVATIONS.names())}")
    if key == "norm" and not (value in ("auto", "none") or (isinstance(value, str) and value in INPUT_MAPS)):
        raise KallmError(f"KAN spec '{name}': norm={_format_value(value)!r} is not an input map; "
                         f"valid: auto, none, {', '.join(INPUT_MAPS.names())}")
    if key == "bias" and not isinstance(value, bool):
        raise KallmError(f"KAN spec '{name}': bias must be true or false, got {_format_value(value)!r}")


@dataclass(frozen=True)
class BasisSpec:
    """One KAN layer: basis name, degree, and (key, value) pairs (basis parameters and layer options)."""

    name: str
    degree: int
    params: tuple[tuple[str, Value], ...] = ()

    def __post_init__(self) -> None:
        BASES.get(self.name)  # unknown -> KallmError listing valid names, with suggestions
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 0:
            raise KallmError(f"KAN spec '{self.name}': degree must be a non-negative integer, got {self.degree!r}")
        valid = [*basis_param_names(self.name), *LAYER_OPTIONS]
        seen: set[str] = set()
        for key, value in self.params:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=2, cutoff=0.5)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise KallmError(f"KAN spec '{self.name}': unknown parameter {key!r}{hint} Valid: {', '.join(valid)}")
            if key in seen:
                raise KallmError(f"KAN spec '{self.name}': parameter {key!r} given twice")
            seen.add(key)
            _check_option(self.name, key, value)
        self.make_basis()  # validates parameter values (e.g. jacobi alpha > -1)

    @property
    def basis_params(self) -> dict[str, Value]:
        return {k: v for k, v in self.params if k not in LAYER_OPTIONS}

    def option(self, key: str, default: Value | None = None) -> Value | None:
        return dict(self.params).get(key, default)

    @property
    def base_activation(self) -> str | None:
        base = self.option("base", "silu")
        return None if base == "none" else str(base)

    @property
    def input_norm(self) -> str | None:
        norm = self.option("norm", "auto")
        return None if norm == "none" else str(norm)

    @property
    def bias(self) -> bool:
        return bool(self.option("bias", False))

    def make_basis(self):
        return get_basis(self.name, self.degree, **self.basis_params)

    def __str__(self) -> str:
        extra = ",".join(f"{k}={_format_value(v)}" for k, v in self.params)
        return f"{self.name}:{self.degree}" + (f":{extra}" if extra else "")


def _check_widths(values: tuple[int, ...] | None, what: str) -> None:
    if values is None:
        return
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise KallmError(f"KAN spec: {what} must be positive integers, got {values!r}")


@dataclass(frozen=True)
class ParallelSpec:
    """Channel groups with their own bases feeding one matmul; `sizes` None means an equal split."""

    parts: tuple[BasisSpec, ...]
    sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.parts or not all(isinstance(p, BasisSpec) for p in self.parts):
            raise KallmError(f"KAN spec: parallel(...) needs one or more basis specs, got {self.parts!r}")
        _check_widths(self.sizes, "parallel sizes")
        if self.sizes is not None and len(self.sizes) != len(self.parts):
            raise KallmError(f"KAN spec: parallel has {len(self.parts)} parts but {len(self.sizes)} sizes "
                             f"{self.sizes}")
        for key in ("base", "bias"):
            values = {getattr(p, "base_activation" if key == "base" else "bias") for p in self.parts}
            if len(values) > 1:
                raise KallmError(f"KAN spec: the parts of parallel(...) disagree on {key!r} ({sorted(map(str, values))}); "
                                 "one base branch and one bias serve all groups")

    def __str__(self) -> str:
        sizes = f";sizes={','.join(map(str, self.sizes))}" if self.sizes else ""
        return f"parallel({','.join(map(str, self.parts))}{sizes})"


@dataclass(frozen=True)
class SequentialSpec:
    """A stack of layers; `hidden` gives the widths between them (one value: all of them); `inner_lr` the
    lr multiple of every layer but the last (None: SequentialKAN's default)."""

    layers: tuple[BasisSpec | ParallelSpec, ...]
    hidden: tuple[int, ...] | None = None
    inner_lr: float | None = None

    def __post_init__(self) -> None:
        if not self.layers or not all(isinstance(p, BasisSpec | ParallelSpec) for p in self.layers):
            raise KallmError(f"KAN spec: sequential(...) needs basis or parallel specs, got {self.layers!r}")
        _check_widths(self.hidden, "sequential hidden widths")
        if self.hidden is not None and len(self.hidden) not in (1, len(self.layers) - 1):
            raise KallmError(f"KAN spec: sequential of {len(self.layers)} layers takes 1 or {len(self.layers) - 1} "
                             f"hidden widths, got {len(self.hidden)}")
        if self.inner_lr is not None and (isinstance(self.inner_lr, bool) or not 0 < self.inner_lr <= 1e3):
            raise KallmError(f"KAN spec: sequential inner_lr must be a number in (0, 1000], got {self.inner_lr!r}")

    def hidden_widths(self, default: int) -> list[int]:
        n = len(self.layers) - 1
        if self.hidden is None:
            return [default] * n
        return list(self.hidden) * n if len(self.hidden) == 1 else list(self.hidden)

    def __str__(self) -> str:
        hidden = f";hidden={','.join(map(str, self.hidden))}" if self.hidden else ""
        inner_lr = f";inner_lr={self.inner_lr!r}" if self.inner_lr is not None else ""
        return f"sequential({','.join(map(str, self.layers))}{hidden}{inner_lr})"


KANSpec = Union[BasisSpec, ParallelSpec, SequentialSpec]  # noqa: UP007


def _split_top(text: str, sep: str, where: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise KallmError(f"malformed KAN spec {where!r}: unbalanced ')'")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise KallmError(f"malformed KAN spec {where!r}: unbalanced '('")
    parts.append(text[start:])
    return parts


def _parse_basis(token: str, where: str) -> BasisSpec:
    pieces = token.split(":", 2)
    name = pieces[0]
    if not _NAME.match(name):
        raise KallmError(f"malformed KAN spec {where!r}: {token!r} is not 'name:degree[:key=value,...]'")
    if name not in BASES:
        try:
            BASES.get(name)
        except KallmError as err:  # add where the bad name sits; the message keeps the suggestions
            raise KallmError(f"in KAN spec {where!r}: {err}") from None
    if len(pieces) < 2 or pieces[1] == "":
        raise KallmError(f"malformed KAN spec {where!r}: {token!r} needs a degree, e.g. '{name}:2'")
    if not _INT.match(pieces[1]) or int(pieces[1]) < 0:
        raise KallmError(f"malformed KAN spec {where!r}: degree {pieces[1]!r} in {token!r} must be a "
                         "non-negative integer")
    params = []
    if len(pieces) == 3:
        for item in pieces[2].split(","):
            key, eq, value = item.partition("=")
            if not eq or not _NAME.match(key) or not value:
                raise KallmError(f"malformed KAN spec {where!r}: parameter {item!r} in {token!r} is not key=value")
            params.append((key, _parse_value(value, where)))
    try:
        return BasisSpec(name, int(pieces[1]), tuple(params))
    except KallmError as err:
        raise KallmError(f"in KAN spec {where!r}, {token!r}: {err}") from None


def _parse_ints(item: str, key: str, where: str) -> tuple[int, ...]:
    values = item[len(key) + 1:].split(",")
    if not all(_INT.match(v) for v in values):
        raise KallmError(f"malformed KAN spec {where!r}: {key} must be comma-separated integers, got {item!r}")
    return tuple(int(v) for v in values)


_OPTIONS = {"parallel": {"sizes": "<int>[,<int>...]"},
            "sequential": {"hidden": "<int>[,<int>...]", "inner_lr": "<number>"}}


def _parse_options(options: list[str], head: str, where: str) -> dict[str, tuple[int | float, ...]]:
    """A combinator's `;key=value` options: integer lists (sizes, hidden) or one number (inner_lr)."""
    valid = _OPTIONS[head]
    found: dict[str, tuple[int | float, ...]] = {}
    for item in options:
        key = item.partition("=")[0]
        if key not in valid or "=" not in item:
            listed = "; ".join(f"{k}={v}" for k, v in valid.items())
            raise KallmError(f"malformed KAN spec {where!r}: unknown option {item!r} in {head}(...); valid: {listed}")
        if key in found:
            raise KallmError(f"malformed KAN spec {where!r}: option {key!r} given twice")
        if valid[key] == "<number>":
            value = _parse_value(item[len(key) + 1:], where)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise KallmError(f"malformed KAN spec {where!r}: {key} must be a number, got {item!r}")
            found[key] = (value,)
        else:
            found[key] = _parse_ints(item, key, where)
    return found


def _parse(text: str, where: str, nested: bool) -> KANSpec:
    head, paren, _ = text.partition("(")
    if not paren:
        if ")" in text:
            raise KallmError(f"malformed KAN spec {where!r}: unbalanced ')' in {text!r}")
        return _parse_basis(text, where)
    if head not in _COMBINATORS:
        close = difflib.get_close_matches(head, _COMBINATORS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KallmError(f"malformed KAN spec {where!r}: unknown combinator {head!r}{hint} "
                         f"Valid: {', '.join(_COMBINATORS)}")
    if not text.endswith(")"):
        raise KallmError(f"malformed KAN spec {where!r}: {head}(...) must end with ')'")
    body, *options = _split_top(text[len(head) + 1: -1], ";", where)
    items: list[str] = []
    for raw in _split_top(body, ",", where):
        # 'jacobi:3:alpha=0.5,beta=0.5' was split at its parameter comma: glue key=value back on.
        if items and "=" in raw and ":" not in raw and "(" not in raw:
            items[-1] += "," + raw
        elif raw == "":
            raise KallmError(f"malformed KAN spec {where!r}: empty entry in {head}(...)")
        else:
            items.append(raw)
    found = _parse_options(options, head, where)
    widths = found.get("sizes" if head == "parallel" else "hidden")
    if head == "parallel":
        parts = [_parse(item, where, True) for item in items]
        for item, part in zip(items, parts):
            if not isinstance(part, BasisSpec):
                raise KallmError(f"malformed KAN spec {where!r}: parallel parts must be bases, got {item!r}")
        return ParallelSpec(tuple(parts), widths)  # type: ignore[arg-type]
    if nested:
        raise KallmError(f"malformed KAN spec {where!r}: sequential(...) cannot be nested")
    inner_lr = found.get("inner_lr")
    return SequentialSpec(tuple(_parse(item, where, True) for item in items), widths,  # type: ignore[arg-type]
                          None if inner_lr is None else float(inner_lr[0]))


def parse_kan_spec(text: str | KANSpec) -> KANSpec:
    """Parse a KAN spec string (specs pass through unchanged). Errors name the offending token."""
    if isinstance(text, BasisSpec | ParallelSpec | SequentialSpec):
        return text
    if not isinstance(text, str):
        raise KallmError(f"a KAN spec must be a string, got {type(text).__name__}")
    compact = "".join(text.split())
    if not compact:
        raise KallmError("empty KAN spec; expected e.g. 'chebyshev2:2'")
    # Checked before parsing, which recurses: the grammar nests at most sequential(parallel(...)).
    depth = deepest = 0
    for ch in compact:
        depth += (ch == "(") - (ch == ")")
        deepest = max(deepest, depth)
    if deepest > 2:
        shown = compact if len(compact) <= 80 else compact[:77] + "..."
        raise KallmError(f"malformed KAN spec {shown!r}: parentheses nested {deepest} deep; at most "
                         "sequential(parallel(...)) (2 deep)")
    return _parse(compact, text, nested=False)
