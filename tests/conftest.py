"""Shared fixtures: tiny random-weight models (real architectures), the real tokenizer, shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kallm.runtime.allocator import keep_freed_memory

torch.set_num_threads(min(2, os.cpu_count() or 1))
# The suite runs with malloc set up as the command line sets it, from the first test on: in-process CLI
# tests would otherwise switch it mid-session, and what a later test measures would depend on the order.
keep_freed_memory()

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only shared data folder (../shared/data beside the checkout, or $KALLM_SHARED_DATA)."""
    path = Path(os.environ.get("KALLM_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (path / "bbh").is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder (converted from GGUF once, then cached)."""
    from kallm.models.loading import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def smol_tokenizer(embedded_dir):
    """The real SmolLM2 tokenizer with its chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def embedded_model(embedded_dir):
    """The real embedded model and tokenizer, float32 on CPU (use only in tests marked slow)."""
    from kallm.models.loading import load_model

    return load_model(str(embedded_dir))


@pytest.fixture
def tiny_llama(smol_tokenizer):
    """A 4-layer random-weight Llama (SmolLM2 shape family) sized for the real tokenizer's vocabulary."""
    from tests.tiny_models import make_tiny_model

    return make_tiny_model("llama", vocab_size=len(smol_tokenizer), seed=0)
