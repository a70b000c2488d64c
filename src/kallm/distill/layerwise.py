"""Distill-then-train: fit each new FFN to imitate the pretrained FFN it replaces.

1. `collect_ffn_io` runs the *original* model once over real text with hooks on the FFNs of the
   selected layers and keeps (input, output) pairs of N non-padding tokens per layer (float32).
2. After surgery, `distill_retrofit` fits every replacement on those pairs: a closed-form ridge
   least-squares solve where the layer is linear in its weights (a KAN is: expansion, then one
   matmul — `expand(x) @ fused_weight()`; the ridge chosen on validation rows, `kallm.distill.solve`),
   best-keeping AdamW otherwise (`kallm.distill.adamw`): an MLP (fresh SwiGLU, pruned, ...) alternates
   a least-squares output projection with AdamW rounds; a stacked KAN starts with its last layer solved
   on what its earlier layers, fitted to carry their input on, give.
3. Each layer's fraction of variance unexplained (FVU = MSE / Var(target)) is measured on held-out tokens.

No backprop through the model is needed: the regression is local to each layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from kallm.distill.adamw import fit_adamw, validation_fvu
from kallm.distill.solve import FitRows, fit_readout, fvu, linear_in_weights, solve_layer
from kallm.distill.stack import solve_last_layer, warm_start_stack
from kallm.errors import KallmError
from kallm.io import write_with_atomic
from kallm.progress import progress_bar
from kallm.retrofitting.arch import FFNSite, find_decoder_layers, find_ffn, model_dims
from kallm.retrofitting.displaced import original_modules
from kallm.retrofitting.surgery import replacement_modules
from kallm.retrofitting.surgery_report import find_report, retrofit_report
from kallm.retrofitting.variant import VARIANT_KINDS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    tokens: int = 16384  # (input, output) pairs collected per layer
    # layerwise: every layer on pairs recorded from the original model (this module); sequential: bottom-up,
    # each layer on the inputs the retrofitted model gives it (kallm.distill.sequential), towards `target`
    mode: Literal["layerwise", "sequential"] = "layerwise"
    target: Literal["ffn", "block"] = "ffn"
    method: Literal["auto", "lstsq", "adamw"] = "auto"
    # ridge strength relative to the mean diagonal of the Gram matrix, or auto: chosen per layer on the
    # validation rows (a fixed 1e-2 overfitted a degree-6 KAN at 16k tokens: held-out FVU 0.40-0.53, train
    # 0.33-0.44, SmolLM2-135M)
    ridge: float | Literal["auto"] = "auto"
    steps: int = 300  # adamw: optimisation steps (all rounds together)
    lr: float = 3e-3
    batch_tokens: int = 1024
    rounds: int = 3  # adamw on an MLP: rounds of AdamW, each followed by a least-squares output projection
    holdout_fraction: float = 0.1  # of the tokens: the rows the reported FVU is measured on
    # plain-text files (never an eval.heldout file) whose blocks make up `text_fraction` of the fit's tokens,
    # the rest from the training sample (kallm.experiment.distill_data)
    text: tuple[str, ...] = ()
    text_fraction: float = 0.5
    validation_fraction: float = 0.1  # of the rest: the rows that choose the ridge and AdamW's best state

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
        if self.ridge != "auto" and (isinstance(self.ridge, str | bool) or not self.ridge >= 0):
            raise KallmError(f"distill.ridge must be auto or a number >= 0, got {self.ridge!r}")
        if self.steps <= 0 or self.lr <= 0 or self.batch_tokens <= 0 or self.rounds <= 0:
            raise KallmError("distill.steps, distill.lr, distill.batch_tokens and distill.rounds must be positive")
        if not 0 <= self.text_fraction <= 1 or (self.text and self.text_fraction == 0):
            raise KallmError(f"distill.text_fraction must be in (0, 1] with distill.text files (0 without), "
                             f"got {self.text_fraction}")
        for name in ("holdout_fraction", "validation_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise KallmError(f"distill.{name} must be in (0, 0.5), got {getattr(self, name)}")


@dataclass
class LayerFit:
    layer: int
    method: str
    fvu: float  # on held-out tokens
    train_fvu: float
    tokens: int
    ridge: float | None = None  # the last least-squares solve's (None: none was used, the start was better)
    val_fvu: list[float] = field(default_factory=list)  # AdamW fits: validation FVU after each stage
    lr: float | None = None  # AdamW fits: the lr it ended with (halved on each restart)


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


def _output_projection(module: nn.Module, width: int) -> nn.Module | None:
    """The MLP's single projection back to the hidden size, an nn.Linear or a GPT-2 Conv1D (weight stored
    (in, out)); None when there is not exactly one."""
    outs = [m for m in module.modules() if (isinstance(m, nn.Linear) and m.out_features == width)
            or (isinstance(m, Conv1D) and m.nf == width)]
    return outs[0] if len(outs) == 1 else None


def _warm_start_output_projection(module: nn.Module, rows: FitRows, ridge: float | str) -> float | None:
    """Solve an MLP's projection back to the hidden size by least squares on its input activations.

    Such an MLP (a SwiGLU, a linear restart, a narrowed control, a pruned MLP) is linear in that
    projection's weights given the rest. The solution replaces the current weights only if it is better
    on the validation rows (a pruned MLP's kept channels, the original's own projection, may be). The
    ridge chosen; None when the current weights were kept or there is no single nn.Linear onto y's width.
    """
    out = _output_projection(module, rows.y.shape[1])
    if out is None:
        return None
    with torch.no_grad():
        current = module(rows.x_val)
    readout = fit_readout(lambda x: _projection_input(module, out, x), rows, out.bias is not None, ridge, current)
    if readout is None:
        return None
    with torch.no_grad():
        if readout.bias is not None:
            out.bias.copy_(readout.bias.to(out.bias.dtype))
        out.weight.copy_((readout.weight if isinstance(out, Conv1D) else readout.weight.T).to(out.weight.dtype))
    return readout.ridge


def _projection_input(module: nn.Module, out: nn.Module, x: Tensor) -> Tensor:
    """What `out` receives when `module` runs on x (a hook on `out`)."""
    seen: list[Tensor] = []
    hook = out.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(len(x), -1)))
    try:
        module(x)
    finally:
        hook.remove()
    return seen[0]


def _readout(module: nn.Module, width: int) -> tuple[nn.Module, Callable[[FitRows, float | str], float | None]] | None:
    """The part of `module` that least squares can solve given the rest (a stack's last KAN layer, an MLP's
    output projection) and its solver; None when there is none."""
    layers = getattr(module, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 1 and linear_in_weights(layers[-1]):
        return layers[-1], lambda rows, ridge: solve_last_layer(module, rows, ridge)
    out = _output_projection(module, width)
    if out is None:
        return None
    return out, lambda rows, ridge: _warm_start_output_projection(module, rows, ridge)


def _fit_iterative(module: nn.Module, rows: FitRows, cfg: DistillConfig, seed: int, what: str
                   ) -> tuple[float | None, list[float], float]:
    """Alternating least squares: the read-out solved, then a round of best-keeping AdamW on the rest (the
    read-out held at its solution, so AdamW improves the features it reads), `distill.rounds` times within
    `distill.steps`, and a final solve. A stack first carries its input to its last layer. Each stage keeps
    the better of its result and its start on the validation rows: the losses never rise. Returns (ridge of
    the last solve, the validation FVU after each stage, the lr AdamW ended with)."""
    found = _readout(module, rows.y.shape[1])
    if found is None:
        stage = fit_adamw(module, rows, cfg.steps, cfg.lr, cfg.batch_tokens, seed, what)
        return None, [stage.start, stage.best], stage.lr
    readout, solve = found
    layers = getattr(module, "layers", None)
    ridge = warm_start_stack(module, rows, cfg.ridge) if layers is not None and readout is layers[-1] else None
    losses, lr = [validation_fvu(module, rows)], cfg.lr
    for r in range(cfg.rounds + 1):
        solved = solve(rows, cfg.ridge)
        ridge = solved if solved is not None else ridge
        losses.append(validation_fvu(module, rows))
        if r == cfg.rounds:
            break
        held = {id(p) for p in readout.parameters()}
        rest = [p for p in module.parameters() if id(p) not in held and p.requires_grad]
        if rest:  # a module that is its read-out alone has nothing else to train
            stage = fit_adamw(module, rows, max(1, cfg.steps // cfg.rounds), lr, cfg.batch_tokens,
                              seed + 7919 * r, what, params=rest)
            lr = stage.lr
            losses.append(stage.best)
    return ridge, losses, lr


def _fit_method(module: nn.Module, requested: str) -> str:
    solvable = linear_in_weights(module)
    if requested == "lstsq" and not solvable:
        raise KallmError(f"distill.method=lstsq needs a layer that is linear in its weights; "
                         f"{type(module).__name__} is not (use adamw or auto)")
    if requested == "auto":
        return "lstsq" if solvable else "adamw"
    return requested


def replacement_module(layers, i: int) -> nn.Module:
    """The single new FFN module of decoder layer `i` (what distillation fits)."""
    wrapped = replacement_modules(layers[i])
    if len(wrapped) != 1:
        raise KallmError(f"layer {i}: distillation needs exactly one replacement module, found {len(wrapped)} "
                         "(linear restarts of split-FFN models such as OPT are not supported)")
    return wrapped[0].kallm_ffn


def start_refiner(model: nn.Module, layers, i: int) -> Callable[[Tensor], bool] | None:
    """Layer i's new FFN's start improved from real inputs of the layer (`VariantKind.refine_start`: a pruned
    MLP chooses its channels by their activations); None when the FFN it replaced was not kept."""
    wrapper = replacement_modules(layers[i])[0]
    original = original_modules(model).get(id(wrapper))
    if original is None:
        return None
    kind, dims = VARIANT_KINDS.get(retrofit_report(model).variant.kind), model_dims(model)
    return lambda x: kind.refine_start(original, wrapper.kallm_ffn, x, dims)


def fit_replacement(module: nn.Module, x: Tensor, y: Tensor, cfg: DistillConfig, seed: int, layer: int,
                    refine: Callable[[Tensor], bool] | None = None) -> LayerFit:
    """Fit `module` to map x -> y (the last `holdout_fraction` of the rows held out to measure the FVU; the
    last `validation_fraction` of the rest chooses the ridge and AdamW's best state)."""
    ref = next(module.parameters())
    n_hold = max(1, int(len(x) * cfg.holdout_fraction))
    x_fit, y_fit = x[:-n_hold].to(ref.device, ref.dtype), y[:-n_hold].to(ref.device, ref.dtype)
    x_hold, y_hold = x[-n_hold:].to(ref.device, ref.dtype), y[-n_hold:].to(ref.device, ref.dtype)
    if refine is not None and refine(x_fit):  # before the validation split: the fit rows only, never held-out
        log.info("distill layer %d: channels chosen by their activations on the fit rows", layer)
    rows = FitRows.split(x_fit, y_fit, cfg.validation_fraction)
    method = _fit_method(module, cfg.method)
    losses: list[float] = []
    lr = None
    if method == "lstsq":  # nothing is compared with the solution afterwards: solved again on every fit row
        ridge = solve_layer(module, rows, cfg.ridge, refit_all=True)
    else:
        ridge, losses, lr = _fit_iterative(module, rows, cfg, seed, f" layer {layer}")
    with torch.no_grad():
        fit = LayerFit(layer, method, fvu(module(x_hold).float(), y_hold.float()),
                       fvu(module(x_fit[:8192]).float(), y_fit[:8192].float()), len(x), ridge, losses, lr)
    log.info("distilled layer %d (%s): held-out FVU %.4f, train FVU %.4f, ridge %s", layer, method, fit.fvu,
             fit.train_fvu, "kept" if ridge is None else f"{ridge:g}")
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
        fits.append(fit_replacement(replacement_module(layers, i), x, y, cfg, seed * 1000 + i, i,
                                    start_refiner(model, layers, i)))
    return fits


def fits_to_dict(fits: list[LayerFit]) -> dict[str, dict]:
    return {str(f.layer): asdict(f) for f in fits}
