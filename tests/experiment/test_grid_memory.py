"""A long grid's memory stays flat: each run releases what it held, so run 11 peaks where run 2 did.

Measured in a `kallm run` process of its own (pytest's memory would blur it), from the per-run memory
record. The model is big enough for a leak to show: its float32 weights are ~60 MB (the 49k-token
embedding at width 256), and before the fix every run left its weights and their bf16 copies behind
(run 2 peaked at 0.94 GB, run 11 at 1.77 GB).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kallm.io import read_jsonl

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wide_base(tmp_path_factory, smol_tokenizer):
    """A 4-layer Llama of width 256 on the real tokenizer's 49k vocabulary."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("wide-base")
    config = transformers.LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=256, intermediate_size=512,
                                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=True, max_position_embeddings=256, bos_token_id=1,
                                      eos_token_id=2)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


def grid_config(tmp_path: Path, base: Path, chat_file: Path, shared_data: Path) -> Path:
    """11 runs touching every path a run takes: untrained, trained from the original FFNs, from scratch,
    after a sequential fit, a budget-matched control; with a distillation teacher and prefix caches."""
    config = {
        "name": "memory", "output_dir": str(tmp_path / "out"), "model": str(base), "layers": "last:2",
        "seeds": [0, 1],
        "variants": [
            {"name": "baseline", "spec": "baseline"},
            {"name": "original-tuned", "spec": "linear", "init": "original"},
            {"name": "linear-restart", "spec": "linear"},
            {"name": "kan-fit", "spec": "kan:chebyshev2:2", "init": "distill"},
            {"name": "matched-fit", "spec": "linear", "budget": "same-as kan-fit", "init": "distill"},
            {"name": "kan", "spec": "kan:chebyshev2:2"},
        ],
        "train": {"data": str(chat_file), "steps": 2, "batch_size": 2, "max_length": 96, "eval_every": 2,
                  "eval_batches": 1, "val_size": 4, "save_every": 2, "prefix_cache": True, "loss": "ce+kd"},
        "eval": {"data_dir": str(shared_data / "bbh"), "tasks": ["navigate"], "mode": "mc", "limit": 2,
                 "batch_size": 4, "heldout_size": 6},
        "distill": {"mode": "sequential", "target": "block", "tokens": 512, "steps": 5},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow  # about a minute on 2 busy cores (11 runs); it needs only the real tokenizer
def test_per_run_peak_memory_stays_flat_over_a_grid(tmp_path, wide_base, chat_file, shared_data):
    path = grid_config(tmp_path, wide_base, chat_file, shared_data)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "kallm", "-q", "run", str(path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert len(records) == 11
    peaks = [r["memory"]["peak_rss_mb"] for r in records]
    after = [r["memory"]["rss_after_mb"] for r in records]
    assert all(100 < a < p for a, p in zip(after, peaks)), (after, peaks)
    # run 1 (untrained) is lower and the first trained run allocates what every later one reuses
    assert peaks[-1] <= 1.2 * peaks[1], peaks
    assert after[-1] <= after[1] + 0.5 * (peaks[1] - after[1]), after
