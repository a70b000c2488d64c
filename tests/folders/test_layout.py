"""The folder layout: every path helper names the file kallm has always written there."""

from __future__ import annotations

from pathlib import Path

from kallm.folders import layout
from kallm.folders.layout import ExperimentFolder, GridRunFolder, TrainingFolder, cache_file, lock_of
from kallm.folders.relative import path_in


def test_an_experiment_folder_and_its_runs(tmp_path):
    grid = ExperimentFolder(tmp_path)
    assert (grid.config, grid.results, grid.notes, grid.report) == (
        tmp_path / "config.json", tmp_path / "results.jsonl", tmp_path / "notes.md", tmp_path / "report.md")
    assert (grid.plots, grid.cache, grid.cache_lock) == (tmp_path / "plots", tmp_path / "cache",
                                                          tmp_path / "cache" / "cache.lock")
    run = grid.run("kan.seed0")
    root = tmp_path / "runs" / "kan.seed0"
    assert run.root == root and run.run_id == "kan.seed0"
    assert (run.lock, run.heldout, run.distill) == (root / ".lock", root / "heldout.json", root / "distill.json")
    assert run.retrofit.manifest == root / "retrofit" / "manifest.json"
    assert run.retrofit.weights == root / "retrofit" / "retrofit.safetensors"
    assert (run.eval.predictions, run.eval.scores) == (root / "eval" / "predictions.jsonl",
                                                       root / "eval" / "scores.json")
    assert run.train.metrics == root / "train" / "metrics.jsonl"
    assert run.folders() == [root, root / "train", root / "retrofit", root / "eval"]


def test_the_grid_of_a_run_folder(tmp_path):
    assert ExperimentFolder.of_run(tmp_path / "runs" / "a") == ExperimentFolder(tmp_path)
    assert ExperimentFolder.of_run(tmp_path / "elsewhere" / "a") is None


def test_a_training_folder_and_its_checkpoints(tmp_path):
    run = TrainingFolder(tmp_path)
    assert (run.config, run.run_info, run.result, run.lock) == (
        tmp_path / "config.json", tmp_path / "run_info.json", tmp_path / "result.json", tmp_path / ".lock")
    assert run.retrofit == tmp_path / "retrofit"
    step = run.checkpoint(42)
    assert step.root == tmp_path / "checkpoints" / "step-00000042"
    assert (step.weights.name, step.optimizer.name, step.optimizer_meta.name, step.rng.name, step.state.name) == (
        "trainable.safetensors", "optimizer.safetensors", "optimizer.json", "rng.json", "state.json")


def test_the_training_folder_is_what_training_uses(tmp_path):
    from kallm.training.state import RunFiles

    assert RunFiles is TrainingFolder and GridRunFolder(tmp_path).train == TrainingFolder(tmp_path / "train")


def test_cache_files_of_other_precisions_are_kept_apart(tmp_path):
    assert cache_file(tmp_path, "prefix-train-layer3", "fp32") == tmp_path / "prefix-train-layer3.safetensors"
    assert cache_file(tmp_path, "prefix-train-layer3", "bf16") == tmp_path / "prefix-train-layer3-bf16.safetensors"


def test_locks_and_names():
    assert lock_of(Path("out/results.jsonl")) == Path("out/results.lock")
    assert layout.heldout_set_name("/data/chat/extra.v2.jsonl") == "extra.v2"
    assert layout.heldout_set_name("../shared/data/text/wikitext-2/test.txt") == "wikitext-2-test"  # a split's name
    assert layout.heldout_set_name("test.txt") == "test"
    assert layout.default_experiment_folder("demo") == "runs/demo"
    assert layout.HF_CONFIG == layout.CONFIG == "config.json"  # two files of one name, in different folders


def test_a_path_in_a_file_is_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "configs"
    assert path_in("data/chat.jsonl", folder) == folder / "data" / "chat.jsonl"
    assert path_in("../data", folder) == tmp_path / "data"
    assert path_in("/abs/x", folder) == Path("/abs/x")
    assert path_in("~/x", folder) == tmp_path / "home" / "x"
