"""ParallelKAN (channel groups, one matmul) and SequentialKAN (stacked layers)."""

from __future__ import annotations

import pytest
import torch

from kallm.kan import KANLinear, ParallelKAN, SequentialKAN, get_basis
from kallm.kan.mixing import INNER_LR_SCALE
from kallm.training.optim import lr_scales


def _parallel(**kwargs) -> ParallelKAN:
    torch.manual_seed(0)
    parts = [("chebyshev2", 2), ("bspline", 2, {"grid_size": 3}), ("rational", 3)]
    return ParallelKAN(7, 4, parts, **kwargs)


def test_parallel_equals_the_sum_of_its_groups():
    layer = _parallel(sizes=[3, 2, 2], bias=True).double()
    x = torch.randn(9, 7, dtype=torch.float64)
    parts, base = layer.unpack_weight()
    expected = layer.bias + torch.nn.functional.silu(x) @ base.t()
    for (start, size), basis, coef in zip([(0, 3), (3, 2), (5, 2)], layer.bases, parts):
        terms = basis(torch.tanh(x[:, start:start + size]))  # (N, size, n_basis)
        expected = expected + torch.einsum("nck,okc->no", terms, coef)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.expand(x) @ layer.fused_weight() + layer.bias, layer(x))


def test_parallel_gradcheck_and_univariate():
    layer = _parallel(sizes=[2, 3, 2]).double()
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()), eps=1e-6, atol=1e-6)
    v = torch.randn(7, dtype=torch.float64)
    phi = layer.univariate(v)
    torch.testing.assert_close(phi[torch.arange(7), torch.arange(7)].sum(0).double(), layer(v).detach(),
                               atol=1e-5, rtol=1e-5)


def test_parallel_with_one_part_is_kan_linear():
    torch.manual_seed(0)
    single = ParallelKAN(6, 3, [get_basis("legendre", 3)])
    torch.manual_seed(0)
    plain = KANLinear(6, 3, "legendre", 3)
    x = torch.randn(5, 6)
    torch.testing.assert_close(single(x), plain(x))


def test_parallel_equal_split_and_bad_sizes():
    assert _parallel().sizes == [3, 2, 2]
    with pytest.raises(ValueError, match=r"sum to in_features=7 \(they sum to 6\)"):
        _parallel(sizes=[2, 2, 2])
    with pytest.raises(ValueError, match="got 2 group sizes"):
        _parallel(sizes=[5, 2])
    with pytest.raises(ValueError, match="must be positive"):
        _parallel(sizes=[8, 0, -1])


def test_parallel_tokens_are_independent():
    layer = _parallel()
    x = torch.randn(3, 7)
    x2 = x.clone()
    x2[0] += 50.0
    assert torch.equal(layer(x)[1:], layer(x2)[1:])


def test_sequential_chains_layers_and_checks_widths():
    torch.manual_seed(0)
    first, second = KANLinear(6, 10, "bspline", 3), KANLinear(10, 4, "chebyshev2", 2)
    stack = SequentialKAN([first, second])
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(stack(x), second(first(x)))
    assert (stack.in_features, stack.hidden_features, stack.out_features) == (6, [10], 4)
    with pytest.raises(ValueError, match="layer 0 outputs 10 features but layer 1 expects 6"):
        SequentialKAN([first, KANLinear(6, 4)])


def test_sequential_slows_every_layer_but_the_last():
    stack = SequentialKAN([KANLinear(6, 10), KANLinear(10, 10), KANLinear(10, 4)], inner_lr_scale=0.2)
    scales = lr_scales(stack)
    for layer, expected in zip(stack.layers, (0.2, 0.2, 1.0)):
        assert {scales.get(id(p), 1.0) for p in layer.parameters()} == {expected}
    assert lr_scales(SequentialKAN([KANLinear(6, 4)])) == {}
    assert set(lr_scales(SequentialKAN([KANLinear(6, 10), KANLinear(10, 4)])).values()) == {INNER_LR_SCALE}
    with pytest.raises(ValueError, match="inner_lr_scale must be positive, got 0"):
        SequentialKAN([KANLinear(6, 10), KANLinear(10, 4)], inner_lr_scale=0)
