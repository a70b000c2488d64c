"""Chat data: loading and schema errors, assistant-only labels on the real template, batching."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch

from kallm.data import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    BatchSchedule,
    ChatTokenizer,
    collate,
    epoch_batches,
    load_conversations,
    num_label_positions,
    split_indices,
    tokenize_conversations,
)
from kallm.errors import KallmError

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]}
TWO_TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Ciao"},
]


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _labelled_text(tokenizer, example) -> list[str]:
    """Decoded runs of consecutive labelled tokens."""
    runs, current = [], []
    for tok, lab in zip(example.input_ids, example.labels):
        if lab != IGNORE_INDEX:
            assert lab == tok
            current.append(tok)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_labels_exactly_on_assistant_tokens_and_end_of_turn(smol_tokenizer):
    example = ChatTokenizer(smol_tokenizer, 512)(TWO_TURNS)
    # Hand-checked against the SmolLM2 template: '<|im_start|>assistant\n' and the '\n' after
    # '<|im_end|>' are template scaffolding; the reply and its '<|im_end|>' are what the model must say.
    assert _labelled_text(smol_tokenizer, example) == ["Hello there<|im_end|>", "Ciao<|im_end|>"]
    text = smol_tokenizer.decode(list(example.input_ids))
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    ids = list(example.input_ids)
    im_end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    ends = [i for i, t in enumerate(ids) if t == im_end]
    assert len(ends) == 5  # system, user, assistant, user, assistant
    assert [example.labels[i] != IGNORE_INDEX for i in ends] == [False, False, True, False, True]
    assert example.num_labels == sum(lab != IGNORE_INDEX for lab in example.labels)


def test_truncation_keeps_partial_reply_and_drops_reply_less_conversations(smol_tokenizer):
    full = ChatTokenizer(smol_tokenizer, 512)(TWO_TURNS)
    first_label = next(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    cut = ChatTokenizer(smol_tokenizer, first_label + 1)(TWO_TURNS)
    assert len(cut) == first_label + 1 and cut.labels[-1] == cut.input_ids[-1]
    assert ChatTokenizer(smol_tokenizer, first_label)(TWO_TURNS) is None
    result = tokenize_conversations(smol_tokenizer, [TWO_TURNS, TWO_TURNS[:2]], first_label + 1)
    assert result.dropped == 0
    with pytest.raises(KallmError, match="raise max_length"):
        tokenize_conversations(smol_tokenizer, [TWO_TURNS], first_label)


def test_fallback_template_with_warning(smol_tokenizer, caplog):
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = None
    with caplog.at_level(logging.WARNING, logger="kallm.data.tokenize"):
        chat = ChatTokenizer(tok, 512)
    assert "no chat template" in caplog.text and chat.template == FALLBACK_CHAT_TEMPLATE
    example = chat(TWO_TURNS)
    assert tok.decode(list(example.input_ids)).startswith("<|user|>\nHi<|im_end|>\n<|assistant|>\n")
    assert _labelled_text(tok, example) == ["Hello there<|im_end|>", "Ciao<|im_end|>"]


def test_bad_rows_are_located_and_skipped(tmp_path, caplog):
    path = _jsonl(tmp_path / "chat.jsonl", [
        GOOD,
        "{not json",
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"text": "no messages"},
        GOOD,
    ])
    with caplog.at_level(logging.WARNING, logger="kallm.data.loading"):
        data = load_conversations(path)
    assert len(data) == 2 and data.locations == [f"{path}:1", f"{path}:6"]
    assert [b.location for b in data.bad_rows] == [f"{path}:{i}" for i in (2, 3, 4, 5)]
    assert "no assistant turn" in data.bad_rows[1].reason
    assert "messages[0].role is 'robot'" in data.bad_rows[2].reason
    assert "skipped 4 rows" in caplog.text and f"{path}:2: invalid JSON" in caplog.text
    with pytest.raises(KallmError, match=rf"^{path}:2: invalid JSON"):
        load_conversations(path, on_bad_row="error")


@pytest.mark.parametrize(("rows", "message"), [
    ([], "no usable conversations"),
    ([{"messages": []}], r"no usable conversations .* 1 rows broke the schema, first: .*:1: missing or empty"),
])
def test_no_usable_rows_is_an_error(tmp_path, rows, message):
    with pytest.raises(KallmError, match=message):
        load_conversations(_jsonl(tmp_path / "chat.jsonl", rows))


def test_missing_path_and_unsupported_file(tmp_path):
    with pytest.raises(KallmError, match="does not exist"):
        load_conversations(tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(KallmError, match="unsupported data file type '.csv'"):
        load_conversations(tmp_path / "data.csv")
    with pytest.raises(KallmError, match="on_bad_row='warn' is not valid"):
        load_conversations(tmp_path, on_bad_row="warn")


def test_json_parquet_and_folders(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps([GOOD, GOOD]), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([GOOD, {"messages": [{"role": "user", "content": "q"}]}]),
                   folder / "b.parquet")
    _jsonl(folder / "c.jsonl", [GOOD])
    data = load_conversations(folder)
    assert len(data) == 4 and data.conversations[0] == GOOD["messages"]
    assert data.bad_rows[0].location == f"{folder / 'b.parquet'}[row 1]"
    assert len(load_conversations(folder, max_conversations=3)) == 3


def test_shared_chat_data_loads(shared_data):
    data = load_conversations(shared_data / "chat" / "gsm8k_train.jsonl")
    assert len(data) == 7473 and not data.bad_rows
    assert data.conversations[0][0]["content"].startswith("Natalia sold clips")
    sample = load_conversations(shared_data / "chat", max_conversations=50)  # a sample of both files
    assert len(sample) == 50 and {Path(f).name for f in sample.files} == {"gsm8k_train.jsonl", "hh_helpful.jsonl"}


def test_split_is_deterministic_by_seed():
    a = split_indices(100, val_size=10, seed=1)
    assert a == split_indices(100, val_size=10, seed=1)
    assert a != split_indices(100, val_size=10, seed=2)
    assert len(a[1]) == 10 and sorted(a[0] + a[1]) == list(range(100))
    assert len(split_indices(100, val_fraction=0.05)[1]) == 5
    with pytest.raises(KallmError, match="leaves no training data"):
        split_indices(4, val_size=4)


def test_length_grouping_and_schedule():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    batches = epoch_batches(lengths, 8, seed=0, epoch=0)
    assert len(batches) == 25 and sorted(i for b in batches for i in b) == list(range(200))
    assert batches == epoch_batches(lengths, 8, seed=0, epoch=0)
    assert batches != epoch_batches(lengths, 8, seed=0, epoch=1)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    random_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b)
                        for b in epoch_batches(lengths, 8, seed=0, epoch=0, group_by_length=False))
    assert spread < random_spread / 4
    schedule = BatchSchedule(lengths, 8, seed=0)
    assert schedule[3] == batches[3] and schedule[25] == epoch_batches(lengths, 8, seed=0, epoch=1)[0]
    with pytest.raises(KallmError, match="only 3 training conversations"):
        BatchSchedule([5, 6, 7], 4, seed=0)


def test_collate_pads_right_and_ignores_padding(smol_tokenizer):
    chat = ChatTokenizer(smol_tokenizer, 512)
    examples = [chat(TWO_TURNS, index=0), chat(TWO_TURNS[:2], index=1)]
    batch = collate(examples, pad_token_id=0)
    n0, n1 = len(examples[0]), len(examples[1])
    assert batch["input_ids"].shape == (2, n0) and batch["keys"] == [0, 1]
    assert batch["attention_mask"].sum(1).tolist() == [n0, n1]
    assert torch.all(batch["labels"][1, n1:] == IGNORE_INDEX) and torch.all(batch["input_ids"][1, n1:] == 0)
    assert num_label_positions(batch["labels"]) == examples[0].num_labels + examples[1].num_labels
    assert batch["cache_keys"][0] != batch["cache_keys"][1] and batch["cache_keys"][0] == examples[0].key
