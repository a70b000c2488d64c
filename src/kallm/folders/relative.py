"""The one rule for paths written in a file: relative to the folder of the file that sets them."""

from __future__ import annotations

import os
from pathlib import Path


def path_in(text: str | Path, folder: Path) -> Path:
    """`text` (`~` expanded) as a normalised path: absolute as written, else relative to `folder`.

    A config file's paths do not depend on the working directory, only on where the file is."""
    path = Path(text).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else folder / path))
