"""Plain-text training data: distillation from the original model needs no chat structure.

`train.data` may name `.txt` files (each file one document) or `.jsonl` files whose rows have a `text`
field instead of `messages`. Documents are tokenised without a chat template and cut into windows of
`max_length` tokens; every token of a window is a target, so `kd_positions: assistant` and `all` select
the same positions, and `ce` on text is plain language modelling.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kallm.data.loading import BadRow, ConversationSet, load_conversations
from kallm.data.sampling import draw_sample
from kallm.data.tokenize import TokenizedExample, TokenizedSet
from kallm.errors import KallmError
from kallm.progress import progress_bar

log = logging.getLogger(__name__)

TEXT_SUFFIX = ".txt"


@dataclass
class TextSet:
    """Plain-text documents and where each came from (the text counterpart of a `ConversationSet`)."""

    texts: list[str]
    locations: list[str]
    bad_rows: list[BadRow] = field(default_factory=list)
    source: str = ""
    files: list[str] = field(default_factory=list)  # each document's file, when recorded

    def __len__(self) -> int:
        return len(self.texts)

    def item_files(self) -> list[str]:
        return self.files if len(self.files) == len(self) else [self.source] * len(self)

    def subset(self, indices: Sequence[int]) -> TextSet:
        files = self.item_files()
        return TextSet([self.texts[i] for i in indices], [self.locations[i] for i in indices], [], self.source,
                       [files[i] for i in indices])


def _first_row(path: Path) -> dict | None:
    """The first row of a JSON-lines file, or None when it has none that reads (the chat loader then says
    what is wrong with the file)."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    return row if isinstance(row, dict) else None
    except (UnicodeDecodeError, json.JSONDecodeError, OSError, RecursionError):  # deep nesting is hostile
        return None
    return None


def is_text_file(path: Path) -> bool:
    """A `.txt` file, or a `.jsonl` file whose first row has `text` and no `messages`."""
    if path.suffix == TEXT_SUFFIX:
        return True
    row = _first_row(path) if path.suffix == ".jsonl" else None
    return row is not None and "text" in row and "messages" not in row


_ANY_DATA = (TEXT_SUFFIX, ".jsonl", ".json", ".parquet")


def _text_files(sources: list[Path]) -> list[Path] | None:
    """All files of `sources` when they are all plain text, None when none is; mixed is an error."""
    files = []
    for src in sources:
        if src.is_dir():
            files += sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in _ANY_DATA)
        else:
            files.append(src)
    flags = [is_text_file(f) for f in files]
    if files and all(flags):
        return files
    if any(flags):
        mixed = [str(f) for f, flag in zip(files, flags) if flag][:2]
        raise KallmError(f"training data mixes plain text ({', '.join(mixed)}) with chat files; use one kind")
    return None


def _jsonl_text(line: str) -> str | None:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    text = row.get("text") if isinstance(row, dict) else None
    return text if isinstance(text, str) else None


def _read_documents(files: list[Path]) -> TextSet:
    out = TextSet([], [], [], ", ".join(str(f) for f in files))
    for path in files:
        if path.suffix == TEXT_SUFFIX:
            rows = [(str(path), path.read_text(encoding="utf-8"))]
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [(f"{path}:{i}", _jsonl_text(line)) for i, line in enumerate(lines, start=1) if line.strip()]
        for location, text in rows:
            if text is None:
                out.bad_rows.append(BadRow(location, "expected a JSON object with a 'text' string"))
            elif text.strip():
                out.texts.append(text)
                out.locations.append(location)
                out.files.append(str(path))
    return out


def load_training_data(source: str | Path | Sequence[str | Path], *, on_bad_row: str = "skip",
                       max_conversations: int | None = None, seed: int = 0,
                       mix: Mapping[str, float] | None = None) -> ConversationSet | TextSet:
    """Chat conversations (`load_conversations`), or plain-text documents when every local file is text.

    `max_conversations` (documents, for text) and `mix` draw a seeded sample stratified by file
    (kallm.data.sampling.draw_sample), never the first N in file order."""
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    local = [Path(str(s)).expanduser() for s in sources]
    files = _text_files(local) if local and all(p.exists() for p in local) else None
    if files is None:
        return load_conversations(source, on_bad_row=on_bad_row, max_conversations=max_conversations, seed=seed,
                                  mix=mix)
    texts = _read_documents(files)
    if texts.texts and (max_conversations is not None or mix):
        sample = texts.subset(draw_sample(texts.files, max_conversations, seed, mix))
        texts = TextSet(sample.texts, sample.locations, texts.bad_rows, texts.source, sample.files)
    if texts.bad_rows and on_bad_row == "error":
        raise KallmError(str(texts.bad_rows[0]))
    if not texts.texts:
        raise KallmError(f"no text in {texts.source}")
    if texts.bad_rows:
        log.warning("skipped %d rows without a 'text' string, first: %s", len(texts.bad_rows), texts.bad_rows[0])
    return texts


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int, *, progress: bool | None = None) -> TokenizedSet:
    """Each document as windows of `max_length` tokens (labels = the tokens); `index` is the document's."""
    examples = []
    for i, text in enumerate(progress_bar(texts, progress=progress, desc="tokenising", unit="doc")):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), max_length):
            window = tuple(ids[start: start + max_length])
            if len(window) >= 2:
                examples.append(TokenizedExample(window, window, i))
    if not examples:
        raise KallmError(f"no document has 2 or more tokens (max_length={max_length})")
    return TokenizedSet(examples, 0)
