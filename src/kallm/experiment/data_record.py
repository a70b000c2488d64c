"""What data a run used, per source file: the counts behind the record's `data` block.

Training gets the sample (`train.max_conversations`/`train.mix`, seeded by `train.data_seed`) minus the
carved held-out set; distillation fits on the first `distill.tokens` tokens of that, in an order stratified
by source; the report's "Data" section lists all three per file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kallm.data import ConversationSet, TextSet, TokenizedExample
from kallm.data.sampling import count_by_source, stratified_order


def fitting_order(examples: Sequence[TokenizedExample], data: ConversationSet | TextSet,
                  seed: int) -> list[TokenizedExample]:
    """`examples` ordered so that any prefix holds each source file in proportion (data_seed-shuffled)."""
    files = data.item_files()
    return [examples[i] for i in stratified_order([files[e.index] for e in examples], seed)]


def training_counts(prepared: tuple[Sequence[TokenizedExample], Sequence[TokenizedExample]],
                    data: ConversationSet | TextSet) -> dict[str, dict[str, Any]]:
    """Per source: conversations (documents, for text) handed to training, and their tokens after truncation
    (the training and validation split together: which is which changes with the run's seed)."""
    examples = [*prepared[0], *prepared[1]]
    counts = count_by_source(data.item_files(), [e.index for e in examples], [len(e) for e in examples])
    # a text document cut into several windows counts once
    docs = count_by_source(data.item_files(), sorted({e.index for e in examples}))
    for source, row in counts.items():
        row["conversations"] = docs[source]["conversations"]
    return counts


def batch_counts(batches: Sequence[dict], data: ConversationSet | TextSet) -> dict[str, dict[str, Any]]:
    """Per source: the conversations and real (unpadded) tokens of collated batches (`keys`: example index)."""
    indices: list[int] = []
    tokens: list[int] = []
    for batch in batches:
        indices += [int(k) for k in batch["keys"]]
        tokens += [int(n) for n in batch["attention_mask"].sum(1).tolist()]
    return count_by_source(data.item_files(), indices, tokens)
