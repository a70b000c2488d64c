"""A grid's record says what data each run used, per source file, and scores each source's held-out part."""

from __future__ import annotations

import json

from kallm.experiment import run_experiment
from kallm.io import read_jsonl
from tests.experiment.test_runner import write_config


def test_the_record_counts_training_fitting_and_heldout_per_file(tmp_path, tiny_base, shared_data):
    folder = tmp_path / "chat"
    folder.mkdir()
    for name in ("gsm8k_train.jsonl", "hh_helpful.jsonl"):  # 20 of each: file order alone would take gsm8k only
        lines = (shared_data / "chat" / name).read_text(encoding="utf-8").splitlines()[:20]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = tmp_path / "essay.txt"
    text.write_text("Bridges carry roads over rivers, and towers hold the cables. " * 20, encoding="utf-8")
    path = write_config(
        tmp_path, tiny_base, folder, shared_data, seeds=[0],
        variants=[{"name": "baseline", "spec": "baseline"}, {"name": "kan", "spec": "kan:chebyshev2:2",
                                                             "init": "distill"}],
        train={"data": str(folder), "max_conversations": 30, "data_seed": 0, "steps": 1, "batch_size": 2,
               "max_length": 96, "eval_every": 0, "eval_batches": 1, "val_size": 2, "save_every": 0},
        distill={"tokens": 200},
        eval={"data_dir": str(shared_data / "bbh"), "tasks": ["navigate"], "mode": "mc", "limit": 1,
              "heldout_size": 6, "heldout": [str(text)], "block_length": 32, "max_text_tokens": 64})
    out = run_experiment(path, progress=False)
    records = {r["run_id"]: r for r in read_jsonl(out / "results.jsonl")}
    data = records["kan.seed0"]["data"]
    assert data["loaded"] == {"gsm8k_train": {"conversations": 15}, "hh_helpful": {"conversations": 15}}
    assert {k: v["conversations"] for k, v in data["heldout"].items()} == {"gsm8k_train": 3, "hh_helpful": 3}
    assert sum(v["conversations"] for v in data["train"].values()) <= 24 and set(data["train"]) == set(data["loaded"])
    assert set(data["fit"]) == {"gsm8k_train", "hh_helpful"}  # the distillation tokens come from both files
    assert "fit" not in records["baseline"]["data"]
    sets = records["kan.seed0"]["heldout"]["sets"]
    assert list(sets) == ["heldout", "heldout:gsm8k_train", "heldout:hh_helpful", "essay"]
    assert sets["heldout:hh_helpful"]["n_conversations"] == 3 and sets["essay"]["n_tokens"] == 62
    run_config = json.loads((out / "runs" / "kan.seed0" / "train" / "config.json").read_text())
    assert run_config["run"]["data"] == data["train"]
