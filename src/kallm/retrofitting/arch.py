"""Find the decoder layers of any Hugging Face causal LM, and each layer's feed-forward module.

Most decoder-only models keep a `ModuleList` of layers (`model.layers`, `transformer.h`,
`gpt_neox.layers`, `model.decoder.layers`) and a feed-forward submodule called `mlp`. A few (OPT)
inline the FFN as `fc1 -> activation_fn -> fc2` in the layer itself; those are described by a
"split" site so surgery can replace them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kallm.errors import KallmError

# Where known families keep their decoder layers; anything else is found by structure.
_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers")
# Names a layer's FFN submodule goes by.
_FFN_NAMES = ("mlp", "feed_forward", "ffn", "ff")
# Layers that inline the FFN: (first linear, activation, second linear).
_SPLIT_FFN = (("fc1", "activation_fn", "fc2"),)


@dataclass(frozen=True)
class FFNSite:
    """Where one layer's FFN lives. `attr` names the module; split sites also name the parts to bypass."""

    layer_index: int
    layer: nn.Module
    attr: str
    bypass: tuple[str, ...] = ()  # split FFNs: the activation and second linear, replaced by Identity

    @property
    def module(self) -> nn.Module:
        return getattr(self.layer, self.attr)

    @property
    def is_split(self) -> bool:
        return bool(self.bypass)


def _get_path(root: nn.Module, path: str) -> nn.Module | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def num_config_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (dotted path, ModuleList) of the model's decoder layers."""
    for path in _LAYER_PATHS:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return path, found
    expected = num_config_layers(model)
    candidates = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (expected is None or len(mod) == expected)
    ]
    if candidates:
        return max(candidates, key=lambda c: len(c[1]))
    raise KallmError(
        f"unsupported model {type(model).__name__}: found no decoder-layer list "
        f"(looked for {', '.join(_LAYER_PATHS)} or a ModuleList of config.num_hidden_layers={expected} layers)"
    )


def find_ffn(layer: nn.Module, layer_index: int, model_name: str = "model") -> FFNSite:
    """Locate the FFN of one decoder layer."""
    for name in _FFN_NAMES:
        if isinstance(getattr(layer, name, None), nn.Module):
            return FFNSite(layer_index, layer, name)
    for first, act, second in _SPLIT_FFN:
        if isinstance(getattr(layer, first, None), nn.Module) and isinstance(getattr(layer, second, None), nn.Module):
            return FFNSite(layer_index, layer, first, bypass=(act, second))
    raise KallmError(
        f"unsupported model {model_name}: decoder layer {layer_index} ({type(layer).__name__}) has no FFN submodule "
        f"(looked for {', '.join(_FFN_NAMES)} or an inline fc1/activation_fn/fc2)"
    )


def model_dims(model: nn.Module) -> tuple[int, int]:
    """(hidden size d, FFN intermediate size) read from the config."""
    config = model.config
    d = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or getattr(config, "d_model", None)
    inter = None
    for key in ("intermediate_size", "n_inner", "ffn_dim", "d_ff"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            inter = value
            break
    if not isinstance(d, int):
        raise KallmError(f"unsupported model {type(model).__name__}: config has no hidden_size/n_embd/d_model")
    return d, inter if inter is not None else 4 * d
