"""Atomic file output: results and checkpoints are never half-written.

Everything is written to a temporary file in the destination folder, flushed, fsynced and renamed
over the target, so a crash (even SIGKILL) leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kallm.errors import KallmError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike[str]):
    """Yield a temporary path next to `target`; on success it is renamed over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_with_atomic(target: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Run `writer(tmp_path)` (e.g. safetensors.torch.save_file) and rename the result into place."""
    with atomic_path(target) as tmp:
        writer(tmp)


def append_jsonl_atomic(target: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    """Append records by rewriting the file atomically (results files are small; safety beats speed)."""
    target = Path(target)
    old = target.read_text(encoding="utf-8") if target.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    new = "".join(json.dumps(r, default=str) + "\n" for r in records)
    write_text_atomic(target, old + new)


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file is a KallmError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KallmError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KallmError(f"cannot read {what} {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KallmError(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (none if it does not exist); a bad line is a KallmError naming it."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise KallmError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return rows


def replace_dir_atomic(target: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Build a whole folder in a temporary sibling, then swap it in (old copy removed only after)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        writer(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
