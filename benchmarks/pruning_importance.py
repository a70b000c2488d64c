"""Which channels to keep when an MLP is pruned: weight norms or activations, on the embedded SmolLM2-135M.

    .venv/bin/python benchmarks/pruning_importance.py [--ratio 0.5] [--tokens 24576]

The original model runs once over WikiText-2 *validation* (blocks of 256 tokens) and the inputs and outputs of
the MLPs of its last five layers are recorded (`kallm.distill.collect_ffn_io`). Each MLP is cut to `ratio` of
its intermediate channels, kept by
  weight      the product of the channel's weight norms (`kallm.retrofitting.pruning.kept_channels`: no data)
  activation  the RMS of its activation on the first 80% of the tokens times its down-column norm
              (`activation_importance`, what `init: distill` uses)
and the fraction of output variance left unexplained (FVU) is measured on the last 20% of the tokens, for the
pruned MLP as it is and with its down projection refitted by ridge least squares on the first 80%.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kallm.distill.solve import fvu
from kallm.retrofitting.arch import find_decoder_layers, model_dims
from kallm.retrofitting.pruning import activation_importance, kept_channels, top_channels
from mlp_io import record_mlp_io  # noqa: E402


def _hidden(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)).double()


def _scores(h: torch.Tensor, down: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, fit: slice,
            hold: slice) -> tuple[float, float]:
    """(held-out FVU of the pruned MLP, the same with its down projection refitted on the fit rows)."""
    hk = h[:, keep]
    plain = fvu(hk[hold] @ down[:, keep].T.double(), y[hold].double())
    gram, rhs = hk[fit].T @ hk[fit], hk[fit].T @ y[fit].double()
    gram.diagonal().add_(1e-3 * gram.diagonal().mean())
    return plain, fvu(hk[hold] @ torch.linalg.solve(gram, rhs), y[hold].double())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--tokens", type=int, default=24576)
    args = parser.parse_args()
    model, io = record_mlp_io(args.tokens)
    _, layers = find_decoder_layers(model)
    indices = sorted(io)
    d, inter = model_dims(model)
    width = int(round(args.ratio * inter))
    print(f"| layer | weight: pruned | weight: refit | activation: pruned | activation: refit |  ({width} of {inter} "
          f"channels; held-out FVU on {len(next(iter(io.values()))[0]) // 5} WikiText-2 validation tokens)")
    print("| --- | --- | --- | --- | --- |")
    for k in indices:
        x, y = io[k]
        fit, hold = slice(0, int(0.8 * len(x))), slice(int(0.8 * len(x)), len(x))
        mlp = layers[k].mlp
        h, down = _hidden(mlp, x), mlp.down_proj.weight.detach()
        by_weight = kept_channels([mlp], d, inter, width)
        score = activation_importance(mlp, x[fit], d, inter)
        by_activation = top_channels(score, width)
        row = [*_scores(h, down, y, by_weight, fit, hold), *_scores(h, down, y, by_activation, fit, hold)]
        print(f"| {k} | " + " | ".join(f"{v:.3f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
