"""Reading an experiment's results (`RunRecord`s) and summarising them per variant; missing fields become
None, never errors."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kallm.errors import KallmError
from kallm.folders.layout import RESULTS, ExperimentFolder
from kallm.folders.records import RunRecord, read_run_records
from kallm.report.stats import PairKey, mean_std
from kallm.retrofitting.variant import VariantSpec, parse_variant

logger = logging.getLogger(__name__)

RESULTS_FILE = RESULTS


def get(record: RunRecord | dict[str, Any], dotted: str) -> Any:
    """`get(r, "train.wall_s")`: the nested value, or None when any level is missing or null."""
    if isinstance(record, RunRecord):
        return record.get(dotted)
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def load_results(run_dir: str | Path) -> list[RunRecord]:
    """The records of experiment folder `run_dir`; a run recorded twice (a rerun) keeps its last record."""
    path = ExperimentFolder(Path(run_dir)).results
    if not path.is_file():
        raise KallmError(f"no {RESULTS_FILE} in {run_dir}: run the experiment first (kallm run CONFIG)")
    rows = read_run_records(path)  # a line cut off by an interrupted write is skipped, and said
    by_id: dict[str, RunRecord] = {}
    for i, row in enumerate(rows):
        if not row.variant:
            logger.warning("%s: record %d has no 'variant'; skipped", path, i + 1)
            continue
        run_id = row.run_id or f"{row.variant}.seed{row.seed}"
        by_id.pop(run_id, None)  # re-insert so the order follows the latest write
        by_id[run_id] = row
    if len(by_id) < len(rows):
        logger.info("%s: %d records, %d distinct runs (later records replace earlier ones)",
                    path, len(rows), len(by_id))
    return list(by_id.values())


@dataclass
class VariantSummary:
    """Everything the report says about one variant, aggregated over its seeds."""

    name: str
    spec: str | None
    init: str | None
    records: list[RunRecord] = field(default_factory=list)

    @property
    def variant(self) -> VariantSpec | None:
        """The recorded spec text as a typed variant (results files are an edge: text is parsed here)."""
        if not self.spec:
            return None
        try:
            return parse_variant(self.spec)
        except KallmError:
            return None

    @property
    def same_as(self) -> str | None:
        """The variant this one was sized to (a parameter-matched control), if any."""
        value = self.first("same_as")
        return str(value) if value else None

    @property
    def is_linear_restart(self) -> bool:
        """The study's linear restart: a full-size fresh MLP trained from its random init (not a fitted one,
        not a control sized to another variant, not the original's own FFNs trained further)."""
        v = self.variant
        return (v is not None and v.kind == "linear" and v.budget is None and v.hidden is None
                and self.same_as is None and self.init in (None, "random"))

    @property
    def is_untouched(self) -> bool:
        """The original model itself (the baseline variant: nothing replaced, nothing trained)."""
        return self.variant is not None and not self.variant.trained

    @property
    def is_tuned_original(self) -> bool:
        """The original's own FFNs trained by the recipe (`init: original`): a reference, not a retrofit."""
        return self.init == "original"

    def heldout(self, stage: str = "heldout") -> tuple[float | None, float | None, int]:
        """(mean, std, n) over runs of the held-out NLL (`heldout` after training, `heldout_init` before)."""
        return mean_std(self.numbers(f"{stage}.nll"))

    @property
    def metric(self) -> str | None:
        metrics = {r.metric for r in self.records if r.metric}
        return ", ".join(sorted(metrics)) if metrics else None

    @property
    def accuracies(self) -> list[float]:
        values = (number(get(r, "scores.average")) for r in self.records)
        return [v for v in values if v is not None]

    @property
    def accuracy(self) -> tuple[float | None, float | None, int]:
        """(mean, std, n) of the headline accuracy over this variant's runs."""
        return mean_std(self.accuracies)

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.records]

    def task_scores(self) -> dict[PairKey, float]:
        """(seed, task) -> accuracy, for the paired comparison."""
        out: dict[PairKey, float] = {}
        for r in self.records:
            per_task = get(r, "scores.per_task") or {}
            for task, value in per_task.items():
                if number(value) is not None:
                    out[(r.seed, task)] = float(value)
        return out

    def per_task(self) -> dict[str, tuple[float | None, float | None, int]]:
        """task -> (mean, std, n) over runs."""
        values: dict[str, list[float]] = {}
        for (_, task), value in self.task_scores().items():
            values.setdefault(task, []).append(value)
        return {task: mean_std(v) for task, v in values.items()}

    def first(self, dotted: str) -> Any:
        """The first non-null value of a field (parameter counts are the same for every seed)."""
        for r in self.records:
            value = get(r, dotted)
            if value is not None:
                return value
        return None

    def numbers(self, dotted: str) -> list[float]:
        values = (number(get(r, dotted)) for r in self.records)
        return [v for v in values if v is not None]

    @property
    def peak_memory(self) -> float | None:
        values = self.numbers("train.peak_memory_bytes")
        return max(values) if values else None

    @property
    def train_time(self) -> tuple[float | None, float | None, int]:
        return mean_std(self.numbers("train.wall_s"))


def summarise(records: list[RunRecord]) -> list[VariantSummary]:
    """One summary per variant, in the order variants first appear in the results."""
    summaries: dict[str, VariantSummary] = {}
    for r in records:
        name = str(r.variant)
        if name not in summaries:
            summaries[name] = VariantSummary(name, r.spec, r.init)
        summaries[name].records.append(r)
    return list(summaries.values())


def reference_variant(summaries: list[VariantSummary]) -> VariantSummary | None:
    """What the others are compared with: the linear restart if there is one, else the baseline."""
    scored = [s for s in summaries if s.task_scores()]
    restart = next((s for s in scored if s.is_linear_restart), None)
    return restart or next((s for s in scored if s.is_untouched), None)


def all_tasks(summaries: list[VariantSummary]) -> list[str]:
    return sorted({task for s in summaries for (_, task) in s.task_scores()})


def distinct(records: list[RunRecord], dotted: str) -> list[Any]:
    """The distinct values of a field, in order of appearance (dicts compared by content)."""
    seen: list[str] = []
    out: list[Any] = []
    for r in records:
        value = get(r, dotted)
        if value is None:
            continue
        key = json.dumps(value, sort_keys=True, default=str)
        if key not in seen:
            seen.append(key)
            out.append(value)
    return out
