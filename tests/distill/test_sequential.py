"""Sequential distillation: bottom-up fits on the retrofitted model's own states recover what can be recovered."""

from __future__ import annotations

import copy

import pytest
import torch

from kallm.distill.layerwise import DistillConfig
from kallm.distill.sequential import sequential_distill
from kallm.distill.teacher import build_teacher
from kallm.errors import KallmError
from kallm.kan import build_kan, parse_kan_spec
from kallm.retrofitting import retrofit
from kallm.retrofitting.displaced import keep_originals
from kallm.retrofitting.surgery import replacement_modules
from tests.tiny_models import make_tiny_model


def _batches(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 256, (4, 24), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 18:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _model_whose_original_ffns_are_kans(arch: str):
    """A retrofit whose *displaced* FFNs are KANs of known weights: the fit can recover them exactly."""
    model = make_tiny_model(arch).double()
    retrofit(model, layers="last:2", variant="kan:chebyshev2:2", freeze="ffn", seed=0)
    truth = []
    for layer in list(model.base_model.layers if arch == "llama" else model.base_model.h)[2:]:
        new = replacement_modules(layer)[0]
        torch.manual_seed(len(truth) + 7)
        kan = build_kan(parse_kan_spec("chebyshev2:2"), 32, 32).double()
        with torch.no_grad():
            for p in kan.parameters():
                p.normal_(0, 0.3)
        keep_originals(model, [(new, kan)])  # the teacher now holds these in place of the MLPs
        truth.append(kan)
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("target", ["ffn", "block"])
def test_a_representable_original_is_recovered_exactly(arch, target):
    model = _model_whose_original_ffns_are_kans(arch)
    teacher = build_teacher(model)
    batches = _batches()
    fits = sequential_distill(model, teacher, batches, DistillConfig(tokens=100_000, ridge=1e-12), target=target)
    assert [f.layer for f in fits] == [2, 3]
    assert all(f.fvu < 1e-10 for f in fits), [f.fvu for f in fits]
    probe = _batches(1, seed=1)[0]
    with torch.no_grad():
        got = model(**probe).logits
        want = teacher(**probe).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_block_target_absorbs_the_error_from_below():
    """With layer 2 unable to match, 'block' makes layer 3's output match better than 'ffn' does."""
    base = make_tiny_model("llama").double()
    outputs = {}
    for target in ("ffn", "block"):
        model = copy.deepcopy(base)
        retrofit(model, layers="last:2", variant="kan:chebyshev2:2", freeze="ffn", seed=0)
        teacher = build_teacher(model)
        sequential_distill(model, teacher, _batches(), DistillConfig(tokens=100_000, ridge=1e-6), target=target)
        batch = _batches(1, seed=0)[0]  # a fitted batch: 'block' minimises exactly this error
        with torch.no_grad():
            s = model.model(**batch).last_hidden_state
            t = teacher.model(**batch).last_hidden_state
        outputs[target] = float((s - t)[batch["attention_mask"].bool()].pow(2).mean())
    assert outputs["block"] < outputs["ffn"]


def test_layer_zero_cannot_be_fitted_sequentially():
    model = make_tiny_model("llama")
    retrofit(model, layers="0,3", variant="kan:chebyshev2:2", seed=0)
    with pytest.raises(KallmError, match="layer 0"):
        sequential_distill(model, build_teacher(model), _batches(1))
    with pytest.raises(KallmError, match="'ffn' or 'block'"):
        sequential_distill(model, build_teacher(model), _batches(1), target="layer")


@pytest.mark.parametrize("target", ["ffn", "block"])
def test_each_teacher_layer_runs_once_per_batch(target):
    """The teacher's layer k gives both layer k's fit target and the states entering k + 1 (one pass)."""
    model = make_tiny_model("llama")
    retrofit(model, layers="last:2", variant="kan:chebyshev2:2", freeze="ffn", seed=0)
    teacher = build_teacher(model)
    calls = {i: 0 for i in range(len(teacher.model.layers))}
    for i, layer in enumerate(teacher.model.layers):
        layer.register_forward_hook(lambda _m, _a, _o, i=i: calls.__setitem__(i, calls[i] + 1))
    batches = _batches(3)
    sequential_distill(model, teacher, batches, DistillConfig(tokens=100_000), target=target)
    first = len(teacher.model.layers) - 2
    assert {i: n for i, n in calls.items() if i >= first} == {first: 3, first + 1: 3}
