"""`kallm train` end to end on a tiny real-architecture model folder and real chat data."""

from __future__ import annotations

import json
import os

import pytest

from kallm.cli import main
from kallm.io import read_jsonl
from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample

FAST = ["--steps", "3", "--batch-size", "2", "--max-length", "128", "--val-size", "4", "--eval-every", "0"]


@pytest.fixture
def model_dir(smol_tokenizer, tmp_path_factory):
    """A saved 4-layer random-weight Llama with the real SmolLM2 tokenizer (a normal HF folder)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model("llama", vocab_size=len(smol_tokenizer)).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def chat_file(shared_data, tmp_path):
    return write_chat_sample(shared_data, tmp_path / "chat.jsonl", n=24)


def test_train_from_flags_writes_a_loadable_retrofit(model_dir, chat_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", str(model_dir), "--layers", "last:2", "--variant", "linear",
                 "--data", str(chat_file), "--out", str(out), *FAST])
    assert code == 0, capsys.readouterr().err
    assert "trained 3 steps" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["layers"] == "last:2" and config["train"]["batch_size"] == 2
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3]
    from kallm.retrofitting import load_retrofit, retrofit_report

    model, _ = load_retrofit(out / "retrofit")
    assert retrofit_report(model).layer_indices == (2, 3)
    # Resuming a finished run changes nothing and succeeds.
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", "--model", str(model_dir), "--layers", "last:2", "--variant", "linear",
                 "--data", str(chat_file), "--out", str(out), "--resume", *FAST]) == 0
    assert (out / "metrics.jsonl").read_text() == before


def test_train_with_distillation_from_the_original(model_dir, chat_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", str(model_dir), "--layers", "last:2", "--variant", "kan:chebyshev2:2",
                 "--data", str(chat_file), "--out", str(out), "--loss", "ce+kd", "--kd-positions", "all",
                 "--kd-temperature", "2", *FAST])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["train"]["loss"] == "ce+kd"
    assert all({"ce", "kd"} <= set(r) for r in read_jsonl(out / "metrics.jsonl") if "loss" in r)


def test_train_from_config_file(model_dir, chat_file, tmp_path, capsys, monkeypatch):
    """Paths in the file are relative to the file, wherever the command runs."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "elsewhere").mkdir()
    cfg = tmp_path / "cfg" / "train.yaml"
    cfg.write_text(f"model: {os.path.relpath(model_dir, cfg.parent)}\nlayers: last:1\nvariant: linear\n"
                   f"data: ../{chat_file.name}\nout: run\ntrain:\n  steps: 2\n  batch_size: 2\n  max_length: 128\n"
                   f"  val_size: 4\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", "--config", str(cfg), "--steps", "1"]) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "cfg" / "run" / "config.json").read_text())
    assert saved["train"]["steps"] == 1
    assert saved["run"]["model"] == str(model_dir) and saved["run"]["data"] == [str(chat_file)]


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "{missing}"], "data path '.*missing.jsonl' does not exist"),
    (["--data", "{bad}"], r"no usable conversations in .*bad.jsonl; 1 rows broke the schema, first: .*bad.jsonl:1"),
    (["--data", "{empty}"], "no usable conversations"),
    (["--model", "{tmp}/no-model"], "model folder .* does not exist"),
    (["--max-length", "4"], "max_length: must be an integer >= 8"),
    (["--max-length", "16"], "raise max_length"),
    (["--variant", "kan:chebyshv2:2"], "did you mean"),
    (["--loss", "ce+kl"], "loss: unknown loss term 'kl'; did you mean 'kd'"),
    (["--kd-temperature", "0"], "kd_temperature: must be a positive number"),
])
def test_bad_input_is_one_line_exit_2(model_dir, chat_file, tmp_path, capsys, args, message):
    import re

    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    (tmp_path / "empty.jsonl").write_text("")
    fill = {"missing": tmp_path / "missing.jsonl", "bad": tmp_path / "bad.jsonl", "empty": tmp_path / "empty.jsonl",
            "tmp": tmp_path}
    args = [a.format(**fill) for a in args]
    base = {"--model": str(model_dir), "--data": str(chat_file), "--out": str(tmp_path / "run"),
            "--variant": "linear", "--layers": "last:1"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["train", *[x for kv in base.items() for x in kv], "--steps", "1", "--batch-size", "2", "--val-size", "2"]
    if "--max-length" not in base:
        argv += ["--max-length", "128"]
    assert main(argv) == 2
    # transformers' own weight-loading bar may precede it; kallm prints exactly one line
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]
    assert len(err) == 1 and err[0].startswith("kallm train: error: ")
    err = err[0]
    assert re.search(message, err), err
    assert not (tmp_path / "run" / "config.json").exists()


def test_resume_with_another_config_is_refused_and_harmless(model_dir, chat_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", str(model_dir), "--layers", "last:1", "--variant", "linear", "--data",
            str(chat_file), "--out", str(out), *FAST]
    assert main(argv) == 0
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main([*argv, "--resume", "--lr", "0.1"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert main(argv) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot


def test_unknown_config_key_points_at_the_line(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("out: run\ntrain:\n  steps: 2\n  lr: -1\n", encoding="utf-8")
    assert main(["train", "--config", str(cfg)]) == 2
    assert f"{cfg}:4: train.lr: must be a positive number" in capsys.readouterr().err
    cfg.write_text("out: run\nlayer: last:2\n", encoding="utf-8")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "did you mean 'layers'" in capsys.readouterr().err


def test_a_run_folder_being_trained_is_refused(model_dir, chat_file, tmp_path, capsys):
    """Two `kallm train` on one folder would log every step twice: the second is refused."""
    from kallm.locks import held

    out = tmp_path / "run"
    with held(out / ".lock"):  # what the first process holds while it trains
        assert main(["train", "--model", str(model_dir), "--layers", "last:1", "--variant", "linear", "--data",
                     str(chat_file), "--out", str(out), *FAST]) == 2
    assert f"{out} is being trained by another process (pid {os.getpid()})" in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists() and not (out / "config.json").exists()
