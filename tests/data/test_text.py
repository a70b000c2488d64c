"""Plain-text training data (for distillation): .txt documents or .jsonl rows with a `text` field."""

from __future__ import annotations

import json

import pytest

from kallm.data import ConversationSet, TextSet, load_training_data, tokenize_texts
from kallm.errors import KallmError


def _text_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_txt_files_and_text_jsonl_load_as_documents(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("The first document.", encoding="utf-8")
    (tmp_path / "docs" / "b.txt").write_text("The second one.", encoding="utf-8")
    texts = load_training_data(tmp_path / "docs")
    assert isinstance(texts, TextSet) and texts.texts == ["The first document.", "The second one."]
    rows = _text_jsonl(tmp_path / "t.jsonl", [{"text": "one"}, {"text": 3}, {"text": "two"}])
    texts = load_training_data(str(rows))
    assert texts.texts == ["one", "two"] and texts.locations == [f"{rows}:1", f"{rows}:3"]
    assert [str(b) for b in texts.bad_rows] == [f"{rows}:2: expected a JSON object with a 'text' string"]
    with pytest.raises(KallmError, match=f"{rows}:2"):
        load_training_data(rows, on_bad_row="error")
    assert len(load_training_data(rows, max_conversations=1)) == 1
    assert texts.subset([1]).texts == ["two"]


def test_chat_files_still_load_as_conversations_and_mixing_is_refused(shared_data, tmp_path):
    chat = shared_data / "chat" / "gsm8k_train.jsonl"
    assert isinstance(load_training_data(chat, max_conversations=2), ConversationSet)
    rows = _text_jsonl(tmp_path / "t.jsonl", [{"text": "plain"}])
    with pytest.raises(KallmError, match="mixes plain text"):
        load_training_data([rows, chat])


def test_documents_become_windows_whose_every_token_is_a_target(smol_tokenizer):
    text = " ".join(["word"] * 50)
    n = len(smol_tokenizer(text, add_special_tokens=False)["input_ids"])
    tokenized = tokenize_texts(smol_tokenizer, [text, "a b"], max_length=16)
    first_doc = [e for e in tokenized.examples if e.index == 0]
    assert [len(e) for e in first_doc] == [16] * (n // 16) + ([n % 16] if n % 16 >= 2 else [])
    assert all(e.labels == e.input_ids and e.num_labels == len(e) - 1 for e in tokenized.examples)
    with pytest.raises(KallmError, match="2 or more tokens"):
        tokenize_texts(smol_tokenizer, ["a"], max_length=16)
