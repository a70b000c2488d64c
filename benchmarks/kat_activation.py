"""What does kat's learnable activation buy over the pruned original? Held-out FVU, layer by layer.

    .venv/bin/python benchmarks/kat_activation.py [--tokens 16384] [--steps 300] [--layers 25,26,27]

The original SmolLM2-135M runs once over WikiText-2 *validation* (blocks of 256 tokens) and the inputs and
outputs of the chosen layers' MLPs are recorded (`kallm.distill.collect_ffn_io`). Each MLP is replaced by
`kat:chebyshev2:4@budget=0.5` (the original narrowed to half its parameters, its SiLU a learnable Chebyshev
expansion per channel, starting as SiLU) and by `pruned@budget=0.5` (the same channels, plain SiLU), both
fitted as `init: distill` fits them on the first 80% of the tokens. Each fit is then trained further by AdamW
on the normalised MSE (`--steps` steps of 1,024 tokens): kat's activation coefficients alone, at three lrs, and
every parameter of kat and of pruned at 1e-3. The held-out FVU is read on the last 20% of the tokens.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kallm
from kallm.distill.layerwise import (
    DistillConfig,
    fit_replacement,
    replacement_module,
    start_refiner,
)
from kallm.distill.solve import fvu
from kallm.kan.activation import LearnableActivation
from kallm.retrofitting.arch import find_decoder_layers
from mlp_io import record_mlp_io  # noqa: E402

ACTIVATION_LRS = (1e-3, 1e-2, 3e-2)
ALL_LR = 1e-3


def _trained(module: torch.nn.Module, params_of, lr: float, x: torch.Tensor, y: torch.Tensor,
             xv: torch.Tensor, yv: torch.Tensor, steps: int) -> float:
    """Held-out FVU of a copy of `module` after `steps` AdamW steps on the parameters `params_of` picks."""
    module = copy.deepcopy(module)
    opt = torch.optim.AdamW(params_of(module), lr=lr, weight_decay=0.0)
    gen, scale = torch.Generator().manual_seed(0), y.pow(2).mean()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (1024,), generator=gen)
        loss = (module(x[idx]) - y[idx]).pow(2).mean() / scale
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return fvu(module(xv), yv)


def _activation_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for m in module.modules() if isinstance(m, LearnableActivation) for p in m.parameters()]


def _fitted(variant: str, layer: int, x: torch.Tensor, y: torch.Tensor, tokens: int) -> torch.nn.Module:
    """The replacement of `layer` under `variant`, fitted to (x, y) as `init: distill` fits it."""
    model, _ = kallm.load_model("smollm2-135m-instruct")
    kallm.retrofit(model, layers=str(layer), variant=variant, seed=0)
    _, layers = find_decoder_layers(model)
    module = replacement_module(layers, layer)
    fit_replacement(module, x, y, DistillConfig(tokens=tokens), 0, layer, start_refiner(model, layers, layer))
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--layers", default="25,26,27")
    args = parser.parse_args()
    torch.manual_seed(0)
    indices = [int(v) for v in args.layers.split(",")]
    _, io = record_mlp_io(args.tokens, indices)
    acts = " | ".join(f"kat, activation only, lr {lr:g}" for lr in ACTIVATION_LRS)
    print(f"| layer | pruned: fit | kat: fit | {acts} | kat, all, lr {ALL_LR:g} | pruned, all, lr {ALL_LR:g} |")
    print("| --- | --- | --- |" + " --- |" * (len(ACTIVATION_LRS) + 2))
    for k in indices:
        x, y = io[k]
        n = int(0.8 * len(x))
        fit, hold = (x[:n], y[:n]), (x[n:], y[n:])
        kat = _fitted("kat:chebyshev2:4@budget=0.5", k, *fit, args.tokens)
        pruned = _fitted("pruned@budget=0.5", k, *fit, args.tokens)
        with torch.no_grad():
            row = [fvu(pruned(hold[0]), hold[1]), fvu(kat(hold[0]), hold[1])]
        row += [_trained(kat, _activation_params, lr, *fit, *hold, args.steps) for lr in ACTIVATION_LRS]
        row += [_trained(m, lambda m: list(m.parameters()), ALL_LR, *fit, *hold, args.steps) for m in (kat, pruned)]
        print(f"| {k} | " + " | ".join(f"{v:.4f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
