"""Batch order and collation.

The order of batches is a pure function of (seed, epoch, lengths, batch size), so a run resumed from
a saved position, or the same run split over several processes, sees exactly the same batches.
Length grouping sorts conversations by length inside shuffled windows of many batches, which keeps
padding low while batches stay random.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kallm.data.tokenize import IGNORE_INDEX, TokenizedExample

# Conversations sorted together when grouping by length, in units of batches.
GROUP_WINDOW = 64


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True) -> list[list[int]]:
    """The batches (lists of example positions) of one epoch; an incomplete last batch is dropped."""
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if group_by_length:
        window = batch_size * GROUP_WINDOW
        chunks = [order[i : i + window] for i in range(0, n, window)]
        order = np.concatenate([c[np.argsort([-lengths[j] for j in c], kind="stable")] for c in chunks])
    batches = [order[i : i + batch_size].tolist() for i in range(0, n - batch_size + 1, batch_size)]
    if group_by_length:
        # Sorting put long batches first inside each window; shuffle so they are spread over the epoch.
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class BatchSchedule:
    """Global micro-batch number -> example positions, across epochs."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = True) -> None:
        if len(lengths) < batch_size:
            from kallm.errors import KallmError

            raise KallmError(
                f"only {len(lengths)} training conversations for a global batch of {batch_size}; "
                f"use more data or a smaller batch_size"
            )
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.per_epoch = len(lengths) // batch_size
        self._epoch = -1
        self._batches: list[list[int]] = []

    def __getitem__(self, micro_batch: int) -> list[int]:
        epoch, pos = divmod(micro_batch, self.per_epoch)
        if epoch != self._epoch:
            self._batches = epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.group_by_length)
            self._epoch = epoch
        return self._batches[pos]


def collate(examples: Sequence[TokenizedExample], pad_token_id: int, pad_to_multiple_of: int = 1) -> dict:
    """Right-padded tensors: input_ids, attention_mask, labels (-100 on padding), example indices and content keys."""
    longest = max(len(e) for e in examples)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "keys": [e.index for e in examples],
            "cache_keys": [e.key for e in examples]}


def num_label_positions(labels: torch.Tensor) -> int:
    """How many next-token predictions a batch trains (labels at positions 1.. that are not ignored)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def token_batches(examples: Sequence[TokenizedExample], pad_token_id: int, max_tokens: int,
                  batch_size: int = 8) -> list[dict]:
    """Collated batches of `examples` in order, until they hold at least `max_tokens` real tokens."""
    batches, total = [], 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start: start + batch_size], pad_token_id)
        batches.append(batch)
        total += int(batch["attention_mask"].sum())
        if total >= max_tokens:
            break
    return batches
