"""Progress bars (rate and ETA) that callers switch on or off explicitly with `progress=`.

`progress=None` means "when a person is watching": on when stderr is a terminal. The CLI passes
`progress=False` for `-q`; library code never reads a process-wide switch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_enabled(progress: bool | None = None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def progress_bar(iterable: Iterable[Any] | None = None, *, progress: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (rate and ETA included) that is disabled when progress is off."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, disable=not progress_enabled(progress), **kwargs)
