"""`kallm eval`: writes the result files; bad input gives one clear line and exit code 2."""

from __future__ import annotations

import json

import pytest

from kallm.cli import main


@pytest.fixture
def model_dir(tmp_path, smol_tokenizer):
    from tests.tiny_models import make_tiny_model

    folder = tmp_path / "tiny"
    make_tiny_model("llama", vocab_size=len(smol_tokenizer), seed=0).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


def test_eval_writes_results(model_dir, shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["eval", str(model_dir), "--tasks", "navigate,snarks", "--mode", "mc", "--limit", "2",
                 "--out", str(out), "--data-dir", str(shared_data / "bbh")])
    assert code == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["counts"]["examples"] == 4 and set(scores["tasks"]) == {"navigate", "snarks"}
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    printed = capsys.readouterr().out
    assert "| navigate | 2 |" in printed and "mc: acc" in printed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "navigat"], "did you mean 'navigate'"),
        (["--limit", "0"], "limit must be a positive integer"),
        (["--mode", "cott"], "did you mean 'cot'"),
        (["--data-dir", "/nonexistent/bbh"], "does not exist"),
    ],
)
def test_bad_input_is_one_line(model_dir, shared_data, capsys, extra, message):
    args = ["eval", str(model_dir), "--data-dir", str(shared_data / "bbh"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kallm eval: error:") and message in err and "\n" not in err
