"""The folders kallm writes, as a typed contract: their file names and the records they hold.

| module | concept |
| --- | --- |
| `layout` | every file and folder name, with path helpers (`ExperimentFolder(root).run(run_id).heldout`) |
| `records` | `RunRecord` (a results.jsonl line), `HeldoutScore` and the held-out scores file |
| `relative` | `path_in`: a path written in a file is relative to that file's folder |

Low level: it imports only kallm.errors, kallm.io and the standard library, so every writer and reader
can use it.
"""

from __future__ import annotations

from kallm.folders.layout import (
    EvalFolder,
    ExperimentFolder,
    GridRunFolder,
    RetrofitFolder,
    TrainingFolder,
    cache_file,
)
from kallm.folders.records import HeldoutScore, RunRecord, read_heldout_scores, write_heldout_scores
from kallm.folders.relative import path_in

__all__ = ["EvalFolder", "ExperimentFolder", "GridRunFolder", "HeldoutScore", "RetrofitFolder", "RunRecord",
           "TrainingFolder", "cache_file", "path_in", "read_heldout_scores", "write_heldout_scores"]
