"""Basis families for KAN layers: one registry, one small class per family.

A basis maps a tensor `x` of any shape to `x.shape + (n_basis,)` (its `forward`), evaluated on the
family's *natural domain* with no input mapping. The KAN layer maps raw activations into that
domain first, with the family's `default_input_map` (see `kallm.kan.elementwise`):

| basis | domain | default input map |
| --- | --- | --- |
| chebyshev1, chebyshev2, legendre, jacobi, gegenbauer | [-1, 1] | `tanh` |
| hermite | R (weight e^{-x^2}) | `tanh3` = 3 tanh(x/3): slope 1 at 0, bounded so H_k stays finite |
| laguerre | [0, inf) | `sigmoid8` = 8 sigmoid(x/2): slope 1 at 0, lands in [0, 8] |
| bernstein | [0, 1] | `sigmoid` |
| fourier, bspline, rbf, rational | [-1, 1] (grid range for bspline/rbf) | `tanh` |

Adding a family is one class decorated with `@register_basis("name")` in a module listed in
`kallm/kan/families.py` (the families register themselves on import; docs/extending.md).
Internally the layer asks for `terms(t)` laid out as `(..., n_basis, C)` (basis index before the
channel index), which lets recurrences write contiguous slabs straight into the layer's matmul buffer.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kallm.errors import KallmError
from kallm.registry import Registry

BASES: Registry[type[Basis]] = Registry("basis")


def register_basis(name: str):
    def decorator(cls: type[Basis]) -> type[Basis]:
        cls.name = name
        BASES.add(name, cls)
        return cls

    return decorator


# A KAN layer's size grows with the number of basis functions: past these, a typo (chebyshev2:100000)
# would silently build a layer of hundreds of millions of parameters, and high polynomial degrees are
# numerically meaningless in float32 anyway.
MAX_DEGREE = 32
MAX_GRID_SIZE = 64


def check_degree(degree: Any, where: str = "degree") -> int:
    if isinstance(degree, bool) or not isinstance(degree, int | float) or int(degree) != degree:
        raise KallmError(f"{where} must be a non-negative integer, got {degree!r}")
    if degree < 0:
        raise KallmError(f"{where} must be a non-negative integer, got {degree!r}")
    if degree > MAX_DEGREE:
        raise KallmError(f"{where} {int(degree)} is above kallm's limit of {MAX_DEGREE} (each degree adds a "
                         "full weight matrix to the layer)")
    return int(degree)


def check_number(value: Any, name: str, basis: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise KallmError(f"basis {basis!r}: parameter {name!r} must be a finite number, got {value!r}")
    return float(value)


class Basis(nn.Module):
    """A family of n_basis univariate functions B_0..B_{n-1}.

    Subclasses implement `terms`; they may override `backward_terms` with an analytic derivative
    (the default recomputes `terms` under autograd, which also covers learnable basis parameters).
    """

    name: ClassVar[str] = ""
    # Accepted keyword parameters -> one-line description (used in error messages and docs).
    param_doc: ClassVar[dict[str, str]] = {}
    param_aliases: ClassVar[dict[str, str]] = {}
    default_input_map: ClassVar[str] = "tanh"
    # True when B_0 is identically 1: the layer then adds its weights as a bias instead of a matmul column.
    constant_first: ClassVar[bool] = False

    def __init__(self, degree: int) -> None:
        super().__init__()
        self.degree = check_degree(degree)

    @property
    def n_basis(self) -> int:
        return self.degree + 1

    def params(self) -> dict[str, Any]:
        """The construction parameters (besides degree), so that `with_degree` can rebuild the basis."""
        return {}

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.params().items())
        return f"degree={self.degree}{extra}, n_basis={self.n_basis}"

    def terms(self, t: Tensor, out: Tensor | None = None, skip_constant: bool = False) -> Tensor:
        """(..., C) -> (..., n, C) with n = n_basis, or n_basis - 1 when skip_constant drops B_0 == 1."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.terms(x.unsqueeze(-1)).squeeze(-1)

    def backward_terms(
        self, t: Tensor, terms: Tensor, grad: Tensor, skip_constant: bool = False
    ) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        """Sum_k grad[..., k, c] * dB_k/dt at t, and the gradients of this basis's parameters."""
        params = list(self.parameters())
        trainable = [p for p in params if p.requires_grad]
        with torch.enable_grad():
            t_req = t.detach().requires_grad_(True)
            values = self.terms(t_req, None, skip_constant)
            grads = torch.autograd.grad(values, [t_req, *trainable], grad, allow_unused=True)
        by_id = {id(p): g for p, g in zip(trainable, grads[1:])}
        grad_t = grads[0] if grads[0] is not None else torch.zeros_like(t)
        return grad_t, tuple(by_id.get(id(p)) for p in params)

    def elevation_matrix(self, new_degree: int) -> Tensor:
        """M (n_old, n_new) in float64 with B_old_k(t) = sum_j M[k, j] B_new_j(t) for every t."""
        raise KallmError(
            f"basis {self.name!r} cannot raise its degree without changing the function "
            f"(its lower-degree terms change); bases that can: {', '.join(raisable_bases())}")

    def with_degree(self, new_degree: int) -> Basis:
        return type(self)(new_degree, **self.params())

    def _alloc(self, t: Tensor, n: int, out: Tensor | None) -> Tensor:
        shape = (*t.shape[:-1], n, t.shape[-1])
        if out is None:
            return t.new_empty(shape)
        if tuple(out.shape) != shape:
            raise KallmError(f"basis {self.name!r}: output buffer has shape {tuple(out.shape)}, expected {shape}")
        return out


def raisable_bases() -> list[str]:
    return [n for n in BASES.names() if BASES.get(n).elevation_matrix is not Basis.elevation_matrix]


def list_bases() -> list[str]:
    """Names accepted by `get_basis` (and by KAN specs)."""
    return BASES.names()


def basis_param_names(name: str) -> list[str]:
    cls = BASES.get(name)
    return [*cls.param_doc, *cls.param_aliases]


def get_basis(name: str, degree: int, **params: Any) -> Basis:
    """Build basis `name` of the given degree; unknown names and parameters raise KallmError."""
    cls = BASES.get(name)
    valid = basis_param_names(name)
    for key in params:
        if key not in valid:
            hint = f"; valid: {', '.join(valid)}" if valid else "; it takes no parameters"
            raise KallmError(f"basis {name!r} does not take parameter {key!r}{hint}")
    for alias, target in cls.param_aliases.items():
        if alias in params:
            if target in params:
                raise KallmError(f"basis {name!r}: give {target!r} or its alias {alias!r}, not both")
            params[target] = params.pop(alias)
    return cls(degree, **params)
