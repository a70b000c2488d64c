"""Atomic file output: results and checkpoints are never half-written.

Everything is written to a temporary file in the destination folder, flushed, fsynced and renamed
over the target, so a crash (even SIGKILL) leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kallm.errors import KallmError

log = logging.getLogger(__name__)

# The file kallm writes into every output folder it creates: `--overwrite` replaces only a folder holding it
# (one kallm wrote), never a model, data or results folder of the user's.
OUTPUT_MARKER = ".kallm-output"
# Temporary names made here: "." + target name + "." + tempfile's 8 random characters + ".tmp".
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
# Temporary files older than this process cannot belong to it (see `remove_stale_temps`).
_STARTED = time.time()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def share_like_umask(path: Path) -> None:
    """Give `path` (and, for a folder, everything in it) the mode a plain create would: 0666/0777 & ~umask.

    mkstemp/mkdtemp create 0600/0700 and safetensors writes 0600, but results, retrofits and caches are
    meant to be shared like any other file the user creates.
    """
    umask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove this module's temporary files and folders in `folder` left by a killed process.

    Only names of kallm's own pattern (`.<name>.XXXXXXXX.tmp`) older than this process's start are removed:
    the caller must own the folder (hold its lock), so that no live writer's temporary file is touched.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not _TEMP_NAME.match(p.name):
            continue
        try:
            if p.lstat().st_mtime >= _STARTED:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            continue
        removed.append(p)
        log.info("removed %s, left half-written by an interrupted process", p)
    return removed


def check_output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Fail before any work when folder `path` could not be created or written (nothing is created here)."""
    if "\0" in str(path):
        raise KallmError(f"cannot use {str(path)!r} as {what}: the path contains a NUL character")
    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise KallmError(f"cannot use {path} as {what}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise KallmError(f"cannot write {what} {path}: {probe} is not writable")
    return path


def is_new_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` does not exist yet or is empty: only such a folder becomes kallm's (`mark_output`)."""
    folder = Path(folder)
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def mark_output(folder: str | os.PathLike[str], what: str) -> None:
    """Record that kallm wrote `folder` (see `OUTPUT_MARKER`); `what` says which command's output it is.
    Call it only for a folder that `is_new_folder` found new: a folder of the user's never becomes kallm's."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / OUTPUT_MARKER).is_file():
        write_text_atomic(folder / OUTPUT_MARKER, f"{what}\n")


def is_kallm_output(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / OUTPUT_MARKER).is_file()


def overlaps(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether one of two paths is the other or lies inside it (symbolic links and `..` resolved)."""
    ra, rb = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    return ra == rb or ra in rb.parents or rb in ra.parents


def check_not_source(out: str | os.PathLike[str], sources: Iterable[tuple[str, str | os.PathLike[str] | None]],
                     what: str) -> None:
    """Refuse an output path that is, holds or lies inside one of `sources` ((description, path) pairs of what
    the command reads): writing there would destroy the input."""
    for description, source in sources:
        if source is not None and Path(source).expanduser().exists() and overlaps(out, source):
            raise KallmError(f"{what} {out} would overwrite {description} {source}, which this command reads; "
                             "choose another folder")


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


def _write_error(exc: BaseException) -> bool:
    """An error of the file system (disk full, quota, read-only, I/O), from the OS or from safetensors'
    writer (whose SafetensorError wraps the OS error)."""
    safetensors = sys.modules.get("safetensors")
    return isinstance(exc, OSError) or (safetensors is not None and isinstance(exc, safetensors.SafetensorError))


@contextmanager
def writing(target: Path) -> Iterator[None]:
    """Turn a file-system error while writing `target` into one line naming it (the old file is intact)."""
    try:
        yield
    except Exception as exc:
        if not _write_error(exc):
            raise
        text = str(exc).strip()
        reason = getattr(exc, "strerror", None) or (text.splitlines()[0] if text else type(exc).__name__)
        raise KallmError(f"cannot write {target}: {reason} (the file was left as it was)") from None


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it is renamed over `target`. A file-system error
    (disk full...) is a KallmError naming `target`, which keeps its last complete version."""
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            share_like_umask(tmp_path)  # after the writer: some (safetensors) recreate the file 0600
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
    except RecursionError:
        raise KallmError(f"{what} {path} is nested too deeply to read") from None


def read_jsonl(path: str | os.PathLike[str], skip_bad_lines: bool = False) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (none if it does not exist).

    A line that is not a JSON object is a KallmError naming file and line, or, with `skip_bad_lines`
    (books that a cut-off write must not make unreadable), skipped with a warning naming them.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KallmError(f"cannot read {path}: {exc}") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problem = None if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc.msg})"
        except RecursionError:  # json recurses once per nesting level: '[[[[...' of any depth is hostile
            problem = "JSON nested too deeply"
        if problem is None:
            rows.append(row)
        elif skip_bad_lines:
            log.warning("%s:%d: skipped a line that is %s (cut off by an interrupted write?)", path, lineno, problem)
        else:
            raise KallmError(f"{path}:{lineno}: {problem}")
    return rows


def read_tensors(path: str | os.PathLike[str], what: str = "tensor file") -> dict[str, Any]:
    """All tensors of a safetensors file; a missing, truncated or damaged file is a KallmError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise KallmError(f"{what} {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise KallmError(f"{what} {path} is damaged: {exc}") from None


def replace_dir_atomic(target: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Build a whole folder in a temporary sibling, then swap it in (old copy removed only after)."""
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            writer(tmp)
            share_like_umask(tmp)
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
