"""An experiment folder's books: bound to a config only once a result exists, readable past a cut-off line,
cleared of a killed process's temporary files."""

from __future__ import annotations

import json
import logging
import os
import time

from kallm.cli import main
from kallm.experiment import run_experiment
from kallm.io import read_jsonl
from tests.experiment.test_runner import small_config

BASELINE = [{"name": "baseline", "spec": "baseline"}]


def old(path):
    t = time.time() - 3600
    os.utime(path, (t, t))
    return path


def test_a_folder_without_results_is_rebound_and_cleared_of_stale_temps(tmp_path, tiny_base, chat_file,
                                                                          shared_data):
    """A failed start (no result yet) must not make the folder refuse the fixed config."""
    path = small_config(tmp_path, tiny_base, chat_file, shared_data, BASELINE)
    out = tmp_path / "out"
    (out / "runs" / "baseline" / "eval").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"config_hash": "0123456789ab"}))
    stale = [out / ".results.jsonl.a1b2c3d4.tmp", out / "runs" / "baseline" / "eval" / ".scores.json.zz11yy22.tmp"]
    for p in stale:
        p.write_bytes(b"")
        old(p)
    run_experiment(path, progress=False)
    assert json.loads((out / "config.json").read_text())["config_hash"] != "0123456789ab"
    assert [r["run_id"] for r in read_jsonl(out / "results.jsonl")] == ["baseline"]
    assert not any(p.exists() for p in stale)


def test_a_cut_off_results_line_is_skipped_by_run_and_report(tmp_path, tiny_base, chat_file, shared_data, caplog):
    caplog.set_level(logging.INFO, logger="kallm")
    path = small_config(tmp_path, tiny_base, chat_file, shared_data, BASELINE)
    out = run_experiment(path, progress=False)
    with open(out / "results.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"run_id": "kan.seed0", "variant": "ka')  # a write cut off mid-line
    caplog.clear()
    assert main(["run", str(path)]) == 0
    assert "results.jsonl:2: skipped a line that is not valid JSON" in caplog.text and "0 to do" in caplog.text
    caplog.clear()
    assert main(["report", str(out)]) == 0
    assert "results.jsonl:2: skipped a line" in caplog.text
    report = (out / "report.md").read_text()
    assert "(1 runs, 1 variants)" in report
