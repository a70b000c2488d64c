"""Exclusive locks on files, so that processes sharing a folder never work on the same thing at once.

`fcntl.flock` locks belong to the open file and the kernel releases them when the process dies, so a
killed process never leaves a lock that blocks the next one (no stale-lock takeover to get wrong). The
holder writes its pid into the lock file, only to say who holds it. Lock files are never deleted:
removing one while another process waits on it would let two processes hold "the" lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from kallm.errors import KallmError


class Busy(KallmError):
    """The lock is held by another process (`holder`: its pid as it wrote it, or '?')."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by another process (pid {holder})")
        self.path, self.holder = path, holder


def lock_holder(path: str | os.PathLike[str]) -> str:
    """The pid written into lock file `path` by its last holder ('?' when unknown)."""
    try:
        return Path(path).read_text(encoding="utf-8").strip() or "?"
    except (OSError, UnicodeDecodeError):
        return "?"


@contextlib.contextmanager
def held(path: str | os.PathLike[str], wait: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on file `path` (created if needed); `wait=False` raises `Busy` at once when
    another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(path, lock_holder(path)) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def shared(path: str | os.PathLike[str]) -> Iterator[bool]:
    """Hold a shared lock on file `path` (created if needed); yields whether this process was its only holder
    when it came (it could take the lock exclusively first).

    Who joins must decide under another, exclusive lock (`held`) whether it may join: between the exclusive
    try and the shared lock the kernel holds neither for this process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        try:
            fcntl.flock(fh, fcntl.LOCK_SH)
            yield alone
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
