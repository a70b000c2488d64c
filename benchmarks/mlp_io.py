"""(Shared by the layer-level benchmarks.) The MLPs' inputs and outputs of the embedded SmolLM2-135M on
WikiText-2 *validation*: the original model runs once over 256-token blocks (`kallm.distill.collect_ffn_io`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

import kallm
from kallm.data.batching import collate
from kallm.distill.layerwise import collect_ffn_io
from kallm.evaluation.heldout.text import load_text_set
from kallm.retrofitting.arch import find_decoder_layers

TEXT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "text" / "wikitext-2" / "valid.txt"


def record_mlp_io(tokens: int, layers: Sequence[int] | None = None
                  ) -> tuple[torch.nn.Module, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """(the original model, {layer: (MLP inputs, MLP outputs)} on `tokens` tokens); default: the last five layers."""
    model, tok = kallm.load_model("smollm2-135m-instruct")
    model.eval()
    blocks = load_text_set(TEXT, tok, 256, tokens)
    examples = getattr(blocks, "examples", blocks)
    batches = [collate(examples[i:i + 8], tok.pad_token_id or 0) for i in range(0, len(examples), 8)]
    if layers is None:
        n = len(find_decoder_layers(model)[1])
        layers = range(n - 5, n)
    return model, collect_ffn_io(model, batches, list(layers), tokens, progress=False)
