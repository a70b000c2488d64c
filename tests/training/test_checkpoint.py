"""Checkpoints: atomic folders, pruning, exact weights/optimizer/RNG round trip, survival of SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kallm.errors import KallmError
from kallm.io import read_jsonl
from kallm.training.checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint, save_checkpoint
from kallm.training.config import TrainConfig
from kallm.training.optim import build_optimizer
from tests.distributed.train_worker import tiny_frozen_model
from tests.training_helpers import write_chat_sample

REPO = Path(__file__).resolve().parents[2]


def _step(model, opt) -> None:
    loss = sum((p.float() ** 2).sum() for p in model.parameters() if p.requires_grad)
    loss.backward()
    opt.step()
    opt.zero_grad()


def test_round_trip_weights_optimizer_rng_and_pruning(tmp_path):
    model = tiny_frozen_model(64)
    opt = build_optimizer(model, TrainConfig())
    _step(model, opt)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, {"tokens": step * 10}, keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-00000002", "step-00000003"]
    expected_draw = torch.rand(3)  # what the RNG gives right after the checkpoint was written

    fresh = tiny_frozen_model(64)
    fresh_opt = build_optimizer(fresh, TrainConfig())
    state = load_checkpoint(latest_checkpoint(tmp_path), fresh, fresh_opt)
    assert state["step"] == 3 and state["tokens"] == 30
    assert torch.equal(torch.rand(3), expected_draw)
    for (n, a), b in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), n
    _step(model, opt)
    _step(fresh, fresh_opt)  # identical Adam moments give identical updates
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    model = tiny_frozen_model(64)
    save_checkpoint(tmp_path, 1, model, build_optimizer(model, TrainConfig()), {})
    other = tiny_frozen_model(64)
    other.model.layers[1].requires_grad_(True)
    with pytest.raises(KallmError, match="does not match the model's trainable parameters"):
        load_checkpoint(latest_checkpoint(tmp_path), other)


def test_partial_checkpoint_folder_is_ignored(tmp_path):
    (tmp_path / ".step-00000009.abc.tmp").mkdir()
    (tmp_path / "step-00000005").mkdir()  # no state.json: never completed
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.distributed
def test_sigkill_mid_training_resumes_from_last_checkpoint(shared_data, tmp_path):
    data = write_chat_sample(shared_data, tmp_path / "chat.jsonl")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tests.distributed.train_worker", str(out), str(data), "14", "4",
           "--save-every", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(checkpoint_dirs(out / "checkpoints")) < 2 and time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"worker exited early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # while it trains (and possibly writes a checkpoint)
    finally:
        proc.wait()
    killed_at = int(latest_checkpoint(out / "checkpoints").name.split("-")[1])
    assert killed_at >= 4
    resumed = subprocess.run([*cmd[:-2], "--resume", "--save-every", "2"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # The resumed run picked up where the checkpoint left off and the metrics file is whole.
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 15))
