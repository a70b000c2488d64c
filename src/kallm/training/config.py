"""Training configuration and result records (what users type in YAML/CLI, and what a run reports)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from kallm.config.mapping import FieldError
from kallm.data.loading import ON_BAD_ROW
from kallm.errors import KallmError
from kallm.runtime.precision import precision_problem
from kallm.training.loss_terms import KD_POSITIONS, KDPositions
from kallm.training.objective import LossSpec, as_loss_spec
from kallm.training.tracking import tracker_names

SEED_LIMIT = 2**32  # numpy's and CUDA's generators take seeds below 2**32


def check_seed(seed: object, key: str) -> None:
    """A seed is an integer in [0, 2**32): every generator kallm seeds (torch, numpy, CUDA) accepts it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise FieldError(key, f"must be an integer in 0..{SEED_LIMIT - 1}, got {seed!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. `batch_size` is per process; one optimizer step sees
    batch_size x grad_accum x processes conversations."""

    steps: int = 200
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    clip_grad_norm: float | None = 1.0
    eval_every: int = 50  # 0: only at step 0 and at the end
    eval_batches: int | None = 8  # None: the whole validation set
    val_size: int | None = 64  # conversations held out ...
    val_fraction: float | None = None  # ... or this share of them (wins over val_size when set)
    save_every: int = 100  # 0: only the final checkpoint
    keep_checkpoints: int = 2
    seed: int = 0
    precision: str = "auto"  # auto: bf16 autocast where the GPU/CPU has native bf16, else fp32 (kallm.runtime.precision)
    logits_chunk_size: int = 1024
    prefix_cache: bool = False
    group_by_length: bool = True
    max_conversations: int | None = None  # a seeded sample stratified by file (kallm.data.sampling)
    data_seed: int = 0  # the seed of every data sample (max_conversations, train.mix, distillation's tokens)
    on_bad_row: str = "skip"
    # Experiment trackers, through Accelerate: tensorboard, wandb, mlflow, comet_ml, aim, ... (default: none)
    report_to: str | tuple[str, ...] = ()
    loss: LossSpec = LossSpec()  # ce | kd | ce+kd | ... (kallm.training.objective)
    kd_temperature: float = 1.0
    kd_positions: KDPositions = "assistant"  # or "all": every position of every conversation

    def __post_init__(self) -> None:
        def positive(name: str, allow_zero: bool = False, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
                bound = ">= 0" if allow_zero else ">= 1"
                none = " or null" if allow_none else ""
                raise FieldError(name, f"must be an integer {bound}{none}, got {value!r}")

        for name in ("steps", "batch_size", "grad_accum", "keep_checkpoints", "logits_chunk_size"):
            positive(name)
        for name in ("eval_every", "save_every", "warmup_steps", "seed", "data_seed"):
            positive(name, allow_zero=True)
        check_seed(self.seed, "seed")
        for name in ("eval_batches", "max_conversations"):
            positive(name, allow_none=True)
        positive("val_size", allow_zero=True, allow_none=True)
        if self.max_length < 8 or isinstance(self.max_length, bool):
            raise FieldError("max_length", f"must be an integer >= 8 tokens, got {self.max_length!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise FieldError("lr", f"must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise FieldError("weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0 <= self.min_lr_ratio <= 1):
            raise FieldError("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.clip_grad_norm is not None and not (
            isinstance(self.clip_grad_norm, (int, float)) and self.clip_grad_norm > 0
        ):
            raise FieldError("clip_grad_norm", f"must be > 0 or null (no clipping), got {self.clip_grad_norm!r}")
        if self.val_fraction is not None and not (
            isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1
        ):
            raise FieldError("val_fraction", f"must be in [0, 1) or null, got {self.val_fraction!r}")
        if (problem := precision_problem(self.precision)) is not None:
            raise FieldError("precision", problem)
        if self.on_bad_row not in ON_BAD_ROW:
            raise FieldError("on_bad_row", f"{self.on_bad_row!r} is not valid; choose one of: {', '.join(ON_BAD_ROW)}")
        if not isinstance(self.prefix_cache, bool) or not isinstance(self.group_by_length, bool):
            raise FieldError("prefix_cache", "prefix_cache and group_by_length must be true or false")
        try:  # one form from here on: a tuple of checked tracker names
            object.__setattr__(self, "report_to", tracker_names(self.report_to))
        except KallmError as exc:
            raise FieldError("report_to", str(exc)) from None
        self._check_objective()

    def _check_objective(self) -> None:
        try:
            object.__setattr__(self, "loss", as_loss_spec(self.loss))  # Python callers may pass the text
        except KallmError as exc:
            raise FieldError("loss", str(exc)) from None
        if not (isinstance(self.kd_temperature, (int, float)) and math.isfinite(self.kd_temperature)
                and self.kd_temperature > 0):
            raise FieldError("kd_temperature", f"must be a positive number, got {self.kd_temperature!r}")
        if self.kd_positions not in KD_POSITIONS:
            raise FieldError("kd_positions", f"{self.kd_positions!r} is not valid; choose one of: "
                                             f"{', '.join(KD_POSITIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "loss": str(self.loss)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "train", lines: Any = None) -> TrainConfig:
        """Build from a mapping (YAML/JSON, with `lines` from kallm.config for file:line in errors)."""
        from kallm.config.mapping import from_mapping

        return from_mapping(cls, data, where, lines)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainResult:
    """What a run did and cost. Memory is CUDA max allocated on GPU, peak process RSS on CPU;
    `wall_s` includes evaluations and checkpoints, `tokens_per_s` counts training steps only."""

    steps: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    peak_memory_bytes: int
    memory_kind: str  # "cuda" | "rss"
    final_train_loss: float | None
    initial_eval_loss: float | None
    final_eval_loss: float | None
    trainable_params: int
    metrics_path: str
    out_dir: str = ""
    precision: str = ""  # what the run computed in (fp32 | bf16), resolved from TrainConfig.precision

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
