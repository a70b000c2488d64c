"""Shared pieces of the training tests: a small real chat file and the tiny hand-frozen model."""

from __future__ import annotations

from pathlib import Path

from kallm.training.callbacks import Callback


def write_chat_sample(shared_data: Path, target: Path, n: int = 48) -> Path:
    """The first `n` real GSM8K conversations of the shared data, as a small jsonl in `target`."""
    lines = (shared_data / "chat" / "gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


class Interrupt(Exception):
    """Raised by `StopAt` to simulate a run killed at the start of a step."""


class StopAt(Callback):
    """A training callback that interrupts the run at the start of `step` (after the checkpoints before it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_start(self, step: int, model) -> bool:
        if step == self.step:
            raise Interrupt
        return False


def step_losses(path) -> dict[int, float]:
    """{step: training loss} from a metrics.jsonl."""
    from kallm.io import read_jsonl

    return {r["step"]: r["loss"] for r in read_jsonl(path) if "loss" in r}
