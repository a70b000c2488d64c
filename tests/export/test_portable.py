"""The exported model code on its own, and retrofits in the user's own training stack (transformers.Trainer)."""

from __future__ import annotations

import json

import pytest
import torch

from kallm.export.pretrained import export_pretrained, release_dynamic_code
from kallm.retrofitting.surgery import retrofit
from tests.tiny_models import make_tiny_model
from tests.training_helpers import write_chat_sample


@pytest.fixture
def chat_ids(smol_tokenizer, shared_data, tmp_path) -> list[dict[str, list[int]]]:
    """16 real conversations, chat-templated and tokenized as a Trainer user would (64 tokens at most)."""
    path = write_chat_sample(shared_data, tmp_path / "chat.jsonl", n=16)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    texts = [smol_tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    return [{"input_ids": smol_tokenizer(t, truncation=True, max_length=64)["input_ids"]} for t in texts]


def _train_with_trainer(model, tokenizer, data, out) -> list[float]:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(out), max_steps=12, per_device_train_batch_size=4, learning_rate=1e-2,
                             lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=0, optim="adamw_torch")
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def _check_trains_only_new(model, tokenizer, data, out) -> None:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = _train_with_trainer(model, tokenizer, data, out)
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    new = {n for n in before if ".kallm_ffn." in n}
    assert changed == new and new


def test_a_retrofit_trains_with_transformers_trainer(smol_tokenizer, chat_ids, tmp_path):
    model = make_tiny_model("llama", vocab_size=len(smol_tokenizer))
    retrofit(model, layers="last:2", variant="kan:chebyshev2:2", freeze="ffn")
    _check_trains_only_new(model, smol_tokenizer, chat_ids, tmp_path / "trainer")


def test_an_export_trains_with_trainer_after_freeze_like_retrofit(smol_tokenizer, chat_ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_tiny_model("llama", vocab_size=len(smol_tokenizer))
    report = retrofit(model, layers="last:2", variant="kan:parallel(chebyshev2:2,legendre:3)", freeze="ffn")
    folder = export_pretrained(model, tmp_path / "export", tokenizer=smol_tokenizer, verify=False)
    loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    try:
        assert all(p.requires_grad for p in loaded.parameters())  # transformers' convention after loading
        assert loaded.freeze_like_retrofit() == report.trainable_params
        assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {
            n for n, p in model.named_parameters() if p.requires_grad}
        assert loaded.freeze_like_retrofit("blocks") > report.trainable_params  # the whole retrofitted layers
        loaded.freeze_like_retrofit()
        _check_trains_only_new(loaded, smol_tokenizer, chat_ids, tmp_path / "trainer")
    finally:
        release_dynamic_code(type(loaded))
