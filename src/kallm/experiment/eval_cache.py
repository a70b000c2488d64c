"""A frozen-prefix cache for evaluation forwards (likelihood mode), shared by every variant and seed.

All variants of an experiment keep decoder layers 0..K-1 untouched, so the hidden states entering
layer K for an evaluation batch are the same for every model of the grid. `CachedPrefixForward`
computes them the first time a batch is seen and afterwards runs only layers K.. and the LM head.
Batches are keyed by their exact token content and mask, so it works with either padding side as
long as the evaluator batches deterministically.
"""

from __future__ import annotations

import hashlib
import logging

import torch
from torch import nn

from kallm.errors import KallmError
from kallm.models.prefix import prefix_fingerprint, prefix_hidden_states, tail_hidden_states

log = logging.getLogger(__name__)


def batch_key(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(input_ids.shape)).encode())
    h.update(input_ids.detach().cpu().numpy().tobytes())
    h.update(attention_mask.detach().cpu().numpy().tobytes())
    return h.hexdigest()


class CachedPrefixForward:
    """`forward_fn(input_ids, attention_mask) -> final hidden states`, the prefix below `layer_index` cached.

    `bind(model)` points it at the model to evaluate; the model's prefix must match the one the
    cache was started with (checked through a weight fingerprint). `max_bytes` bounds memory: past
    it, new batches are computed without being stored.
    """

    def __init__(self, layer_index: int, max_bytes: int = 4 * 1024**3) -> None:
        if layer_index < 1:
            raise KallmError("a prefix cache needs at least one frozen layer below the retrofit")
        self.layer_index = layer_index
        self.max_bytes = max_bytes
        self.fingerprint: str | None = None
        self.model: nn.Module | None = None
        self._states: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._states.values())

    def bind(self, model: nn.Module) -> CachedPrefixForward:
        fingerprint = prefix_fingerprint(model, self.layer_index)
        if self.fingerprint is None:
            self.fingerprint = fingerprint
        elif fingerprint != self.fingerprint:
            raise KallmError("this model's frozen prefix differs from the one the evaluation cache was built on")
        self.model = model
        return self

    def release(self) -> None:
        """Let go of the bound model (its run is over); the cached states stay for the next run's model."""
        self.model = None

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise KallmError("CachedPrefixForward.bind(model) must be called before evaluating")
        key = batch_key(input_ids, attention_mask)
        states = self._states.get(key)
        if states is None:
            self.misses += 1
            states = prefix_hidden_states(self.model, input_ids, attention_mask, self.layer_index)
            if self.nbytes + states.numel() * states.element_size() <= self.max_bytes:
                self._states[key] = states
        else:
            self.hits += 1
        return tail_hidden_states(self.model, input_ids, attention_mask, self.layer_index, states)
