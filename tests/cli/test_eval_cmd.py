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


def test_precision_auto_follows_the_cpu_and_is_recorded(model_dir, shared_data, tmp_path, capsys, monkeypatch):
    from kallm.runtime import precision

    base = ["eval", str(model_dir), "--tasks", "navigate", "--mode", "mc", "--limit", "2",
            "--data-dir", str(shared_data / "bbh")]
    runs = {}
    for name, caps, expected in (("xeon", {"amx_bf16": True}, "bf16"), ("epyc", {"avx2": True}, "fp32")):
        monkeypatch.setattr(precision, "cpu_capabilities", lambda caps=caps: caps)
        assert main([*base, "--out", str(tmp_path / name)]) == 0
        scores = json.loads((tmp_path / name / "scores.json").read_text())
        assert scores["precision"] == expected and f" s, {expected}" in capsys.readouterr().out
        runs[expected] = [json.loads(line)["logprobs"]
                          for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
    assert main([*base, "--precision", "fp32", "--out", str(tmp_path / "fp32")]) == 0
    assert json.loads((tmp_path / "fp32" / "scores.json").read_text())["precision"] == "fp32"
    # bf16 autocast really ran: the log-likelihoods move, a little.
    flat16, flat32 = sum(runs["bf16"], []), sum(runs["fp32"], [])
    assert flat16 != flat32 and max(abs(a - b) for a, b in zip(flat16, flat32)) < 0.5
