"""LearnableActivation (phi_g = w_g base + sum_k c_gk B_k(map)) and ProjectedKAN, against their formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kallm.errors import KallmError
from kallm.kan import list_bases
from kallm.kan.activation import LearnableActivation, ProjectedKAN, activation_num_params
from kallm.kan.elementwise import get_input_map
from kallm.kan.mixing import equal_sizes

X = torch.randn(3, 5, 10, generator=torch.Generator().manual_seed(0)) * 2


@pytest.mark.parametrize("basis", list_bases())
@pytest.mark.parametrize("groups", [None, 3])
def test_a_new_activation_is_exactly_the_original(basis, groups):
    for base in (nn.SiLU(), nn.GELU(), nn.GELU(approximate="tanh")):
        act = LearnableActivation(10, f"{basis}:3", groups, base=base)
        assert torch.equal(act(X), base(X))


@pytest.mark.parametrize("basis", ["chebyshev2:4", "bspline:3", "rational:3", "hermite:2"])
@pytest.mark.parametrize("groups", [None, 0, 3, 10, 50])
def test_parameter_count_is_groups_times_basis_plus_one(basis, groups):
    act = LearnableActivation(10, basis, groups, base=nn.SiLU())
    n_groups = 10 if not groups else min(groups, 10)
    basis_own = sum(p.numel() for p in act.basis.parameters())  # rational: its shared denominator
    assert act.n_groups == n_groups
    assert sum(p.numel() for p in act.parameters()) == n_groups * (act.basis.n_basis + 1) + basis_own
    assert activation_num_params(basis, 10, groups) == sum(p.numel() for p in act.parameters())


def _reference(act: LearnableActivation, x: torch.Tensor) -> torch.Tensor:
    """phi per channel, written out group by group."""
    out = torch.empty_like(x)
    start = 0
    for g, size in enumerate(equal_sizes(act.width, act.n_groups)):
        part = x[..., start:start + size]
        terms = act.basis(get_input_map(act.input_map).fn(part))  # (..., size, n_basis)
        out[..., start:start + size] = act.weight[g] * act.base(part) + terms @ act.coef[g]
        start += size
    return out


@pytest.mark.parametrize("groups", [None, 4])
def test_forward_is_the_grouped_formula_and_univariate_its_functions(groups):
    torch.manual_seed(1)
    act = LearnableActivation(10, "legendre:3", groups, base=nn.GELU())
    with torch.no_grad():
        act.weight.uniform_(0.5, 1.5)
        act.coef.normal_()
    with torch.no_grad():
        torch.testing.assert_close(act(X), _reference(act, X))
        grid = torch.linspace(-3, 3, 7)
        phi = act.univariate(grid)  # (7, n_groups)
        on_grid = act(grid[:, None].expand(-1, 10))
    assert phi.shape == (7, act.n_groups)
    group_of = [g for g, size in enumerate(equal_sizes(10, act.n_groups)) for _ in range(size)]
    torch.testing.assert_close(on_grid, phi[:, group_of])


def test_groups_are_contiguous_and_share_one_function():
    act = LearnableActivation(10, "chebyshev2:2", groups=3, base=nn.SiLU())
    with torch.no_grad():
        act.coef[1, 1] = 1.0  # group 1: channels 4..6 (sizes 4, 3, 3)
        changed = (act(X) != nn.SiLU()(X)).flatten(0, -2).any(dim=0)
    assert changed.tolist() == [False] * 4 + [True] * 3 + [False] * 3


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_any_float_dtype(dtype):
    act = LearnableActivation(10, "chebyshev2:3", 2, base=nn.SiLU()).to(dtype)
    x = X.to(dtype)
    out = act(x)
    assert out.dtype == dtype and torch.equal(out, nn.SiLU()(x))


def test_gradients_reach_both_weights_and_coefficients():
    act = LearnableActivation(10, "chebyshev2:3", base=nn.SiLU())
    act(X).pow(2).sum().backward()
    assert act.weight.grad.abs().sum() > 0 and act.coef.grad.abs().sum() > 0


def test_projected_kan_counts_its_parameters_and_applies_act_between_projections():
    torch.manual_seed(0)
    act = LearnableActivation(12, "chebyshev2:2", 4, base=nn.SiLU())
    kan = ProjectedKAN(10, 12, act, in_bias=True, out_bias=False)
    n = sum(p.numel() for p in kan.parameters())
    assert n == ProjectedKAN.num_params(10, 12, True, False, activation_num_params("chebyshev2:2", 12, 4))
    assert n == 10 * 12 + 12 + 12 * 10 + 4 * 4
    x = torch.randn(2, 3, 10)
    torch.testing.assert_close(kan(x), kan.out_proj(nn.functional.silu(kan.in_proj(x))))


@pytest.mark.parametrize("basis, message", [
    ("parallel(chebyshev2:2,legendre:2)", "takes one basis"),
    ("chebyshev2:2:base=gelu", "no base= option"),
    ("chebyshev2:2:bias=true", "no bias= option"),
    ("chebyshv2:2", "did you mean"),
])
def test_bad_bases_are_refused(basis, message):
    with pytest.raises(KallmError, match=message):
        LearnableActivation(8, basis)


def test_bad_widths_groups_and_inputs_are_refused():
    with pytest.raises(KallmError, match="groups"):
        LearnableActivation(8, "chebyshev2:2", groups=-1)
    with pytest.raises(KallmError, match="width"):
        LearnableActivation(0, "chebyshev2:2")
    with pytest.raises(KallmError, match="width 8"):
        LearnableActivation(8, "chebyshev2:2")(torch.zeros(2, 7))
    with pytest.raises(KallmError, match="width 8"):
        ProjectedKAN(4, 8, LearnableActivation(6, "chebyshev2:2"))
