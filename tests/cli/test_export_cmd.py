"""`kallm export` on a grid run's retrofit: the folder, its model card with the run's results, errors."""

from __future__ import annotations

from kallm.cli import main
from kallm.io import read_jsonl


def test_export_a_grid_run_with_its_results_in_the_card(grid_run, tmp_path, capsys):
    _, grid, _ = grid_run
    out = tmp_path / "kan-export"
    code = main(["-q", "export", str(grid / "runs" / "kan.seed0"), str(out)])  # a run folder holding retrofit/
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "loaded back through transformers and checked" in printed and "trust_remote_code=True" in printed
    card = (out / "README.md").read_text()
    records = {r["run_id"]: r for r in read_jsonl(grid / "results.jsonl")}
    kan, baseline = records["kan.seed0"], records["baseline"]
    assert f"{100 * kan['scores']['average']:.1f} %" in card
    assert f"(the untouched base model, same evaluation: {100 * baseline['scores']['average']:.1f} %)" in card
    assert f"{kan['train']['initial_eval_loss']:.4f} right after surgery" in card
    assert f"{kan['train']['final_eval_loss']:.4f} after 4 training steps" in card
    assert f"Trained: {kan['params']['trainable']:,}" in card
    assert "| 2 | LlamaMLP | KANLinear |" in card and "| 3 | LlamaMLP | KANLinear |" in card
    assert "trust_remote_code=True" in card and "lm_eval --model hf" in card


def test_export_errors_are_one_line(grid_run, tmp_path, capsys):
    _, grid, _ = grid_run
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "retrofit folder" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.txt").write_text("x")
    assert main(["export", str(grid / "runs" / "kan.seed0" / "retrofit"), str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty" in err and "--overwrite" in err
