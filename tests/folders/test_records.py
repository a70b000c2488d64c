"""The records of an experiment folder: results.jsonl lines and held-out score files, round trips included."""

from __future__ import annotations

import json

import pytest

from kallm.errors import KallmError
from kallm.folders.records import (
    HeldoutScore,
    RunRecord,
    read_heldout_scores,
    read_run_records,
    write_heldout_scores,
)

# A trained run's record as experiment/runner.py has always written it, with every key.
TRAINED = {
    "run_id": "kan.seed0", "variant": "kan", "spec": "kan:chebyshev2:2", "kind": "kan", "init": "random", "seed": 0,
    "same_as": None, "curriculum": [[0, 1], [10, 2]], "distill": None,
    "train": {"wall_s": 12.5, "steps": 20, "metrics_path": "runs/kan.seed0/train/metrics.jsonl"},
    "heldout": {"nll": 2.0, "ppl": 7.389, "n_conversations": 4, "n_tokens": 100, "set": "heldout",
                "sets": {"heldout": {"nll": 2.0}}},
    "heldout_init": None,
    "params": {"total": 1000, "trainable": 10, "replaced_old": 50, "replaced_new": 40, "hidden_width": None},
    "metric": "acc", "scores": {"average": 0.5, "per_task": {"navigate": 0.5}},
    "eval": {"mode": "mc", "limit": 4, "wall_s": 1.0}, "config_hash": "abc", "versions": {"torch": "2.5"},
    "git_commit": "deadbeef", "time": "2026-01-01T00:00:00", "device": "cpu", "wall_s": 20.0,
}


def test_a_trained_record_round_trips_key_for_key():
    record = RunRecord.from_dict(TRAINED)
    assert record.run_id == "kan.seed0" and record.train["wall_s"] == 12.5 and record.extra == {}
    assert record.to_dict() == TRAINED and list(record.to_dict()) == list(TRAINED)


def test_an_untrained_record_has_no_distill_or_train_keys():
    baseline = {k: v for k, v in TRAINED.items() if k not in ("distill", "train")}
    baseline.update(run_id="baseline", variant="baseline", kind="baseline", init=None)
    record = RunRecord.from_dict(baseline)
    assert record.train is None and record.to_dict() == baseline
    assert "train" not in RunRecord(run_id="x").to_dict()


def test_keys_other_writers_add_are_kept():
    data = {**TRAINED, "heldout_sources": {"chat": {"nll": 1.5}}, "future": {"composition": [0.7, 0.3]}}
    record = RunRecord.from_dict(data)
    assert record.extra == {"heldout_sources": {"chat": {"nll": 1.5}}, "future": {"composition": [0.7, 0.3]}}
    assert record.to_dict() == data
    record.extra["note"] = "added later"
    assert RunRecord.from_dict(record.to_dict()).extra["note"] == "added later"


def test_an_old_record_with_few_fields_reads_with_none_for_the_rest():
    record = RunRecord.from_dict({"variant": "a", "seed": 1, "scores": {"average": 0.25}})
    assert (record.variant, record.seed, record.run_id, record.heldout) == ("a", 1, None, None)
    assert record.get("scores.average") == 0.25
    assert record.get("train.wall_s") is None and record.get("scores.average.x") is None


def test_a_record_that_is_not_an_object_is_refused():
    with pytest.raises(KallmError, match="results.jsonl: record 2: expected a JSON object, got list"):
        RunRecord.from_dict([1], "results.jsonl: record 2")


def test_results_files_read_as_records(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    assert read_run_records(path) == []
    path.write_text(json.dumps(TRAINED) + "\n" + '{"run_id": "cut off' + "\n", encoding="utf-8")
    (record,) = read_run_records(path)
    assert record == RunRecord.from_dict(TRAINED)
    assert "skipped a line" in caplog.text


def _score(name: str, sums: list[float], tokens: list[int], **extra) -> HeldoutScore:
    return HeldoutScore(name, [f"k{i}" for i in range(len(sums))], sums, tokens, extra)


def test_heldout_scores_round_trip_through_the_file(tmp_path):
    path = tmp_path / "runs" / "kan.seed0" / "heldout.json"
    scores = {"init": {"heldout": _score("heldout", [4.0, 2.0], [2, 1])},
              "final": {"heldout": _score("heldout", [3.0, 3.0], [2, 1]),
                        "chat": _score("chat", [1.0], [4], source="chat.jsonl")}}
    path.parent.mkdir(parents=True)
    write_heldout_scores(path, scores)
    saved = json.loads(path.read_text())
    assert saved["final"]["chat"] == {"name": "chat", "keys": ["k0"], "nll_sums": [1.0], "n_tokens": [4],
                                      "source": "chat.jsonl"}  # an added key flows through
    back = read_heldout_scores(path)
    assert back == scores
    assert back["final"]["heldout"].nll == pytest.approx(2.0) and back["init"]["heldout"].total_tokens == 3
    assert read_heldout_scores(tmp_path / "missing.json") == {}


def test_a_damaged_heldout_file_names_itself(tmp_path):
    path = tmp_path / "heldout.json"
    path.write_text(json.dumps({"final": {"heldout": {"name": "heldout", "keys": []}}}))
    with pytest.raises(KallmError, match="heldout.json: not a held-out score record"):
        read_heldout_scores(path)
    path.write_text(json.dumps(["final"]))
    with pytest.raises(KallmError, match=r"heldout.json: expected \{stage"):
        read_heldout_scores(path)


def test_heldout_score_is_the_same_class_everywhere():
    from kallm.evaluation.heldout import HeldoutScore as from_package
    from kallm.evaluation.heldout.scoring import HeldoutScore as from_scoring

    assert from_package is HeldoutScore and from_scoring is HeldoutScore
