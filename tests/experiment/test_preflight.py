"""Everything checked before the first run, from any working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from kallm.errors import ConfigError
from kallm.experiment import load_config, run_experiment
from kallm.experiment.preflight import check_inputs

REPO = Path(__file__).resolve().parents[2]


def test_errors_point_at_the_config_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\nmodel: m\nvariants: [{name: l, spec: linear}]\ntrain:\n  data: none.jsonl\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{path}:5: train\.data: data path '.*none\.jsonl' does not exist"):
        check_inputs(load_config(path))


@pytest.mark.slow
def test_the_demo_config_plans_from_any_directory(tmp_path, monkeypatch, shared_data):
    """configs/demo.yaml's paths are relative to it, so a dry run works outside the repository root."""
    if shared_data.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip("the demo config expects the shared data beside the repository")
    monkeypatch.chdir(tmp_path)
    rows = run_experiment(REPO / "configs" / "demo.yaml", dry_run=True)
    assert [r["run_id"] for r in rows][:2] == ["original", "original-tuned.seed0"]
    assert load_config(REPO / "configs" / "demo.yaml").output_path() == REPO / "runs" / "demo"
    assert not (tmp_path / "runs").exists()
