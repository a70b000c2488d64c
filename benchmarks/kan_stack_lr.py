"""How fast may the inner layer of a two-layer KAN train? One-step and 50-step damage to a fitted stack.

    .venv/bin/python benchmarks/kan_stack_lr.py [--tokens 16384] [--lr 5e-4] [--steps 50]

The original SmolLM2-135M runs once over WikiText-2 *validation* (blocks of 256 tokens) and the inputs and
outputs of the MLPs of its last five layers are recorded (`kallm.distill.collect_ffn_io`). For each layer a
two-layer KAN `sequential(chebyshev2:2,chebyshev2:2)` at half the SwiGLU's parameters (hidden 288) and a
one-layer `chebyshev2:2` KAN (the same count) are fitted as `init: distill` fits them (`fit_replacement` on
the first 80% of the tokens). Each fit is then trained by AdamW on the normalised MSE towards the MLP's
output (lr warmed up over 3 steps, batches of 768 tokens: the recovery recipe's scale), with the stack's
first layer at `scale` x lr, and the held-out FVU (last 20% of the tokens) is read before training and after
steps 1, 5 and `--steps`. `SequentialKAN` uses `kallm.kan.mixing.INNER_LR_SCALE`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kallm.distill.layerwise import DistillConfig, fit_replacement
from kallm.distill.solve import fvu
from kallm.kan import build_kan
from kallm.kan.mixing import LR_SCALE_ATTR
from kallm.training.optim import lr_scales, split_by_lr_scale
from mlp_io import record_mlp_io  # noqa: E402

SCALES = (1.0, 0.3, 0.1, 0.03)
READ_AT = (1, 5)  # Adam's first steps are the largest relative to the gradient: the damage shows there


def _train(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor,
           lr: float, steps: int) -> list[float]:
    """Held-out FVU before training, after the steps in READ_AT and after the last."""
    groups = split_by_lr_scale(list(module.parameters()), lr_scales(module))
    opt = torch.optim.AdamW([{"params": ps, "lr_scale": s} for s, ps in groups], lr=lr, weight_decay=0.0)
    with torch.no_grad():
        read = [fvu(module(xv), yv)]
    gen, scale = torch.Generator().manual_seed(0), y.pow(2).mean()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 3) * g["lr_scale"]
        idx = torch.randint(0, len(x), (768,), generator=gen)
        loss = (module(x[idx]) - y[idx]).pow(2).mean() / scale
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in READ_AT or step == steps:
            with torch.no_grad():
                read.append(fvu(module(xv), yv))
    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    _, io = record_mlp_io(args.tokens)
    indices = sorted(io)
    cols = " | ".join(f"stack x{s:g}" for s in SCALES)
    print(f"| layer | one layer | {cols} |  (held-out FVU of the fit, then after steps "
          f"{', '.join(map(str, READ_AT))}, {args.steps}; lr {args.lr:g})")
    print("| --- | --- |" + " --- |" * len(SCALES))
    cfg = DistillConfig(tokens=args.tokens)
    for k in indices:
        x, y = io[k]
        n = int(0.8 * len(x))
        one, stack = build_kan("chebyshev2:2", 576, 576), build_kan("sequential(chebyshev2:2,chebyshev2:2)", 576, 576, 288)
        for module in (one, stack):
            fit_replacement(module, x[:n], y[:n], cfg, seed=0, layer=k)
        row = [_train(copy.deepcopy(one), x[:n], y[:n], x[n:], y[n:], args.lr, args.steps)]
        for s in SCALES:
            trial = copy.deepcopy(stack)
            setattr(trial.layers[0], LR_SCALE_ATTR, s)
            row.append(_train(trial, x[:n], y[:n], x[n:], y[n:], args.lr, args.steps))
        cells = " | ".join(" / ".join(f"{v:.3f}" for v in r) for r in row)
        print(f"| {k} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
