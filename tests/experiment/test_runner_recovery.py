"""A grid whose KAN is distilled bottom-up and then recovered by distillation from the original model."""

from __future__ import annotations

import pytest

from kallm.experiment import run_experiment
from kallm.io import read_jsonl
from tests.experiment.test_runner import write_config


def test_sequential_distill_then_kd_runs_from_the_config_alone(tmp_path, tiny_base, chat_file, shared_data):  # noqa: F811
    path = write_config(
        tmp_path, tiny_base, chat_file, shared_data, seeds=[0],
        variants=[{"name": "kan", "spec": "kan:chebyshev2:2", "init": "distill"}],
        distill={"tokens": 512, "mode": "sequential", "target": "block"},
    )
    text = path.read_text().replace("prefix_cache: true", "prefix_cache: true\n  loss: ce+kd\n  kd_positions: all")
    path.write_text(text)
    out = run_experiment(path, progress=False)
    (record,) = read_jsonl(out / "results.jsonl")
    assert sorted(record["distill"]["fvu"]) == ["2", "3"]
    assert all(0 <= v < 1.5 for v in record["distill"]["fvu"].values())
    steps = [r for r in read_jsonl(out / record["train"]["metrics_path"]) if "loss" in r]
    assert len(steps) == 4 and all({"ce", "kd"} <= set(r) for r in steps)
    # the fit's prefix states were shared (the file name carries the precision where it is bf16)
    assert list((out / "cache").glob("prefix-train-layer2*.safetensors"))


def test_init_original_starts_as_the_original_and_trains_its_ffns(tmp_path, tiny_base, chat_file, shared_data):  # noqa: F811
    """The reference arm for a recipe that learns from the data: the original FFN weights, trainable."""
    path = write_config(
        tmp_path, tiny_base, chat_file, shared_data, seeds=[0],
        variants=[{"name": "original", "spec": "baseline"},
                  {"name": "original-tuned", "spec": "linear", "init": "original"}],
    )
    out = run_experiment(path, progress=False)
    base, tuned = read_jsonl(out / "results.jsonl")
    assert tuned["heldout_init"]["nll"] == pytest.approx(base["heldout"]["nll"], abs=1e-5)
    assert tuned["heldout"]["nll"] != pytest.approx(tuned["heldout_init"]["nll"], abs=1e-6)
    assert tuned["params"]["trainable"] == tuned["params"]["replaced_new"] > 0
