"""The training loop's callback protocol: what a callback may do, and when it is asked."""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn


class TrainCallback(Protocol):
    """Hooks the training loop calls on every callback it was given.

    On resume, `on_step_start` is replayed for the steps already done (without `on_log`), so it must
    depend only on the step and the model: that is what makes a resumed run equal an uninterrupted one.
    """

    def on_step_start(self, step: int, model: nn.Module) -> bool:
        """Before step `step` (0-based); True when parameters were replaced (the optimizer is rebuilt)."""
        ...

    def on_log(self, record: dict[str, Any]) -> None:
        """A metrics record as it is written to metrics.jsonl (a step's loss, or an evaluation)."""
        ...


class Callback:
    """A callback that does nothing; subclass it and override the hooks you need."""

    def on_step_start(self, step: int, model: nn.Module) -> bool:
        return False

    def on_log(self, record: dict[str, Any]) -> None:
        return None
