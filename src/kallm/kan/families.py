"""The one list of KAN basis-family modules: every module that defines a `@register_basis` class.

A family registers itself in `BASES` when its module is imported. Importing this module imports them
all: `kallm.kan` (the package) does, and so does the exported model code (kallm.export.portable),
whose shipped copy has no package and whose files `kallm export` finds by following these imports.
A new family module gets one line here (tests/kan/test_basis_registry.py fails until it has it).
"""

from __future__ import annotations

# One class of each family module: a `from kallm.<module> import` line is what an export can ship.
from kallm.kan.fourier import Fourier
from kallm.kan.polynomials import Chebyshev2
from kallm.kan.rational import Rational
from kallm.kan.splines import BSpline

FAMILY_MODULES: tuple[str, ...] = tuple(cls.__module__ for cls in (Fourier, Chebyshev2, Rational, BSpline))
