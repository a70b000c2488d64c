"""KANLinear: semantics, custom backward (gradcheck), memory, init, causality, saturation, dtypes."""

from __future__ import annotations

import pytest
import torch

from kallm.kan import Basis, KANLinear, get_basis, list_bases

RAISABLE = ["chebyshev1", "chebyshev2", "legendre", "jacobi", "gegenbauer", "hermite", "laguerre",
            "bernstein", "fourier", "rational"]


def _layer(basis: str, in_f: int = 5, out_f: int = 4, degree: int = 3, **kwargs) -> KANLinear:
    torch.manual_seed(0)
    return KANLinear(in_f, out_f, basis, degree, **kwargs)


@pytest.mark.parametrize("basis", list_bases())
def test_gradcheck_custom_backward(basis):
    layer = _layer(basis, 3, 2, bias=True).double()
    x = (torch.randn(4, 3, dtype=torch.float64) * 1.5).requires_grad_()
    params = tuple(layer.parameters())
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params), eps=1e-6, atol=1e-6)


def test_gradcheck_without_base_branch_and_identity_map():
    layer = _layer("legendre", 3, 2, base_activation=None, input_norm="tanh").double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6)
    layer = _layer("hermite", 3, 2, base_activation="gelu", input_norm=None).double()
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6)
    # B-splines beyond their grid (identity map, inputs up to +-3 on a [-1, 1] grid): the masked path.
    layer = _layer("bspline", 3, 2, input_norm="identity", base_activation=None).double()
    wide = (torch.randn(6, 3, dtype=torch.float64) * 2).requires_grad_()
    assert wide.detach().abs().max() > 1.2
    assert torch.autograd.gradcheck(layer, (wide,), eps=1e-6, atol=1e-6)


def test_forward_matches_the_explicit_formula():
    layer = _layer("chebyshev2", 5, 4, degree=3, bias=True).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    terms = get_basis("chebyshev2", 3).double()(torch.tanh(x))  # (7, 5, 4)
    coef = layer.weight[:, :20].reshape(4, 4, 5)  # (out, k, in): term-major layout
    expected = torch.einsum("nik,oki->no", terms, coef) + torch.nn.functional.silu(x) @ layer.weight[:, 20:].t()
    torch.testing.assert_close(layer(x), expected + layer.bias)


@pytest.mark.parametrize("basis", ["chebyshev2", "bspline", "fourier", "rational"])
def test_expand_and_fused_weight_reproduce_forward_and_fit_by_least_squares(basis):
    layer = _layer(basis, 6, 3, degree=2).double()
    x = torch.randn(400, 6, dtype=torch.float64)
    design = layer.expand(x)
    assert design.shape == (400, layer.n_features)
    torch.testing.assert_close(design @ layer.fused_weight(), layer(x))
    # Closed-form fit of a fresh layer to this one's outputs recovers the outputs.
    target = layer(x).detach()
    student = _layer(basis, 6, 3, degree=2).double()
    # B_0 == 1 gives identical ones columns (rank-deficient by design): use a rank-revealing driver.
    solution = torch.linalg.lstsq(student.expand(x), target, driver="gelsd").solution
    student.set_fused_weight(solution)
    torch.testing.assert_close(student(x), target, atol=1e-8, rtol=1e-8)
    with pytest.raises(ValueError, match="fused weight must have shape"):
        student.set_fused_weight(solution.t())


@pytest.mark.parametrize("basis", RAISABLE)
def test_raise_degree_keeps_the_function(basis):
    layer = _layer(basis, 4, 3, degree=2).double()
    x = torch.randn(50, 4, dtype=torch.float64)
    before = layer(x).detach()
    old_weight, old_terms = layer.weight, layer.basis.n_basis
    layer.raise_degree(4)
    assert layer.degree == 4 and layer.basis.degree == 4
    assert isinstance(layer.weight, torch.nn.Parameter) and layer.weight is not old_weight
    assert layer.weight.shape == (3, layer.n_features)
    torch.testing.assert_close(layer(x), before)
    if basis not in ("bernstein",):  # polynomial families: the new terms' coefficients are zero
        parts, _ = layer.unpack_weight()
        assert bool((parts[0][:, old_terms:] == 0).all())


@pytest.mark.parametrize("basis", ["bspline", "rbf"])
def test_raise_degree_refuses_bases_whose_terms_change(basis):
    layer = _layer(basis, 4, 3, degree=2)
    with pytest.raises(ValueError, match="cannot raise its degree"):
        layer.raise_degree(3)
    with pytest.raises(ValueError, match="below the current degree"):
        _layer("legendre", degree=3).raise_degree(2)


def test_univariate_sums_to_the_output():
    layer = _layer("legendre", 5, 4, degree=3, bias=True)
    x = torch.randn(5)
    phi = layer.univariate(x)  # (G=5, in=5, out=4): phi_{i,o}(x_g)
    assert phi.shape == (5, 5, 4)
    diagonal = phi[torch.arange(5), torch.arange(5)]  # phi_{i,o}(x_i)
    torch.testing.assert_close(diagonal.sum(0) + layer.bias.detach(), layer(x).detach(), atol=1e-5, rtol=1e-5)
    sub = layer.univariate(x, in_idx=[1, 3], out_idx=[2])
    torch.testing.assert_close(sub, phi[:, [1, 3]][:, :, [2]])


@pytest.mark.parametrize("basis", ["chebyshev2", "legendre", "hermite", "laguerre", "bernstein", "bspline",
                                   "rbf", "fourier", "rational"])
def test_init_keeps_output_variance_near_input_variance(basis):
    torch.manual_seed(1)
    layer = KANLinear(256, 256, basis, 3)
    x = torch.randn(2048, 256)
    with torch.no_grad():
        ratio = float(layer(x).var() / x.var())
    assert 0.8 < ratio < 1.25, ratio


@pytest.mark.parametrize("basis", list_bases())
def test_each_token_depends_only_on_itself(basis):
    layer = _layer(basis, 8, 6)
    x = torch.randn(2, 10, 8)
    y = layer(x).detach()
    x2 = x.clone()
    x2[1, 4] += 100.0 * torch.randn(8)  # a wild outlier in one token
    y2 = layer(x2).detach()
    changed = (y2 != y).any(-1)
    assert changed[1, 4] and int(changed.sum()) == 1


@pytest.mark.parametrize("basis", list_bases())
def test_finite_outputs_and_gradients_for_huge_and_bfloat16_inputs(basis):
    layer = _layer(basis, 6, 4, degree=3)
    x = torch.tensor([-1e4, -300.0, -1.0, 0.0, 50.0, 1e4]).repeat(3, 1).requires_grad_()
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())
    xb = (torch.randn(3, 6) * 4).to(torch.bfloat16).requires_grad_()
    y = layer(xb)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y.float().square().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad).all()


def test_saved_for_backward_is_only_the_input():
    layer = _layer("chebyshev2", 64, 64, degree=3)
    params = {p.data_ptr() for p in layer.parameters()}
    saved: list[torch.Tensor] = []
    x = torch.randn(32, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    activation_bytes = sum(t.numel() * t.element_size() for t in saved if t.data_ptr() not in params)
    assert activation_bytes == x.numel() * x.element_size()
    y.sum().backward()


def test_any_leading_shape_and_low_precision_weights():
    layer = _layer("chebyshev2", 6, 5, bias=True)
    x = torch.randn(2, 3, 4, 6)
    y = layer(x)
    assert y.shape == (2, 3, 4, 5)
    torch.testing.assert_close(y.reshape(-1, 5), layer(x.reshape(-1, 6)))
    for dtype in (torch.bfloat16, torch.float16):
        low = _layer("chebyshev2", 6, 5, bias=True).to(dtype)
        out = low(x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), y.detach(), atol=0.1, rtol=0.05)
        out.float().sum().backward()
        assert low.weight.grad.dtype == dtype and torch.isfinite(low.weight.grad.float()).all()


def test_autocast_runs_the_matmul_in_the_autocast_dtype():
    layer = _layer("legendre", 6, 5)
    x = torch.randn(4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x).detach(), atol=0.1, rtol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_cpu(dtype):
    layer = _layer("chebyshev2", 16, 8, bias=True)
    x = torch.randn(2, 5, 16)
    expected = layer(x).detach()
    gpu = layer.to("cuda", dtype)
    xg = x.to("cuda", dtype).requires_grad_()
    y = gpu(xg)
    y.float().sum().backward()
    assert y.dtype == dtype and torch.isfinite(xg.grad.float()).all()
    torch.testing.assert_close(y.float().cpu(), expected, atol=0.05 if dtype != torch.float32 else 1e-4, rtol=0.05)


def test_bad_layer_arguments_raise_value_error():
    with pytest.raises(ValueError, match="last dimension 5"):
        _layer("legendre")(torch.randn(3, 4))
    with pytest.raises(ValueError, match="unknown input map 'tanhh'; did you mean 'tanh'"):
        KANLinear(4, 4, "legendre", 2, input_norm="tanhh")
    with pytest.raises(ValueError, match="unknown base activation 'sigmoid'"):
        KANLinear(4, 4, "legendre", 2, base_activation="sigmoid")
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        KANLinear(0, 4)
    with pytest.raises(ValueError, match="did you mean 'legendre'"):
        KANLinear(4, 4, "legendr", 2)


class _Cubic(Basis):
    """A basis defined by `terms` alone: the layer falls back to autograd for its derivative."""

    name = "cubic-test"

    def terms(self, t, out=None, skip_constant=False):
        values = torch.stack([t ** k for k in range(self.n_basis)], dim=-2)
        return values if out is None else out.copy_(values)


def test_a_new_basis_needs_only_terms():
    layer = KANLinear(3, 2, _Cubic(3)).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.parameters()), eps=1e-6, atol=1e-6)


def test_layer_pickles_and_reloads(tmp_path):
    layer = _layer("jacobi", alpha=0.5, beta=1.0, bias=True)
    torch.save(layer, tmp_path / "layer.pt")
    again = torch.load(tmp_path / "layer.pt", weights_only=False)
    x = torch.randn(3, 5)
    torch.testing.assert_close(again(x), layer(x))


def test_frozen_weights_or_constant_input_skip_only_their_gradients():
    layer = _layer("legendre", 4, 3, bias=True)
    x = torch.randn(6, 4, requires_grad=True)
    layer(x).square().sum().backward()
    full_x, full_w = x.grad.clone(), layer.weight.grad.clone()
    layer.zero_grad(set_to_none=True)
    layer.requires_grad_(False)
    x.grad = None
    layer(x).square().sum().backward()
    torch.testing.assert_close(x.grad, full_x)
    assert layer.weight.grad is None
    layer.requires_grad_(True)
    layer(x.detach()).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, full_w)
