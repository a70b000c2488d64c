"""Held-out plain text: language-model NLL per token under one fixed protocol.

A text set (`eval.heldout` naming a `.txt` file, or a `.jsonl` file whose rows have a `text` field) is
scored like this, so numbers are comparable between runs, grids and reports:

1. The file's documents (a `.txt` file is one; `.jsonl` rows are one each, in file order) are joined with
   a blank line ("\\n\\n") and tokenised once, without special tokens.
2. The first `eval.max_text_tokens` tokens are kept (the start of the file: deterministic, and the same
   for every run). None keeps all of them.
3. Windows of `eval.block_length` tokens start every `stride` tokens (default: `block_length`, i.e.
   non-overlapping blocks). In a block the first token has no context and is not scored; every other token
   is scored once. With a smaller stride, a window scores only the tokens no earlier window scored, so each
   of them sees at least `block_length - stride` tokens of context. A last window shorter than 2 tokens is
   dropped.

Each window is one example of the usual `HeldoutScore` (its per-example sums are per block), so the paired
statistics of the report treat blocks as they treat conversations.
"""

from __future__ import annotations

from pathlib import Path

from kallm.data import IGNORE_INDEX, TokenizedExample
from kallm.data.text import TextSet, is_text_file, load_training_data
from kallm.errors import KallmError

DOCUMENT_SEPARATOR = "\n\n"
_CHARS_PER_TOKEN = 8  # a generous bound: text is tokenised in growing prefixes, not as a whole


def is_text_set(path: Path) -> bool:
    """Whether a held-out file is plain text (scored per token) rather than chat (assistant tokens)."""
    return is_text_file(path)


def _token_ids(tokenizer, text: str, max_tokens: int | None) -> list[int]:
    """The first `max_tokens` token ids of `text` (all with None), tokenising only as much text as needed."""
    chars = len(text) if max_tokens is None else max(1, max_tokens * _CHARS_PER_TOKEN)
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        # a prefix cut mid-word may tokenise its last token differently: keep one token spare
        if chars >= len(text) or len(ids) > max_tokens:  # type: ignore[operator]
            return ids if max_tokens is None else ids[:max_tokens]
        chars *= 2


def text_windows(ids: list[int], block_length: int, stride: int | None = None) -> list[TokenizedExample]:
    """The scored windows of a token sequence (see the module docstring); `index` is the window's start."""
    stride = block_length if stride is None else stride
    if block_length < 2 or not 1 <= stride <= block_length:
        raise KallmError(f"text scoring needs block_length >= 2 and 1 <= stride <= block_length, got "
                         f"block_length={block_length}, stride={stride}")
    windows, scored_to = [], 1  # tokens before `scored_to` are scored already (token 0 never is)
    for start in range(0, len(ids), stride):
        window = tuple(ids[start: start + block_length])
        if len(window) < 2:
            break
        first = max(scored_to - start, 1)
        labels = tuple(IGNORE_INDEX if j < first else t for j, t in enumerate(window))
        windows.append(TokenizedExample(window, labels, start))
        scored_to = start + len(window)
        if scored_to >= len(ids):
            break
    return windows


def load_text_set(path: Path, tokenizer, block_length: int, max_tokens: int | None,
                  stride: int | None = None) -> list[TokenizedExample]:
    """A plain-text held-out file as scored windows."""
    data = load_training_data(path, on_bad_row="skip")
    if not isinstance(data, TextSet):
        raise KallmError(f"{path}: not a plain-text file (.txt, or .jsonl rows with a 'text' field)")
    windows = text_windows(_token_ids(tokenizer, DOCUMENT_SEPARATOR.join(data.texts), max_tokens),
                           block_length, stride)
    if not windows:
        raise KallmError(f"{path}: fewer than 2 tokens of text to score")
    return windows
