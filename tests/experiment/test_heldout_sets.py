"""The carved held-out set is stratified by source file and reported per source; text files are sets too."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from kallm.data import load_conversations
from kallm.data.sampling import source_name
from kallm.evaluation.heldout.scoring import carve_heldout, held_sources, score_heldout
from kallm.experiment.heldout_sets import GridHeldout, heldout_record, source_set_name, with_source_sets
from kallm.experiment.schema import experiment_from_mapping
from kallm.runtime.precision import resolve_precision
from tests.tiny_models import make_tiny_model

SIZES = {"alpha.jsonl": 50, "beta.jsonl": 30, "gamma.jsonl": 20}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    data = tmp_path / "chat"
    data.mkdir()
    for name, n in SIZES.items():
        rows = [json.dumps({"messages": [{"role": "user", "content": f"{name} question {i}?"},
                                         {"role": "assistant", "content": f"answer {i} from {name}"}]})
                for i in range(n)]
        (data / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return data


def test_the_carved_set_is_stratified_by_source(folder, smol_tokenizer):
    data = load_conversations(folder)
    held, rest = carve_heldout(data, 10, smol_tokenizer, 64, seed=0)
    files = data.item_files()
    assert Counter(Path(files[e.index]).name for e in held) == Counter({"alpha.jsonl": 5, "beta.jsonl": 3,
                                                                        "gamma.jsonl": 2})
    assert len(rest) == 90 and not {data.locations[e.index] for e in held} & set(rest.locations)
    again, _ = carve_heldout(data, 10, smol_tokenizer, 64, seed=0)
    assert [e.key for e in again] == [e.key for e in held]


def test_scores_split_by_source_add_up_to_the_whole(folder, smol_tokenizer):
    data = load_conversations(folder)
    held, _ = carve_heldout(data, 10, smol_tokenizer, 64, seed=0)
    model = make_tiny_model("llama", vocab_size=len(smol_tokenizer))
    whole = score_heldout(model, held, name="heldout", pad_id=smol_tokenizer.pad_token_id)
    scores = with_source_sets({"heldout": whole}, held_sources(data, held))
    assert list(scores) == ["heldout", "heldout:alpha", "heldout:beta", "heldout:gamma"]
    assert source_set_name(source_name("/x/beta.jsonl")) == "heldout:beta"
    assert [len(scores[n].keys) for n in list(scores)[1:]] == [5, 3, 2]
    assert sum(sum(scores[n].nll_sums) for n in list(scores)[1:]) == pytest.approx(sum(whole.nll_sums))
    assert sum(scores[n].total_tokens for n in list(scores)[1:]) == whole.total_tokens
    record = heldout_record(scores)
    assert record["set"] == "heldout" and record["sets"]["heldout:gamma"]["n_conversations"] == 2
    one_source = {k: "alpha" for k in whole.keys}
    assert list(with_source_sets({"heldout": whole}, one_source)) == ["heldout"]  # no split of one source


def test_the_grid_scores_carved_sources_and_text_files(folder, smol_tokenizer, tmp_path):
    text = tmp_path / "essay.txt"
    text.write_text("A short essay about towers, bridges and the people who build them. " * 8, encoding="utf-8")
    config = experiment_from_mapping({
        "name": "t", "model": "m", "variants": [{"name": "base", "spec": "baseline"}],
        "train": {"data": str(folder), "max_length": 64},
        "eval": {"heldout_size": 6, "heldout": [str(text)], "block_length": 32, "max_text_tokens": 80}})
    grid = GridHeldout(config, tmp_path / "cache", contextlib.nullcontext, resolve_precision("fp32",
                                                                                             torch.device("cpu")))
    rest = grid.split_training_data(load_conversations(folder), smol_tokenizer)
    assert len(rest) == 94
    assert grid.carved_counts()["alpha"]["conversations"] == 3
    scores = grid.score(make_tiny_model("llama", vocab_size=len(smol_tokenizer)), smol_tokenizer, 0)
    assert list(scores) == ["heldout", "heldout:alpha", "heldout:beta", "heldout:gamma", "essay"]
    assert scores["essay"].total_tokens == 80 - 3  # blocks of 32, 32, 16: the first token of each unscored
