"""Build KAN modules from specs, and count their parameters in closed form (for budget matching)."""

from __future__ import annotations

from torch import nn

from kallm.errors import KallmError
from kallm.kan.layer import KANLinear
from kallm.kan.mixing import ParallelKAN, SequentialKAN, equal_sizes
from kallm.kan.spec import BasisSpec, KANSpec, ParallelSpec, SequentialSpec, parse_kan_spec


def _check_width(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KallmError(f"{name} must be a positive integer, got {value!r}")
    return value


def _parallel_sizes(spec: ParallelSpec, in_features: int) -> list[int]:
    if spec.sizes is None:
        if in_features < len(spec.parts):
            raise KallmError(f"{spec}: {len(spec.parts)} parts need at least {len(spec.parts)} input channels, "
                             f"got {in_features}")
        return equal_sizes(in_features, len(spec.parts))
    if sum(spec.sizes) != in_features:
        raise KallmError(f"{spec}: group sizes {spec.sizes} sum to {sum(spec.sizes)}, "
                         f"but the layer has in_features={in_features}")
    return list(spec.sizes)


def _layer_widths(spec: SequentialSpec, in_features: int, out_features: int,
                  hidden_features: int | None) -> list[int]:
    if hidden_features is not None:
        hidden = [_check_width(hidden_features, "hidden_features")] * (len(spec.layers) - 1)
    else:
        hidden = spec.hidden_widths(in_features)
    return [in_features, *hidden, out_features]


def build_kan(spec: KANSpec | str, in_features: int, out_features: int,
              hidden_features: int | None = None) -> nn.Module:
    """A KANLinear, ParallelKAN or SequentialKAN for `spec`, mapping in_features -> out_features.

    For sequential specs `hidden_features` (if given) overrides every hidden width; otherwise the
    spec's `hidden=` is used, and without it the hidden width is in_features.
    """
    spec = parse_kan_spec(spec)
    _check_width(in_features, "in_features")
    _check_width(out_features, "out_features")
    if isinstance(spec, BasisSpec):
        return KANLinear(in_features, out_features, spec.make_basis(), spec.degree,
                         base_activation=spec.base_activation, input_norm=spec.input_norm, bias=spec.bias)
    if isinstance(spec, ParallelSpec):
        first = spec.parts[0]
        return ParallelKAN(in_features, out_features, [p.make_basis() for p in spec.parts],
                           _parallel_sizes(spec, in_features), base_activation=first.base_activation,
                           input_norm=[p.input_norm for p in spec.parts], bias=first.bias)
    widths = _layer_widths(spec, in_features, out_features, hidden_features)
    layers = [build_kan(layer, widths[i], widths[i + 1]) for i, layer in enumerate(spec.layers)]
    return SequentialKAN(layers) if spec.inner_lr is None else SequentialKAN(layers, spec.inner_lr)


def kan_num_params(spec: KANSpec | str, in_features: int, out_features: int,
                   hidden_features: int | None = None) -> int:
    """Parameter count of `build_kan(spec, ...)` without building its weights."""
    spec = parse_kan_spec(spec)
    _check_width(in_features, "in_features")
    _check_width(out_features, "out_features")
    if isinstance(spec, BasisSpec):
        basis = spec.make_basis()
        per_edge = basis.n_basis + (spec.base_activation is not None)
        own = sum(p.numel() for p in basis.parameters())
        return per_edge * in_features * out_features + own + (out_features if spec.bias else 0)
    if isinstance(spec, ParallelSpec):
        first = spec.parts[0]
        total = out_features if first.bias else 0
        total += in_features * out_features if first.base_activation is not None else 0
        for part, size in zip(spec.parts, _parallel_sizes(spec, in_features)):
            basis = part.make_basis()
            total += basis.n_basis * size * out_features + sum(p.numel() for p in basis.parameters())
        return total
    widths = _layer_widths(spec, in_features, out_features, hidden_features)
    return sum(kan_num_params(layer, widths[i], widths[i + 1]) for i, layer in enumerate(spec.layers))
