"""KAN spec grammar: parsing, round trips, errors; build_kan and closed-form parameter counts."""

from __future__ import annotations

import pytest
import torch

from kallm.errors import KallmError
from kallm.kan import (
    BasisSpec,
    KANLinear,
    ParallelKAN,
    ParallelSpec,
    SequentialKAN,
    SequentialSpec,
    build_kan,
    kan_num_params,
    parse_kan_spec,
)
from kallm.kan.mixing import INNER_LR_SCALE
from kallm.training.optim import lr_scales

EXAMPLES = [
    "chebyshev2:2",
    "jacobi:3:alpha=0.5,beta=0.5",
    "chebyshev2:2:base=none",
    "legendre:4:norm=none,bias=true",
    "bspline:3:grid_size=8,grid_min=-2.0,grid_max=2.0",
    "parallel(chebyshev2:2,legendre:3)",
    "parallel(chebyshev2:2,legendre:3;sizes=288,288)",
    "parallel(jacobi:3:alpha=0.5,beta=0.5,legendre:3)",
    "sequential(bspline:3,chebyshev2:2)",
    "sequential(chebyshev2:2,chebyshev2:2;hidden=1024)",
    "sequential(parallel(fourier:2,rbf:2),rational:4:den_degree=3)",
    "sequential(chebyshev2:2,chebyshev2:2;hidden=64;inner_lr=1.0)",
]


@pytest.mark.parametrize("text", EXAMPLES)
def test_canonical_specs_round_trip(text):
    spec = parse_kan_spec(text)
    assert str(spec) == text
    assert parse_kan_spec(str(spec)) == spec
    hash(spec)  # frozen


def test_parsed_structure():
    assert parse_kan_spec(" jacobi : 3 : alpha=0.5, beta=0.5 ") == BasisSpec("jacobi", 3, (("alpha", 0.5), ("beta", 0.5)))
    spec = parse_kan_spec("parallel(chebyshev2:2,legendre:3;sizes=288,288)")
    assert spec == ParallelSpec((BasisSpec("chebyshev2", 2), BasisSpec("legendre", 3)), (288, 288))
    spec = parse_kan_spec("sequential(chebyshev2:2:base=none,bspline:3;hidden=64)")
    assert isinstance(spec, SequentialSpec) and spec.hidden == (64,)
    assert spec.layers[0].base_activation is None and spec.layers[1].base_activation == "silu"


@pytest.mark.parametrize("text, match", [
    ("chebyshv2:2", r"in KAN spec 'chebyshv2:2'.*did you mean 'chebyshev2'.*Valid basis names: .*legendre"),
    ("chebyshev2", "needs a degree"),
    ("chebyshev2:-1", "degree '-1' in 'chebyshev2:-1' must be a non-negative integer"),
    ("chebyshev2:two", "degree 'two'"),
    ("jacobi:2:alpha=-1", "'alpha' must be > -1"),
    ("gegenbauer:2:lam=-0.5", "must be > -1/2"),
    ("jacobi:2:gama=1", "unknown parameter 'gama'"),
    ("chebyshev2:2:alpha", "'alpha' in 'chebyshev2:2:alpha' is not key=value"),
    ("chebyshev2:2:base=relu6", "not a base activation"),
    ("parallel(chebyshev2:2", "must end with"),
    ("parallel(chebyshev2:2))", "unbalanced"),
    ("paralel(chebyshev2:2)", "did you mean 'parallel'"),
    ("parallel(chebyshev2:2,legendre:3;sizes=1,x)", "comma-separated integers"),
    ("parallel(chebyshev2:2,legendre:3;sizes=1,2,3)", "2 parts but 3 sizes"),
    ("parallel(chebyshev2:2,legendre:3:base=none)", "disagree on 'base'"),
    ("parallel(chebyshev2:2;hidden=3)", r"unknown option 'hidden=3' in parallel\(...\); valid: sizes="),
    ("sequential(legendre:2,legendre:2;inner_lr=0)", r"inner_lr must be a number in \(0, 1000\], got 0"),
    ("sequential(legendre:2,legendre:2;inner_lr=fast)", "inner_lr must be a number"),
    ("sequential(legendre:2,legendre:2;inner_lr=1;inner_lr=2)", "option 'inner_lr' given twice"),
    ("sequential(legendre:2,legendre:2;lr=1)", r"valid: hidden=<int>\[,<int>...\]; inner_lr=<number>"),
    ("sequential(chebyshev2:2,,legendre:2)", "empty entry"),
    ("sequential(sequential(legendre:2))", "cannot be nested"),
    ("sequential(legendre:2,legendre:2,legendre:2;hidden=1,2,3)", "takes 1 or 2 hidden widths"),
    ("", "empty KAN spec"),
])
def test_malformed_specs_raise_value_error_naming_the_token(text, match):
    with pytest.raises(ValueError, match=match):
        parse_kan_spec(text)


@pytest.mark.parametrize("text", EXAMPLES[:5] + [
    "parallel(chebyshev2:2,legendre:3;sizes=7,5)", "parallel(rational:3,bspline:2,fourier:1)",
    "sequential(bspline:3,chebyshev2:2:bias=true;hidden=9)", "sequential(parallel(fourier:2,rbf:2),rational:4)"])
def test_build_kan_and_closed_form_parameter_count(text):
    module = build_kan(text, 12, 5)
    assert sum(p.numel() for p in module.parameters()) == kan_num_params(text, 12, 5)
    assert module(torch.randn(3, 12)).shape == (3, 5)


def test_build_kan_types_widths_and_hidden_override():
    assert isinstance(build_kan("legendre:2", 8, 8), KANLinear)
    assert isinstance(build_kan("parallel(legendre:2,bspline:2)", 8, 8), ParallelKAN)
    stack = build_kan("sequential(chebyshev2:2,chebyshev2:2;hidden=16)", 8, 8)
    assert isinstance(stack, SequentialKAN) and stack.hidden_features == [16]
    assert build_kan("sequential(chebyshev2:2,chebyshev2:2)", 8, 8).hidden_features == [8]
    assert build_kan("sequential(chebyshev2:2,chebyshev2:2;hidden=16)", 8, 8, hidden_features=5).hidden_features == [5]
    # the stack's inner layers train at its inner_lr (default INNER_LR_SCALE); the spec text round-trips it
    for text, scale in (("sequential(legendre:2,legendre:2)", INNER_LR_SCALE),
                        ("sequential(legendre:2,legendre:2;inner_lr=0.5)", 0.5)):
        stack = build_kan(text, 8, 8)
        assert set(lr_scales(stack).values()) == {scale} and str(parse_kan_spec(text)) == text
    layer = build_kan("legendre:3:base=none,norm=identity,bias=true", 4, 4)
    assert layer.base_activation is None and layer.input_maps == ["identity"] and layer.bias is not None
    # The budget used by the benchmark: two KANLinear(576, 576, chebyshev2:2) match a SwiGLU 576->1536->576.
    assert kan_num_params("chebyshev2:2", 576, 576) == 1_327_104
    assert kan_num_params("sequential(chebyshev2:2,chebyshev2:2)", 576, 576, 576) == 3 * 576 * 1536
    with pytest.raises(ValueError, match=r"sum to 12, but the layer has in_features=10"):
        build_kan("parallel(chebyshev2:2,legendre:3;sizes=7,5)", 10, 5)


@pytest.mark.parametrize(("text", "match"), [
    ("chebyshev2:100000", "degree 100000 is above kallm's limit of 32"),
    ("rational:3:den_degree=40", "above kallm's limit of 32"),
    ("bspline:3:grid_size=65", "'grid_size' must be a positive integer up to 64"),
])
def test_sizes_past_the_limits_are_refused(text, match):
    """A typo must not silently build a layer of hundreds of millions of parameters."""
    with pytest.raises(KallmError, match=match):
        parse_kan_spec(text)
    assert str(parse_kan_spec("chebyshev2:32")) == "chebyshev2:32"


def test_nesting_beyond_the_grammar_is_refused_before_parsing():
    """parallel(parallel(...)) 500 deep would recurse past Python's limit: refused by a scan, one line."""
    deep = "parallel(" * 500 + "chebyshev2:2" + ")" * 500
    with pytest.raises(KallmError, match=r"parentheses nested 500 deep; at most sequential\(parallel\(\.\.\.\)\)"):
        parse_kan_spec(deep)
    with pytest.raises(KallmError, match=r"nested 3 deep"):
        parse_kan_spec("sequential(parallel(parallel(chebyshev2:2)),chebyshev2:2)")
    assert str(parse_kan_spec("sequential(parallel(chebyshev2:2,legendre:3),chebyshev2:2)")) == \
        "sequential(parallel(chebyshev2:2,legendre:3),chebyshev2:2)"
