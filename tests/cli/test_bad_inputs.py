"""Bad inputs, as a new user or an attacker would give them: exit 2, one line on stderr, no traceback,
nothing half-written (nor written at all: every error comes before the work).

One row per case. Rows share module fixtures (a tiny real model folder, real chat and BBH data, a trained
run, a retrofit) and run `kallm.cli.main` in-process with the CLI's own logging to stderr; the rows marked
`proc` run a real `kallm` process as well.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from kallm.cli import main
from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample

REPO = Path(__file__).resolve().parents[2]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@dataclass
class Fx:
    root: Path
    model: Path
    other_model: Path
    chat: Path
    bbh: Path
    run: Path  # a finished `kallm train` run with checkpoints at steps 1 and 2
    retrofit: Path

    def config(self, tmp: Path, **changes) -> Path:
        """An experiment config that runs as it is (until `changes` break it)."""
        data = {"name": "grid", "model": str(self.model), "layers": "last:1", "output_dir": str(tmp / "out"),
                "variants": [{"name": "baseline", "spec": "baseline"}, {"name": "kan", "spec": "kan:chebyshev2:2"}],
                "train": {"data": str(self.chat), "steps": 2, "batch_size": 2, "max_length": 96, "val_size": 2,
                          "eval_every": 0},
                "eval": {"data_dir": str(self.bbh), "tasks": ["navigate"], "mode": "mc", "limit": 1}}
        for key, value in changes.items():
            section, _, sub = key.partition(".")
            if sub:
                data[section] = {**data[section], sub: value}
            else:
                data[section] = value
        path = tmp / "grid.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def train_args(self, tmp: Path, *extra: str) -> list[str]:
        flags = {"--model": str(self.model), "--layers": "last:1", "--variant": "linear", "--data": str(self.chat),
                 "--out": str(tmp / "run"), "--steps": "2", "--batch-size": "2", "--max-length": "96",
                 "--val-size": "2", "--eval-every": "0"}
        flags.update(dict(zip(extra[::2], extra[1::2])))
        return ["train", *[x for kv in flags.items() for x in kv]]


@pytest.fixture(scope="module")
def fx(tmp_path_factory, smol_tokenizer, shared_data) -> Fx:
    from kallm.models.loading import load_model
    from kallm.retrofitting import retrofit, save_retrofit

    root = tmp_path_factory.mktemp("bad-inputs")
    for name, seed in (("model", 0), ("other", 1)):
        make_tiny_model("llama", vocab_size=len(smol_tokenizer), seed=seed).save_pretrained(root / name)
        smol_tokenizer.save_pretrained(root / name)
    chat = write_chat_sample(shared_data, root / "chat.jsonl", n=16)
    fixture = Fx(root, root / "model", root / "other", chat, shared_data / "bbh", root / "trained", root / "retro")
    args = fixture.train_args(root, "--out", str(fixture.run), "--save-every", "1")
    assert main(args) == 0
    model, _ = load_model(str(fixture.model))
    retrofit(model, layers="last:1", variant="kan:chebyshev2:2", freeze="ffn")
    save_retrofit(model, fixture.retrofit)
    return fixture


# ---------------------------------------------------------------- helpers for the rows' set-up


def copy(src: Path, tmp: Path, name: str | None = None) -> Path:
    dst = tmp / (name or src.name)
    shutil.copytree(src, dst)
    return dst


def truncate(path: Path, keep: int = 100) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def binary(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 8)
    return path


def broken_model(fx: Fx, tmp: Path) -> Path:
    folder = copy(fx.model, tmp, "broken-model")
    truncate(folder / "model.safetensors", 1000)
    return folder


def manifest_with(fx: Fx, tmp: Path, **changes) -> Path:
    folder = copy(fx.retrofit, tmp)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **changes}))
    return folder


def damaged_run(fx: Fx, tmp: Path, damage: Callable[[Path], object]) -> list[str]:
    run = copy(fx.run, tmp)
    for ckpt in (run / "checkpoints").iterdir():
        damage(ckpt)
    return [*fx.train_args(tmp, "--out", str(run), "--save-every", "1"), "--resume"]


def pickles_only(ckpt: Path) -> None:
    from tests.training.test_checkpoint import plant_pickles

    for name in ("optimizer.safetensors", "optimizer.json", "rng.json"):
        (ckpt / name).unlink()
    plant_pickles(ckpt, ckpt.parents[2] / "pwned")  # the row's folder


def other_config_results(fx: Fx, tmp: Path) -> list[str]:
    out = tmp / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"config_hash": "0123456789ab"}))
    (out / "results.jsonl").write_text(json.dumps({"run_id": "baseline", "variant": "baseline"}) + "\n")
    return ["run", str(fx.config(tmp))]


def results_folder(tmp: Path, text: bytes) -> Path:
    out = tmp / "exp"
    out.mkdir()
    (out / "results.jsonl").write_bytes(text)
    return out


def text_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def a_file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("not a folder")
    return path


# ---------------------------------------------------------------- set-up of the hostile-input rows (safety26b)


def laughs(levels: int = 9) -> str:
    """'Billion laughs': each level a list of nine aliases of the one before (9**levels strings, < 1 KB)."""
    text = 'l0: &l0 ["lol"]\n'
    for i in range(1, levels + 1):
        text += f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]\n"
    return text


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def deep_jsonl(tmp: Path, depth: int = 100_000) -> Path:
    path = tmp / "deep.jsonl"
    path.write_text("[" * depth + "]" * depth + "\n", encoding="utf-8")
    return path


HUGE_HIDDEN = "kan:sequential(chebyshev2:2,chebyshev2:2;hidden=100000000000)"


def tampered_retrofit(fx: Fx, tmp: Path, declare: bool = False, dtype: torch.dtype | None = None) -> Path:
    """A copy of the retrofit whose file also sets base weights (zeros), declared in the manifest or not, or
    holds its own tensors in another dtype than the manifest's."""
    from safetensors.torch import load_file, save_file

    folder = copy(fx.retrofit, tmp)
    state = load_file(str(folder / "retrofit.safetensors"))
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    else:
        base = load_file(str(fx.model / "model.safetensors"))
        for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
            state[name] = torch.zeros_like(base[name])
    save_file(state, str(folder / "retrofit.safetensors"))
    if declare:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["tensors"] = {k: list(v.shape) for k, v in state.items()}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def experiment_folder(tmp: Path, *files: str) -> Path:
    out = results_folder(tmp, b'{"variant": "a"}\n')
    for name in files:
        (out / name).write_text("{}")
    return out


def report_onto(tmp: Path, name: str) -> list[str]:
    out = experiment_folder(tmp, "config.json")
    return ["report", str(out), "-o", str(out / name)]


def full_folder(tmp: Path) -> Path:
    folder = tmp / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    return folder


def unfinished_run(tmp: Path) -> Path:
    folder = tmp / "unfinished"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"train": {"steps": 2}, "run": {}}))
    return folder


# ---------------------------------------------------------------- the table: (id, argv from (fx, tmp), error)

Row = tuple[str, Callable[[Fx, Path], list[str]], str]

ROWS: list[Row] = [
    # kallm run: every name and path is checked before any run (and by --dry-run)
    ("run-misspelt-task", lambda fx, t: ["run", str(fx.config(t, **{"eval.tasks": ["navigat"]}))],
     r"grid\.yaml:\d+: eval\.tasks: unknown BBH task 'navigat'; did you mean 'navigate'"),
    ("dry-run-misspelt-task", lambda fx, t: ["run", str(fx.config(t, **{"eval.tasks": ["navigat"]})), "--dry-run"],
     r"eval\.tasks: unknown BBH task 'navigat'"),
    ("run-missing-data", lambda fx, t: ["run", str(fx.config(t, **{"train.data": str(t / "nope.jsonl")}))],
     r"grid\.yaml:\d+: train\.data: data path '.*nope\.jsonl' does not exist"),
    ("dry-run-missing-data", lambda fx, t: ["run", str(fx.config(t, **{"train.data": "nope/"})), "--dry-run"],
     r"train\.data: data path '.*nope' does not exist"),
    ("run-missing-bbh", lambda fx, t: ["run", str(fx.config(t, **{"eval.data_dir": str(t / "bbh")}))],
     r"eval\.data_dir: BBH data folder '.*bbh' does not exist"),
    ("run-bbh-lacks-task", lambda fx, t: ["run", str(fx.config(t, **{"eval.data_dir": str(t)}))],
     r"eval\.data_dir: BBH data folder .* lacks 1 selected task file\(s\): navigate\.json"),
    ("run-metric-of-another-mode", lambda fx, t: ["run", str(fx.config(t, **{"eval.metric": "strict"}))],
     r"eval\.metric: unknown metric 'strict'.*\(the metrics of mode 'mc'\)"),
    ("run-curriculum-past-training", lambda fx, t: ["run", str(fx.config(t, variants=[
        {"name": "k", "spec": "kan:chebyshev2:2", "curriculum": [[0, 1], [9, 2]]}]))],
     r"variants\[0\]\.curriculum: curriculum raises the degree at step 9, but training has only 2 steps"),
    ("run-binary-data", lambda fx, t: ["run", str(fx.config(t, **{"train.data": str(binary(t / "x.jsonl"))}))],
     r"x\.jsonl: not a UTF-8 text file"),
    ("run-binary-yaml", lambda fx, t: ["run", str(binary(t / "grid.yaml"))], r"grid\.yaml: not a YAML text file"),
    ("run-config-missing", lambda fx, t: ["run", str(t / "none.yaml")], r"config file not found: .*none\.yaml"),
    ("run-config-is-a-folder", lambda fx, t: ["run", str(t)], r"cannot read config file"),
    ("run-yaml-syntax", lambda fx, t: ["run", str(text_file(t / "g.yaml", "name: [x\n"))],
     r"g\.yaml:\d+: invalid YAML"),
    ("run-unknown-key", lambda fx, t: ["run", str(fx.config(t, **{"train.stpes": 3}))],
     r"train\.stpes: unknown key 'stpes'; did you mean 'steps'"),
    ("run-missing-model", lambda fx, t: ["run", str(fx.config(t, model=str(t / "m")))],
     r"model: model folder '.*m' does not exist"),
    ("run-truncated-model", lambda fx, t: ["run", str(fx.config(t, model=str(broken_model(fx, t))))],
     r"model: model weights .*broken-model/model\.safetensors are damaged"),
    ("run-output-under-a-file", lambda fx, t: ["run", str(fx.config(t, output_dir=str(a_file(t) / "out")))],
     r"output_dir: cannot use .*a-file/out as output_dir: .*a-file is a file, not a folder"),
    ("dry-run-output-under-a-file",
     lambda fx, t: ["run", str(fx.config(t, output_dir=str(a_file(t) / "o"))), "--dry-run"], r"a-file is a file"),
    ("run-device-cuda", lambda fx, t: ["run", str(fx.config(t, device="cuda"))],
     r"device: device 'cuda' was asked for but CUDA is not available"),
    ("run-results-of-another-config", other_config_results,
     r"holds results of another config \(hash 0123456789ab, now \w+\); use another output_dir, or --force"),
    ("run-bad-shard", lambda fx, t: ["run", str(fx.config(t)), "--shard", "3/2"], r"--shard 3/2: need 1 <= I <= N"),
    ("run-huge-degree", lambda fx, t: ["run", str(fx.config(t, variants=[{"name": "k", "spec": "kan:chebyshev2:100000"}]))],
     r"variants\[0\]\.spec: .*degree 100000 is above kallm's limit of 32"),
    ("run-too-many-layers", lambda fx, t: ["run", str(fx.config(t, layers="last:50"))],
     r"'last:50' asks for 50 layers but the model has 4 layers"),
    # kallm train
    ("train-layers-out-of-range", lambda fx, t: fx.train_args(t, "--layers", "-9..-1"),
     r"layer -9 in '-9\.\.-1' is out of range: the model has 4 layers"),
    ("train-resume-all-checkpoints-damaged",
     lambda fx, t: damaged_run(fx, t, lambda c: truncate(c / "trainable.safetensors")),
     r"no readable checkpoint in .*checkpoints \(checkpoint file .*trainable\.safetensors is damaged"),
    ("train-resume-pickles-only", lambda fx, t: damaged_run(fx, t, pickles_only),
     r"written by an older kallm as pickles \(optimizer\.pt, rng\.pt\), which kallm does not load"),
    ("train-resume-another-config", lambda fx, t: [*damaged_run(fx, t, lambda c: None), "--lr", "0.5"],
     r"cannot resume .*: it was started with another configuration \(train\.lr"),
    ("train-binary-data", lambda fx, t: fx.train_args(t, "--data", str(binary(t / "x.json"))),
     r"x\.json: not a UTF-8 text file"),
    ("train-missing-data", lambda fx, t: fx.train_args(t, "--data", str(t / "none.jsonl")),
     r"data path '.*none\.jsonl' does not exist"),
    ("train-out-under-a-file", lambda fx, t: fx.train_args(t, "--out", str(a_file(t) / "run")),
     r"cannot use .*a-file/run as training run folder: .*a-file is a file"),
    ("train-huge-degree", lambda fx, t: fx.train_args(t, "--variant", "kan:chebyshev2:100000"),
     r"degree 100000 is above kallm's limit of 32"),
    ("train-huge-grid", lambda fx, t: fx.train_args(t, "--variant", "kan:bspline:3:grid_size=4096"),
     r"'grid_size' must be a positive integer up to 64"),
    ("train-binary-config", lambda fx, t: ["train", "--config", str(binary(t / "t.yaml"))],
     r"t\.yaml: not a YAML text file"),
    ("train-truncated-model", lambda fx, t: fx.train_args(t, "--model", str(broken_model(fx, t))),
     r"could not load model '.*broken-model' from .*: .*(header|metadata|deserializ)"),
    ("train-bad-precision", lambda fx, t: fx.train_args(t, "--precision", "fp64"),
     r"argument --precision: invalid choice: 'fp64'"),
    ("train-steps-zero", lambda fx, t: fx.train_args(t, "--steps", "0"), r"steps: must be an integer >= 1, got 0"),
    # kallm eval / plot-functions on models and retrofit folders
    ("eval-device-cuda", lambda fx, t: ["eval", str(fx.model), "--device", "cuda", "--data-dir", str(fx.bbh)],
     r"device 'cuda' was asked for but CUDA is not available"),
    ("eval-device-typo", lambda fx, t: ["eval", str(fx.model), "--device", "gpu"],
     r"device 'gpu' is not valid; expected auto, cpu, cuda, cuda:N or mps"),
    ("eval-out-under-a-file", lambda fx, t: ["eval", str(fx.model), "--out", str(a_file(t) / "o"), "--tasks",
                                            "navigate", "--data-dir", str(fx.bbh)], r"a-file is a file, not a folder"),
    ("eval-manifest-wrong-types", lambda fx, t: ["eval", str(manifest_with(fx, t, layers=5, seed="x"))],
     r"retro/manifest\.json: layers must be a layer selection such as 'last:5', got 5"),
    ("eval-manifest-bad-variant", lambda fx, t: ["eval", str(manifest_with(fx, t, variant="kan:chebyshv2:2"))],
     r"retro/manifest\.json: .*did you mean 'chebyshev2'"),
    ("eval-manifest-bad-dtype", lambda fx, t: ["eval", str(manifest_with(fx, t, dtype="float99"))],
     r"retro/manifest\.json: unknown dtype 'float99'"),
    ("eval-manifest-not-json", lambda fx, t: ["eval", str(text_file(copy(fx.retrofit, t) / "manifest.json", "{").parent)],
     r"retrofit manifest .*retro/manifest\.json is not valid JSON"),
    ("eval-retrofit-weights-truncated",
     lambda fx, t: ["eval", str(truncate(copy(fx.retrofit, t) / "retrofit.safetensors").parent)],
     r"retro/retrofit\.safetensors is damaged"),
    ("eval-retrofit-on-another-base",
     lambda fx, t: ["eval", str(manifest_with(fx, t, base_model=str(fx.other_model))), "--tasks", "navigate",
                    "--data-dir", str(fx.bbh)],
     r"this retrofit was trained on base model '.*other' .*is another one .*--allow-other-base"),
    ("eval-truncated-model", lambda fx, t: ["eval", str(broken_model(fx, t)), "--tasks", "navigate"],
     r"could not load model '.*broken-model'"),
    ("eval-misspelt-task", lambda fx, t: ["eval", str(fx.model), "--tasks", "navigat"], r"did you mean 'navigate'"),
    ("plot-manifest-wrong-types", lambda fx, t: ["plot-functions", str(manifest_with(fx, t, seed="x")), "--layer", "3"],
     r"manifest\.json: seed must be an integer or null, got 'x'"),
    ("plot-out-under-a-file",
     lambda fx, t: ["plot-functions", str(fx.retrofit), "--layer", "3", "--out", str(a_file(t) / "f.png")],
     r"a-file is a file, not a folder"),
    # kallm report / inspect / the parser
    ("report-no-results", lambda fx, t: ["report", str(t)], r"no results\.jsonl in "),
    ("report-binary-results", lambda fx, t: ["report", str(results_folder(t, bytes(range(256))))],
     r"cannot read .*results\.jsonl"),
    ("report-out-under-a-file", lambda fx, t: ["report", str(results_folder(t, b'{"variant": "a"}\n')), "-o",
                                              str(a_file(t) / "r.md")], r"a-file is a file, not a folder"),
    ("inspect-huge-degree", lambda fx, t: ["inspect", str(fx.model), "--variant", "kan:chebyshev2:100000"],
     r"above kallm's limit of 32"),
    ("inspect-negative-range-out-of-range", lambda fx, t: ["inspect", str(fx.model), "--layers", "-50..-1"],
     r"layer -50 in '-50\.\.-1' is out of range"),
    # a retrofit file sets only what its manifest declares as new (or, by choice, trained), as declared
    ("eval-retrofit-sets-base-weights", lambda fx, t: ["eval", str(tampered_retrofit(fx, t))],
     r"retro/retrofit\.safetensors: tensor model\.embed_tokens\.weight is not in the manifest's tensor list"),
    ("export-retrofit-declares-base-weights",
     lambda fx, t: ["-q", "export", str(tampered_retrofit(fx, t, declare=True)), str(t / "x"), "--allow-trained-base"],
     r"tensor model\.embed_tokens\.weight is a base model weight that the retrofit \(.*freeze ffn\) neither "
     r"replaces nor trains"),
    ("plot-retrofit-declares-base-weights",
     lambda fx, t: ["-q", "plot-functions", str(tampered_retrofit(fx, t, declare=True)), "--layer", "3"],
     r"tensor model\.embed_tokens\.weight is a base model weight"),
    ("eval-retrofit-in-another-dtype", lambda fx, t: ["eval", str(tampered_retrofit(fx, t, dtype=torch.bfloat16))],
     r"retro/retrofit\.safetensors: tensor \S+ is stored as bfloat16, but the manifest says float32"),
    # no command writes over what it reads
    ("report-out-is-its-results", lambda fx, t: report_onto(t, "results.jsonl"),
     r"report file .*exp/results\.jsonl is one of the report's inputs"),
    ("report-out-is-its-config", lambda fx, t: report_onto(t, "config.json"), r"config\.json is one of the report's"),
    ("report-out-is-its-folder", lambda fx, t: report_onto(t, "."), r"report file .*exp is a folder"),
    ("export-onto-its-source", lambda fx, t: ["export", str(fx.run), str(fx.run), "--overwrite"],
     r"export folder .*trained would overwrite the source .*trained, which this command reads"),
    ("export-into-its-source", lambda fx, t: ["export", str(fx.retrofit), str(fx.retrofit / "x"), "--overwrite"],
     r"export folder .*retro/x would overwrite the source"),
    ("export-onto-its-source-parent",
     lambda fx, t: ["export", str(fx.run / "retrofit"), str(fx.run), "--overwrite"], r"would overwrite the source"),
    ("export-onto-its-base-model", lambda fx, t: ["export", str(fx.retrofit), str(fx.model), "--overwrite"],
     r"would overwrite the base model folder"),
    ("export-overwrite-a-foreign-folder",
     lambda fx, t: ["export", str(fx.retrofit), str(full_folder(t)), "--overwrite"],
     r"mine is not a folder kallm wrote \(it has no \.kallm-output\); --overwrite replaces only an earlier export"),
    ("export-not-empty-says-the-flag", lambda fx, t: ["export", str(fx.retrofit), str(full_folder(t))],
     r"mine exists and is not empty; use --overwrite \(Python: overwrite=True\)"),
    ("train-out-is-the-model", lambda fx, t: fx.train_args(t, "--out", str(fx.model)),
     r"training run folder .*model would overwrite the model folder"),
    ("train-out-inside-the-model", lambda fx, t: fx.train_args(t, "--out", str(fx.model / "run")),
     r"model/run would overwrite the model folder"),
    ("train-out-is-a-retrofit", lambda fx, t: fx.train_args(t, "--out", str(copy(fx.retrofit, t))),
     r"training run folder .*retro is a retrofit folder"),
    ("run-out-is-the-model", lambda fx, t: ["run", str(fx.config(t)), "--out", str(fx.model)],
     r"output_dir: output folder .*model would overwrite the model folder"),
    # what a folder is, said in one line
    ("eval-unfinished-train-run", lambda fx, t: ["eval", str(unfinished_run(t))],
     r"unfinished is a kallm training run without a retrofit yet .*kallm train --resume"),
    ("eval-experiment-folder", lambda fx, t: ["eval", str(experiment_folder(t))],
     r"exp is an experiment folder; name one of its runs"),
    ("eval-folder-of-another-config", lambda fx, t: ["eval", str(text_file(t / "config.json", "{}").parent)],
     r"config\.json names no model_type: .* is not a Hugging Face model folder, a retrofit, a run folder or a kallm "
     r"export"),
    ("export-a-model-folder", lambda fx, t: ["export", str(fx.model), str(t / "x")],
     r"model is a model folder, not a retrofit"),
    ("inspect-retrofit-with-flags", lambda fx, t: ["inspect", str(fx.retrofit), "--layers", "last:2"],
     r"--layers does not apply to .*retro: it is a retrofit"),
    ("unknown-command", lambda fx, t: ["trian"], r"invalid choice: 'trian'"),
    ("unknown-flag", lambda fx, t: ["run", "x.yaml", "--overwrite"], r"unrecognized arguments: --overwrite"),
    # ------------------------------------------------ hostile configs, sizes, seeds, names (safety26b)
    ("run-yaml-billion-laughs", lambda fx, t: ["run", str(text_file(t / "l.yaml", laughs()))],
     r"l\.yaml:\d+: YAML aliases expand this config beyond 100,000 values"),
    ("run-yaml-self-alias", lambda fx, t: ["run", str(text_file(t / "s.yaml", "name: &a [*a]\n"))],
     r"s\.yaml:1: a YAML alias refers to the node that holds it"),
    ("run-yaml-nested-deep", lambda fx, t: ["run", str(text_file(t / "d.yaml", "a: " + "[" * 500 + "]" * 500))],
     r"d\.yaml:1: collections nested more than 64 deep"),
    ("run-config-fifo", lambda fx, t: ["run", str(fifo(t / "f.yaml"))], r"f\.yaml: not a regular file"),
    ("run-config-dev-zero", lambda fx, t: ["run", "/dev/zero"], r"/dev/zero: not a regular file"),
    ("dry-run-config-dev-zero", lambda fx, t: ["run", "/dev/zero", "--dry-run"], r"/dev/zero: not a regular file"),
    ("run-config-too-large", lambda fx, t: ["run", str(text_file(t / "big.yaml", "#" * (2 << 20)))],
     r"big\.yaml: 2,097,152 bytes is too large for a config \(at most 1,048,576\)"),
    ("run-include-dev-zero", lambda fx, t: ["run", str(fx.config(t, include="/dev/zero"))],
     r"/dev/zero: not a regular file"),
    ("train-config-fifo", lambda fx, t: ["train", "--config", str(fifo(t / "t.yaml"))], r"t\.yaml: not a regular file"),
    ("run-data-fifo", lambda fx, t: ["run", str(fx.config(t, **{"train.data": str(fifo(t / "c.jsonl"))}))],
     r"train\.data: data path .*c\.jsonl: not a regular file"),
    ("run-data-dev-zero", lambda fx, t: ["run", str(fx.config(t, **{"train.data": "/dev/zero"}))],
     r"train\.data: data path /dev/zero: not a regular file"),
    ("train-data-dev-zero", lambda fx, t: fx.train_args(t, "--data", "/dev/zero"),
     r"data path /dev/zero: not a regular file"),
    ("run-data-line-nested-deep", lambda fx, t: ["run", str(fx.config(t, train={
        **yaml.safe_load(fx.config(t).read_text())["train"], "data": str(deep_jsonl(t)), "on_bad_row": "error"}))],
     r"deep\.jsonl:1: JSON nested too deeply"),
    ("run-kan-spec-nested-deep", lambda fx, t: ["run", str(fx.config(t, variants=[
        {"name": "k", "spec": "kan:" + "parallel(" * 500 + "chebyshev2:2" + ")" * 500}]))],
     r"variants\[0\]\.spec: .*parentheses nested 500 deep; at most sequential\(parallel\(\.\.\.\)\)"),
    ("inspect-kan-spec-nested-deep",
     lambda fx, t: ["inspect", str(fx.model), "--variant", "kan:" + "parallel(" * 500 + "chebyshev2:2" + ")" * 500],
     r"parentheses nested 500 deep"),
    ("run-kan-hidden-huge", lambda fx, t: ["run", str(fx.config(t, variants=[{"name": "k", "spec": HUGE_HIDDEN}]))],
     r"needs [\d,]+ new parameters \([\d,.]+ GiB\), more than the [\d,.]+ GiB of RAM available"),
    ("dry-run-kan-hidden-huge",
     lambda fx, t: ["run", str(fx.config(t, variants=[{"name": "k", "spec": HUGE_HIDDEN}])), "--dry-run"],
     r"needs [\d,]+ new parameters"),
    ("train-linear-budget-huge", lambda fx, t: fx.train_args(t, "--variant", "linear@budget=100000000000000"),
     r"variant 'linear@budget=100000000000000' on 1 layer\(s\) needs [\d,]+ new parameters"),
    ("inspect-linear-budget-huge", lambda fx, t: ["inspect", str(fx.model), "--layers", "last:1", "--variant", "linear@budget=1e14"],
     r"needs [\d,]+ new parameters .* of RAM available"),
    ("run-seed-huge", lambda fx, t: ["run", str(fx.config(t, seeds=[10**23]))],
     r"seeds\[0\]: must be an integer in 0\.\.4294967295, got 1{1}0{23}"),
    ("dry-run-seed-negative", lambda fx, t: ["run", str(fx.config(t, seeds=[0, -1])), "--dry-run"],
     r"grid\.yaml:\d+: seeds\[1\]: must be an integer in 0\.\.4294967295, got -1"),
    ("train-seed-huge", lambda fx, t: fx.train_args(t, "--seed", "99999999999999999999999"),
     r"seed: must be an integer in 0\.\.4294967295, got 99999999999999999999999"),
    ("run-nul-output-dir", lambda fx, t: ["run", str(fx.config(t, output_dir=str(t / "o\0ut")))],
     r"output_dir: must not contain a NUL character"),
    ("dry-run-nul-output-dir", lambda fx, t: ["run", str(fx.config(t, output_dir="o\0ut")), "--dry-run"],
     r"output_dir: must not contain a NUL character"),
    ("run-nul-out-flag", lambda fx, t: ["run", str(fx.config(t)), "--out", str(t / "o\0ut")],
     r"the path contains a NUL character"),
    ("train-nul-out", lambda fx, t: fx.train_args(t, "--out", str(t / "r\0un")), r"the path contains a NUL character"),
    ("run-variant-named-dotdot", lambda fx, t: ["run", str(fx.config(t, variants=[{"name": "..", "spec": "linear"}]))],
     r"variants\[0\]\.name: '\.\.' is not a valid variant name; .*not starting with '\.'"),
    ("dry-run-variant-named-hidden",
     lambda fx, t: ["run", str(fx.config(t, variants=[{"name": ".k", "spec": "linear"}])), "--dry-run"],
     r"'\.k' is not a valid variant name"),
]

# rows that also run as a real `kallm` process (the in-process run checks everything else the same way)
PROC = {"run-misspelt-task", "eval-device-cuda", "train-resume-pickles-only", "eval-retrofit-on-another-base",
        "run-yaml-billion-laughs", "run-config-dev-zero", "run-kan-hidden-huge"}  # the last line: safety26b
CUDA_ROWS = {"run-device-cuda", "eval-device-cuda"}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root, files with size and mtime (lock files aside: taking a lock is not
    writing, though it touches the folder)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
            for p in sorted(root.rglob("*")) if not p.name.endswith(".lock")}


def run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """`kallm ARGV` with the CLI's own logging set-up (pytest's capture handlers set aside)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors exit, as they do in a real process
        code = exc.code
    finally:
        root.handlers, root.level = handlers, level
    return code, capsys.readouterr().err


def check_one_line(code: int, err: str, pattern: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert re.match(r"kallm( [a-z-]+)?: error: ", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize(("name", "make", "pattern"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(fx, tmp_path, capsys, name, make, pattern):
    if name in CUDA_ROWS and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    argv = make(fx, tmp_path)
    before = {"fixtures": tree(fx.root), "row": tree(tmp_path)}
    code, err = run_in_process(argv, capsys)
    check_one_line(code, err, pattern)
    assert {"fixtures": tree(fx.root), "row": tree(tmp_path)} == before, "a failed command wrote files"
    assert not (fx.root / "pwned").exists() and not (tmp_path / "pwned").exists()
    if name in PROC:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.run([sys.executable, "-m", "kallm", *argv], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)
        check_one_line(proc.returncode, proc.stderr, pattern)
        assert {"fixtures": tree(fx.root), "row": tree(tmp_path)} == before


def test_the_table_covers_at_least_forty_cases():
    assert len(ROWS) >= 40 and len({r[0] for r in ROWS}) == len(ROWS)
