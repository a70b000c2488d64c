"""Checkpoints: atomic folders, pruning, exact weights/optimizer/RNG round trip, survival of SIGKILL."""

from __future__ import annotations

import os
import re
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


class _Payload:
    """A pickle that creates `marker` when it is loaded (what an attacker would plant)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant_pickles(checkpoint: Path, marker: Path) -> None:
    """Put payload pickles where kallm used to torch.load from, and where its tensors now live."""
    for name in ("optimizer.pt", "rng.pt"):
        torch.save(_Payload(marker), checkpoint / name)


def test_checkpoint_files_hold_no_pickle(tmp_path):
    model = tiny_frozen_model(64)
    opt = build_optimizer(model, TrainConfig())
    _step(model, opt)
    path = save_checkpoint(tmp_path, 1, model, opt, {})
    assert sorted(p.name for p in path.iterdir()) == ["optimizer.json", "optimizer.safetensors", "rng.json",
                                                     "state.json", "trainable.safetensors"]
    for p in path.iterdir():  # safetensors (an 8-byte header length, then JSON) or JSON text: never a pickle
        head = p.read_bytes()[:16]
        assert not head.startswith(b"\x80") and not head.startswith(b"PK"), p.name


def test_planted_pickles_never_run(tmp_path):
    marker = tmp_path / "pwned"
    model = tiny_frozen_model(64)
    opt = build_optimizer(model, TrainConfig())
    _step(model, opt)
    plant_pickles(save_checkpoint(tmp_path / "ck", 1, model, opt, {}), marker)
    fresh = tiny_frozen_model(64)
    assert load_checkpoint(latest_checkpoint(tmp_path / "ck"), fresh, build_optimizer(fresh, TrainConfig()))["step"] == 1
    assert not marker.exists()
    # A checkpoint of an older kallm (pickles only) is refused without being opened.
    old = tmp_path / "old" / "step-00000001"
    old.mkdir(parents=True)
    (old / "state.json").write_text('{"step": 1}')
    plant_pickles(old, marker)
    with pytest.raises(KallmError, match=r"written by an older kallm as pickles .*which kallm does not load"):
        load_checkpoint(old, fresh)
    assert not marker.exists()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: (p / "trainable.safetensors").write_bytes(b"\x00" * 5), r"trainable\.safetensors is damaged"),
    (lambda p: (p / "optimizer.safetensors").unlink(), r"optimizer\.safetensors is missing"),
    (lambda p: (p / "optimizer.json").write_text('{"state": 3}'), r"optimizer\.json is not a kallm optimizer state"),
    (lambda p: (p / "rng.json").write_text('{"python": [1, 2]'), r"rng\.json is not valid JSON"),
    (lambda p: (p / "rng.json").write_text('{"python": [3, [1, 2], null], "numpy": 0, "torch": ""}'),
     r"rng\.json is not a kallm RNG state"),
    (lambda p: (p / "state.json").write_text('{"step": "3"}'), r"state\.json is not a checkpoint state"),
])
def test_a_damaged_checkpoint_is_skipped_for_the_one_before(tmp_path, caplog, damage, message):
    from kallm.training.checkpoint import newest_readable_checkpoint

    model = tiny_frozen_model(64)
    opt = build_optimizer(model, TrainConfig())
    _step(model, opt)
    save_checkpoint(tmp_path, 1, model, opt, {})
    _step(model, opt)
    damage(save_checkpoint(tmp_path, 2, model, opt, {}))
    ckpt = newest_readable_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.step == 1
    assert re.search(r"skipping checkpoint step-00000002: .*" + message + r".*resuming from step-00000001", caplog.text)
    damage(tmp_path / "step-00000001")
    with pytest.raises(KallmError, match=r"no readable checkpoint in .*" + message + r".*remove .* to start the run"):
        newest_readable_checkpoint(tmp_path)
