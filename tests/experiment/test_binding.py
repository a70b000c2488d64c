"""One output folder, one config: two `kallm run` processes of different configs started together on one
folder never both run (the folder's binding is decided under its lock before any run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kallm.errors import KallmError
from kallm.experiment import load_config
from kallm.experiment.results import bound_output
from tests.experiment.test_runner import write_config

REPO = Path(__file__).resolve().parents[2]


def two_configs(tmp_path, tiny_base, chat_file, shared_data) -> tuple[Path, Path]:
    paths = []
    for lr in (3e-4, 2e-3):
        folder = tmp_path / f"lr{lr}"
        folder.mkdir()
        path = write_config(folder, tiny_base, chat_file, shared_data, seeds=[0], layers="last:1",
                            variants=[{"name": "lin", "spec": "linear"}], output_dir=str(tmp_path / "out"))
        data = yaml.safe_load(path.read_text())
        data["train"].update(lr=lr, steps=2, eval_every=0, save_every=0)
        data["eval"].update(tasks=["navigate"], limit=1, heldout_size=0)
        path.write_text(yaml.safe_dump(data))
        paths.append(path)
    return paths[0], paths[1]


def test_a_folder_in_use_refuses_another_config_but_not_its_own(tmp_path, tiny_base, chat_file, shared_data):
    a, b = (load_config(p) for p in two_configs(tmp_path, tiny_base, chat_file, shared_data))
    out = tmp_path / "out"
    with bound_output(a, out):
        busy = rf"{out} is in use by another process running config .*lr0\.0003"
        with pytest.raises(KallmError, match=busy), bound_output(b, out):
            pass
        with bound_output(a, out):  # a shard of the same grid joins
            pass
    with bound_output(b, out):  # nothing recorded and nobody running: a fixed config rebinds the folder
        assert json.loads((out / "config.json").read_text())["config_hash"] == b.config_hash


def test_two_configs_started_together_on_one_folder(tmp_path, tiny_base, chat_file, shared_data):
    configs = two_configs(tmp_path, tiny_base, chat_file, shared_data)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = [subprocess.Popen([sys.executable, "-m", "kallm", "run", str(c)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in configs]
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    err = next(e for code, e in outcomes if code == 2)
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert "another config" in lines[0] or "in use by another process running config" in lines[0], err
    winner = configs[[code for code, _ in outcomes].index(0)]
    bound = json.loads((tmp_path / "out" / "config.json").read_text())
    assert bound["config_hash"] == load_config(winner).config_hash
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["config_hash"] == bound["config_hash"], records
