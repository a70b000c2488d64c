"""Layer selections: `last:5`, `first:2`, `3-7`, `-1`, `-3..-1`, `0,2,4`, `all`."""

from __future__ import annotations

import re

from kallm.errors import KallmError

_RANGE = re.compile(r"^(-?\d+)\s*(?:\.\.|-)\s*(-?\d+)$")

LAYER_SPEC_HELP = (
    "valid forms: 'last:N', 'first:N', 'all', an index (negative counts from the end), "
    "a range 'A-B' or 'A..B' (inclusive; use '..' with negative ends), or a comma list of these"
)


def _index(value: int, n_layers: int, spec: str) -> int:
    resolved = value + n_layers if value < 0 else value
    if not 0 <= resolved < n_layers:
        raise KallmError(
            f"layer {value} in {spec!r} is out of range: the model has {n_layers} layers "
            f"(valid indices 0..{n_layers - 1} or -{n_layers}..-1)"
        )
    return resolved


def parse_layer_spec(spec: str, n_layers: int) -> tuple[int, ...]:
    """Resolve a layer selection against a model with `n_layers` decoder layers (sorted, unique)."""
    if not isinstance(spec, str) or not spec.strip():
        raise KallmError(f"empty layer selection; {LAYER_SPEC_HELP}")
    chosen: set[int] = set()
    for raw in spec.split(","):
        item = raw.strip().lower()
        if not item:
            raise KallmError(f"empty item in layer selection {spec!r}; {LAYER_SPEC_HELP}")
        if item == "all":
            chosen.update(range(n_layers))
        elif item.startswith(("last:", "first:")):
            which, _, count = item.partition(":")
            if not count.isdigit() or int(count) == 0:
                raise KallmError(f"{raw.strip()!r} needs a positive count, e.g. '{which}:5'")
            n = int(count)
            if n > n_layers:
                raise KallmError(f"{raw.strip()!r} asks for {n} layers but the model has {n_layers} layers")
            chosen.update(range(n_layers - n, n_layers) if which == "last" else range(n))
        elif re.fullmatch(r"-?\d+", item):
            chosen.add(_index(int(item), n_layers, spec))
        elif match := _RANGE.match(item):
            lo, hi = (_index(int(g), n_layers, spec) for g in match.groups())
            if lo > hi:
                raise KallmError(f"range {raw.strip()!r} in {spec!r} is empty (start after end)")
            chosen.update(range(lo, hi + 1))
        else:
            raise KallmError(f"cannot read layer selection item {raw.strip()!r} in {spec!r}; {LAYER_SPEC_HELP}")
    return tuple(sorted(chosen))
