"""Every kind of folder a newcomer points kallm at (a model, a retrofit, a `train --out` folder, a grid run, a
kallm export) evaluates and inspects, and the scores say what was evaluated; an export whose code is not
kallm's own is refused, never run; a diverged training run fails without saving a retrofit."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kallm.cli import main
from tests.cli.test_bad_inputs import check_one_line, run_in_process, tree
from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample


def train_argv(model: Path, chat: Path, out: Path, *extra: str) -> list[str]:
    return ["-q", "train", "--model", str(model), "--layers", "last:1", "--variant", "kan:chebyshev2:2", "--data",
            str(chat), "--out", str(out), "--steps", "2", "--batch-size", "2", "--max-length", "96", "--val-size",
            "2", "--eval-every", "0", *extra]


@pytest.fixture(scope="module")
def kinds(tmp_path_factory, smol_tokenizer, shared_data, grid_run) -> dict[str, Path]:
    """{kind: a folder of that kind}, all small."""
    root = tmp_path_factory.mktemp("kinds")
    make_tiny_model("llama", vocab_size=len(smol_tokenizer)).save_pretrained(root / "model")
    smol_tokenizer.save_pretrained(root / "model")
    chat = write_chat_sample(shared_data, root / "chat.jsonl", n=16)
    assert main(train_argv(root / "model", chat, root / "trained")) == 0
    assert main(["-q", "export", str(root / "trained"), str(root / "export"), "--no-verify"]) == 0
    _, grid, code = grid_run
    assert code == 0
    return {"model": root / "model", "retrofit": root / "trained" / "retrofit", "training run": root / "trained",
            "grid run": grid / "runs" / "kan.seed0", "export": root / "export"}


def evaluate(folder: Path, out: Path, bbh: Path) -> dict:
    code = main(["-q", "eval", str(folder), "--tasks", "navigate", "--mode", "mc", "--limit", "2", "--out", str(out),
                 "--data-dir", str(bbh)])
    assert code == 0
    return json.loads((out / "scores.json").read_text())


def logprobs(out: Path) -> list[float]:
    return [x for line in (out / "predictions.jsonl").read_text().splitlines() for x in json.loads(line)["logprobs"]]


@pytest.mark.parametrize("kind", ["model", "retrofit", "training run", "grid run", "export"])
def test_eval_evaluates_each_kind_of_folder_and_names_it(kinds, kind, shared_data, tmp_path, capsys):
    folder = kinds[kind]
    scores = evaluate(folder, tmp_path / "eval", shared_data / "bbh")
    evaluated = scores["evaluated"]
    assert evaluated["kind"] == kind and evaluated["path"] == str(folder.resolve())
    if kind in ("retrofit", "training run", "grid run"):
        retro = folder if kind == "retrofit" else folder / "retrofit"
        manifest = json.loads((retro / "manifest.json").read_text())
        assert evaluated["retrofit"] == str(retro.resolve())
        assert evaluated["base_fingerprint"] == manifest["base_fingerprint"]["digest"]
        assert evaluated["retrofit_sha256"] == hashlib.sha256((retro / "retrofit.safetensors").read_bytes()).hexdigest()
    if kind == "export":
        assert evaluated["variant"] == "kan:chebyshev2:2" and evaluated["base_model"] == str(kinds["model"].resolve())
    assert main(["inspect", str(folder), *(["--layers", "last:1"] if kind == "model" else [])]) == 0
    printed = capsys.readouterr().out
    assert ("variant:    baseline" if kind == "model" else "variant:    kan:chebyshev2:2 on layers [") in printed


def test_an_export_evaluates_as_the_retrofit_it_was_made_from(kinds, shared_data, tmp_path):
    evaluate(kinds["retrofit"], tmp_path / "retrofit", shared_data / "bbh")
    evaluate(kinds["export"], tmp_path / "export", shared_data / "bbh")
    got, expected = logprobs(tmp_path / "export"), logprobs(tmp_path / "retrofit")
    assert len(got) == len(expected) > 0
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-4


def _changed_code(folder: Path) -> None:
    with open(folder / "modeling_kallm.py", "a", encoding="utf-8") as fh:
        fh.write(f"\nopen({str(folder.parent / 'pwned')!r}, 'w').write('ran')\n")


def _extra_file(folder: Path) -> None:
    (folder / "evil.py").write_text(f"open({str(folder.parent / 'pwned')!r}, 'w').write('ran')\n")


def _other_auto_map(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoModelForCausalLM"] = "evil.Model"
    (folder / "config.json").write_text(json.dumps(config))
    _extra_file(folder)


@pytest.mark.parametrize(("change", "pattern"), [
    (_changed_code, r"modeling_kallm\.py differs from the code this kallm writes"),
    (_extra_file, r"evil\.py is not a file kallm writes into an export"),
    (_other_auto_map, r"auto_map .* is not the one kallm writes"),
], ids=["changed-code", "extra-file", "other-auto-map"])
def test_an_export_with_other_code_is_refused_not_run(kinds, shared_data, tmp_path, capsys, change, pattern):
    folder = tmp_path / "export"
    shutil.copytree(kinds["export"], folder)
    change(folder)
    for argv in (["eval", str(folder), "--data-dir", str(shared_data / "bbh")], ["inspect", str(folder)]):
        before = tree(tmp_path)
        code, err = run_in_process(argv, capsys)
        check_one_line(code, err, pattern)
        assert not (tmp_path / "pwned").exists() and tree(tmp_path) == before


def test_export_overwrites_only_its_own_earlier_export(kinds, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["-q", "export", str(kinds["retrofit"]), str(out), "--no-verify"]) == 0
    weights = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert main(["-q", "export", str(kinds["training run"]), str(out), "--no-verify", "--overwrite"]) == 0
    assert hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest() == weights
    capsys.readouterr()


def _finite_checkpoints(run: Path) -> list[str]:
    steps = sorted(p.name for p in (run / "checkpoints").iterdir()) if (run / "checkpoints").is_dir() else []
    for step in steps:
        for tensor in load_file(str(run / "checkpoints" / step / "trainable.safetensors")).values():
            assert torch.isfinite(tensor).all()
    return steps


def test_a_diverging_run_fails_and_saves_no_retrofit(kinds, shared_data, tmp_path, capsys):
    chat = write_chat_sample(shared_data, tmp_path / "chat.jsonl", n=16)
    run = tmp_path / "run"
    argv = train_argv(kinds["model"], chat, run, "--lr", "1e30", "--warmup-steps", "0", "--steps", "4", "--max-length", "1024",
                      "--save-every", "1")
    code, err = run_in_process(argv, capsys)
    check_one_line(code, err, r"training diverged at step \d: (loss is (nan|inf)|parameter \S+ holds nan/inf) "
                              r"\(lr 1e\+30\); no retrofit was saved")
    assert not (run / "retrofit").exists() and not (run / "result.json").exists()
    _finite_checkpoints(run)


def test_a_run_that_turns_nan_keeps_its_last_finite_checkpoint(kinds, shared_data, tmp_path):
    """A parameter turned nan before step 3 (index 2): steps 1 and 2 are checkpointed, nothing after."""
    from kallm import train
    from kallm.errors import KallmError
    from kallm.training import TrainConfig

    class Poison:
        def on_step_start(self, step: int, model) -> bool:
            if step == 2:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if ".kallm_ffn." in n).fill_(math.nan)
            return False

        def on_log(self, record) -> None:
            return None

    chat = write_chat_sample(shared_data, tmp_path / "chat.jsonl", n=16)
    config = TrainConfig(steps=4, batch_size=2, max_length=96, val_size=2, eval_every=0, save_every=1,
                         keep_checkpoints=5)
    with pytest.raises(KallmError, match=r"training diverged at step 3: loss is nan .*the last finite checkpoint "
                                         r"is .*step-00000002"):
        train(model=str(kinds["model"]), layers="last:1", variant="linear", data=str(chat), out=tmp_path / "run",
              config=config, callbacks=[Poison()])
    assert _finite_checkpoints(tmp_path / "run") == ["step-00000001", "step-00000002"]
    assert not (tmp_path / "run" / "retrofit").exists()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert math.isnan(records[-1]["loss"]) and records[-1]["step"] == 3
