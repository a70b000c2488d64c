"""Training a retrofit: the loop (on Accelerate) and its parts.

| module | concept |
| --- | --- |
| `config` | `TrainConfig` (what users set) and `TrainResult` (what a run reports) |
| `examples` | tokenised, split training/validation examples |
| `prefix` | the frozen prefix: hidden states below the first trainable layer, run without autograd or cached |
| `loss` | next-token loss at labelled positions only, chunked over the vocabulary |
| `kd` | distillation (CE + KL against the original model's distribution), chunked over the vocabulary |
| `loss_terms` | the terms `train.loss` can name (ce, kd, hidden), one `LossTerm` class each, in `LOSS_TERMS` |
| `objective` | `LossSpec` (`train.loss` parsed against `LOSS_TERMS`) and `ObjectiveLoss`, which runs its terms |
| `optim` | AdamW groups and the learning-rate schedule (a pure function of the step) |
| `checkpoint` | atomic checkpoints and resume |
| `state` | the run folder's files, `TrainState`, metrics.jsonl |
| `memory` | per-step and per-run peak memory |
| `callbacks` | the callback protocol |
| `loop` | `TrainLoop`: set-up, step, evaluation, checkpoint; `train_model` |
| `api` | `train`: load, retrofit, train, save in one call |
"""

from __future__ import annotations

from kallm.training.api import train
from kallm.training.callbacks import Callback, TrainCallback
from kallm.training.config import TrainConfig, TrainResult
from kallm.training.loop import TrainLoop, train_model

__all__ = ["Callback", "TrainCallback", "TrainConfig", "TrainLoop", "TrainResult", "train", "train_model"]
