"""The rules a config must meet, each one function: names, data, BBH folder, model, output folder."""

from __future__ import annotations

import shutil

import pytest

from kallm.errors import KallmError
from kallm.experiment.validate import (
    check_bbh_data,
    check_curriculum_steps,
    check_data,
    check_metric,
    check_model,
    check_output,
    check_tasks,
)
from tests.tiny_models import make_tiny_model


def test_name_rules():
    assert check_tasks("navigate,binary")[0] == "boolean_expressions"
    with pytest.raises(KallmError, match="did you mean 'navigate'"):
        check_tasks(["navigat"])
    check_metric("mc", "acc_norm")
    check_metric("fewshot", None)
    with pytest.raises(KallmError, match=r"unknown metric 'acc'.*\(the metrics of mode 'fewshot'\)"):
        check_metric("fewshot", "acc")
    check_curriculum_steps(((0, 1), (9, 2)), 10)
    with pytest.raises(KallmError, match="at step 10, but training has only 10 steps"):
        check_curriculum_steps(((0, 1), (10, 2)), 10)


def test_data_rule(tmp_path):
    (tmp_path / "chat.jsonl").write_text("{}\n")
    (tmp_path / "empty").mkdir()
    check_data([tmp_path / "chat.jsonl", "HuggingFaceTB/smol-smoltalk"])  # a hub id is checked on loading
    for bad, message in ((tmp_path / "none.jsonl", "does not exist"), ("org/", "does not exist"),
                         (tmp_path / "empty", "holds no .jsonl/.json/.parquet files"),
                         (tmp_path / "chat.jsonl", None)):
        if message is None:
            continue
        with pytest.raises(KallmError, match=message):
            check_data([bad])
    (tmp_path / "chat.csv").write_text("a,b\n")
    with pytest.raises(KallmError, match=r"unsupported data file type '\.csv'"):
        check_data([tmp_path / "chat.csv"])


def test_bbh_rule(tmp_path, shared_data):
    check_bbh_data(shared_data / "bbh", ["navigate"], 2)
    check_bbh_data("hf:lukaemon/bbh", "all", None)  # read on use
    partial = tmp_path / "bbh"
    partial.mkdir()
    shutil.copy(shared_data / "bbh" / "navigate.json", partial)
    with pytest.raises(KallmError, match=r"lacks 1 selected task file\(s\): snarks\.json"):
        check_bbh_data(partial, ["navigate", "snarks"], None)
    (partial / "navigate.json").write_text('{"examples": 3}')
    with pytest.raises(KallmError, match="malformed BBH task file"):
        check_bbh_data(partial, ["navigate"], None)


def test_model_and_output_rules(tmp_path):
    folder = tmp_path / "m"
    make_tiny_model("llama").save_pretrained(folder)
    assert check_model(str(folder)) == str(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(KallmError, match=r"model weights .*model\.safetensors are damaged"):
        check_model(str(folder))
    with pytest.raises(KallmError, match="does not exist"):
        check_model(str(tmp_path / "none"))
    check_output(tmp_path / "new" / "out")
    (tmp_path / "f").write_text("x")
    with pytest.raises(KallmError, match="is a file, not a folder"):
        check_output(tmp_path / "f" / "out")
