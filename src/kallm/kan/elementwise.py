"""Elementwise maps with closed-form derivatives: input maps (raw value -> basis domain) and base activations.

Both are needed twice by the fused layer: once in forward, and again in the custom backward, which
recomputes them from the saved input instead of storing their outputs. Each entry therefore gives
the function and its derivative; the derivative may reuse the function's value to save a pass.

Input maps (the `input_norm` of a KAN layer) are strictly elementwise on purpose: a per-token or
per-batch statistic (min/max or mean scaling) would let one token's value change another token's
output, which leaks future tokens into a causal LM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kallm.registry import Registry


@dataclass(frozen=True)
class Elementwise:
    """f(x) and f'(x). `derivative(x, fx)` receives the already computed f(x)."""

    name: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor, Tensor], Tensor]
    # The interval the map lands in (for input maps), used for plots and documentation.
    image: tuple[float, float] = (float("-inf"), float("inf"))
    # Writes f(x) into a (possibly strided) slab of the layer's buffer without a temporary.
    fn_into: Callable[[Tensor, Tensor], object] | None = None
    # grad * f'(x) from (grad, x, f(x)) as one fused kernel (aten's *_backward ops): every kernel
    # launch costs a synchronisation of the intra-op threads, which dominates on a loaded CPU.
    chain: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None

    def write(self, x: Tensor, out: Tensor) -> None:
        if self.fn_into is None:
            out.copy_(self.fn(x))
        else:
            self.fn_into(x, out)

    def backward(self, grad: Tensor, x: Tensor, fx: Tensor) -> Tensor:
        """grad * f'(x), a new tensor (or `grad` itself for the identity)."""
        if self.chain is not None:
            return self.chain(grad, x, fx)
        return grad * self.derivative(x, fx)


def _one_minus_square(t: Tensor, scale: float = 1.0) -> Tensor:
    """1 - (t / scale)^2 in one pass (addcmul against a broadcast scalar)."""
    return torch.addcmul(t.new_ones(()), t, t, value=-1.0 / (scale * scale))


INPUT_MAPS: Registry[Elementwise] = Registry("input map")
ACTIVATIONS: Registry[Elementwise] = Registry("base activation")


def _identity_derivative(x: Tensor, fx: Tensor) -> Tensor:
    return torch.ones_like(x)


INPUT_MAPS.add("identity", Elementwise("identity", lambda x: x, _identity_derivative, chain=lambda g, x, t: g))
# [-1, 1] bases. The derivative uses 1 - tanh^2, which goes to 0 (not NaN) when tanh saturates;
# acos-based Chebyshev layers divide by sqrt(1 - t^2) there and return NaN gradients.
INPUT_MAPS.add("tanh", Elementwise("tanh", torch.tanh, lambda x, t: _one_minus_square(t), (-1.0, 1.0),
                                   chain=lambda g, x, t: torch.ops.aten.tanh_backward(g, t)))
# [0, 1] bases (Bernstein).
INPUT_MAPS.add("sigmoid", Elementwise("sigmoid", torch.sigmoid, lambda x, t: t * (1.0 - t), (0.0, 1.0),
                                      chain=lambda g, x, t: torch.ops.aten.sigmoid_backward(g, t)))
# Hermite: identity near 0 (slope 1), softly clamped to [-3, 3] so that H_k stays finite for any input.
INPUT_MAPS.add("tanh3", Elementwise(
    "tanh3", lambda x: 3.0 * torch.tanh(x / 3.0), lambda x, t: _one_minus_square(t, 3.0), (-3.0, 3.0)))
# Laguerre: [0, 8] with slope 1 at x = 0 (8 * sigmoid(x / 2)), where L_k for small k has its structure.
INPUT_MAPS.add("sigmoid8", Elementwise(
    "sigmoid8", lambda x: 8.0 * torch.sigmoid(x / 2.0), lambda x, t: t * (8.0 - t) / 16.0, (0.0, 8.0)))


def _silu_derivative(x: Tensor, fx: Tensor) -> Tensor:
    # s (1 + x (1 - s)) = fx + s (1 - fx) with fx = x s: three passes instead of five.
    return torch.addcmul(fx, torch.sigmoid(x), 1.0 - fx)


def _gelu_derivative(x: Tensor, fx: Tensor) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(x * 0.7071067811865476))
    pdf = torch.exp(-0.5 * x * x) * 0.3989422804014327
    return cdf + x * pdf


ACTIVATIONS.add("silu", Elementwise("silu", torch.nn.functional.silu, _silu_derivative,
                                    fn_into=lambda x, out: torch.ops.aten.silu.out(x, out=out),
                                    chain=lambda g, x, fx: torch.ops.aten.silu_backward(g, x)))
ACTIVATIONS.add("gelu", Elementwise("gelu", torch.nn.functional.gelu, _gelu_derivative,
                                    chain=lambda g, x, fx: torch.ops.aten.gelu_backward(g, x)))
ACTIVATIONS.add("tanh", Elementwise("tanh", torch.tanh, lambda x, t: _one_minus_square(t),
                                    chain=lambda g, x, t: torch.ops.aten.tanh_backward(g, t)))
ACTIVATIONS.add("identity", Elementwise("identity", lambda x: x, _identity_derivative, chain=lambda g, x, fx: g))


def get_input_map(name: str) -> Elementwise:
    return INPUT_MAPS.get(name)


def get_activation(name: str | None) -> Elementwise | None:
    """None (or 'none') means no base branch."""
    if name is None or name == "none":
        return None
    return ACTIVATIONS.get(name)
