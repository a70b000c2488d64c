"""Distillation from the original model: the chunked loss against a naive full-vocabulary reference,
the teacher == student case, memory as the chunk shrinks, and exact resume."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.profiler import ProfilerActivity, profile

from kallm.data import collate, load_conversations, tokenize_conversations
from kallm.distill.teacher import build_teacher
from kallm.models.prefix import prefix_hidden_states
from kallm.retrofitting import retrofit
from kallm.training import train_model
from kallm.training.checkpoint import latest_checkpoint
from kallm.training.config import TrainConfig
from kallm.training.kd import DistillTerms, linear_distill_loss
from kallm.training.loss_terms import kd_row_mask
from kallm.training.objective import LossSpec, ObjectiveLoss
from tests.tiny_models import make_tiny_model
from tests.training_helpers import Interrupt, StopAt, step_losses, write_chat_sample


@pytest.fixture(scope="module")
def batch(shared_data, smol_tokenizer, tmp_path_factory):
    """Three real chat conversations, tokenised with the real template (assistant-only labels)."""
    chat = load_conversations(write_chat_sample(shared_data, tmp_path_factory.mktemp("kd") / "c.jsonl", n=3))
    examples = tokenize_conversations(smol_tokenizer, chat.conversations, 96).examples
    return collate(examples, smol_tokenizer.pad_token_id), examples


def _student_and_original(vocab: int, variant: str = "kan:chebyshev2:2", freeze: str = "ffn",
                          dtype: torch.dtype = torch.float32):
    model = make_tiny_model("llama", vocab_size=vocab).to(dtype)
    original = copy.deepcopy(model)
    retrofit(model, layers="last:2", variant=variant, freeze=freeze, seed=0)
    return model, original


def _objective(model, spec: str, positions: str = "assistant", temperature: float = 1.0, chunk: int = 7):
    return ObjectiveLoss(model, build_teacher(model), 2, LossSpec.from_text(spec), positions, temperature, chunk)


def _naive(model, original, batch, spec: LossSpec, positions: str, temperature: float) -> torch.Tensor:
    """Full (batch, seq, vocab) logits of both models, float64, straight from the definitions."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    z = model(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
    with torch.no_grad():
        t = original(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
    rows = kd_row_mask(mask, labels, positions)
    labelled = labels[:, 1:] != -100
    ce = F.cross_entropy(z[labelled], labels[:, 1:][labelled], reduction="sum")
    log_q, log_p = F.log_softmax(z[rows] / temperature, -1), F.log_softmax(t[rows] / temperature, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum()
    return (spec.weight("ce") * ce / labelled.sum() + spec.weight("kd") * temperature ** 2 * kl / rows.sum())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spec,positions,temperature", [("kd", "assistant", 1.0), ("kd", "all", 2.0),
                                                        ("0.3*ce+kd", "assistant", 1.0), ("ce+kd", "all", 3.0)])
def test_chunked_kd_equals_the_naive_full_vocabulary_reference(batch, smol_tokenizer, spec, positions, temperature,
                                                               dtype):
    """float64: the algorithm (chunks, in-place buffers, gradient formulas) is exact; float32 (what
    training uses) stays within 1e-6 of the float64 reference."""
    collated, examples = batch
    model, original = _student_and_original(len(smol_tokenizer), dtype=dtype)
    objective = _objective(model, spec, positions, temperature)
    states = prefix_hidden_states(model, collated["input_ids"], collated["attention_mask"], 2)
    loss, parts = objective(collated["input_ids"], collated["attention_mask"], collated["labels"], states,
                            scales=objective.scales(examples))
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    reference = _naive(model, original, collated, objective.spec, positions, temperature)
    reference.backward()
    exact = dtype == torch.float64
    if exact:
        assert float(loss) == pytest.approx(float(reference), rel=1e-12, abs=0)
    else:
        assert float(loss) == pytest.approx(float(reference), rel=1e-6, abs=1e-6)  # float32 carries ~7 digits
    for name, p in model.named_parameters():
        if p.requires_grad:
            tol = dict(rtol=1e-7, atol=1e-12) if exact else dict(rtol=1e-3, atol=1e-6)
            assert torch.allclose(ours[name], p.grad.to(ours[name].dtype), **tol), name
    assert parts[0] > 0 and parts[1] > 0  # the CE sum is reported even when only KD trains


def test_teacher_equal_to_student_gives_zero_loss_and_zero_gradients(batch, smol_tokenizer):
    collated, examples = batch
    model = make_tiny_model("llama", vocab_size=len(smol_tokenizer))
    originals = [copy.deepcopy(model.model.layers[i].mlp) for i in (2, 3)]
    retrofit(model, layers="last:2", variant="linear", freeze="ffn", seed=0)
    with torch.no_grad():  # the "new" FFNs are the originals again: the student is the teacher
        for i, original in zip((2, 3), originals):
            for new, old in zip(model.model.layers[i].mlp.kallm_ffn.parameters(), original.parameters()):
                new.copy_(old)
    objective = _objective(model, "kd", "all", temperature=2.0)
    loss, parts = objective(collated["input_ids"], collated["attention_mask"], collated["labels"],
                            scales=objective.scales(examples))
    loss.backward()
    assert abs(float(loss)) < 1e-6 and abs(float(parts[1])) < 1e-4
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert float(p.grad.abs().max()) < 1e-6, name


def _peak_bytes(fn) -> int:
    """Peak CPU bytes allocated while `fn` runs, from the profiler's allocator events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = [e["args"] for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    start = events[0]["Total Allocated"] - events[0]["Bytes"]
    return max(e["Total Allocated"] for e in events) - start


def test_kd_step_peak_memory_shrinks_with_the_chunk(batch, smol_tokenizer):
    collated, examples = batch
    vocab = len(smol_tokenizer)
    model, _ = _student_and_original(vocab)
    states = prefix_hidden_states(model, collated["input_ids"], collated["attention_mask"], 2)
    rows = int(collated["attention_mask"][:, 1:].sum())

    def step(chunk: int) -> None:
        objective = _objective(model, "ce+kd", "all", chunk=chunk)
        loss, _ = objective(collated["input_ids"], collated["attention_mask"], collated["labels"], states,
                            scales=objective.scales(examples))
        loss.backward()
        model.zero_grad(set_to_none=True)

    peaks = {chunk: _peak_bytes(lambda chunk=chunk: step(chunk)) for chunk in (4, 16, 64)}
    logits_row = vocab * 4  # one float32 row of logits
    assert peaks[4] < peaks[16] < peaks[64]
    # the growth is a few (chunk x vocab) buffers, never the (rows x vocab) logits of both models
    assert peaks[64] - peaks[4] <= 4 * 60 * logits_row
    assert peaks[4] < rows * logits_row  # less than ONE full logits tensor of this batch


def test_kd_training_resumes_exactly(shared_data, smol_tokenizer, tmp_path):
    chat = load_conversations(write_chat_sample(shared_data, tmp_path / "chat.jsonl", n=24))
    config = TrainConfig(steps=6, batch_size=4, max_length=96, lr=1e-3, warmup_steps=1, eval_every=3, val_size=4,
                         save_every=3, precision="fp32", loss="ce+kd", kd_positions="all", kd_temperature=2.0,
                         prefix_cache=True)

    def fresh():
        # freeze=blocks: the teacher must keep the *original* attention while the student's trains
        model, _ = _student_and_original(len(smol_tokenizer), freeze="blocks")
        return model

    train_model(fresh(), smol_tokenizer, chat, config, tmp_path / "straight", progress=False)
    with pytest.raises(Interrupt):
        train_model(fresh(), smol_tokenizer, chat, config, tmp_path / "split", progress=False,
                    callbacks=[StopAt(3)])
    assert latest_checkpoint(tmp_path / "split" / "checkpoints").name == "step-00000003"
    train_model(fresh(), smol_tokenizer, chat, config, tmp_path / "split", resume=True, progress=False)
    a, b = step_losses(tmp_path / "straight" / "metrics.jsonl"), step_losses(tmp_path / "split" / "metrics.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(abs(a[s] - b[s]) < 1e-6 for s in a)
    wa = load_file(tmp_path / "straight" / "checkpoints" / "step-00000006" / "trainable.safetensors")
    wb = load_file(tmp_path / "split" / "checkpoints" / "step-00000006" / "trainable.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_kd_metrics_record_each_term(shared_data, smol_tokenizer, tmp_path):
    from kallm.io import read_jsonl

    chat = load_conversations(write_chat_sample(shared_data, tmp_path / "chat.jsonl", n=12))
    model, _ = _student_and_original(len(smol_tokenizer))
    config = TrainConfig(steps=3, batch_size=4, max_length=96, lr=1e-3, warmup_steps=0, eval_every=0, val_size=4,
                         save_every=0, precision="fp32", loss="0.5*ce+kd+0.1*hidden")
    train_model(model, smol_tokenizer, chat, config, tmp_path / "run", progress=False)
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    for r in rows:
        assert {"ce", "kd", "hidden"} <= set(r)
        assert r["loss"] == pytest.approx(0.5 * r["ce"] + r["kd"] + 0.1 * r["hidden"], rel=1e-5)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["loss"] == "0.5*ce+kd+0.1*hidden"


def test_distill_terms_without_a_teacher_are_refused():
    head = torch.nn.Linear(4, 9)
    with pytest.raises(ValueError, match="needs the teacher"):
        linear_distill_loss(torch.randn(3, 4), head, None, None, torch.zeros(3, dtype=torch.long), DistillTerms())


def test_ce_only_terms_equal_the_labelled_cross_entropy():
    from kallm.training.loss import linear_cross_entropy_sum

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50)
    hidden = torch.randn(11, 8, dtype=torch.float32)
    targets = torch.randint(0, 50, (11,))
    targets[::4] = -100
    loss, sums = linear_distill_loss(hidden, head, None, None, targets, DistillTerms(ce_scale=0.5, kd_scale=0.0), 3)
    keep = targets != -100
    expected = linear_cross_entropy_sum(hidden[keep], head, targets[keep])
    assert float(loss) == pytest.approx(0.5 * float(expected), rel=1e-6)
    assert float(sums[0]) == pytest.approx(float(expected), rel=1e-6) and float(sums[1]) == 0.0


def test_kd_trains_on_plain_text(shared_data, smol_tokenizer, tmp_path):
    from kallm.data import load_training_data
    from kallm.io import read_jsonl

    chat = load_conversations(shared_data / "chat" / "hh_helpful.jsonl", max_conversations=12)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": " ".join(m["content"] for m in c)}) for c in chat.conversations),
                    encoding="utf-8")
    model, _ = _student_and_original(len(smol_tokenizer))
    config = TrainConfig(steps=4, batch_size=4, max_length=48, lr=1e-2, warmup_steps=0, eval_every=0, val_size=0,
                         save_every=0, precision="fp32", loss="kd", kd_positions="all")
    train_model(model, smol_tokenizer, load_training_data(docs), config, tmp_path / "run", progress=False)
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(rows) == 4 and all(r["kd"] == pytest.approx(r["loss"]) and r["kd"] > 0 for r in rows)
    assert rows[-1]["kd"] < rows[0]["kd"]
