"""Training and validation examples: tokenised conversations, split by seed, and the validation batches."""

from __future__ import annotations

from collections.abc import Sequence

from kallm.data import (
    ConversationSet,
    TextSet,
    TokenizedExample,
    epoch_batches,
    split_indices,
    tokenize_conversations,
    tokenize_texts,
)
from kallm.data.sampling import draw_sample
from kallm.errors import KallmError
from kallm.training.config import TrainConfig


def as_conversation_set(data: ConversationSet | TextSet | Sequence) -> ConversationSet | TextSet:
    if isinstance(data, ConversationSet | TextSet):
        return data
    return ConversationSet([list(m) for m in data], [f"conversation {i}" for i in range(len(data))])


def prepare_data(tokenizer, data: ConversationSet | TextSet | Sequence, config: TrainConfig,
                 progress: bool | None = None) -> tuple[list[TokenizedExample], list[TokenizedExample]]:
    """Tokenise and split into (train, validation) examples, deterministically by `config.seed`."""
    data = as_conversation_set(data)
    if config.max_conversations is not None and len(data) > config.max_conversations:
        # a seeded sample across the data's files, never the first N in file order
        data = data.subset(draw_sample(data.item_files(), config.max_conversations, config.data_seed))
    if len(data) == 0:
        raise KallmError("no training conversations given")
    train_idx, val_idx = split_indices(len(data), val_size=None if config.val_fraction is not None else config.val_size,
                                       val_fraction=config.val_fraction or 0.0, seed=config.seed)
    if isinstance(data, TextSet):  # plain text (for distillation): windows of max_length, every token a target
        tokenized = tokenize_texts(tokenizer, data.texts, config.max_length, progress=progress)
    else:
        tokenized = tokenize_conversations(tokenizer, data.conversations, config.max_length, progress=progress)
    val_set = set(val_idx)
    train = [e for e in tokenized.examples if e.index not in val_set]
    val = [e for e in tokenized.examples if e.index in val_set]
    if not train:
        raise KallmError("no training conversation left after the validation split and truncation")
    return train, val


def validation_batches(val: Sequence[TokenizedExample], config: TrainConfig, world: int) -> list[list[int]]:
    """Global batches of validation positions (the first `eval_batches` of a fixed order)."""
    if not val:
        return []
    batches = epoch_batches([len(e) for e in val], config.batch_size * world, config.seed, 0, config.group_by_length)
    if not batches:  # fewer held-out conversations than one global batch
        batches = [list(range(len(val)))]
    return batches[: config.eval_batches] if config.eval_batches else batches
