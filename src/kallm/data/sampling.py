"""Representative samples of a data source: every cap on data draws across all of its files.

A folder of chat files read in file order and cut at N conversations holds only the first file(s)
(`gsm8k_train.jsonl` sorts before `hh_helpful.jsonl`), so a run would fit, train and be judged on one
source alone. Here a cap is a seeded random sample stratified by file: each file contributes in proportion
to its size (largest-remainder rounding, so every count is within 1 of its exact share), or in proportion
to explicit `mix` weights (`{file name or glob: weight}`). Each item keeps the file it came from.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kallm.errors import KallmError

log = logging.getLogger(__name__)


def source_name(file: str | Path) -> str:
    """The name a source file goes by in records, sets and tables: its file name without the extension."""
    return Path(str(file)).stem


def file_groups(files: Sequence[str]) -> dict[str, list[int]]:
    """Item indices by file, files in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        groups.setdefault(f, []).append(i)
    return groups


def allocate(weights: Mapping[str, float], n: int) -> dict[str, int]:
    """`n` split over keys in proportion to `weights`, by largest remainder (ties: key order)."""
    total = math.fsum(weights.values())
    if total <= 0:
        raise KallmError("cannot split a sample over sources whose weights sum to 0")
    quotas = {k: n * w / total for k, w in weights.items()}
    counts = {k: math.floor(q) for k, q in quotas.items()}
    order = sorted(quotas, key=lambda k: -(quotas[k] - counts[k]))  # sorted() is stable: ties keep key order
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _matches(pattern: str, file: str) -> bool:
    path = Path(file)
    return any(fnmatch.fnmatchcase(text, pattern) for text in (file, path.name, path.stem))


def mix_weights(groups: Mapping[str, Sequence[int]], mix: Mapping[str, float]) -> dict[str, float]:
    """Each file's weight under `mix`: a pattern's weight split over the files it matches by their size;
    files no pattern matches get 0 (left out)."""
    weights = {f: 0.0 for f in groups}
    claimed: dict[str, str] = {}
    for pattern, weight in mix.items():
        matched = [f for f in groups if _matches(pattern, f)]
        if not matched:
            names = ", ".join(Path(f).name for f in groups)
            raise KallmError(f"train.mix: {pattern!r} matches no data file; files: {names}")
        for f in matched:
            if f in claimed:
                raise KallmError(f"train.mix: {Path(f).name} is matched by both {claimed[f]!r} and {pattern!r}")
            claimed[f] = pattern
        size = sum(len(groups[f]) for f in matched)
        for f in matched:
            weights[f] = float(weight) * len(groups[f]) / size
    left_out = [Path(f).name for f, w in weights.items() if w == 0]
    if left_out:
        log.info("train.mix leaves out %s (no pattern matches)", ", ".join(left_out))
    return weights


def file_targets(files: Sequence[str], n: int | None, mix: Mapping[str, float] | None = None) -> dict[str, int]:
    """How many items each file contributes to a sample of `n` (None: all, or as many as `mix` allows)."""
    groups = file_groups(files)
    sizes = {f: len(idx) for f, idx in groups.items()}
    weights = mix_weights(groups, mix) if mix else {f: float(s) for f, s in sizes.items()}
    if n is None:
        if not mix:
            return sizes
        total = math.fsum(weights.values())  # the largest sample in which no file runs out
        n = min(math.floor(sizes[f] * total / w + 1e-9) for f, w in weights.items() if w > 0)
    counts = allocate(weights, min(n, len(files)) if not mix else n)
    for f, c in counts.items():
        if c > sizes[f]:
            log.warning("train.mix asks %d conversations of %s, which has %d; taking all of them",
                        c, Path(f).name, sizes[f])
            counts[f] = sizes[f]
    return counts


def draw_sample(files: Sequence[str], n: int | None, seed: int = 0,
                mix: Mapping[str, float] | None = None) -> list[int]:
    """Sorted indices of a seeded sample of `n` items, stratified by file (see the module docstring).

    Each file's items are drawn by its own generator (seeded from `seed` and the file's position), so the
    sample of one file does not depend on how many items another has."""
    if n is not None and n < 1:
        raise KallmError(f"a data sample needs n >= 1 (or unset for all), got {n}")
    targets = file_targets(files, n, mix)
    chosen: list[int] = []
    for k, (f, idx) in enumerate(file_groups(files).items()):
        take = targets.get(f, 0)
        if take >= len(idx):
            chosen += idx
        elif take:
            rng = np.random.default_rng([seed, k])
            chosen += [idx[j] for j in rng.choice(len(idx), size=take, replace=False).tolist()]
    return sorted(chosen)


def stratified_order(files: Sequence[str], seed: int = 0) -> list[int]:
    """All indices in an order whose every prefix is a stratified sample: each file's items shuffled
    (seeded), then interleaved so that after k items each file has its share of k to within 1.

    Used where data is cut at a token count rather than an item count (distillation's `tokens`)."""
    keyed = []
    for k, idx in enumerate(file_groups(files).values()):
        perm = np.random.default_rng([seed, k]).permutation(len(idx)).tolist()
        keyed += [((j + 0.5) / len(idx), k, idx[p]) for j, p in enumerate(perm)]
    return [i for _, _, i in sorted(keyed)]


def count_by_source(files: Sequence[str], indices: Sequence[int] | None = None,
                    tokens: Sequence[int] | None = None) -> dict[str, dict[str, Any]]:
    """`{source name: {"conversations": n, "tokens": t}}` of the items at `indices` (default all); `tokens`
    (aligned with `indices`) is left out of the counts when not given."""
    indices = range(len(files)) if indices is None else indices
    out: dict[str, dict[str, Any]] = {}
    for pos, i in enumerate(indices):
        row = out.setdefault(source_name(files[i]), {"conversations": 0, **({"tokens": 0} if tokens is not None else {})})
        row["conversations"] += 1
        if tokens is not None:
            row["tokens"] += int(tokens[pos])
    return out
