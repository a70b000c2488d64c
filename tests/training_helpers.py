"""Shared pieces of the training tests: a small real chat file and the tiny hand-frozen model."""

from __future__ import annotations

from pathlib import Path


def write_chat_sample(shared_data: Path, target: Path, n: int = 48) -> Path:
    """The first `n` real GSM8K conversations of the shared data, as a small jsonl in `target`."""
    lines = (shared_data / "chat" / "gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target
