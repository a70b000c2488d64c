"""The `kat` variant kind: KAN functions on projections (KAT / GR-KAN, Yang & Wang, ICLR 2025).

    kat:chebyshev2:4                    the model's own MLP, its activation a learnable function per channel
    kat:chebyshev2:4;groups=8           ... one function per group of channels (8 groups)
    kat:chebyshev2:4@budget=match       ... narrowed (most important channels kept) to meet a parameter budget
    kat:legendre:3;ungated@hidden=96    in_proj -> learnable activation -> out_proj (`ProjectedKAN`)

The linear projections of the original MLP stay (copied, pruned to the width by `kallm.retrofitting.pruning`)
and the fixed activation between them becomes `kallm.kan.activation.LearnableActivation`: univariate
learnable functions initialised as the original activation, so at full width the model starts exactly as it
was. That is not a KAN layer in the study's sense (`kan:`: sums of univariate functions of every input).

Own-MLP form (default): a SwiGLU stays gated, down(phi(gate x) * up x); GPT-2 and GPT-NeoX stay ungated;
OPT's split FFN gets its fc1 and fc2 pruned and its layer's `activation_fn` replaced, each wrapped in
`RetrofitFFN`. Narrower than the original it keeps the most important channels; wider, the new channels start
fresh on the way in and zero on the way out (the start function unchanged).
`;ungated`: a `ProjectedKAN` from the original's gate (or up, for an ungated MLP) rows and down columns of the
kept channels; past the original's width the extra channels start fresh on the way in and zero on the way out.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kallm.errors import KallmError
from kallm.kan.activation import LearnableActivation, ProjectedKAN, activation_basis, activation_num_params
from kallm.kan.spec import BasisSpec
from kallm.retrofitting.arch import FFNSite, model_dims
from kallm.retrofitting.ffn import RetrofitFFN, named_projections, replace_submodule
from kallm.retrofitting.kinds import LinearKind, reinit_like_model, replaced_modules
from kallm.retrofitting.pruning import (
    channel_projections,
    kept_channels,
    pruned_copies,
    reselect_channels,
    weight_in_out,
)
from kallm.retrofitting.sizing import ffn_param_count, largest_width, linear_params, resize_mlp
from kallm.retrofitting.variant import Replacement, VariantKind, VariantSpec, register_variant_kind

_FLAGS = ("groups=", "ungated")
# An MLP's activation (llama, qwen2, mistral, gemma: act_fn; gpt2, neox: act; phi3: activation_fn)
_ACT_NAMES = ("act_fn", "act", "activation_fn", "activation")


@dataclass(frozen=True)
class KatArg:
    """The text after 'kat:': the basis of the learnable activation, its channel groups, and the form."""

    basis: BasisSpec
    groups: int | None = None  # None: one function per channel
    ungated: bool = False

    def __str__(self) -> str:
        groups = f";groups={self.groups}" if self.groups else ""
        return f"{self.basis}{groups}" + (";ungated" if self.ungated else "")


def read_kat_arg(body: str, text: str) -> KatArg:
    """Parse `<basis spec>[;groups=N][;ungated]`; errors name the part of `text` at fault."""
    basis_text, *options = ("".join(part.split()) for part in body.split(";"))
    if not basis_text:
        raise KallmError(f"variant {text!r}: 'kat' needs a basis after 'kat:', e.g. 'kat:chebyshev2:4'")
    try:
        basis = activation_basis(basis_text)
    except KallmError as err:
        raise KallmError(f"variant {text!r}: {err}") from None
    groups, ungated = None, False
    for option in options:
        if option == "ungated" and not ungated:
            ungated = True
        elif option.startswith("groups=") and groups is None:
            value = option[len("groups="):]
            if not value.isdigit():
                raise KallmError(f"variant {text!r}: groups must be a non-negative integer (0: one per "
                                 f"channel), got {value!r}")
            groups = int(value) or None
        else:
            close = difflib.get_close_matches(option, _FLAGS, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KallmError(f"variant {text!r}: unknown or repeated option {option!r}{hint} Valid: "
                             "groups=N, ungated (each at most once)")
    return KatArg(basis, groups, ungated)


def find_activation(mlp: nn.Module) -> str:
    """The name of the MLP's activation: its parameter-free child (by the usual names first)."""
    children = dict(mlp.named_children())
    free = {n: m for n, m in children.items()
            if not any(True for _ in m.parameters()) and not isinstance(m, nn.Dropout | nn.Identity)}
    named = [n for n in _ACT_NAMES if n in free]
    found = named[:1] or list(free)
    if len(found) != 1:
        raise KallmError(f"cannot find the activation of {type(mlp).__name__} (looked for a parameter-free "
                         f"child named {', '.join(_ACT_NAMES)}, or a single one; found "
                         f"{sorted(free) or 'none'})")
    return found[0]


def _gate_and_down(modules: list[nn.Module], d: int, inter: int) -> tuple[nn.Module, nn.Module]:
    """(the projection into the activation, the projection out of the channels).

    Into the activation: the gate of a gated MLP (a projection named *gate*, or a fused gate_up, whose first
    `inter` outputs are the gate as Phi-3 lays it out), the up projection of an ungated one."""
    into, down = [], []
    for module in modules:
        for name, sub, _, axis in channel_projections(module, d, inter):
            if axis == "out":
                into.append((name, sub))
            elif axis == "in":
                down.append(sub)
    gates = [sub for name, sub in into if "gate" in name] if len(into) > 1 else [sub for _, sub in into]
    if len(gates) != 1 or len(down) != 1:
        raise KallmError(f"kat;ungated needs one projection into the activation and one out of it; found "
                         f"{sorted(n for n, _ in into)} in and {len(down)} out")
    return gates[0], down[0]


def widened_mlp(model: nn.Module, module: nn.Module, d: int, inter: int, width: int) -> nn.Module:
    """A copy of `module` with its intermediate size raised to `width`, computing what it did: the original
    channels first (in each block of a fused gate_up too), the new ones initialised by the model's own init
    on the way in and zero on the way out."""
    wide = resize_mlp(copy.deepcopy(module), d, inter, width)
    reinit_like_model(model, wide)
    with torch.no_grad():
        for name, sub, shape, axis in channel_projections(module, d, inter):
            new = wide.get_submodule(name)
            old_w, new_w = weight_in_out(sub), weight_in_out(new)
            if axis == "in":
                new_w.zero_()
                new_w[:inter] = old_w
                if sub.bias is not None:
                    new.bias.copy_(sub.bias)
                continue
            for b in range(shape[1] // inter):
                new_w[:, b * width:b * width + inter] = old_w[:, b * inter:(b + 1) * inter]
                if sub.bias is not None:
                    new.bias[b * width:b * width + inter] = sub.bias[b * inter:(b + 1) * inter]
    return wide


class KatKind(VariantKind):
    """`kat:<basis>[;groups=N][;ungated]`: learnable univariate activations between the original's
    projections."""

    name = "kat"
    role = "kan"
    options = ("budget", "hidden")

    def parse_arg(self, body: str, text: str) -> str:
        if not body:
            raise KallmError(f"variant {text!r}: 'kat' needs a basis after 'kat:', e.g. 'kat:chebyshev2:4' "
                             "or 'kat:chebyshev2:4;groups=8;ungated'")
        return str(read_kat_arg(body, text))

    def check(self, spec: VariantSpec) -> None:
        if spec.arg is None:
            raise KallmError("variant 'kat' needs a basis, e.g. 'kat:chebyshev2:4'")
        super().check(spec)

    @staticmethod
    def arg(spec: VariantSpec) -> KatArg:
        return read_kat_arg(str(spec.arg), str(spec))

    def count(self, model: nn.Module, site: FFNSite, spec: VariantSpec, width: int) -> int:
        """The replacement's parameters at `width` (closed form)."""
        d, inter = model_dims(model)
        arg = self.arg(spec)
        act = activation_num_params(arg.basis, width, arg.groups)
        if not arg.ungated:
            return linear_params(list(replaced_modules(site).values()), d, inter, width) + act
        gate, down = _gate_and_down(list(replaced_modules(site).values()), d, inter)
        return ProjectedKAN.num_params(d, width, getattr(gate, "bias", None) is not None,
                                       getattr(down, "bias", None) is not None, act)

    def size(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> int | None:
        _, inter = model_dims(model)
        width = spec.hidden or inter
        if spec.budget is not None:
            target = spec.budget.target(ffn_param_count(site))
            width = largest_width(lambda w: self.count(model, site, spec, w), target, f"'{spec}'")
        return width

    def new_params(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> int:
        return self.count(model, site, spec, self.size(model, site, spec))

    def build(self, model: nn.Module, site: FFNSite, spec: VariantSpec) -> tuple[Replacement, int | None]:
        width = self.size(model, site, spec)
        if self.arg(spec).ungated:
            return self._build_projected(model, site, spec, width), width
        return self._build_own(model, site, spec, width), width

    def _activation(self, spec: VariantSpec, width: int, base: nn.Module, path: str) -> LearnableActivation:
        arg = self.arg(spec)
        act = LearnableActivation(width, arg.basis, arg.groups, base=copy.deepcopy(base))
        act.base_path = path  # where an export's fresh layer holds the original activation
        return act

    def _build_own(self, model: nn.Module, site: FFNSite, spec: VariantSpec, width: int) -> Replacement:
        d, inter = model_dims(model)
        originals = replaced_modules(site)
        if width > inter:
            pruned = {n: widened_mlp(model, m, d, inter, width) for n, m in originals.items()}
        else:
            pruned = pruned_copies(originals, d, inter, width)
        if site.is_split:  # OPT: the activation is the layer's own attribute, between fc1 and fc2
            act_name = site.bypass[0]
            act = self._activation(spec, width, getattr(site.layer, act_name), act_name)
            return [(act_name, RetrofitFFN(act, self.name)),
                    *((n, RetrofitFFN(m, self.name)) for n, m in pruned.items())]
        mlp = pruned[site.attr]
        path = find_activation(mlp)
        act = self._activation(spec, width, mlp.get_submodule(path), f"{site.attr}.{path}")
        replace_submodule(mlp, path, act)
        return [(site.attr, RetrofitFFN(mlp, self.name))]

    def _build_projected(self, model: nn.Module, site: FFNSite, spec: VariantSpec, width: int) -> Replacement:
        d, inter = model_dims(model)
        modules = list(replaced_modules(site).values())
        gate, down = _gate_and_down(modules, d, inter)
        path = site.bypass[0] if site.is_split else f"{site.attr}.{find_activation(site.module)}"
        act = self._activation(spec, width, site.layer.get_submodule(path), path)
        ref = gate.weight
        kan = ProjectedKAN(d, width, act, getattr(gate, "bias", None) is not None,
                           getattr(down, "bias", None) is not None).to(device=ref.device, dtype=ref.dtype)
        reinit_like_model(model, kan.in_proj)  # the channels past the original's width start fresh
        k = min(width, inter)
        keep = kept_channels(modules, d, inter, k).to(ref.device)  # in a fused gate_up: the gate's rows
        with torch.no_grad():
            kan.in_proj.weight[:k] = weight_in_out(gate)[:, keep].T
            kan.out_proj.weight.zero_()  # ... and add nothing until trained
            kan.out_proj.weight[:, :k] = weight_in_out(down)[keep, :].T
            if kan.in_proj.bias is not None:
                kan.in_proj.bias[:k] = gate.bias[keep]
            if kan.out_proj.bias is not None:
                kan.out_proj.bias.copy_(down.bias)
        return [(site.attr, RetrofitFFN(kan, self.name)), *((n, nn.Identity()) for n in site.bypass)]

    def refine_start(self, original: nn.Module, new: nn.Module, x: torch.Tensor, dims: tuple[int, int]) -> bool:
        """The own-MLP form chooses its channels again by their activations, as `pruned` does (the ungated
        form's projections are named otherwise: it keeps its start)."""
        return reselect_channels(original, new, x, *dims)

    def describe(self, attr: str, module: nn.Module, spec: VariantSpec) -> dict[str, Any]:
        inner = module.kallm_ffn
        if isinstance(inner, nn.Linear):  # OPT's pruned fc1 / fc2: a narrower linear of the layer's own
            return LinearKind().describe(attr, module, spec)
        acts = [(n, m) for n, m in inner.named_modules() if isinstance(m, LearnableActivation)]
        if len(acts) != 1:
            raise KallmError(f"kat: expected one learnable activation in the replacement of {attr!r}, found "
                             f"{len(acts)}")
        path, act = acts[0]
        entry = {"attr": attr, "kind": "kat", "basis": act.basis_spec, "groups": act.n_groups,
                 "width": act.width}
        if isinstance(inner, ProjectedKAN):
            return {**entry, "form": "projected", "base": act.base_path, **inner.describe()}
        if isinstance(inner, LearnableActivation):
            return {**entry, "form": "activation"}
        shapes = named_projections(inner)
        return {**entry, "form": "mlp", "act": path, "projections": {p: list(s) for p, s in shapes.items()}}


KAT_KIND = register_variant_kind(KatKind())
