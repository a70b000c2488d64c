"""The typed records of an experiment folder: `RunRecord` (one line of results.jsonl) and the held-out
scores file (`runs/<run_id>/heldout.json`: stage -> set -> `HeldoutScore`).

The JSON layout is the one kallm has always written, so old folders read. Keys a record does not know
are kept in `extra` and written back as they were: other writers may add fields without this module
knowing them. Reading never fails on a missing field (it is None); only a record that is not a JSON
object is an error.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kallm.errors import KallmError
from kallm.io import read_json, read_jsonl, write_json_atomic


@dataclass
class HeldoutScore:
    """A model's NLL on one held-out set: pooled over tokens, and per conversation (for pairing)."""

    name: str
    keys: list[str] = field(default_factory=list)  # conversation content keys (TokenizedExample.key)
    nll_sums: list[float] = field(default_factory=list)  # summed NLL over each conversation's assistant tokens
    n_tokens: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys other writers added, kept on round trip

    @property
    def total_tokens(self) -> int:
        return sum(self.n_tokens)

    @property
    def nll(self) -> float:
        """Mean NLL per assistant token, pooled over the set (nats)."""
        if not self.total_tokens:
            raise KallmError(f"held-out set {self.name!r} has no assistant tokens to score")
        return math.fsum(self.nll_sums) / self.total_tokens

    def summary(self) -> dict[str, Any]:
        return {"nll": self.nll, "ppl": math.exp(self.nll), "n_conversations": len(self.keys),
                "n_tokens": self.total_tokens}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "keys": self.keys, "nll_sums": self.nll_sums, "n_tokens": self.n_tokens,
                **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeldoutScore:
        try:
            extra = {k: v for k, v in data.items() if k not in _HELDOUT_KEYS}
            return cls(str(data["name"]), list(data["keys"]), [float(x) for x in data["nll_sums"]],
                       [int(n) for n in data["n_tokens"]], extra)
        except (KeyError, TypeError, ValueError) as exc:
            raise KallmError(f"not a held-out score record (name, keys, nll_sums, n_tokens): {exc!r}") from None


_HELDOUT_KEYS = ("name", "keys", "nll_sums", "n_tokens")

HeldoutScores = dict[str, dict[str, HeldoutScore]]  # stage ('init', 'final') -> set name -> score


def heldout_scores_to_dict(scores: HeldoutScores) -> dict[str, Any]:
    return {stage: {name: s.to_dict() for name, s in by_set.items()} for stage, by_set in scores.items()}


def heldout_scores_from_dict(data: Any, where: str = "held-out scores") -> HeldoutScores:
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise KallmError(f"{where}: expected {{stage: {{set: scores}}}}, got {type(data).__name__}")
    try:
        return {str(stage): {str(name): HeldoutScore.from_dict(d) for name, d in by_set.items()}
                for stage, by_set in data.items()}
    except (KallmError, AttributeError) as exc:
        raise KallmError(f"{where}: {exc}") from None


def read_heldout_scores(path: Path) -> HeldoutScores:
    """A run's `heldout.json`; a missing file is no scores."""
    if not path.is_file():
        return {}
    return heldout_scores_from_dict(read_json(path, "held-out scores"), str(path))


def write_heldout_scores(path: Path, scores: HeldoutScores) -> None:
    write_json_atomic(path, heldout_scores_to_dict(scores))


@dataclass
class RunRecord:
    """One finished run of a grid, as results.jsonl holds it (every field may be missing: None)."""

    run_id: str | None = None
    variant: str | None = None  # the variant's name in the config
    spec: str | None = None  # its variant spec text
    kind: str | None = None  # a registered variant kind: baseline | linear | pruned | kan | ...
    init: str | None = None
    seed: int | None = None
    same_as: str | None = None
    curriculum: list[Any] | None = None
    distill: dict[str, Any] | None = None  # written for trained runs only (with `train`)
    train: dict[str, Any] | None = None  # TrainResult.to_dict() plus metrics_path; None: not trained
    heldout: dict[str, Any] | None = None  # {nll, ppl, n_conversations, n_tokens, set, sets}
    heldout_init: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    metric: str | None = None
    scores: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    config_hash: str | None = None
    versions: dict[str, Any] | None = None
    git_commit: str | None = None
    time: str | None = None
    device: str | None = None
    wall_s: float | None = None
    data: dict[str, Any] | None = None  # the data's composition: per source file, what trained, fitted, held out
    memory: dict[str, Any] | None = None  # the run's peak and remaining resident memory
    extra: dict[str, Any] = field(default_factory=dict)  # keys other writers added, kept on round trip

    def to_dict(self) -> dict[str, Any]:
        """The results.jsonl line: known keys in their order, then the extra ones. An untrained run has no
        `distill` and `train` keys (as kallm always wrote it)."""
        out = {name: getattr(self, name) for name in _RECORD_KEYS}
        if self.train is None and self.distill is None:
            del out["distill"], out["train"]
        for name in _LATER_KEYS:  # fields added after the first format: absent, not null, when unset
            if out[name] is None:
                del out[name]
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    @classmethod
    def from_dict(cls, data: Any, where: str = "result record") -> RunRecord:
        if not isinstance(data, dict):
            raise KallmError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {k: data.get(k) for k in _RECORD_KEYS}
        return cls(**known, extra={k: v for k, v in data.items() if k not in known})

    def get(self, dotted: str) -> Any:
        """`record.get("train.wall_s")`: the nested value, or None when any level is missing or null."""
        value: Any = self.to_dict()
        for part in dotted.split("."):
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value


_LATER_KEYS = ("data", "memory")
_RECORD_KEYS = tuple(f.name for f in dataclasses.fields(RunRecord) if f.name != "extra")


def read_run_records(path: Path) -> list[RunRecord]:
    """The records of a results.jsonl (none when it does not exist), in file order; a line cut off by an
    interrupted write is skipped with a warning."""
    return [RunRecord.from_dict(row, f"{path}: record {i + 1}")
            for i, row in enumerate(read_jsonl(path, skip_bad_lines=True))]
