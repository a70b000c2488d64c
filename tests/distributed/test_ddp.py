"""Two-process DDP (gloo, CPU) reproduces the single-process loss trajectory at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kallm.data import load_conversations
from kallm.io import read_jsonl
from kallm.training import train_model
from tests.distributed.train_worker import tiny_frozen_model, worker_config
from tests.training_helpers import write_chat_sample

REPO = Path(__file__).resolve().parents[2]
STEPS = 6


def _torchrun(out: Path, data: Path, nproc: int, batch_size: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, "-m", "tests.distributed.train_worker", str(out), str(data), str(STEPS), str(batch_size)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.distributed
def test_two_process_gloo_matches_one_process(shared_data, smol_tokenizer, tmp_path):
    data = write_chat_sample(shared_data, tmp_path / "chat.jsonl")
    double = _torchrun(tmp_path / "two", data, 2, 2)
    assert double.returncode == 0, double.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "run_info.json").read_text())["processes"] == 2
    # The same global batch (4 conversations) in one process, in this process.
    train_model(tiny_frozen_model(len(smol_tokenizer)), smol_tokenizer, load_conversations(data),
                worker_config(STEPS, 4), tmp_path / "one", progress=False)
    one, two = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        key = "loss" if "loss" in a else "eval_loss"
        assert abs(a[key] - b[key]) < 1e-4, (a, b)
    losses = [r["loss"] for r in one if "loss" in r]
    assert len(losses) == STEPS and losses[-1] < losses[0]
    # Only the main process writes the run folder.
    assert len(list((tmp_path / "two" / "checkpoints").iterdir())) == 1
