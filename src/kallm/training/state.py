"""A training run's folder and its progress record (`TrainState`), the part of a checkpoint that is not tensors."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kallm.errors import KallmError
from kallm.folders.layout import TrainingFolder
from kallm.io import append_jsonl_atomic, read_json, read_jsonl, write_text_atomic

RunFiles = TrainingFolder  # the files of a training run folder (named in kallm.folders.layout)


@dataclass
class TrainState:
    """How far a run has got; saved as each checkpoint's state file."""

    step: int = 0
    tokens: int = 0
    train_s: float = 0.0  # time in training steps (tokens/s is measured on it)
    wall_s: float = 0.0  # steps, evaluations and checkpoints
    initial_eval_loss: float | None = None
    last_eval_loss: float | None = None
    last_loss: float | None = None
    data_position: int = 0  # micro-batches consumed
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise KallmError(f"{where}: not a training state record ({exc})") from None


def check_out_dir(files: RunFiles, meta: dict[str, Any], resume: bool) -> None:
    """A new run needs a fresh folder; a resumed one the same configuration as the folder's."""
    if not resume:
        if files.config.exists():
            raise KallmError(f"{files.root} already holds a training run; resume it (--resume) or choose another --out")
        return
    if not files.config.is_file():
        raise KallmError(f"cannot resume: {files.root} holds no kallm training run (no {files.config.name})")
    saved = read_json(files.config, "run config")
    now = json.loads(json.dumps(meta, default=str))
    diffs = [f"{sec}.{k}: {saved.get(sec, {}).get(k)!r} -> {now.get(sec, {}).get(k)!r}"
             for sec in sorted(set(saved) | set(now)) if isinstance(saved.get(sec, {}), dict)
             for k in sorted(set(saved.get(sec, {})) | set(now.get(sec, {})))
             if saved.get(sec, {}).get(k) != now.get(sec, {}).get(k)]
    if diffs:
        raise KallmError(f"cannot resume {files.root}: it was started with another configuration "
                         f"({'; '.join(diffs[:4])})")


class MetricsLog:
    """metrics.jsonl, appended in small atomic batches (a killed run never leaves half a line)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.buffer: list[dict[str, Any]] = []
        self.flushed_at = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.buffer.append(record)
            if len(self.buffer) >= 50 or time.monotonic() - self.flushed_at > 30:
                self.flush()

    def flush(self) -> None:
        if self.enabled and self.buffer:
            append_jsonl_atomic(self.path, self.buffer)
            self.buffer = []
        self.flushed_at = time.monotonic()

    def truncate(self, last_step: int) -> None:
        """Drop records past the checkpoint being resumed (the killed run may have logged further)."""
        if self.enabled and self.path.exists():
            keep = [r for r in read_jsonl(self.path) if r.get("step", 0) <= last_step]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))
