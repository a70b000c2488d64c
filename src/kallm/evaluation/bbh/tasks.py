"""BIG-Bench Hard tasks: names, answer groups, and loading from the official folder layout or the hub.

The official release (and `../shared/data/bbh`) holds `TASK.json` ({"canary", "examples": [{"input",
"target"}]}) and `cot-prompts/TASK.txt` (canary, `-----`, the task description, then three `Q: ...\\nA: ...`
exemplars). lm-eval's task definitions were generated from exactly these prompt files, so the description and
exemplars are parsed here rather than copied into kallm.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from kallm.errors import KallmError
from kallm.registry import Registry, unknown_name_message

log = logging.getLogger(__name__)

DEFAULT_HUB_ID = "lukaemon/bbh"
HUB_PREFIX = "hf:"

MULTIPLE_CHOICE = "multiple_choice"
BINARY = "binary"
FREE_FORM = "free_form"

_MC_TASKS = (
    "date_understanding", "disambiguation_qa", "geometric_shapes", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects", "logical_deduction_three_objects",
    "movie_recommendation", "penguins_in_a_table", "reasoning_about_colored_objects", "ruin_names",
    "salient_translation_error_detection", "snarks", "temporal_sequences",
    "tracking_shuffled_objects_five_objects", "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
)
# The answer set of each binary task, spelled as in its targets (sports_understanding is lower case).
_BINARY_TASKS = {
    "boolean_expressions": ("True", "False"),
    "causal_judgement": ("Yes", "No"),
    "formal_fallacies": ("valid", "invalid"),
    "navigate": ("Yes", "No"),
    "sports_understanding": ("yes", "no"),
    "web_of_lies": ("Yes", "No"),
}
_FREE_FORM_TASKS = ("dyck_languages", "multistep_arithmetic_two", "object_counting", "word_sorting")


@dataclass(frozen=True)
class TaskSpec:
    """What kallm knows about a task independently of where its data lives."""

    name: str
    group: str
    answers: tuple[str, ...] = ()  # fixed answer set of binary tasks


TASKS: Registry[TaskSpec] = Registry("BBH task")
for _name in _MC_TASKS:
    TASKS.add(_name, TaskSpec(_name, MULTIPLE_CHOICE))
for _name, _answers in _BINARY_TASKS.items():
    TASKS.add(_name, TaskSpec(_name, BINARY, _answers))
for _name in _FREE_FORM_TASKS:
    TASKS.add(_name, TaskSpec(_name, FREE_FORM))

GROUPS: dict[str, tuple[str, ...]] = {
    MULTIPLE_CHOICE: _MC_TASKS,
    BINARY: tuple(_BINARY_TASKS),
    FREE_FORM: _FREE_FORM_TASKS,
}
_GROUP_ALIASES = {"multiple-choice": MULTIPLE_CHOICE, "free-form": FREE_FORM}


@dataclass(frozen=True)
class Exemplar:
    """One few-shot exemplar of a cot-prompts file: the question, its reasoning, and its final answer."""

    input: str
    reasoning: str  # the text after "Let's think step by step.", ending "So the answer is X."
    answer: str  # X, as lm-eval's generator extracts it: (?<=answer is )(.*)(?=.)


@dataclass(frozen=True)
class Task:
    name: str
    group: str
    description: str
    exemplars: tuple[Exemplar, ...]
    examples: tuple[dict[str, str], ...] = field(repr=False)
    source: str = ""

    @property
    def spec(self) -> TaskSpec:
        return TASKS.get(self.name)


_ANSWER_RE = re.compile(r"(?<=answer is )(.*)(?=.)")
_COT_START = "Let's think step by step."


def parse_cot_prompts(text: str, source: str = "<text>") -> tuple[str, tuple[Exemplar, ...]]:
    """Split a cot-prompts file into its description and exemplars, as lm-eval's config generator did."""
    body = text.split("\n-----\n")[-1]
    description, *shots = body.split("\n\nQ:")
    description = description.strip()
    if not description or not shots:
        raise KallmError(
            f"malformed cot-prompts file {source}: expected a description line and 'Q: ...' exemplars "
            "separated by blank lines after the '-----' line"
        )
    exemplars = []
    for i, shot in enumerate(shots):
        question, sep, answer_text = shot.partition("\nA:")
        match = _ANSWER_RE.search(answer_text)
        if not sep or match is None or _COT_START not in answer_text:
            raise KallmError(
                f"malformed exemplar {i + 1} in {source}: expected 'Q: ...', then 'A: {_COT_START} ... "
                "So the answer is X.'"
            )
        reasoning = answer_text.split(_COT_START, 1)[1].strip()
        exemplars.append(Exemplar(question.strip(), reasoning, match.group(0)))
    return description, tuple(exemplars)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> str | Path:
    """A local folder (Path) or a hub id (str): the argument, else $KALLM_BBH_DIR, else ../shared/data/bbh."""
    if data_dir is None:
        env = os.environ.get("KALLM_BBH_DIR")
        if env:
            data_dir = env
        else:
            default = Path.cwd().parent / "shared" / "data" / "bbh"
            if default.is_dir():
                return default
            raise KallmError(
                f"no BBH data folder given and none found at {default}; pass a folder in the official BBH "
                f"layout (data_dir= or --data-dir), set KALLM_BBH_DIR, or use the hub with "
                f"'{HUB_PREFIX}{DEFAULT_HUB_ID}'"
            )
    text = str(data_dir)
    if text.startswith(HUB_PREFIX) or text == DEFAULT_HUB_ID:
        return text.removeprefix(HUB_PREFIX)
    path = Path(text).expanduser()
    if not path.is_dir():
        raise KallmError(
            f"BBH data folder {text!r} does not exist; expected a folder holding TASK.json files and "
            f"cot-prompts/ (or a hub id such as '{HUB_PREFIX}{DEFAULT_HUB_ID}')"
        )
    return path


def list_tasks(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Known task names; with a local folder, only those whose data file is present."""
    if data_dir is None and not os.environ.get("KALLM_BBH_DIR"):
        return sorted(TASKS.names())
    where = resolve_data_dir(data_dir)
    if isinstance(where, str):
        return sorted(TASKS.names())
    return sorted(n for n in TASKS.names() if (where / f"{n}.json").is_file())


def select_tasks(tasks: str | list[str] | tuple[str, ...] = "all") -> list[str]:
    """Expand 'all', group names and comma-separated lists into known task names (sorted, no duplicates)."""
    items = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    items = [t for t in items if t]
    if not items:
        raise KallmError("no BBH tasks selected; give task names, a group "
                         f"({', '.join(GROUPS)}) or 'all'")
    chosen: set[str] = set()
    for item in items:
        key = _GROUP_ALIASES.get(item, item)
        if key == "all":
            chosen.update(TASKS.names())
        elif key in GROUPS:
            chosen.update(GROUPS[key])
        elif item in TASKS:
            chosen.add(item)
        else:
            valid = [*TASKS.names(), *GROUPS, "all"]
            raise KallmError(unknown_name_message("BBH task", item, valid))
    return sorted(chosen)


def _read_examples(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise KallmError(f"BBH task file {path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise KallmError(f"malformed BBH task file {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise KallmError(f"malformed BBH task file {path}: JSON nested too deeply") from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list) or not examples:
        raise KallmError(f"malformed BBH task file {path}: expected {{\"examples\": [{{\"input\", \"target\"}}, ...]}}")
    for i, ex in enumerate(examples):
        if not (isinstance(ex, dict) and isinstance(ex.get("input"), str) and isinstance(ex.get("target"), str)):
            raise KallmError(f"malformed BBH task file {path}: example {i} needs string fields 'input' and 'target'")
    return [{"input": ex["input"], "target": ex["target"]} for ex in examples]


def _read_prompts(prompts_dir: Path, name: str) -> tuple[str, tuple[Exemplar, ...]]:
    path = prompts_dir / f"{name}.txt"
    if not path.is_file():
        raise KallmError(f"BBH prompt file {path} is missing (the official release has cot-prompts/{name}.txt)")
    return parse_cot_prompts(path.read_text(encoding="utf-8"), str(path))


def _hub_examples(hub_id: str, name: str) -> list[dict[str, str]]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise KallmError("loading BBH from the hub needs the 'datasets' package") from exc
    try:
        rows = datasets.load_dataset(hub_id, name, split="test")
    except Exception as exc:  # network, auth, unknown config: all become one clear line
        raise KallmError(f"could not load BBH task {name!r} from the hub dataset {hub_id!r}: {exc}") from exc
    return [{"input": r["input"], "target": r["target"]} for r in rows]


def load_task(name: str, data_dir: str | os.PathLike[str] | None = None, limit: int | None = None) -> Task:
    """Load one task: its first `limit` examples (as lm-eval's --limit) and its description and exemplars.

    From the hub only the examples are available; the prompts then come from the local default folder.
    """
    spec = TASKS.get(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise KallmError(f"limit must be a positive integer (examples per task), or unset for all; got {limit!r}")
    where = resolve_data_dir(data_dir)
    if isinstance(where, str):
        examples = _hub_examples(where, name)
        local = os.environ.get("KALLM_BBH_DIR") or Path.cwd().parent / "shared" / "data" / "bbh"
        prompts_dir = Path(local) / "cot-prompts"
        if not prompts_dir.is_dir():
            raise KallmError(
                f"the hub dataset {where!r} has no prompt files; BBH prompts need a local cot-prompts/ folder "
                "(set KALLM_BBH_DIR to the official release)"
            )
        source = f"{HUB_PREFIX}{where}"
    else:
        examples = _read_examples(where / f"{name}.json")
        prompts_dir = where / "cot-prompts"
        source = str(where)
    description, exemplars = _read_prompts(prompts_dir, name)
    if limit is not None:
        examples = examples[:limit]
    return Task(name, spec.group, description, exemplars, tuple(examples), source)


def load_tasks(
    tasks: str | list[str] | tuple[str, ...] = "all",
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> list[Task]:
    return [load_task(name, data_dir, limit) for name in select_tasks(tasks)]
