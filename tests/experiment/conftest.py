"""Shared fixtures of the experiment tests: a tiny real model folder and a small real chat file."""

from __future__ import annotations

import pytest

from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, smol_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-base")
    make_tiny_model("llama", vocab_size=len(smol_tokenizer)).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory, shared_data):
    """40 real conversations from the shared chat data (a small local file, as a user would pass)."""
    return write_chat_sample(shared_data, tmp_path_factory.mktemp("chat") / "chat.jsonl", n=40)
