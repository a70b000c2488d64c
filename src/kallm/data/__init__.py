"""Chat data: loading conversations, assistant-only tokenisation, and deterministic batching."""

from __future__ import annotations

from kallm.data.batching import BatchSchedule, collate, epoch_batches, num_label_positions, token_batches
from kallm.data.loading import (
    DEFAULT_DATASET,
    BadRow,
    ConversationSet,
    check_row,
    data_files,
    load_conversations,
    split_indices,
)
from kallm.data.text import TextSet, load_training_data, tokenize_texts
from kallm.data.tokenize import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    ChatTokenizer,
    TokenizedExample,
    TokenizedSet,
    tokenize_conversations,
)

__all__ = [
    "DEFAULT_DATASET", "BadRow", "ConversationSet", "check_row", "data_files", "load_conversations",
    "split_indices", "FALLBACK_CHAT_TEMPLATE", "IGNORE_INDEX", "ChatTokenizer", "TokenizedExample",
    "TokenizedSet", "tokenize_conversations", "BatchSchedule", "collate", "epoch_batches", "num_label_positions",
    "TextSet", "load_training_data", "tokenize_texts", "token_batches",
]
