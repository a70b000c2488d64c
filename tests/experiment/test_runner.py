"""The experiment runner on a tiny real model: plans, shards, resume after SIGKILL, one record per run."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kallm.errors import KallmError
from kallm.experiment import load_config, parse_shard, plan_runs, run_experiment, shard_runs
from kallm.experiment.results import finished_runs
from kallm.io import read_jsonl
from kallm.runtime.precision import resolve_precision
from tests.training_helpers import write_chat_sample

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path, tiny_base, chat_file, shared_data, eval_precision: str | None = None,
                 **overrides) -> Path:
    config = {
        "name": "tiny",
        "output_dir": str(tmp_path / "out"),
        "model": str(tiny_base),
        "layers": "last:2",
        "seeds": [0, 1],
        "variants": [
            {"name": "baseline", "spec": "baseline"},
            {"name": "linear-restart", "spec": "linear"},
            {"name": "kan", "spec": "kan:chebyshev2:2"},
        ],
        "train": {"data": str(chat_file), "steps": 4, "batch_size": 2, "max_length": 96, "eval_every": 2,
                  "eval_batches": 1, "val_size": 4, "save_every": 1, "prefix_cache": True},
        "eval": {"data_dir": str(shared_data / "bbh"), "tasks": ["navigate", "boolean_expressions"],
                 "mode": "mc", "limit": 2, "batch_size": 4, "heldout_size": 6},
    }
    if eval_precision is not None:
        config["eval"]["precision"] = eval_precision
    config.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_plan_and_shards_cover_the_grid_exactly_once(tmp_path):
    """Planning is pure: no model or data is touched (the paths need not even exist)."""
    config = load_config(write_config(tmp_path, "no-model-here", tmp_path / "no-data.jsonl", tmp_path))
    plan = plan_runs(config)
    assert [r.run_id for r in plan] == ["baseline", "linear-restart.seed0", "linear-restart.seed1", "kan.seed0",
                                        "kan.seed1"]
    for n in (1, 2, 3, 7):
        ids = [r.run_id for i in range(1, n + 1) for r in shard_runs(plan, (i, n))]
        assert sorted(ids) == sorted(r.run_id for r in plan)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "x", "1/0"):
        with pytest.raises(KallmError, match="shard"):
            parse_shard(bad)


def test_every_run_is_scored_on_the_same_heldout_conversations(tmp_path, tiny_base, chat_file, shared_data):
    extra = tmp_path / "extra.jsonl"
    write_chat_sample(shared_data, extra, n=3)
    path = write_config(tmp_path, tiny_base, chat_file, shared_data, seeds=[0],
                        eval={"data_dir": str(shared_data / "bbh"), "tasks": ["navigate"], "mode": "mc", "limit": 1,
                              "heldout_size": 6, "heldout": [str(extra)]})
    out = run_experiment(path, progress=False)
    records = {r["run_id"]: r for r in read_jsonl(out / "results.jsonl")}
    assert set(records) == {"baseline", "linear-restart.seed0", "kan.seed0"}
    keys = None
    for run_id, record in records.items():
        held = record["heldout"]
        assert held["set"] == "heldout" and held["n_conversations"] == 6 and held["n_tokens"] > 0
        assert held["ppl"] == pytest.approx(math.exp(held["nll"]))
        assert held["sets"]["extra"]["n_conversations"] == 3
        saved = json.loads((out / "runs" / run_id / "heldout.json").read_text())
        assert keys is None or saved["final"]["heldout"]["keys"] == keys
        keys = saved["final"]["heldout"]["keys"]
        trained = run_id != "baseline"
        assert (record["heldout_init"] is not None) == trained and ("init" in saved) == trained
    # No run trains on a held-out conversation.
    from transformers import AutoTokenizer

    from kallm.data import load_conversations
    from kallm.experiment.runner import GridRunner

    runner = GridRunner(load_config(path), out)
    trained_on = runner.conversations(AutoTokenizer.from_pretrained(tiny_base))
    everything = load_conversations(chat_file)
    held_out = {everything.locations[e.index] for e in runner.heldout.examples()["heldout"]}
    assert len(held_out) == 6 and len(trained_on) == 34 and not held_out & set(trained_on.locations)


def test_two_shards_then_rerun(tmp_path, tiny_base, chat_file, shared_data):
    path = write_config(tmp_path, tiny_base, chat_file, shared_data, seeds=[0])
    out = run_experiment(path, shard="1/2", progress=False)
    first = read_jsonl(out / "results.jsonl")
    assert [r["run_id"] for r in first] == ["baseline", "kan.seed0"]
    run_experiment(path, shard="2/2", progress=False)
    run_experiment(path, progress=False)  # nothing left to do: no duplicates
    records = read_jsonl(out / "results.jsonl")
    assert sorted(r["run_id"] for r in records) == ["baseline", "kan.seed0", "linear-restart.seed0"]
    kan = next(r for r in records if r["run_id"] == "kan.seed0")
    assert kan["params"]["trainable"] == 2 * 4 * 32 * 32 and kan["params"]["new_per_layer"] == 4 * 32 * 32
    assert kan["train"]["steps"] == 4 and kan["train"]["final_eval_loss"] is not None
    assert set(kan["scores"]["per_task"]) == {"navigate", "boolean_expressions"}
    assert 0.0 <= kan["scores"]["average"] <= 1.0
    assert (out / kan["train"]["metrics_path"]).is_file()
    assert (out / "runs" / "kan.seed0" / "retrofit" / "manifest.json").is_file()
    here = resolve_precision("auto", "cpu")
    assert kan["train"]["precision"] == here.name and kan["eval"]["precision"] == here.to_dict()
    baseline = next(r for r in records if r["run_id"] == "baseline")
    assert baseline["seed"] is None and "train" not in baseline and baseline["params"]["trainable"] == 0


def test_prefix_cached_eval_equals_plain_eval(tmp_path, tiny_base, chat_file, shared_data):
    """Likelihood scores through the shared prefix cache equal those of the plain forward."""
    # Both sides in float32 whatever `auto` is on the machine running this: the test is about the cache.
    path = write_config(tmp_path, tiny_base, chat_file, shared_data, seeds=[0],
                        variants=[{"name": "kan", "spec": "kan:chebyshev2:2"}], eval_precision="fp32")
    out = run_experiment(path, progress=False)
    cached = [json.loads(line) for line in (out / "runs/kan.seed0/eval/predictions.jsonl").read_text().splitlines()]
    from kallm.evaluation.bbh import evaluate_bbh
    from kallm.retrofitting.saving import load_retrofit

    model, tok = load_retrofit(out / "runs/kan.seed0/retrofit")
    plain = evaluate_bbh(model, tok, tasks=["navigate", "boolean_expressions"], mode="mc", limit=2,
                         data_dir=shared_data / "bbh", batch_size=4, out_dir=tmp_path / "plain", progress=False)
    plain_rows = [json.loads(line) for line in (tmp_path / "plain/predictions.jsonl").read_text().splitlines()]
    assert len(plain_rows) == len(cached) == plain["counts"]["examples"]
    for a, b in zip(cached, plain_rows):
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-3)


def test_a_variant_is_parsed_from_text_once_per_run(tmp_path, tiny_base, chat_file, shared_data, monkeypatch):
    """Text becomes a typed variant when the config is read; everything after passes the spec along."""
    import kallm.kan.spec
    import kallm.retrofitting.variant

    calls = {"variant": 0, "kan": 0}

    def counted(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(kallm.retrofitting.variant, "_read_options", "variant")  # once per parse_variant call
    counted(kallm.kan.spec, "_parse_basis", "kan")  # once per basis text parsed
    variants = [{"name": "baseline", "spec": "baseline"}, {"name": "kan", "spec": "kan:chebyshev2:2"},
                {"name": "matched", "spec": "linear", "budget": "same-as kan"}]
    path = write_config(tmp_path, tiny_base, chat_file, shared_data, seeds=[0], variants=variants,
                        train={"data": str(chat_file), "steps": 1, "batch_size": 2, "max_length": 96,
                               "eval_every": 0, "val_size": 2, "eval_batches": 1, "save_every": 1})
    out = run_experiment(path, progress=False)
    assert calls == {"variant": 3, "kan": 1}
    records = {r["run_id"]: r for r in read_jsonl(out / "results.jsonl")}
    kan_new, matched_new = (records[k]["params"]["replaced_new"] for k in ("kan.seed0", "matched.seed0"))
    assert records["matched.seed0"]["spec"].startswith("linear@budget=")
    assert 0.98 * kan_new <= matched_new <= kan_new  # the control is sized to the KAN's count


def test_config_of_another_experiment_is_refused(tmp_path, tiny_base, chat_file, shared_data):
    path = write_config(tmp_path, tiny_base, chat_file, shared_data, seeds=[0],
                        variants=[{"name": "baseline", "spec": "baseline"}])
    run_experiment(path, progress=False)
    path = write_config(tmp_path, tiny_base, chat_file, shared_data, seeds=[0, 1],
                        variants=[{"name": "baseline", "spec": "baseline"}])
    with pytest.raises(KallmError, match="another config"):
        run_experiment(path, progress=False)


def test_config_errors_name_key_and_line(tmp_path, tiny_base, chat_file, shared_data):
    path = write_config(tmp_path, tiny_base, chat_file, shared_data)
    text = path.read_text()
    (tmp_path / "typo.yaml").write_text(text.replace("layers:", "layer:"))
    with pytest.raises(KallmError, match=r"typo.yaml:\d+.*did you mean 'layers'"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "spec.yaml").write_text(text.replace("kan:chebyshev2:2", "kan:chebyshv2:2"))
    with pytest.raises(KallmError, match=r"spec.yaml:\d+.*chebyshev2"):
        load_config(tmp_path / "spec.yaml")
    (tmp_path / "steps.yaml").write_text(text.replace("steps: 4", "steps: four"))
    with pytest.raises(KallmError, match=r"steps.yaml:\d+.*train.steps"):
        load_config(tmp_path / "steps.yaml")


def test_missing_data_path_is_named(tmp_path, tiny_base, chat_file, shared_data):
    path = write_config(tmp_path, tiny_base, chat_file, shared_data, seeds=[0],
                        variants=[{"name": "kan", "spec": "kan:chebyshev2:2"}])
    text = path.read_text().replace(str(chat_file), str(tmp_path / "nowhere.jsonl"))
    path.write_text(text)
    with pytest.raises(KallmError, match="nowhere.jsonl"):
        run_experiment(path, progress=False)


def test_sigkill_mid_run_then_rerun_finishes_only_the_missing_work(tmp_path, tiny_base, chat_file, shared_data):
    path = write_config(tmp_path, tiny_base, chat_file, shared_data, seeds=[0],
                        train={"data": str(chat_file), "steps": 12, "batch_size": 2, "max_length": 96,
                               "eval_every": 0, "val_size": 4, "eval_batches": 1, "save_every": 1})
    out = tmp_path / "out"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "kallm.cli", "-q", "run", str(path)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = out / "runs" / "kan.seed0" / "train" / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if target.is_dir() and len(list(target.glob("step-*"))) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_jsonl(out / "results.jsonl")
    assert "kan.seed0" not in {r["run_id"] for r in before}
    done_before = {r["run_id"]: r["time"] for r in before}
    run_experiment(path, progress=False)
    records = read_jsonl(out / "results.jsonl")
    assert sorted(r["run_id"] for r in records) == ["baseline", "kan.seed0", "linear-restart.seed0"]
    for r in records:  # finished runs were not redone
        if r["run_id"] in done_before:
            assert r["time"] == done_before[r["run_id"]]
    steps = [m["step"] for m in read_jsonl(out / "runs/kan.seed0/train/metrics.jsonl") if "loss" in m]
    assert steps == list(range(1, 13)), "the resumed run must continue its metrics without gaps or repeats"


SMALL_TRAIN = {"steps": 2, "batch_size": 2, "max_length": 96, "eval_every": 0, "val_size": 2, "eval_batches": 1,
               "save_every": 1}


def small_config(tmp_path, tiny_base, chat_file, shared_data, variants, **overrides) -> Path:
    return write_config(tmp_path, tiny_base, chat_file, shared_data, variants=variants,
                        **{"seeds": [0], "train": {"data": str(chat_file), **SMALL_TRAIN}, **overrides})


def test_runs_held_by_another_process_are_skipped_then_waited_for(tmp_path, tiny_base, chat_file, shared_data,
                                                                  caplog):
    """The runner moves on past held runs, then waits for each: it does one itself if its holder let go
    without recording it, and skips one that the holder recorded."""
    import contextlib
    import logging
    import threading

    from kallm.experiment.results import record_result
    from kallm.folders.records import RunRecord
    from kallm.locks import held

    caplog.set_level(logging.INFO, logger="kallm")
    path = small_config(tmp_path, tiny_base, chat_file, shared_data, [
        {"name": "baseline", "spec": "baseline"}, {"name": "linear", "spec": "linear"},
        {"name": "kan", "spec": "kan:chebyshev2:2"}])
    out = tmp_path / "out"
    errors: list[BaseException] = []

    def grid() -> None:
        try:
            run_experiment(path, progress=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 300
        while text not in caplog.text:
            assert not errors and time.monotonic() < deadline, (errors, caplog.text[-2000:])
            time.sleep(0.05)

    with contextlib.ExitStack() as stack:
        locks = {rid: stack.enter_context(contextlib.ExitStack()) for rid in ("linear.seed0", "kan.seed0")}
        for rid, lock_stack in locks.items():
            lock_stack.enter_context(held(out / "runs" / rid / ".lock"))
        thread = threading.Thread(target=grid, daemon=True)
        thread.start()
        wait_for("waiting for run linear.seed0")
        assert "run linear.seed0 is being worked on by another process" in caplog.text
        assert "run kan.seed0 is being worked on by another process" in caplog.text
        assert finished_runs(out) == {"baseline"}
        locks["linear.seed0"].close()  # its holder died without recording it: this process does it
        wait_for("waiting for run kan.seed0")
        record_result(out, RunRecord.from_dict({"run_id": "kan.seed0", "variant": "kan", "by": "the other process"}))
        locks["kan.seed0"].close()
        thread.join(timeout=300)
    assert not errors and not thread.is_alive()
    assert "run kan.seed0 was finished by another process" in caplog.text
    records = read_jsonl(out / "results.jsonl")
    assert sorted(r["run_id"] for r in records) == ["baseline", "kan.seed0", "linear.seed0"]
    assert next(r for r in records if r["run_id"] == "kan.seed0")["by"] == "the other process"  # extra keys kept
    assert not (out / "runs" / "kan.seed0" / "train").exists()


@pytest.mark.distributed
def test_two_kallm_run_processes_do_every_run_exactly_once(tmp_path, tiny_base, chat_file, shared_data):
    path = small_config(tmp_path, tiny_base, chat_file, shared_data, [
        {"name": "baseline", "spec": "baseline"}, {"name": "linear", "spec": "linear"},
        {"name": "kan", "spec": "kan:chebyshev2:2"}])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = [subprocess.Popen([sys.executable, "-m", "kallm", "run", str(path)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [log[-2000:] for log in logs]
    out = tmp_path / "out"
    records = read_jsonl(out / "results.jsonl")
    ids = ["baseline", "kan.seed0", "linear.seed0"]
    assert sorted(r["run_id"] for r in records) == ids
    started = [m for log in logs for m in re.findall(r"INFO kallm\.experiment\.runner: run (\S+): ", log)]
    assert sorted(started) == ids, "each run is worked on by exactly one process"
    for rid in ids[1:]:
        steps = [m["step"] for m in read_jsonl(out / "runs" / rid / "train" / "metrics.jsonl") if "loss" in m]
        assert steps == [1, 2], rid


def test_planted_pickles_in_a_run_folder_never_run(tmp_path, tiny_base, chat_file, shared_data, capsys):
    """A pickle planted where kallm used to torch.load optimizer and RNG states, then `kallm run` resumes."""
    from kallm.cli import main
    from tests.training.test_checkpoint import plant_pickles

    path = small_config(tmp_path, tiny_base, chat_file, shared_data, [{"name": "kan", "spec": "kan:chebyshev2:2"}])
    out = run_experiment(path, progress=False)
    marker = tmp_path / "pwned"
    for ckpt in (out / "runs" / "kan.seed0" / "train" / "checkpoints").iterdir():
        plant_pickles(ckpt, marker)
    (out / "results.jsonl").write_text("")  # the run must be resumed from its checkpoints
    assert main(["-q", "run", str(path)]) == 0, capsys.readouterr().err
    assert not marker.exists()
    assert [r["run_id"] for r in read_jsonl(out / "results.jsonl")] == ["kan.seed0"]


def test_damaged_caches_are_rebuilt(tmp_path, tiny_base, chat_file, shared_data, caplog):
    path = small_config(tmp_path, tiny_base, chat_file, shared_data,
                        [{"name": "kan", "spec": "kan:chebyshev2:2", "init": "distill"}],
                        seeds=[0, 1], distill={"tokens": 64},
                        train={"data": str(chat_file), **SMALL_TRAIN, "prefix_cache": True})
    out = run_experiment(path, shard="1/2", progress=False)
    caches = sorted((out / "cache").glob("*.safetensors"))
    assert [p.name.split("-")[0] for p in caches] == ["distill", "prefix", "prefix"]  # train + held-out prefixes
    for cache in caches:
        cache.write_bytes(cache.read_bytes()[:200])
    run_experiment(path, shard="2/2", progress=False)
    assert "activation cache" in caplog.text and "collecting the activations again" in caplog.text
    assert "prefix cache" in caplog.text and "rebuilding it" in caplog.text
    assert sorted(r["run_id"] for r in read_jsonl(out / "results.jsonl")) == ["kan.seed0", "kan.seed1"]
    for cache in caches:
        assert cache.stat().st_size > 200
