"""A basis family registered from outside kallm works end to end, and every family module is in the one list.

The toy family `toy` is the monomials 1, t, ..., t^degree (autograd backward, the default).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import Tensor

from kallm.errors import KallmError
from kallm.export.bundle import shipped_name, shipped_sources
from kallm.export.pretrained import export_pretrained
from kallm.kan import KANLinear, build_kan, kan_num_params, parse_kan_spec, register_basis
from kallm.kan.bases import BASES, Basis
from kallm.kan.families import FAMILY_MODULES
from kallm.retrofitting.surgery import retrofit
from tests.tiny_models import make_tiny_model

SRC = Path(__file__).resolve().parents[2] / "src"


class Monomials(Basis):
    constant_first = True

    def terms(self, t: Tensor, out: Tensor | None = None, skip_constant: bool = False) -> Tensor:
        first = 1 if skip_constant else 0
        powers = torch.stack([t**k for k in range(first, self.degree + 1)], dim=-2)
        if out is None:
            return powers
        out = self._alloc(t, self.n_basis - first, out)
        out.copy_(powers)
        return out


@pytest.fixture
def toy():
    register_basis("toy")(Monomials)
    try:
        yield Monomials
    finally:
        BASES.unregister("toy")


def test_a_registered_basis_builds_a_kan_layer_with_its_values(toy):
    spec = parse_kan_spec("toy:3:base=none,norm=none")
    assert str(spec) == "toy:3:base=none,norm=none" and spec.name == "toy"
    layer = build_kan(spec, 5, 4).double()
    assert isinstance(layer, KANLinear) and layer.basis.name == "toy" and layer.basis.n_basis == 4
    assert sum(p.numel() for p in layer.parameters()) == kan_num_params(spec, 5, 4) == 4 * 5 * 4
    with torch.no_grad():
        layer.weight.normal_()
    x = torch.randn(7, 5, dtype=torch.float64)
    (coef,), _ = layer.unpack_weight()  # (out, n_basis, in)
    powers = torch.stack([x**k for k in range(4)], dim=1)  # (batch, n_basis, in)
    torch.testing.assert_close(layer(x), torch.einsum("bki,oki->bo", powers, coef))


def test_a_registered_basis_has_correct_gradients(toy):
    layer = KANLinear(3, 2, "toy", 2, base_activation="silu").double()
    with torch.no_grad():
        layer.weight.normal_()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, w: torch.func.functional_call(layer, {"weight": w}, (inp,)),
                                    (x, layer.weight.detach().clone().requires_grad_(True)))


def test_a_registered_basis_retrofits_and_trains(toy):
    model = make_tiny_model("llama")
    report = retrofit(model, layers="last:1", variant="kan:toy:2", freeze="ffn")
    assert report.replaced_new_params == kan_num_params("toy:2", 32, 32)
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    new = {n: p for n, p in model.named_parameters() if ".kallm_ffn." in n}
    assert new and all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                       for p in new.values())
    assert all(p.grad is None for n, p in model.named_parameters() if n not in new)


def test_a_basis_outside_the_family_list_is_refused_at_export(toy, tmp_path):
    model = make_tiny_model("llama")
    retrofit(model, layers="last:1", variant="kan:parallel(chebyshev2:2,toy:2)", freeze="ffn")
    with pytest.raises(KallmError, match="basis 'toy' cannot be exported without kallm"):
        export_pretrained(model, tmp_path / "export", base_model="tiny", verify=False)


def test_the_registration_is_undone():
    assert "toy" not in BASES
    with pytest.raises(KallmError, match="unknown basis 'toy'"):
        parse_kan_spec("toy:3")


def _defines_a_basis(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef):
            for deco in node.decorator_list:
                func = deco.func if isinstance(deco, ast.Call) else deco
                if getattr(func, "id", getattr(func, "attr", None)) == "register_basis":
                    return True
    return False


def test_every_module_defining_a_basis_is_in_the_family_list():
    defining = {".".join(p.relative_to(SRC).with_suffix("").parts) for p in (SRC / "kallm").rglob("*.py")
                if _defines_a_basis(p)}
    assert "kallm.kan.polynomials" in defining  # the scan is real
    assert defining == set(FAMILY_MODULES), "list every basis module in src/kallm/kan/families.py"


def test_every_family_module_is_shipped_with_an_export():
    shipped = set(shipped_sources())
    assert {f"{shipped_name(m)}.py" for m in FAMILY_MODULES} <= shipped
    assert "kallm_kan_families.py" in shipped
