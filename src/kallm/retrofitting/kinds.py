"""kallm's own variant kinds: `baseline`, `linear` and `kan`, each one `VariantKind` object.

Each knows its grammar (the text after '<kind>:'), the modules it puts in place of an FFN, their
hidden width for a parameter budget, and the config.json entry an export rebuilds them from (the
rebuilders are in `kallm.export.portable`). `kallm.retrofitting` imports this module, which registers
them; another kind is registered the same way (docs/extending.md).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from torch import Tensor, nn

from kallm.errors import KallmError
from kallm.kan import (
    BasisSpec,
    KANSpec,
    ParallelSpec,
    SequentialKAN,
    SequentialSpec,
    build_kan,
    kan_num_params,
    parse_kan_spec,
)
from kallm.kan.bases import BASES
from kallm.kan.families import FAMILY_MODULES
from kallm.retrofitting.arch import FFNSite, model_dims
from kallm.retrofitting.ffn import RetrofitFFN, named_projections
from kallm.retrofitting.pruning import pruned_copies, reselect_channels
from kallm.retrofitting.sizing import (
    ffn_param_count,
    kan_hidden_width,
    linear_params,
    linear_width,
    resize_mlp,
)
from kallm.retrofitting.surgery_report import module_params
from kallm.retrofitting.variant import Budget, Replacement, VariantKind, VariantSpec, register_variant_kind


class BaselineKind(VariantKind):
    """The untouched model: nothing is replaced, nothing trains that the freeze policy does not choose."""

    name = "baseline"
    trained = False
    role = "baseline"

    def check(self, spec: VariantSpec) -> None:
        if spec.budget is not None or spec.hidden is not None:
            raise KallmError("the baseline is the untouched model: it takes no budget or hidden width")
        super().check(spec)


def reinit_like_model(model: nn.Module, module: nn.Module) -> None:
    """Re-initialise `module` with the model's own `_init_weights` (what from-scratch training would use)."""
    init = getattr(model, "_init_weights", None)
    if init is None:
        raise KallmError(f"{type(model).__name__} has no _init_weights; cannot initialise a linear restart")
    for sub in module.modules():
        for p in sub.parameters(recurse=False):
            # transformers skips modules it marks as already initialised
            if hasattr(p, "_is_hf_initialized"):
                p._is_hf_initialized = False
        if hasattr(sub, "_is_hf_initialized"):
            sub._is_hf_initialized = False
        init(sub)


def replaced_modules(site: FFNSite) -> dict[str, nn.Module]:
    """The layer attributes an MLP-shaped replacement takes the place of, and their modules: the FFN, and a
    split FFN's parts that hold parameters (OPT's fc2)."""
    names = [site.attr, *(n for n in site.bypass if module_params(getattr(site.layer, n)) > 0)]
    return {n: getattr(site.layer, n) for n in names}


class LinearKind(VariantKind):
    """A fresh module of the model's own MLP class ("linear restart"), optionally narrower or wider."""

    name = "linear"
    options = ("budget", "hidden")
    role = "control"  # the fresh MLP of the model's own class

    def size(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> int | None:
        d, inter = model_dims(model)
        return linear_width(spec, list(replaced_modules(site).values()), d, inter)

    def new_params(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> int:
        d, inter = model_dims(model)
        return linear_params(list(replaced_modules(site).values()), d, inter, self.size(model, site, spec))

    def build(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> tuple[Replacement, int | None]:
        """Fresh copies of the FFN's own modules, narrowed to the spec's width when it has one."""
        d, inter = model_dims(model)
        width = self.size(model, site, spec)
        replacements: Replacement = []
        for name, module in replaced_modules(site).items():
            fresh = copy.deepcopy(module)
            if width is not None:
                fresh = resize_mlp(fresh, d, inter, width)
            reinit_like_model(model, fresh)
            replacements.append((name, RetrofitFFN(fresh, self.name)))
        return replacements, width

    def describe(self, attr: str, module: nn.Module, spec: VariantSpec) -> dict[str, Any]:
        # The layer's own module class rebuilds it; only the projections' shapes are recorded.
        projections = named_projections(module.kallm_ffn)
        return {"attr": attr, "kind": "linear", "projections": {p: list(s) for p, s in projections.items()}}


class PrunedKind(LinearKind):
    """The model's own MLP narrowed to a width by keeping its most important channels, their weights copied
    (`kallm.retrofitting.pruning`): the width-pruning control a KAN of the same count is compared with. It
    exports as the narrower MLP it is (LinearKind's entry)."""

    name = "pruned"
    role = "control"  # the original MLP narrowed: the compression engineer's first try

    def build(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> tuple[Replacement, int | None]:
        d, inter = model_dims(model)
        width = self.size(model, site, spec)
        pruned = pruned_copies(replaced_modules(site), d, inter, width or inter)
        return [(name, RetrofitFFN(m, self.name)) for name, m in pruned.items()], width

    def refine_start(self, original: nn.Module, new: nn.Module, x: Tensor, dims: tuple[int, int]) -> bool:
        """The channels chosen again by their activations on the layer's inputs (weight norms had no data)."""
        return reselect_channels(original, new, x, *dims)


def _basis_specs(spec: KANSpec) -> list[BasisSpec]:
    if isinstance(spec, BasisSpec):
        return [spec]
    return [b for part in (spec.parts if isinstance(spec, ParallelSpec) else spec.layers) for b in _basis_specs(part)]


def _check_shipped(spec: KANSpec) -> None:
    """Every basis of `spec` is one an export ships (a family of kallm/kan/families.py)."""
    for basis in _basis_specs(spec):
        module = BASES.get(basis.name).__module__
        if module not in FAMILY_MODULES:
            raise KallmError(f"basis {basis.name!r} cannot be exported without kallm: its module {module} is not "
                             "in kallm/kan/families.py, the basis modules an export ships")


class KanKind(VariantKind):
    """A KAN (`kan:<KAN spec>`, see `kallm.kan.spec`) mapping d -> d; a split FFN's other parts are bypassed."""

    name = "kan"
    options = ("budget", "hidden")
    role = "kan"

    def parse(self, body: str, text: str, budget: Budget | None, hidden: int | None) -> VariantSpec:
        if not body:
            raise KallmError("variant 'kan' needs a KAN spec after 'kan:', e.g. 'kan:chebyshev2:2'")
        kan = parse_kan_spec(body)
        if hidden is not None:  # canonical form: the width lives in the spec
            if not isinstance(kan, SequentialSpec) or len(kan.layers) < 2:
                raise KallmError(f"hidden= needs a multi-layer KAN ('kan:sequential(...)'); 'kan:{kan}' has no "
                                 "hidden width")
            if kan.hidden is not None:
                raise KallmError(f"hidden width given twice in {text!r}")
            kan = dataclasses.replace(kan, hidden=(hidden,))
        return VariantSpec(self.name, kan=kan, budget=budget)

    def check(self, spec: VariantSpec) -> None:
        if spec.kan is None or spec.arg is not None:
            raise KallmError("variant 'kan' needs a KAN spec (e.g. 'kan:chebyshev2:2'); other kinds take none")
        if spec.hidden is not None:
            raise KallmError("a KAN's hidden width belongs in its spec: 'kan:sequential(...;hidden=N)'")
        if spec.budget is None:
            return
        if not isinstance(spec.kan, SequentialSpec) or len(spec.kan.layers) < 2:
            raise KallmError(f"budget= needs a multi-layer KAN with a hidden width to size, e.g. "
                             f"'kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match'; got 'kan:{spec.kan}'")
        if spec.kan.hidden is not None:
            raise KallmError(f"'kan:{spec.kan}' fixes its hidden width; drop hidden= or budget=")

    def text(self, spec: VariantSpec) -> str:
        return f"{self.name}:{spec.kan}"

    def size(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> int | None:
        d, _ = model_dims(model)
        return kan_hidden_width(spec, d, ffn_param_count(site))

    def new_params(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> int:
        d, _ = model_dims(model)
        return kan_num_params(spec.kan, d, d, self.size(model, site, spec))

    def build(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> tuple[Replacement, int | None]:
        d, _ = model_dims(model)
        inner = build_kan(spec.kan, d, d, hidden_features=self.size(model, site, spec))
        widths = getattr(inner, "hidden_features", None)  # stacked KANs only
        replacements: Replacement = [(site.attr, RetrofitFFN(inner, self.name))]
        replacements += [(name, nn.Identity()) for name in site.bypass]
        return replacements, widths[0] if widths else None

    def describe(self, attr: str, module: nn.Module, spec: VariantSpec) -> dict[str, Any]:
        _check_shipped(spec.kan)
        inner = module.kallm_ffn
        kan = spec.kan
        if isinstance(inner, SequentialKAN) and isinstance(kan, SequentialSpec):
            # every width explicit: a budget-sized stack records the width it got
            widths = inner.hidden_features
            kan = dataclasses.replace(kan, hidden=(widths[0],) if len(set(widths)) == 1 else tuple(widths))
        return {"attr": attr, "kind": "kan", "kan": str(kan), "in_features": inner.in_features,
                "out_features": inner.out_features}


BUILTIN_KINDS: tuple[VariantKind, ...] = tuple(
    register_variant_kind(kind) for kind in (BaselineKind(), LinearKind(), PrunedKind(), KanKind()))
