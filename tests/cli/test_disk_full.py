"""A full disk while `kallm train` saves: exit 2, one line naming the file, and the run folder keeps its last
complete state (every file that was there is whole and unchanged, no half-written temporary file is left).

The disk is a real tmpfs, just larger than the finished run it holds (the test mounts one: it needs root)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kallm.io import read_tensors
from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample

REPO = Path(__file__).resolve().parents[2]


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted: list[Path] = []

    def make(size_kib: int) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(mount)
        return mount

    yield make
    for m in mounted:
        subprocess.run(["umount", str(m)], check=False)


def kallm(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "kallm", *argv], capture_output=True, text=True, env=env,
                          timeout=300)


def test_disk_full_while_training_saves(tmp_path, small_disk, smol_tokenizer, shared_data):
    model = tmp_path / "model"
    make_tiny_model("llama", vocab_size=len(smol_tokenizer)).save_pretrained(model)
    smol_tokenizer.save_pretrained(model)
    chat = write_chat_sample(shared_data, tmp_path / "chat.jsonl", n=16)

    def train(out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
        return kallm("-q", "train", "--model", str(model), "--layers", "last:1", "--variant", "kan:chebyshev2:2",
                     "--data", str(chat), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
                     "--max-length", "512", "--val-size", "2", "--eval-every", "0", "--save-every", "1", *extra)

    first = tmp_path / "first"
    assert train(first, 4).returncode == 0
    used = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
    per_checkpoint = max(sum(p.stat().st_size for p in c.rglob("*") if p.is_file())
                         for c in (first / "checkpoints").iterdir())
    run = small_disk((used - per_checkpoint // 2) // 1024) / "run"  # room for two checkpoints, not a third

    done = train(run, 4)

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith("kallm train: error: cannot write ") and "No space left on device" in lines[0]
    assert not [p for p in run.parent.rglob("*") if p.name.endswith(".tmp")]  # no half-written file
    saved = sorted((run / "checkpoints").iterdir())
    assert saved, "the disk held no checkpoint: make it larger"
    for ckpt in saved:  # what was written is whole: the same bytes as the run on a roomy disk wrote
        assert not (first / "checkpoints" / ckpt.name).is_dir() or hashes(ckpt) == hashes(
            first / "checkpoints" / ckpt.name)
        read_tensors(ckpt / "trainable.safetensors")
    moved = shutil.copytree(run, tmp_path / "moved")  # the last complete state resumes on a roomy disk
    assert train(moved, 4, "--resume").returncode == 0
