"""Progress bars that users (and tests) can switch off: KALLM_NO_PROGRESS=1 or progress=False."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_enabled(progress: bool | None = None) -> bool:
    if progress is not None:
        return progress
    if os.environ.get("KALLM_NO_PROGRESS", "") not in ("", "0"):
        return False
    return sys.stderr.isatty() or os.environ.get("KALLM_PROGRESS", "") not in ("", "0")


def progress_bar(iterable: Iterable[Any] | None = None, *, progress: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (rate and ETA included) that is disabled when progress is off."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, disable=not progress_enabled(progress), **kwargs)
