"""A finished tiny grid shared by the `kallm run --out` and `kallm export` tests."""

from __future__ import annotations

import pytest

from tests.experiment.test_runner import write_config
from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample


@pytest.fixture(scope="session")
def grid_run(tmp_path_factory, smol_tokenizer, shared_data):
    """(config file, the folder `kallm run CONFIG --out` wrote, exit code): baseline and a KAN, one seed,
    run with --out into another folder than the config's output_dir."""
    from kallm.cli import main

    root = tmp_path_factory.mktemp("grid")
    base = root / "tiny-base"
    make_tiny_model("llama", vocab_size=len(smol_tokenizer)).save_pretrained(base)
    smol_tokenizer.save_pretrained(base)
    chat = write_chat_sample(shared_data, root / "chat.jsonl", n=24)
    config = write_config(root, base, chat, shared_data, seeds=[0],
                          variants=[{"name": "baseline", "spec": "baseline"},
                                    {"name": "kan", "spec": "kan:chebyshev2:2"}])
    code = main(["-q", "run", str(config), "--out", str(root / "elsewhere")])
    return config, root / "elsewhere", code
