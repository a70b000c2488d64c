"""The teacher: the untouched model rebuilt beside a retrofit, sharing what is frozen, copying what trains."""

from __future__ import annotations

import copy

import pytest
import torch

from kallm.distill.teacher import build_teacher, teacher_hidden_states
from kallm.models.prefix import prefix_hidden_states
from kallm.retrofitting import retrofit
from tests.tiny_models import make_tiny_model


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 256, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return ids, mask


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("freeze", ["ffn", "blocks"])
def test_teacher_tail_on_prefix_states_gives_the_original_logits(arch, freeze):
    model = make_tiny_model(arch)
    original = copy.deepcopy(model)
    retrofit(model, layers="last:2", variant="kan:chebyshev2:2", freeze=freeze, seed=0)
    teacher = build_teacher(model)
    ids, mask = _batch()
    with torch.no_grad():
        expected = original(input_ids=ids, attention_mask=mask).logits
        full = teacher(input_ids=ids, attention_mask=mask).logits
        states = prefix_hidden_states(model, ids, mask, 2)  # the *student's* prefix: shared, frozen
        tail = teacher.get_output_embeddings()(teacher_hidden_states(teacher, ids, mask, 2, states))
        student = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(full[real], expected[real], atol=1e-5)
    assert torch.allclose(tail[real], full[real], atol=1e-5)
    assert not torch.allclose(student[real], expected[real], atol=1e-2)  # the retrofit did change the model


def test_frozen_tensors_are_shared_and_trainable_ones_copied_before_training():
    model = make_tiny_model("llama")
    retrofit(model, layers="last:2", variant="kan:chebyshev2:2", freeze="blocks", seed=0)
    teacher = build_teacher(model)
    student = {id(p) for p in model.parameters()}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert all(not p.requires_grad for p in teacher.parameters())
    shared = [p for p in teacher.parameters() if id(p) in student]
    assert {id(p) for p in shared} == frozen  # every frozen tensor shared, no trainable one
    attn = model.model.layers[3].self_attn.q_proj.weight
    before = attn.detach().clone()
    with torch.no_grad():
        attn.add_(1.0)  # training moves the student's attention ...
    assert torch.equal(teacher.model.layers[3].self_attn.q_proj.weight, before)  # ... not the teacher's


def test_freeze_ffn_teacher_holds_the_displaced_ffns_and_copies_nothing():
    model = make_tiny_model("llama")
    originals = [copy.deepcopy(model.model.layers[i].mlp) for i in (2, 3)]
    retrofit(model, layers="last:2", variant="linear", freeze="ffn", seed=0)
    teacher = build_teacher(model)
    for i, original in zip((2, 3), originals):
        for a, b in zip(teacher.model.layers[i].mlp.parameters(), original.parameters()):
            assert torch.equal(a, b)
    student = {id(p) for p in model.parameters()}
    copied = [p for p in teacher.parameters() if id(p) not in student]
    assert sum(p.numel() for p in copied) == sum(p.numel() for m in originals for p in m.parameters())
