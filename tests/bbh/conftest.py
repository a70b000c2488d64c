"""A tiny random Llama whose weights are large enough that its greedy output depends on the prompt."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def lively_llama(smol_tokenizer):
    from tests.tiny_models import make_tiny_model

    model = make_tiny_model("llama", vocab_size=len(smol_tokenizer), seed=0)
    # Default init (std 0.02) makes every prompt produce the same token; larger weights make outputs vary.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3, generator=generator)
    return model
