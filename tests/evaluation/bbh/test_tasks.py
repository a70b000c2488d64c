"""Task selection and loading from the official folder layout; clear errors for bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from kallm.errors import KallmError
from kallm.evaluation.bbh import GROUPS, list_tasks, load_task, load_tasks, select_tasks
from kallm.evaluation.bbh.tasks import parse_cot_prompts, resolve_data_dir

PROMPT = """CANARY LINE
-----
Decide a thing.

Q: Is one odd?
A: Let's think step by step. One is odd. So the answer is Yes.

Q: Is two odd?
Options:
(A) yes
(B) no
A: Let's think step by step.
Two is even. So the answer is (B)."""


def write_task(folder, name="navigate", examples=None, prompt=PROMPT):
    (folder / "cot-prompts").mkdir(parents=True, exist_ok=True)
    examples = examples if examples is not None else [{"input": f"q{i}", "target": "Yes"} for i in range(5)]
    (folder / f"{name}.json").write_text(json.dumps({"canary": "c", "examples": examples}))
    (folder / "cot-prompts" / f"{name}.txt").write_text(prompt)
    return folder


def test_all_27_tasks_in_three_groups(shared_data):
    names = list_tasks(shared_data / "bbh")
    assert len(names) == 27
    assert sorted(n for g in GROUPS.values() for n in g) == names
    assert (len(GROUPS["multiple_choice"]), len(GROUPS["binary"]), len(GROUPS["free_form"])) == (17, 6, 4)


def test_select_by_name_group_and_all():
    assert select_tasks("all") == sorted(n for g in GROUPS.values() for n in g)
    assert select_tasks("binary") == sorted(GROUPS["binary"])
    assert select_tasks("free-form,navigate") == sorted([*GROUPS["free_form"], "navigate"])
    assert select_tasks(["snarks", "snarks"]) == ["snarks"]


def test_unknown_task_suggests():
    with pytest.raises(KallmError, match="unknown BBH task 'navigat'; did you mean 'navigate'"):
        select_tasks("navigat,snarks")


def test_parse_cot_prompts():
    description, shots = parse_cot_prompts(PROMPT)
    assert description == "Decide a thing."
    assert [s.input for s in shots] == ["Is one odd?", "Is two odd?\nOptions:\n(A) yes\n(B) no"]
    assert [s.answer for s in shots] == ["Yes", "(B)"]
    assert shots[1].reasoning == "Two is even. So the answer is (B)."


def test_load_local_with_limit(tmp_path):
    task = load_task("navigate", write_task(tmp_path), limit=3)
    assert [e["input"] for e in task.examples] == ["q0", "q1", "q2"]
    assert task.group == "binary" and task.description == "Decide a thing." and len(task.exemplars) == 2


def test_load_real_data_first_n(shared_data):
    tasks = load_tasks("binary", shared_data / "bbh", limit=2)
    assert [t.name for t in tasks] == sorted(GROUPS["binary"])
    raw = json.loads((shared_data / "bbh" / "web_of_lies.json").read_text())["examples"][:2]
    assert list(tasks[-1].examples) == raw


@pytest.mark.parametrize("limit", [0, -3, 1.5, True])
def test_bad_limit(tmp_path, limit):
    with pytest.raises(KallmError, match="limit must be a positive integer"):
        load_task("navigate", write_task(tmp_path), limit=limit)


def test_missing_data_folder(tmp_path):
    with pytest.raises(KallmError, match="does not exist"):
        load_task("navigate", tmp_path / "nope")


def test_missing_task_file(tmp_path):
    write_task(tmp_path)
    with pytest.raises(KallmError, match="snarks.json is missing"):
        load_task("snarks", tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"examples": []}', "expected"),
        ('{"examples": [{"input": "x"}]}', "example 0 needs string fields"),
    ],
)
def test_malformed_task_file(tmp_path, content, message):
    write_task(tmp_path)
    (tmp_path / "navigate.json").write_text(content)
    with pytest.raises(KallmError, match=message):
        load_task("navigate", tmp_path)


def test_malformed_prompt_file(tmp_path):
    write_task(tmp_path, prompt="CANARY\n-----\nJust a description without exemplars.")
    with pytest.raises(KallmError, match="malformed cot-prompts file"):
        load_task("navigate", tmp_path)
    write_task(tmp_path, prompt="C\n-----\nDesc.\n\nQ: x\nA: no reasoning here")
    with pytest.raises(KallmError, match="malformed exemplar 1"):
        load_task("navigate", tmp_path)


def test_data_dir_from_environment(tmp_path, monkeypatch, shared_data):
    folder = tmp_path / "bbh"
    shutil.copytree(shared_data / "bbh" / "cot-prompts", folder / "cot-prompts")
    shutil.copy(shared_data / "bbh" / "snarks.json", folder / "snarks.json")
    monkeypatch.setenv("KALLM_BBH_DIR", str(folder))
    assert resolve_data_dir() == folder
    assert list_tasks() == ["snarks"]


def test_no_data_folder_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("KALLM_BBH_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KallmError, match="no BBH data folder given"):
        resolve_data_dir()


def test_hub_ids_are_recognised():
    assert resolve_data_dir("hf:lukaemon/bbh") == "lukaemon/bbh"
    assert resolve_data_dir("lukaemon/bbh") == "lukaemon/bbh"
