"""Bases against scipy (float64, degrees 0-8, 1,000+ points), plus shapes, grid bases and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special as sp
import torch
from scipy.interpolate import BSpline

from kallm.kan import get_basis, list_bases

DEGREES = range(9)
# name -> (params, scipy reference f(n, x), natural domain)
POLYNOMIALS = {
    "chebyshev1": ({}, sp.eval_chebyt, (-1.0, 1.0)),
    "chebyshev2": ({}, sp.eval_chebyu, (-1.0, 1.0)),
    "legendre": ({}, sp.eval_legendre, (-1.0, 1.0)),
    "jacobi": ({"alpha": 0.5, "beta": -0.3}, lambda n, x: sp.eval_jacobi(n, 0.5, -0.3, x), (-1.0, 1.0)),
    "gegenbauer": ({"lam": 1.5}, lambda n, x: sp.eval_gegenbauer(n, 1.5, x), (-1.0, 1.0)),
    "hermite": ({}, sp.eval_hermite, (-3.0, 3.0)),
    "laguerre": ({"alpha": 0.7}, lambda n, x: sp.eval_genlaguerre(n, 0.7, x), (0.0, 8.0)),
}


def _grid(lo: float, hi: float, n: int = 1201) -> torch.Tensor:
    return torch.linspace(lo, hi, n, dtype=torch.float64)


def _check_against(values: torch.Tensor, reference: np.ndarray) -> None:
    scale = max(np.abs(reference).max(), 1.0)
    np.testing.assert_allclose(values.numpy(), reference, rtol=0, atol=1e-8 * scale)


@pytest.mark.parametrize("name", list(POLYNOMIALS))
def test_orthogonal_polynomials_match_scipy(name):
    params, ref, (lo, hi) = POLYNOMIALS[name]
    x = _grid(lo, hi)
    for degree in DEGREES:
        values = get_basis(name, degree, **params)(x)
        assert values.shape == (len(x), degree + 1)
        for k in range(degree + 1):
            _check_against(values[:, k], ref(k, x.numpy()))


@pytest.mark.parametrize("name", list(POLYNOMIALS))
def test_in_place_terms_match_functional(name):
    # The layer's path writes into a buffer slab and may drop B_0 == 1; it must agree with forward().
    params, _, (lo, hi) = POLYNOMIALS[name]
    basis = get_basis(name, 6, **params)
    t = _grid(lo, hi, 300).reshape(100, 3)
    full = basis.terms(t)
    out = torch.empty(100, 6, 3, dtype=torch.float64)
    basis.terms(t, out, skip_constant=True)
    torch.testing.assert_close(out, full[:, 1:], rtol=0, atol=1e-12)
    torch.testing.assert_close(full, basis(t).permute(0, 2, 1))


def test_gegenbauer_alpha_alias_and_jacobi_defaults_to_legendre():
    x = _grid(-1, 1, 101)
    torch.testing.assert_close(get_basis("gegenbauer", 4, alpha=0.75)(x), get_basis("gegenbauer", 4, lam=0.75)(x))
    torch.testing.assert_close(get_basis("jacobi", 5)(x), get_basis("legendre", 5)(x))


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_bspline_matches_scipy_basis_elements(degree):
    basis = get_basis("bspline", degree, grid_size=5, grid_min=-1.0, grid_max=1.0)
    knots = basis.knots().numpy()
    x = _grid(-1.0, 1.0, 1001)[:-1]  # half-open intervals: scipy's elements exclude the right end
    # Degree 0 jumps at knots, where rounding of the knot positions decides the side: skip those points.
    x = x[(x[:, None] - torch.from_numpy(knots)).abs().min(1).values > 1e-9]
    values = basis(x)
    assert values.shape == (len(x), 5 + degree)
    for j in range(basis.n_basis):
        element = BSpline.basis_element(knots[j: j + degree + 2], extrapolate=False)
        _check_against(values[:, j], np.nan_to_num(element(x.numpy())))
    torch.testing.assert_close(values.sum(-1), torch.ones(len(x), dtype=torch.float64))  # partition of unity
    # Beyond the grid (identity input map): only the extended-knot splines that reach there, then 0.
    x = _grid(-2.0, 2.0, 1001)
    x = x[(x[:, None] - torch.from_numpy(knots)).abs().min(1).values > 1e-9]
    values = basis(x)
    for j in range(basis.n_basis):
        element = BSpline.basis_element(knots[j: j + degree + 2], extrapolate=False)
        _check_against(values[:, j], np.nan_to_num(element(x.numpy())))


def test_bernstein_matches_binomial_formula():
    x = _grid(0.0, 1.0)
    for degree in DEGREES:
        values = get_basis("bernstein", degree)(x).numpy()
        for k in range(degree + 1):
            _check_against(torch.from_numpy(values[:, k]), math.comb(degree, k) * x.numpy() ** k
                           * (1 - x.numpy()) ** (degree - k))


def test_fourier_rbf_rational_values():
    x = _grid(-1.0, 1.0, 401)
    f = get_basis("fourier", 3)(x)
    assert f.shape == (401, 7)
    torch.testing.assert_close(f[:, 0], torch.ones_like(x))
    torch.testing.assert_close(f[:, 5], torch.cos(3 * math.pi * x / 2))
    torch.testing.assert_close(f[:, 6], torch.sin(3 * math.pi * x / 2))

    rbf = get_basis("rbf", 3, grid_size=4)
    centres = 0.5 * (rbf.knots()[:7] + rbf.knots()[4:])
    expected = torch.exp(-((x[:, None] - centres) ** 2) / (2 * 4 * 0.5**2 / 12))
    torch.testing.assert_close(rbf(x), expected)

    rational = get_basis("rational", 3, den_degree=2).double()
    with torch.no_grad():
        rational.denominator.copy_(torch.tensor([0.5, -2.0]))
    q = 1 + (0.5 * x - 2.0 * x**2).abs()
    torch.testing.assert_close(rational(x), torch.stack([x**k / q for k in range(4)], dim=-1))
    assert bool((q >= 1).all())  # the denominator never reaches zero


@pytest.mark.parametrize("name", list_bases())
def test_any_shape_maps_to_shape_plus_n_basis(name):
    basis = get_basis(name, 3)
    x = torch.rand(2, 3, 4) * 0.9
    values = basis(x)
    assert values.shape == (2, 3, 4, basis.n_basis)
    assert torch.isfinite(values).all()


def test_every_required_basis_is_registered():
    required = {"chebyshev1", "chebyshev2", "legendre", "jacobi", "gegenbauer", "hermite", "laguerre",
                "bernstein", "fourier", "bspline", "rbf", "rational"}
    assert required <= set(list_bases())


@pytest.mark.parametrize("name, degree, params, match", [
    ("chebyshv2", 2, {}, "did you mean 'chebyshev2'"),
    ("chebyshev2", -1, {}, "non-negative integer"),
    ("chebyshev2", 1.5, {}, "non-negative integer"),
    ("chebyshev2", True, {}, "non-negative integer"),
    ("jacobi", 2, {"alpha": -1.0}, "'alpha' must be > -1"),
    ("jacobi", 2, {"beta": -1.5}, "'beta' must be > -1"),
    ("gegenbauer", 2, {"lam": -0.5}, "must be > -1/2"),
    ("gegenbauer", 2, {"alpha": -0.7}, "must be > -1/2"),
    ("laguerre", 2, {"alpha": -1.0}, "must be > -1"),
    ("bspline", 2, {"grid_size": 0}, "positive integer"),
    ("bspline", 2, {"grid_min": 1.0, "grid_max": -1.0}, "grid_min < grid_max"),
    ("legendre", 2, {"alpha": 1.0}, "does not take parameter 'alpha'"),
])
def test_bad_basis_arguments_raise_value_error(name, degree, params, match):
    with pytest.raises(ValueError, match=match):
        get_basis(name, degree, **params)


@pytest.mark.parametrize("name", [*POLYNOMIALS, "bernstein", "bspline", "rbf", "fourier", "rational"])
@pytest.mark.parametrize("skip_constant", [False, True])
@pytest.mark.parametrize("degree", [1, 2, 7])
def test_analytic_derivatives_match_autograd(name, skip_constant, degree):
    from kallm.kan.bases import Basis

    basis = get_basis(name, degree, **POLYNOMIALS.get(name, ({},))[0]).double()
    if skip_constant and not basis.constant_first:
        pytest.skip("only bases with B_0 == 1 drop their constant term")
    lo, hi = POLYNOMIALS[name][2] if name in POLYNOMIALS else (-1.0, 1.0)
    t = torch.rand(40, 3, dtype=torch.float64) * (hi - lo) + lo
    terms = basis.terms(t, skip_constant=skip_constant)
    grad = torch.randn_like(terms)
    analytic, params = basis.backward_terms(t, terms, grad, skip_constant)
    reference, ref_params = Basis.backward_terms(basis, t, terms, grad, skip_constant)
    torch.testing.assert_close(analytic, reference)
    for got, want in zip(params, ref_params):
        torch.testing.assert_close(got, want)
