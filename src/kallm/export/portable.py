"""The model code of an exported retrofit: the base model class with the recorded FFNs rebuilt.

`kallm export` copies this module into the model folder together with every kallm module it imports
(kallm's own sources; only their `from kallm.x import` lines are pointed at the folder), so that
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` needs torch and transformers
only. The folder's generated `modeling_kallm.py` defines the model class as

    class KallmLlamaForCausalLM(RetrofitModelMixin, LlamaForCausalLM):
        config_class = KallmLlamaConfig

The base class builds the model from its config; the mixin then replaces the FFNs listed in the
config's `kallm` section with the modules kallm built (same classes, same parameter names), and
`from_pretrained` loads the weights into them. This module may import only kallm *modules* (not
packages) that import nothing but torch, transformers and the standard library.

Each entry of the config's `kallm.replacements` names its rebuilder in `REBUILDERS`; a variant kind
(kallm.retrofitting.kinds) writes those entries (`VariantKind.describe`), and a kind whose modules no
rebuilder here can make is refused by `kallm export` (docs/extending.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from kallm.errors import KallmError
from kallm.kan.activation import LearnableActivation, ProjectedKAN
from kallm.kan.build import build_kan

# In kallm the basis families register themselves when `kallm.kan` (the package) is imported; the
# shipped copy has no package, so it imports the one list of family modules itself.
from kallm.kan.families import FAMILY_MODULES  # noqa: F401
from kallm.retrofitting.arch import find_decoder_layers
from kallm.retrofitting.ffn import RetrofitFFN, replace_submodule, set_projection_shapes
from kallm.retrofitting.freeze import FREEZE_POLICIES

CONFIG_KEY = "kallm"  # the config attribute (config.json key) that describes the retrofit
EXPORT_FORMAT = "kallm-export"
EXPORT_FORMAT_VERSION = 1


def _identity(layer: nn.Module, entry: dict[str, Any]) -> nn.Module:
    """A split FFN's activation and second linear, bypassed by a KAN on the first."""
    return nn.Identity()


def _kan(layer: nn.Module, entry: dict[str, Any]) -> nn.Module:
    return RetrofitFFN(build_kan(entry["kan"], entry["in_features"], entry["out_features"]), "kan")


def _linear(layer: nn.Module, entry: dict[str, Any]) -> nn.Module:
    """The layer's own module, its projections resized to the recorded widths."""
    shapes = {name: (int(shape[0]), int(shape[1])) for name, shape in entry["projections"].items()}
    return RetrofitFFN(set_projection_shapes(getattr(layer, entry["attr"]), shapes), "linear")


def _kat(layer: nn.Module, entry: dict[str, Any]) -> nn.Module:
    """Learnable activations between projections (kallm.retrofitting.kat), their base the layer's original
    activation: a ProjectedKAN ("projected"), the layer's own MLP resized with its activation replaced
    ("mlp"), or a split FFN's activation module ("activation")."""
    def learnable(base: nn.Module) -> LearnableActivation:
        return LearnableActivation(int(entry["width"]), entry["basis"], entry["groups"], base=base)

    if entry["form"] == "projected":
        act = learnable(copy.deepcopy(layer.get_submodule(entry["base"])))
        inner = ProjectedKAN(int(entry["d"]), int(entry["width"]), act, entry["in_bias"], entry["out_bias"])
    elif entry["form"] == "activation":
        inner = learnable(getattr(layer, entry["attr"]))
    else:
        shapes = {name: (int(shape[0]), int(shape[1])) for name, shape in entry["projections"].items()}
        inner = set_projection_shapes(getattr(layer, entry["attr"]), shapes)
        inner = replace_submodule(inner, entry["act"], learnable(inner.get_submodule(entry["act"])))
    return RetrofitFFN(inner, "kat")


# entry["kind"] -> the module that goes in place of `layer.<entry['attr']>`
REBUILDERS: dict[str, Callable[[nn.Module, dict[str, Any]], nn.Module]] = {
    "identity": _identity, "kan": _kan, "linear": _linear, "kat": _kat,
}


def _build_replacement(layer: nn.Module, entry: dict[str, Any]) -> nn.Module:
    """The module that goes in place of `layer.<entry['attr']>`."""
    rebuild = REBUILDERS.get(entry.get("kind"))
    if rebuild is None:
        raise KallmError(f"unknown replacement kind {entry.get('kind')!r} in the config's {CONFIG_KEY!r} section; "
                         f"valid: {', '.join(REBUILDERS)}")
    return rebuild(layer, entry)


def check_export_info(info: Any) -> dict[str, Any]:
    """The config's `kallm` section, checked for the format this code reads."""
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
        raise KallmError(f"the model config has no {CONFIG_KEY!r} section of format {EXPORT_FORMAT!r}; "
                         "it was not written by `kallm export`")
    if info.get("format_version") != EXPORT_FORMAT_VERSION:
        raise KallmError(f"the config's {CONFIG_KEY!r} section has format version {info.get('format_version')!r}; "
                         f"this model code reads version {EXPORT_FORMAT_VERSION}")
    return info


def rebuild_retrofit(model: nn.Module, info: dict[str, Any]) -> list[RetrofitFFN]:
    """Replace the FFNs recorded in `info` (the config's `kallm` section); returns the new modules."""
    _, layers = find_decoder_layers(model)
    new: list[RetrofitFFN] = []
    for index, entries in check_export_info(info)["replacements"].items():
        layer = layers[int(index)]
        for entry in entries:
            module = _build_replacement(layer, entry)
            setattr(layer, entry["attr"], module)
            if isinstance(module, RetrofitFFN):
                new.append(module)
    return new


class RetrofitModelMixin:
    """Put before a transformers model class: build the base model, then the retrofit's FFNs."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        rebuild_retrofit(self, getattr(config, CONFIG_KEY, None))

    def retrofit_modules(self) -> list[RetrofitFFN]:
        """The new FFN modules (every parameter kallm added lives under one of them, in `.kallm_ffn.`)."""
        return [m for m in self.modules() if isinstance(m, RetrofitFFN)]

    def freeze_like_retrofit(self, policy: str | None = None) -> int:
        """Set `requires_grad` the way kallm trained this retrofit; returns the trainable parameter count.

        `policy` defaults to the recorded freeze policy (`ffn`: only the new FFNs train; `blocks`: the
        retrofitted decoder layers; `blocks+embeddings`; `none`: everything).
        """
        info = getattr(self.config, CONFIG_KEY)
        _, layers = find_decoder_layers(self)
        chosen = [layers[i] for i in info["layer_indices"]]
        trainable = {id(p) for p in FREEZE_POLICIES.get(policy or info["freeze"])(self, chosen,
                                                                                  self.retrofit_modules())}
        for p in self.parameters():
            p.requires_grad_(id(p) in trainable)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
