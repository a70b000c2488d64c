"""Loading chat conversations from the hub or local files, with row-level schema checks.

A conversation is `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}` with at
least one assistant turn (the schema of `HuggingFaceTB/smol-smoltalk`). Rows that break it are
counted and located (file and line) so a user can fix the data instead of guessing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kallm.data.sampling import draw_sample
from kallm.errors import KallmError
from kallm.folders.relative import path_in

log = logging.getLogger(__name__)

DEFAULT_DATASET = "HuggingFaceTB/smol-smoltalk"
ROLES = ("system", "user", "assistant")
ON_BAD_ROW = ("skip", "error")
_SUFFIXES = (".jsonl", ".json", ".parquet")

Message = dict[str, str]


@dataclass(frozen=True)
class BadRow:
    """Where a row breaking the schema is (`file:line`, or `dataset[row]`) and why it was rejected."""

    location: str
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass
class ConversationSet:
    """Usable conversations, where each came from (location, and source file: `files`, one per conversation
    when known), and the rows that were rejected."""

    conversations: list[list[Message]]
    locations: list[str]
    bad_rows: list[BadRow] = field(default_factory=list)
    source: str = ""
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.conversations)

    def item_files(self) -> list[str]:
        """The source file of each conversation (the set's source for all when not recorded per item)."""
        return self.files if len(self.files) == len(self) else [self.source] * len(self)

    def subset(self, indices: Sequence[int]) -> ConversationSet:
        files = self.item_files()
        return ConversationSet([self.conversations[i] for i in indices], [self.locations[i] for i in indices], [],
                               self.source, [files[i] for i in indices])


def check_row(row: Any) -> tuple[list[Message] | None, str]:
    """Return (messages, "") for a valid row, else (None, reason)."""
    if not isinstance(row, dict):
        return None, f"expected an object with a 'messages' list, got {type(row).__name__}"
    messages = row.get("messages")
    if not isinstance(messages, (list, tuple)) or not messages:
        return None, "missing or empty 'messages' list"
    out: list[Message] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return None, f"messages[{i}] is a {type(msg).__name__}, expected an object with role and content"
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            return None, f"messages[{i}].role is {role!r}; valid roles: {', '.join(ROLES)}"
        if not isinstance(content, str):
            return None, f"messages[{i}].content is {type(content).__name__}, expected a string"
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        return None, "no assistant turn (nothing to train on)"
    return out, ""


def _unreadable(path: Path, exc: Exception) -> KallmError:
    if isinstance(exc, UnicodeDecodeError):
        return KallmError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); is it a binary "
                          "file with a data file's name?")
    return KallmError(f"cannot read data file {path}: {getattr(exc, 'strerror', None) or exc}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise _unreadable(path, exc) from None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any, str]]:
    try:
        with open(path, encoding="utf-8") as fh:  # streamed: a local copy of a hub dataset can be large
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{path}:{lineno}", None, f"invalid JSON ({exc.msg} at column {exc.colno})"
                    continue
                except RecursionError:  # json recurses once per nesting level
                    yield f"{path}:{lineno}", None, "JSON nested too deeply"
                    continue
                yield f"{path}:{lineno}", row, ""
    except (UnicodeDecodeError, OSError) as exc:
        raise _unreadable(path, exc) from None


def _iter_json(path: Path) -> Iterator[tuple[str, Any, str]]:
    try:
        obj = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        # A .json file that is really JSON lines is common enough to accept.
        if exc.msg == "Extra data":
            yield from _iter_jsonl(path)
            return
        raise KallmError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise KallmError(f"{path}: JSON nested too deeply") from None
    rows = obj if isinstance(obj, list) else [obj]
    for i, row in enumerate(rows):
        yield f"{path}[{i}]", row, ""


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for unreadable files
        raise KallmError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}[row {i}]", row, ""


_READERS = {".jsonl": _iter_jsonl, ".json": _iter_json, ".parquet": _iter_parquet}


def _iter_hub(dataset_id: str, split: str) -> Iterator[tuple[str, Any, str]]:
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # offline, unknown id, missing split: all reported the same way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KallmError(
            f"could not load hub dataset {dataset_id!r} (split {split!r}): {first}; "
            f"pass a local .jsonl/.json/.parquet file or folder instead"
        ) from None
    for i, row in enumerate(ds):
        yield f"{dataset_id}[{split}][{i}]", row, ""


def data_files(path: Path) -> list[Path]:
    """The data files of a path: itself, or every .jsonl/.json/.parquet under a folder (sorted)."""
    if not path.is_file() and not path.is_dir():  # refused before it is opened: a FIFO blocks, a device never ends
        raise KallmError(f"data path {path}: not a regular file (nor a folder)")
    if path.is_file():
        if path.suffix not in _SUFFIXES:
            raise KallmError(f"{path}: unsupported data file type {path.suffix!r}; valid: {', '.join(_SUFFIXES)}")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
    if not files:
        raise KallmError(f"{path}: folder holds no {'/'.join(_SUFFIXES)} files")
    return files


_HUB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


def looks_local(source: str) -> bool:
    """A source that is not an existing path is still meant as one unless it reads as a hub id 'org/name'."""
    return source.endswith(_SUFFIXES) or not _HUB_ID.fullmatch(source)


def source_in(text: str, folder: Path) -> str | Path:
    """A data source written in a file in `folder`: a local path (made absolute against `folder`), or a hub
    dataset id as written."""
    local = path_in(text, folder)
    return local if local.exists() or looks_local(text) else text


def source_files(source: str | Path) -> list[Path] | None:
    """The data files of a local source (a file or a folder), None for a hub dataset id.

    A missing local path is a KallmError: it must not silently become a hub lookup.
    """
    path = Path(str(source)).expanduser()
    if path.exists():
        return data_files(path)
    if isinstance(source, Path) or looks_local(str(source)):
        raise KallmError(f"data path {str(source)!r} does not exist")
    return None


def load_conversations(
    source: str | Path | Sequence[str | Path] = DEFAULT_DATASET,
    *,
    split: str = "train",
    on_bad_row: str = "skip",
    max_conversations: int | None = None,
    seed: int = 0,
    mix: Mapping[str, float] | None = None,
) -> ConversationSet:
    """Load conversations from a hub dataset id, or local files/folders (one or several).

    `on_bad_row="skip"` drops rows that break the schema and logs one summary warning with the first
    locations; `"error"` raises on the first. Zero usable rows is always an error. `max_conversations`
    and `mix` draw a seeded sample stratified by file (kallm.data.sampling), never the first N in file order.
    """
    if on_bad_row not in ON_BAD_ROW:
        raise KallmError(f"on_bad_row={on_bad_row!r} is not valid; choose one of: {', '.join(ON_BAD_ROW)}")
    if max_conversations is not None and max_conversations < 1:
        raise KallmError(f"max_conversations must be >= 1 (or unset for all), got {max_conversations}")
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise KallmError("no data source given")
    iterators: list[tuple[str, Iterator[tuple[str, Any, str]]]] = []
    for src in sources:
        files = source_files(src)
        if files is None:
            iterators.append((str(src), _iter_hub(str(src), split)))
        else:
            iterators.extend((str(f), _READERS[f.suffix](f)) for f in files)

    out = ConversationSet([], [], [], ", ".join(str(s) for s in sources))
    for name, it in iterators:  # all of every file: a sample is drawn across them below
        for location, row, parse_error in it:
            messages, reason = (None, parse_error) if parse_error else check_row(row)
            if messages is None:
                if on_bad_row == "error":
                    raise KallmError(f"{location}: {reason}")
                out.bad_rows.append(BadRow(location, reason))
                continue
            out.conversations.append(messages)
            out.locations.append(location)
            out.files.append(name)
    if out.conversations and (max_conversations is not None or mix):
        sample = out.subset(draw_sample(out.files, max_conversations, seed, mix))
        out = ConversationSet(sample.conversations, sample.locations, out.bad_rows, out.source, sample.files)
    if out.bad_rows:
        shown = "; ".join(str(b) for b in out.bad_rows[:3])
        more = f" (and {len(out.bad_rows) - 3} more)" if len(out.bad_rows) > 3 else ""
        log.warning("skipped %d rows that break the chat schema: %s%s", len(out.bad_rows), shown, more)
    if not out.conversations:
        why = f"; {len(out.bad_rows)} rows broke the schema, first: {out.bad_rows[0]}" if out.bad_rows else ""
        raise KallmError(f"no usable conversations in {out.source}{why}")
    return out


def split_indices(n: int, *, val_size: int | None = None, val_fraction: float = 0.0,
                  seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic (train, validation) index split: the same seed and n give the same split."""
    n_val = val_size if val_size is not None else int(round(n * val_fraction))
    if n_val < 0 or n_val >= n:
        raise KallmError(
            f"validation split of {n_val} conversations leaves no training data out of {n}; "
            f"lower val_size/val_fraction"
        )
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])
