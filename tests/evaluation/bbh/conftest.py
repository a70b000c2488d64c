"""Tiny random models whose weights are large enough that their greedy output depends on the prompt."""

from __future__ import annotations

import pytest
import torch


def make_lively(arch: str, vocab_size: int):
    """A tiny model of `arch` whose weights are large enough that its outputs depend on the prompt."""
    from tests.tiny_models import make_tiny_model

    model = make_tiny_model(arch, vocab_size=vocab_size, seed=0)
    # Default init (std 0.02) makes every prompt produce the same token; larger weights make outputs vary.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3, generator=generator)
    return model


@pytest.fixture(scope="module")
def lively_llama(smol_tokenizer):
    return make_lively("llama", len(smol_tokenizer))
