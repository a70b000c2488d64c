"""Representative samples: a cap on data draws across every file, stratified by size or by explicit mix."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from kallm.data import ConversationSet, load_conversations, load_training_data
from kallm.data.sampling import allocate, count_by_source, draw_sample, source_name, stratified_order
from kallm.errors import KallmError
from kallm.training.config import TrainConfig
from kallm.training.examples import prepare_data

SIZES = {"alpha.jsonl": 50, "beta.jsonl": 30, "gamma.jsonl": 20}


def _conversation(tag: str, i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"{tag} question {i}"},
                         {"role": "assistant", "content": f"{tag} answer {i}"}]}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three chat files of different sizes; file order alone would take only alpha's rows."""
    for name, n in SIZES.items():
        rows = [json.dumps(_conversation(Path(name).stem, i)) for i in range(n)]
        (tmp_path / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tmp_path


def _per_file(data) -> Counter:
    return Counter(Path(f).name for f in data.files)


@pytest.mark.parametrize("n", [1, 7, 25, 33, 99])
def test_the_sample_draws_every_file_in_proportion_to_its_size(folder, n):
    data = load_conversations(folder, max_conversations=n, seed=0)
    counts = _per_file(data)
    assert len(data) == n == sum(counts.values())
    total = sum(SIZES.values())
    for name, size in SIZES.items():
        assert abs(counts[name] - n * size / total) <= 1, (name, counts)
    if n >= len(SIZES):
        assert set(counts) == set(SIZES)  # every file contributes
    for conv, file in zip(data.conversations, data.files):  # each conversation keeps the file it came from
        assert conv[0]["content"].startswith(Path(file).stem)


def test_the_sample_is_the_same_for_a_seed_and_differs_for_another(folder):
    a = load_conversations(folder, max_conversations=25, seed=0)
    b = load_conversations(folder, max_conversations=25, seed=0)
    c = load_conversations(folder, max_conversations=25, seed=1)
    assert a.locations == b.locations
    assert a.locations != c.locations
    assert _per_file(a) == _per_file(c)  # another seed draws other conversations, in the same proportions


def test_without_a_cap_everything_is_loaded_in_file_order(folder):
    data = load_conversations(folder)
    assert len(data) == 100 and data.files == sorted(data.files)


def test_explicit_mix_weights_are_honoured(folder):
    data = load_conversations(folder, max_conversations=20, mix={"alpha*": 1, "gamma.jsonl": 3})
    assert _per_file(data) == Counter({"gamma.jsonl": 15, "alpha.jsonl": 5})  # beta: matched by no pattern
    # no cap: the largest sample in which no file runs out (26: gamma's 20 are 3/4 of 26.7)
    everything = load_conversations(folder, mix={"alpha": 1, "gamma": 3})
    counts = _per_file(everything)
    assert len(everything) == 26 and abs(counts["gamma.jsonl"] - 19.5) <= 1 and abs(counts["alpha.jsonl"] - 6.5) <= 1


def test_a_mix_pattern_matching_no_file_is_an_error(folder):
    with pytest.raises(KallmError, match="'delta\\*' matches no data file; files: alpha.jsonl, beta.jsonl"):
        load_conversations(folder, max_conversations=10, mix={"delta*": 1})


def test_largest_remainder_allocation_sums_to_n():
    assert allocate({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    assert sum(allocate({"a": 5, "b": 3, "c": 2}, 7).values()) == 7


def test_every_prefix_of_the_stratified_order_is_in_proportion():
    files = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    order = stratified_order(files, seed=3)
    assert sorted(order) == list(range(100))
    for k in range(1, 101):
        counts = Counter(files[i] for i in order[:k])
        for name, size in (("a", 60), ("b", 30), ("c", 10)):
            assert abs(counts[name] - k * size / 100) <= 1


def test_text_documents_are_sampled_across_files(tmp_path):
    for name, n in (("one.jsonl", 40), ("two.jsonl", 10)):
        rows = [json.dumps({"text": f"{name} document {i}"}) for i in range(n)]
        (tmp_path / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    texts = load_training_data(tmp_path, max_conversations=10, seed=0)
    assert Counter(Path(f).name for f in texts.files) == Counter({"one.jsonl": 8, "two.jsonl": 2})


def test_prepare_data_caps_by_a_stratified_sample_too(folder, smol_tokenizer):
    data = load_conversations(folder)
    config = TrainConfig(max_conversations=10, val_size=0, max_length=64)
    train, _ = prepare_data(smol_tokenizer, data, config, progress=False)
    sampled = data.subset(draw_sample(data.item_files(), 10, 0))
    assert len(train) == 10
    assert Counter(Path(f).name for f in sampled.files) == Counter({"alpha.jsonl": 5, "beta.jsonl": 3,
                                                                     "gamma.jsonl": 2})


def test_counts_by_source():
    files = ["/x/a.jsonl", "/x/b.jsonl", "/x/a.jsonl"]
    assert count_by_source(files, [0, 2], [5, 7]) == {"a": {"conversations": 2, "tokens": 12}}
    assert count_by_source(files) == {"a": {"conversations": 2}, "b": {"conversations": 1}}
    assert source_name("/x/hh_helpful.jsonl") == "hh_helpful"
    assert ConversationSet([[]], ["loc"], source="s").item_files() == ["s"]
