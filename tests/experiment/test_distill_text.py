"""distill.text: a share of the fit's tokens from plain-text blocks, recorded; a held-out file is refused."""

from __future__ import annotations

import pytest

from kallm.errors import KallmError
from kallm.experiment import run_experiment
from kallm.experiment.distill_data import interleave
from kallm.io import read_json, read_jsonl
from tests.experiment.test_runner import write_config


def _config(tmp_path, tiny_base, shared_data, distill_text, heldout):
    folder = tmp_path / "chat"
    folder.mkdir()
    lines = (shared_data / "chat" / "gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines()[:20]
    (folder / "gsm8k_train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return write_config(
        tmp_path, tiny_base, folder, shared_data, seeds=[0],
        variants=[{"name": "kan", "spec": "kan:chebyshev2:2", "init": "distill"}],
        train={"data": str(folder), "max_conversations": 20, "steps": 1, "batch_size": 2, "max_length": 128,
               "eval_every": 0, "eval_batches": 1, "val_size": 2, "save_every": 0},
        distill={"tokens": 400, "text": [str(distill_text)], "text_fraction": 0.5},
        eval={"data_dir": str(shared_data / "bbh"), "tasks": ["navigate"], "mode": "mc", "limit": 1,
              "heldout_size": 0, "heldout": [str(heldout)], "block_length": 32, "max_text_tokens": 64})


def test_the_fit_reads_that_share_of_text_blocks_and_records_it(tmp_path, tiny_base, shared_data):
    fit_text, scored = tmp_path / "valid.txt", tmp_path / "test.txt"
    fit_text.write_text("Rivers carry silt to the sea, where deltas grow year by year. " * 60, encoding="utf-8")
    scored.write_text("Bridges carry roads over rivers, and towers hold the cables. " * 20, encoding="utf-8")
    out = run_experiment(_config(tmp_path, tiny_base, shared_data, fit_text, scored), progress=False)
    record = next(iter(read_jsonl(out / "results.jsonl")))
    used = record["data"]["fit_text"]
    assert list(used["text_tokens"]) == ["valid.txt"] and used["text_fraction"] == 0.5
    # the first 200 tokens of the file (blocks of 128 and 72); the sample's conversations until 200
    assert used["text_tokens"]["valid.txt"] == 200 and used["sample_tokens"] >= 200
    assert record["distill"]["data"] == used
    fitted = read_json(out / "runs" / "kan.seed0" / "distill.json", "distill record")
    assert all(layer["ridge"] is not None for layer in fitted["layers"].values())


def test_a_held_out_file_is_refused_for_distillation(tmp_path, tiny_base, shared_data):
    scored = tmp_path / "test.txt"
    scored.write_text("Bridges carry roads over rivers, and towers hold the cables. " * 20, encoding="utf-8")
    with pytest.raises(KallmError, match=r"distill.text\[0\]: .*test.txt is also in eval.heldout"):
        run_experiment(_config(tmp_path, tiny_base, shared_data, scored, scored), progress=False)


def test_interleave_spreads_each_list_evenly():
    assert interleave([1, 2, 3, 4], ["a", "b"]) == [1, "a", 2, 3, "b", 4]
    assert interleave([], [1, 2]) == [1, 2]
