"""Width pruning of a model's own MLP: the compression engineer's baseline for a retrofit of a given size.

An MLP d -> inter -> d (a SwiGLU's gate and up projections, or a plain up projection; fused gate_up
projections count as several blocks of `inter`) is narrowed to `width` intermediate channels by keeping
the channels with the largest importance and copying their weights. Importance is the product, over the
projections of the site, of each channel's weight norm (its row into the channel, its column out of it):
a channel whose output column is zero contributes nothing and goes first, so an MLP that only uses
`width` of its channels is kept exactly.

With data (`init: distill`), the channels are chosen again by what they carry on the layer's real inputs
(`reselect_channels`: the root mean square of each channel's activation times the norm of its column in
the projection back to d, the activation-based importance of width pruning in Minitron), before the down
projection is solved by least squares. On SmolLM2-135M's last five MLPs cut to half their width, weight
norms kept channels whose least-squares refit still left 30% of the output variance unexplained on held-out
text, activations 17% (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from kallm.errors import KallmError
from kallm.retrofitting.ffn import projection_shape, replace_submodule, resized_projection


def _channel_axis(shape: tuple[int, int], d: int, inter: int) -> str | None:
    """'out' when the projection writes the intermediate channels (up, gate, fused gate_up), 'in' when it
    reads them (down), None when it does not touch them."""
    n_in, n_out = shape
    if n_in == d and n_out != d and n_out % inter == 0:
        return "out"
    if n_out == d and n_in == inter:
        return "in"
    return None


def channel_projections(module: nn.Module, d: int, inter: int
                        ) -> list[tuple[str, nn.Module, tuple[int, int], str]]:
    """(name, projection, shape, axis) of every projection of `module` through the intermediate channels:
    axis 'out' writes them (up, gate, fused gate_up), 'in' reads them (down). A list: callers may replace
    the projections while they go."""
    found = []
    for name, sub in module.named_modules():
        shape = projection_shape(sub)
        axis = None if shape is None else _channel_axis(shape, d, inter)
        if axis is not None:
            found.append((name, sub, shape, axis))
    return found


def weight_in_out(sub: nn.Module) -> torch.Tensor:
    """The projection's weight as (in, out), whatever its layout (Linear stores (out, in), Conv1D (in, out))."""
    return sub.weight.T if isinstance(sub, nn.Linear) else sub.weight


def channel_importance(modules: list[nn.Module], d: int, inter: int) -> torch.Tensor:
    """Per intermediate channel, the product of its weight norms over every projection of `modules`."""
    if d == inter:
        raise KallmError(f"cannot prune an MLP whose intermediate size equals its hidden size ({d})")
    score = torch.ones(inter, dtype=torch.float64)
    touched = False
    for module in modules:
        for _, sub, _, axis in channel_projections(module, d, inter):
            w = weight_in_out(sub).detach().double()
            norms = w.norm(dim=0) if axis == "out" else w.norm(dim=1)  # per output / per input channel
            for block in norms.reshape(-1, inter):  # a fused gate_up holds one block per projection
                score *= block
            touched = True
    if not touched:
        raise KallmError("no projection into or out of the intermediate channels was found to prune")
    return score


def top_channels(score: Tensor, width: int) -> Tensor:
    """The `width` channels of largest `score`, in their original order (ties broken by index)."""
    return torch.sort(torch.argsort(score, descending=True, stable=True)[:width]).values


def kept_channels(modules: list[nn.Module], d: int, inter: int, width: int) -> torch.Tensor:
    """The `width` most important channels by weight norms (`channel_importance`), in their original order."""
    if not 0 < width <= inter:
        raise KallmError(f"a pruned MLP's width must be between 1 and the original's {inter}, got {width}")
    return top_channels(channel_importance(modules, d, inter), width)


def prune_projections(module: nn.Module, d: int, inter: int, keep: torch.Tensor) -> nn.Module:
    """`module` (a copy, changed in place) with every projection through the intermediate channels cut to
    `keep`, its weights (and biases) copied from the kept channels."""
    for name, sub, shape, axis in channel_projections(module, d, inter):
        blocks = shape[1] // inter if axis == "out" else 1
        index = torch.cat([keep + b * inter for b in range(blocks)]).to(sub.weight.device)
        new_shape = (shape[0], len(index)) if axis == "out" else (len(index), shape[1])
        pruned = resized_projection(sub, shape, new_shape)
        with torch.no_grad():
            w = weight_in_out(sub)
            w = w[:, index] if axis == "out" else w[index, :]
            weight_in_out(pruned).copy_(w)
            if getattr(sub, "bias", None) is not None:
                pruned.bias.copy_(sub.bias[index] if axis == "out" else sub.bias)
        module = replace_submodule(module, name, pruned)
    return module


def pruned_copies(modules: dict[str, nn.Module], d: int, inter: int, width: int) -> dict[str, nn.Module]:
    """Copies of an FFN's modules (by layer attribute) cut to its `width` most important channels, chosen over
    all of them together (a split FFN's fc1 and fc2 keep the same channels)."""
    keep = kept_channels(list(modules.values()), d, inter, width)
    return {name: prune_projections(copy.deepcopy(m), d, inter, keep) for name, m in modules.items()}


def _reader(module: nn.Module, d: int, inter: int) -> nn.Module:
    """The one projection that reads the intermediate channels (down, c_proj, fc2)."""
    readers = [sub for _, sub, _, axis in channel_projections(module, d, inter) if axis == "in"]
    if len(readers) != 1:
        raise KallmError(f"expected one projection back from the {inter} intermediate channels, found {len(readers)}")
    return readers[0]


@torch.no_grad()
def activation_importance(module: nn.Module, x: Tensor, d: int, inter: int, chunk: int = 4096) -> Tensor:
    """Per intermediate channel of `module` (the original MLP): the root mean square of what it carries on
    the inputs `x` (tokens, d), times the norm of its column in the projection back to d."""
    reader = _reader(module, d, inter)
    squares = torch.zeros(inter, dtype=torch.float64)

    def accumulate(_module: nn.Module, args: tuple[Tensor, ...]) -> None:  # None: the input goes on unchanged
        squares.add_(args[0].reshape(-1, inter).double().pow(2).sum(0).cpu())

    hook = reader.register_forward_pre_hook(accumulate)
    try:
        for start in range(0, len(x), chunk):
            module(x[start:start + chunk])
    finally:
        hook.remove()
    return (squares / max(len(x), 1)).sqrt() * weight_in_out(reader).detach().double().norm(dim=1).cpu()


@torch.no_grad()
def reselect_channels(original: nn.Module, new: nn.Module, x: Tensor, d: int, inter: int) -> bool:
    """Give `new` (a pruned copy of `original`, projections named alike) the channels with the largest
    activation importance on `x`, their weights copied from `original`. False: `new` is not such a copy
    (a width above the original's, or projections of other names or shapes); nothing is changed."""
    back = [shape for sub in new.modules() if (shape := projection_shape(sub)) is not None
            and shape[1] == d and shape[0] != d]
    if len(back) != 1 or back[0][0] > inter:
        return False
    width = back[0][0]
    score = activation_importance(original, x.to(next(original.parameters()).dtype), d, inter)
    keep = top_channels(score, width)
    source = prune_projections(copy.deepcopy(original), d, inter, keep)
    targets = dict(new.named_modules())
    pairs = [(sub, targets.get(name)) for name, sub in source.named_modules() if projection_shape(sub) is not None]
    if any(t is None or projection_shape(t) != projection_shape(s) for s, t in pairs):
        return False
    for s, t in pairs:
        t.weight.copy_(s.weight)
        if getattr(s, "bias", None) is not None and getattr(t, "bias", None) is not None:
            t.bias.copy_(s.bias)
    return True
