"""`kallm run --out DIR`: a config run into another folder without editing it."""

from __future__ import annotations

import json

import yaml

from kallm.cli import main
from kallm.io import read_jsonl


def test_run_out_writes_the_grid_into_another_folder(grid_run, capsys):
    config, out, code = grid_run
    assert code == 0
    written = yaml.safe_load(config.read_text())
    assert not (config.parent / "out").exists()  # the config's own output_dir is untouched ...
    assert written["output_dir"] == str(config.parent / "out")  # ... and so is the file
    assert sorted(r["run_id"] for r in read_jsonl(out / "results.jsonl")) == ["baseline", "kan.seed0"]
    assert (out / "runs" / "kan.seed0" / "retrofit" / "manifest.json").is_file()
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["config"]["output_dir"] == written["output_dir"]  # the config as written: same hash anywhere
    # running again into the same folder resumes it: nothing is left to do
    assert main(["-q", "run", str(config), "--out", str(out)]) == 0
    assert len(read_jsonl(out / "results.jsonl")) == 2
    assert f"results: {out / 'results.jsonl'}" in capsys.readouterr().out


def test_a_copied_grid_folder_reruns_with_out(grid_run, tmp_path):
    """A grid folder copied elsewhere (its runs' files name the old place) re-runs there with --out: a run
    whose record is missing is recorded again, its paths relative to the copy."""
    import shutil

    config, out, _ = grid_run
    copied = shutil.copytree(out, tmp_path / "copied")
    (copied / "results.jsonl").unlink()
    assert main(["-q", "run", str(config), "--out", str(copied)]) == 0
    records = {r["run_id"]: r for r in read_jsonl(copied / "results.jsonl")}
    assert sorted(records) == ["baseline", "kan.seed0"]
    metrics = records["kan.seed0"]["train"]["metrics_path"]
    assert metrics == "runs/kan.seed0/train/metrics.jsonl" and (copied / metrics).is_file()
