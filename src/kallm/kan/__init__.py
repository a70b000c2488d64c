"""KAN layer library: bases, the fused KANLinear, parallel/sequential mixing, and specs by name."""

from __future__ import annotations

# The basis families register themselves in BASES when imported; importing their one list here (and
# not from bases.py, which they import) makes every family available as soon as `kallm.kan` is.
from kallm.kan.bases import Basis, get_basis, list_bases, register_basis
from kallm.kan.build import build_kan, kan_num_params
from kallm.kan.families import FAMILY_MODULES  # noqa: F401
from kallm.kan.layer import KANLinear
from kallm.kan.mixing import ParallelKAN, SequentialKAN
from kallm.kan.spec import BasisSpec, KANSpec, ParallelSpec, SequentialSpec, parse_kan_spec

__all__ = [
    "Basis",
    "BasisSpec",
    "KANLinear",
    "KANSpec",
    "ParallelKAN",
    "ParallelSpec",
    "SequentialKAN",
    "SequentialSpec",
    "build_kan",
    "get_basis",
    "kan_num_params",
    "list_bases",
    "parse_kan_spec",
    "register_basis",
]
