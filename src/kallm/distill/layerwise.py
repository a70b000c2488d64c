"""Distill-then-train: fit each new FFN to imitate the pretrained FFN it replaces.

1. `collect_ffn_io` runs the *original* model once over real text with hooks on the FFNs of the
   selected layers and keeps (input, output) pairs of N non-padding tokens per layer (float32).
2. After surgery, `distill_retrofit` fits every replacement on those pairs: a closed-form ridge
   least-squares solve where the layer is linear in its weights (a KAN is: expansion, then one
   matmul — `expand(x) @ fused_weight()`), mini-batch AdamW otherwise (linear restarts; stacked KANs,
   whose last layer is first solved by least squares on the random first layers' features).
3. Each layer's fraction of variance unexplained (FVU = MSE / Var(target)) is measured on held-out tokens.

No backprop through the model is needed: the regression is local to each layer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from kallm.errors import KallmError
from kallm.io import write_with_atomic
from kallm.progress import progress_bar
from kallm.retrofitting.arch import FFNSite, find_decoder_layers, find_ffn
from kallm.retrofitting.surgery import replacement_modules
from kallm.retrofitting.surgery_report import find_report, retrofit_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    tokens: int = 16384  # (input, output) pairs collected per layer
    # layerwise: every layer on pairs recorded from the original model (this module); sequential: bottom-up,
    # each layer on the inputs the retrofitted model gives it (kallm.distill.sequential), towards `target`
    mode: Literal["layerwise", "sequential"] = "layerwise"
    target: Literal["ffn", "block"] = "ffn"
    method: Literal["auto", "lstsq", "adamw"] = "auto"
    # lstsq: ridge strength relative to the mean diagonal of the Gram matrix. 1e-2 gave the lowest held-out
    # FVU on SmolLM2 last:5 with 7.4k fit tokens (2,304 features per layer; benchmarks/distill_study.py).
    ridge: float = 1e-2
    steps: int = 300  # adamw: optimisation steps
    lr: float = 3e-3
    batch_tokens: int = 1024
    holdout_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.tokens < 16:
            raise KallmError(f"distill.tokens must be at least 16, got {self.tokens}")
        if self.method not in ("auto", "lstsq", "adamw"):
            raise KallmError(f"distill.method must be auto, lstsq or adamw, got {self.method!r}")
        if self.mode not in ("layerwise", "sequential") or self.target not in ("ffn", "block"):
            raise KallmError(f"distill.mode must be layerwise or sequential and distill.target ffn or block, "
                             f"got {self.mode!r} and {self.target!r}")
        if self.target == "block" and self.mode != "sequential":
            raise KallmError("distill.target: block fits a layer to the original's output given the retrofitted "
                             "layers below it; it needs mode: sequential")
        if self.ridge < 0:
            raise KallmError(f"distill.ridge must be >= 0, got {self.ridge}")
        if self.steps <= 0 or self.lr <= 0 or self.batch_tokens <= 0:
            raise KallmError("distill.steps, distill.lr and distill.batch_tokens must be positive")
        if not 0 < self.holdout_fraction < 0.5:
            raise KallmError(f"distill.holdout_fraction must be in (0, 0.5), got {self.holdout_fraction}")


@dataclass
class LayerFit:
    layer: int
    method: str
    fvu: float  # on held-out tokens
    train_fvu: float
    tokens: int


def _ffn_endpoints(site: FFNSite) -> tuple[nn.Module, nn.Module]:
    """(module whose input is the FFN input, module whose output is the FFN output)."""
    last = getattr(site.layer, site.bypass[-1]) if site.bypass else site.module
    return site.module, last


@torch.no_grad()
def collect_ffn_io(
    model: nn.Module, batches: Iterable[dict[str, Tensor]], layer_indices: Iterable[int], max_tokens: int,
    progress: bool | None = None,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Inputs and outputs of the (original) FFNs of `layer_indices` on up to `max_tokens` real tokens."""
    if find_report(model) is not None:
        raise KallmError("collect_ffn_io needs the original model: call it before kallm.retrofit")
    _, layers = find_decoder_layers(model)
    indices = list(layer_indices)
    store: dict[int, tuple[list[Tensor], list[Tensor]]] = {i: ([], []) for i in indices}
    mask_holder: dict[str, Tensor] = {}
    handles = []
    for i in indices:
        first, last = _ffn_endpoints(find_ffn(layers[i], i, type(model).__name__))

        def grab_in(module, args, i=i):
            store[i][0].append(args[0][mask_holder["mask"]].float().cpu())

        def grab_out(module, args, out, i=i):
            store[i][1].append(out[mask_holder["mask"]].float().cpu())

        handles += [first.register_forward_pre_hook(grab_in), last.register_forward_hook(grab_out)]
    collected = 0
    device = next(model.parameters()).device
    bar = progress_bar(total=max_tokens, desc="collect FFN activations", unit="tok", progress=progress)
    was_training = model.training
    model.eval()  # dropout would make the recorded pairs noisy
    base = getattr(model, "base_model", model)  # the LM head's logits are not needed
    try:
        for batch in batches:
            mask = batch["attention_mask"].bool()
            mask_holder["mask"] = mask.to(device)
            base(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                 use_cache=False)
            n = int(mask.sum())
            collected += n
            bar.update(n)
            if collected >= max_tokens:
                break
    finally:
        for h in handles:
            h.remove()
        bar.close()
        model.train(was_training)
    if collected == 0:
        raise KallmError("no tokens to distill from: the data yielded no non-padding tokens")
    return {i: (torch.cat(xs)[:max_tokens], torch.cat(ys)[:max_tokens]) for i, (xs, ys) in store.items()}


def save_ffn_io(io: dict[int, tuple[Tensor, Tensor]], path: str | Path) -> None:
    from safetensors.torch import save_file

    tensors = {f"{k}.{i}": t.contiguous() for i, (x, y) in io.items() for k, t in (("x", x), ("y", y))}
    write_with_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def load_ffn_io(path: str | Path) -> dict[int, tuple[Tensor, Tensor]]:
    """What `save_ffn_io` wrote; a damaged or foreign file is a KallmError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        layers = sorted({int(k.split(".")[1]) for k in tensors})
        return {i: (tensors[f"x.{i}"], tensors[f"y.{i}"]) for i in layers}
    except (SafetensorError, OSError, ValueError, IndexError, KeyError) as exc:
        raise KallmError(f"activation cache {path} is damaged or not kallm's ({type(exc).__name__}: {exc})") from None


def fvu(pred: Tensor, target: Tensor) -> float:
    """Fraction of variance unexplained, pooled over output channels."""
    var = (target - target.mean(0)).pow(2).sum()
    return float((pred - target).pow(2).sum() / var.clamp_min(1e-12))


def _ridge_fit(chunks: Iterable[tuple[Tensor, Tensor]], with_bias: bool, ridge: float) -> tuple[Tensor, Tensor | None]:
    """Ridge least squares from (features, targets) chunks: (W (features, out), bias or None), float64.

    The normal equations are accumulated chunk by chunk (never all features at once); the ridge is
    `ridge` times the mean of the Gram matrix's diagonal. A float32 model's chunk products are float32
    (half the time of float64, and they were most of a degree-6 KAN's fit; the held-out FVU on SmolLM2's
    layers agreed to 1e-6), a float64 model's float64; the sums and the solve are float64."""
    gram = rhs = None
    for feats, target in chunks:
        feats = feats if feats.dtype == torch.float64 else feats.float()
        if with_bias:
            feats = torch.cat([feats, feats.new_ones(len(feats), 1)], dim=1)
        g, r = (feats.T @ feats).double(), (feats.T @ target.to(feats.dtype)).double()
        gram, rhs = (g, r) if gram is None else (gram + g, rhs + r)
    gram.diagonal().add_(ridge * float(gram.diagonal().mean()))
    solution = torch.linalg.solve(gram, rhs)
    return (solution[:-1], solution[-1]) if with_bias else (solution, None)


def _fit_lstsq(module: nn.Module, x: Tensor, y: Tensor, ridge: float, chunk: int = 4096) -> None:
    """Ridge regression on the layer's design matrix (its basis expansion)."""
    has_bias = getattr(module, "bias", None) is not None
    with torch.no_grad():
        chunks = ((module.expand(x[s:s + chunk]), y[s:s + chunk]) for s in range(0, len(x), chunk))
        weight, bias = _ridge_fit(chunks, has_bias, ridge)
        if bias is not None:
            module.bias.copy_(bias.to(module.bias.dtype))
        module.set_fused_weight(weight.to(torch.float32))


def _warm_start_last_layer(module: nn.Module, x: Tensor, y: Tensor, ridge: float) -> None:
    """Start a stack close to a one-layer fit: earlier layers pass their input on, the last is solved.

    Each earlier layer that is linear in its weights is first fitted (least squares) to carry its input
    through: to the input itself when it is square, to the input's leading principal components when it
    is narrower (random features otherwise). The last layer is then solved by least squares on what
    they give. A random stack's output is often orders of magnitude off the target's scale, and random
    features lose most of the input: AdamW moves each weight by about lr per step and spent its whole
    budget undoing that (measured: a two-layer KAN at the original's parameter count diverged at lr 2e-3).
    """
    with torch.no_grad():
        hidden = x
        for layer in module.layers[:-1]:
            carried = _carried(hidden, getattr(layer, "out_features", 0)) if _linear_in_weights(layer) else None
            if carried is not None:
                _fit_lstsq(layer, hidden, carried, ridge)
            hidden = layer(hidden)
    _fit_lstsq(module.layers[-1], hidden, y, ridge)


def _carried(x: Tensor, width: int) -> Tensor | None:
    """What a layer of `width` outputs should carry of its input x: x itself, its top principal
    components when narrower, nothing (None: keep the random init) when wider."""
    if width == x.shape[1]:
        return x
    if not 0 < width < x.shape[1]:
        return None
    centred = (x - x.mean(0)).double()
    _, _, vh = torch.linalg.svd(centred[: min(len(x), 16384)], full_matrices=False)
    return (x.double() @ vh[:width].T).to(x.dtype)


def _warm_start_output_projection(module: nn.Module, x: Tensor, y: Tensor, ridge: float) -> bool:
    """Solve an MLP's projection back to the hidden size by least squares on its input activations.

    Such an MLP (a SwiGLU, a linear restart, a narrowed control) is linear in that projection's weights
    given the rest, so the AdamW fit that follows starts from the best output layer for its features,
    as a KAN starts from its exact solve (measured: 100 AdamW steps alone left the demo's SwiGLU
    control's fit unconverged). False when there is no single nn.Linear onto y's width.
    """
    outs = [m for m in module.modules() if isinstance(m, nn.Linear) and m.out_features == y.shape[1]]
    if len(outs) != 1:
        return False
    out = outs[0]
    with torch.no_grad():
        weight, bias = _ridge_fit(_projection_inputs(module, out, x, y), out.bias is not None, ridge)
        if bias is not None:
            out.bias.copy_(bias.to(out.bias.dtype))
        out.weight.copy_(weight.T.to(out.weight.dtype))
    return True


def _projection_inputs(module: nn.Module, out: nn.Linear, x: Tensor, y: Tensor,
                       chunk: int = 4096) -> Iterator[tuple[Tensor, Tensor]]:
    """(what `out` receives, target) per chunk of x, as `module` runs it (a hook on `out`)."""
    seen: list[Tensor] = []
    hook = out.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, out.in_features)))
    try:
        for start in range(0, len(x), chunk):
            module(x[start:start + chunk])
            yield seen.pop(), y[start:start + chunk]
    finally:
        hook.remove()


def _fit_adamw(module: nn.Module, x: Tensor, y: Tensor, cfg: DistillConfig, seed: int) -> None:
    layers = getattr(module, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 1 and _linear_in_weights(layers[-1]):
        _warm_start_last_layer(module, x, y, cfg.ridge)
    else:
        _warm_start_output_projection(module, x, y, cfg.ridge)
    params = [p for p in module.parameters() if p.requires_grad] or list(module.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1))))
    gen = torch.Generator().manual_seed(seed)
    scale = y.pow(2).mean().clamp_min(1e-12)  # normalised MSE keeps the lr meaningful across layers
    probe = slice(0, min(len(x), 8192))

    def probe_loss() -> float:
        with torch.no_grad():
            return float((module(x[probe]) - y[probe]).pow(2).mean() / scale)

    start_loss = probe_loss()
    start_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    with torch.enable_grad():
        for _ in range(cfg.steps):
            idx = torch.randint(0, len(x), (min(cfg.batch_tokens, len(x)),), generator=gen)
            loss = (module(x[idx]) - y[idx]).pow(2).mean() / scale
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    end_loss = probe_loss()
    if not end_loss <= start_loss:  # too high an lr for this layer's scale: never leave it worse than it started
        log.warning("distill: AdamW raised the fit loss from %.4g to %.4g (lr %g too high?); keeping the start",
                    start_loss, end_loss, cfg.lr)
        module.load_state_dict(start_state)


def _linear_in_weights(module: nn.Module) -> bool:
    return hasattr(module, "expand") and hasattr(module, "set_fused_weight")


def _fit_method(module: nn.Module, requested: str) -> str:
    linear_in_weights = _linear_in_weights(module)
    if requested == "lstsq" and not linear_in_weights:
        raise KallmError(f"distill.method=lstsq needs a layer that is linear in its weights; "
                         f"{type(module).__name__} is not (use adamw or auto)")
    if requested == "auto":
        return "lstsq" if linear_in_weights else "adamw"
    return requested


def replacement_module(layers, i: int) -> nn.Module:
    """The single new FFN module of decoder layer `i` (what distillation fits)."""
    wrapped = replacement_modules(layers[i])
    if len(wrapped) != 1:
        raise KallmError(f"layer {i}: distillation needs exactly one replacement module, found {len(wrapped)} "
                         "(linear restarts of split-FFN models such as OPT are not supported)")
    return wrapped[0].kallm_ffn


def fit_replacement(module: nn.Module, x: Tensor, y: Tensor, cfg: DistillConfig, seed: int, layer: int) -> LayerFit:
    """Fit `module` to map x -> y (the last `holdout_fraction` of the rows held out to measure the FVU)."""
    ref = next(module.parameters())
    n_hold = max(1, int(len(x) * cfg.holdout_fraction))
    x_fit, y_fit = x[:-n_hold].to(ref.device, ref.dtype), y[:-n_hold].to(ref.device, ref.dtype)
    x_hold, y_hold = x[-n_hold:].to(ref.device, ref.dtype), y[-n_hold:].to(ref.device, ref.dtype)
    method = _fit_method(module, cfg.method)
    if method == "lstsq":
        _fit_lstsq(module, x_fit, y_fit, cfg.ridge)
    else:
        _fit_adamw(module, x_fit, y_fit, cfg, seed)
    with torch.no_grad():
        fit = LayerFit(layer, method, fvu(module(x_hold).float(), y_hold.float()),
                       fvu(module(x_fit[:8192]).float(), y_fit[:8192].float()), len(x))
    log.info("distilled layer %d (%s): held-out FVU %.4f, train FVU %.4f", layer, method, fit.fvu, fit.train_fvu)
    return fit


def distill_retrofit(
    model: nn.Module, io: dict[int, tuple[Tensor, Tensor]], config: DistillConfig | None = None, seed: int = 0,
    progress: bool | None = None,
) -> list[LayerFit]:
    """Fit every replacement FFN of a retrofitted model to its original's recorded (input, output)."""
    cfg = config or DistillConfig()
    report = retrofit_report(model)
    _, layers = find_decoder_layers(model)
    fits: list[LayerFit] = []
    for i in progress_bar(report.layer_indices, desc="distill", unit="layer", progress=progress):
        if i not in io:
            raise KallmError(f"no recorded activations for layer {i} (have {sorted(io)})")
        x, y = io[i]
        fits.append(fit_replacement(replacement_module(layers, i), x, y, cfg, seed * 1000 + i, i))
    return fits


def fits_to_dict(fits: list[LayerFit]) -> dict[str, dict]:
    return {str(f.layer): asdict(f) for f in fits}
