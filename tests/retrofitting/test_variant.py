"""The one variant grammar: typed specs that round-trip, and errors that name the offending part."""

from __future__ import annotations

import pytest

from kallm.errors import KallmError
from kallm.kan import SequentialSpec, parse_kan_spec
from kallm.retrofitting.variant import Budget, VariantSpec, parse_variant


@pytest.mark.parametrize("text, canonical", [
    ("baseline", "baseline"),
    ("linear", "linear"),
    ("linear@budget=match", "linear@budget=match"),
    ("linear @ budget = 0.5", "linear@budget=0.5"),
    ("linear@budget=2000000", "linear@budget=2000000"),
    ("linear@hidden=512", "linear@hidden=512"),
    ("kan:chebyshev2:2", "kan:chebyshev2:2"),
    ("kan: parallel(chebyshev2:2, legendre:3)", "kan:parallel(chebyshev2:2,legendre:3)"),
    ("kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match", "kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match"),
    ("kan:sequential(chebyshev2:2,legendre:2)@hidden=64", "kan:sequential(chebyshev2:2,legendre:2;hidden=64)"),
])
def test_round_trip_to_canonical_text(text, canonical):
    spec = parse_variant(text)
    assert str(spec) == canonical
    assert parse_variant(str(spec)) == spec


def test_specs_are_typed():
    spec = parse_variant("kan:sequential(chebyshev2:2,chebyshev2:2)@budget=0.5")
    assert spec.kind == "kan" and isinstance(spec.kan, SequentialSpec) and spec.budget == Budget("ratio", 0.5)
    assert parse_variant("linear@budget=300").budget == Budget("count", 300)
    assert parse_variant("linear@hidden=64") == VariantSpec("linear", hidden=64)
    assert parse_variant("kan:sequential(chebyshev2:1,legendre:2)@hidden=8").kan == parse_kan_spec(
        "sequential(chebyshev2:1,legendre:2;hidden=8)")
    assert not parse_variant("baseline").trained and parse_variant("linear").trained


def test_budget_targets():
    assert Budget("match").target(1000) == 1000
    assert Budget("ratio", 0.25).target(1000) == 250
    assert Budget("count", 77).target(1000) == 77
    assert Budget.parse("match") == Budget("match") and Budget.parse(3) == Budget("count", 3)
    assert Budget.parse("1e-1") == Budget("ratio", 0.1) and Budget.parse(0.5) == Budget("ratio", 0.5)


@pytest.mark.parametrize("text, message", [
    ("", "empty variant"),
    ("mlp", r"unknown variant 'mlp'.*Valid variant names: baseline, kan, kat, linear"),
    ("kan", "needs a KAN spec after 'kan:'"),
    ("kan:chebyshv2:2", "did you mean 'chebyshev2'"),
    ("linear:chebyshev2:2", "takes no spec after ':'"),
    ("baseline@budget=match", "untouched model"),
    ("linear@size=3", "valid options: budget=, hidden="),
    ("linear@budget=1@budget=2", "given twice"),
    ("linear@budget=half", "cannot read budget 'half'"),
    ("linear@budget=-3", "budget must be positive"),
    ("linear@budget=match@hidden=3", "either budget= or hidden="),
    ("linear@hidden=x", "hidden width must be a positive integer"),
    ("kan:chebyshev2:2@hidden=64", "hidden= needs a multi-layer KAN"),
    ("kan:chebyshev2:2@budget=match", "budget= needs a multi-layer KAN"),
    ("kan:parallel(chebyshev2:2,legendre:3)@budget=0.5", "budget= needs a multi-layer KAN"),
    ("kan:sequential(chebyshev2:2,legendre:2;hidden=8)@hidden=64", "hidden width given twice"),
    ("kan:sequential(chebyshev2:2,legendre:2;hidden=8)@budget=match", "fixes its hidden width"),
])
def test_bad_variants_name_what_is_wrong(text, message):
    with pytest.raises(KallmError, match=message):
        parse_variant(text)


def test_direct_construction_validates_too():
    with pytest.raises(KallmError, match="belongs in its spec"):
        VariantSpec("kan", kan=parse_kan_spec("sequential(chebyshev2:2,legendre:2)"), hidden=4)
    with pytest.raises(KallmError, match="needs a KAN spec"):
        VariantSpec("kan")
    with pytest.raises(KallmError, match="unknown variant"):
        VariantSpec("mlp")  # type: ignore[arg-type]
