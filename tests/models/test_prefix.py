"""Frozen-prefix skipping and caching on real (tiny, random-weight) architectures."""

from __future__ import annotations

import pytest
import torch

from kallm.data import collate
from kallm.data.tokenize import TokenizedExample
from kallm.errors import KallmError
from kallm.models.prefix import (
    PrefixCache,
    prefix_fingerprint,
    prefix_hidden_states,
    tail_hidden_states,
)
from kallm.retrofitting.arch import find_decoder_layers
from kallm.retrofitting.freeze import first_trainable_layer
from tests.tiny_models import make_tiny_model


def _batch(vocab: int = 256, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = (12, 7, 9)
    examples = [
        TokenizedExample(tuple(torch.randint(3, vocab, (n,), generator=g).tolist()), (-100,) * n, i)
        for i, n in enumerate(lengths)
    ]
    return collate(examples, pad_token_id=0)


def _freeze_below(model, k: int) -> None:
    model.requires_grad_(False)
    _, layers = find_decoder_layers(model)
    for layer in list(layers)[k:]:
        layer.requires_grad_(True)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "opt"])
def test_tail_from_prefix_states_equals_full_model(arch):
    model = make_tiny_model(arch)
    batch = _batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        states = prefix_hidden_states(model, ids, mask, 2)
        tail = model.get_output_embeddings()(tail_hidden_states(model, ids, mask, 2, states))
    real = mask.bool()
    assert torch.allclose(tail[real], full[real], atol=1e-5)
    # The swapped-in passthrough layers are gone again.
    _, layers = find_decoder_layers(model)
    assert all(type(layer).__name__ != "_Passthrough" for layer in layers)


def test_first_trainable_layer_by_hand_freezing():
    model = make_tiny_model("llama")
    _freeze_below(model, 3)
    assert first_trainable_layer(model) == 3
    model.get_input_embeddings().requires_grad_(True)  # tied with the LM head: acts before layer 0
    assert first_trainable_layer(model) is None
    model.requires_grad_(False)
    assert first_trainable_layer(model) is None


def test_first_trainable_layer_ignores_trainable_final_norm():
    model = make_tiny_model("qwen2")  # untied LM head
    _freeze_below(model, 2)
    model.model.norm.requires_grad_(True)
    model.lm_head.requires_grad_(True)
    assert first_trainable_layer(model) == 2


def test_prefix_runs_without_autograd():
    model = make_tiny_model("llama")
    _freeze_below(model, 2)
    batch = _batch()
    states = prefix_hidden_states(model, batch["input_ids"], batch["attention_mask"], 2)
    assert not states.requires_grad and states.grad_fn is None


def test_prefix_cache_roundtrip_and_reuse(tmp_path):
    model = make_tiny_model("llama")
    batch = _batch()
    path = tmp_path / "prefix.safetensors"
    cache = PrefixCache.build(model, [batch], 2, path)
    assert len(cache) == 3 and path.is_file()
    loaded = PrefixCache.load(path)
    assert loaded.fingerprint == prefix_fingerprint(model, 2)
    direct = prefix_hidden_states(model, batch["input_ids"], batch["attention_mask"], 2)
    got = loaded.batch_states(batch)
    real = batch["attention_mask"].bool()
    assert torch.allclose(got[real], direct[real], atol=1e-6)
    assert torch.all(got[~real] == 0)
    with torch.no_grad():
        full = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
        tail = model.lm_head(tail_hidden_states(model, batch["input_ids"], batch["attention_mask"], 2, got))
    assert torch.allclose(tail[real], full[real], atol=1e-5)


def test_prefix_cache_refuses_another_model(tmp_path):
    path = tmp_path / "prefix.safetensors"
    PrefixCache.build(make_tiny_model("llama", seed=0), [_batch()], 2, path)
    other = make_tiny_model("llama", seed=1)
    with pytest.raises(KallmError, match="another model prefix"):
        PrefixCache.load(path).check(other, 2)
    with pytest.raises(KallmError, match="another model prefix"):
        PrefixCache.load(path).check(make_tiny_model("llama", seed=0), 1)


def test_prefix_cache_computes_in_its_precision_and_refuses_another(tmp_path):
    model = make_tiny_model("llama")
    batch = _batch()
    real = batch["attention_mask"].bool()
    path = tmp_path / "prefix-bf16.safetensors"
    cache = PrefixCache.build(model, [batch], 2, path, dtype=torch.bfloat16, precision="bf16")
    fp32 = PrefixCache.build(model, [batch], 2).batch_states(batch)
    loaded = PrefixCache.load(path)
    assert (loaded.precision, loaded.dtype) == ("bf16", torch.bfloat16)
    got = loaded.batch_states(batch)
    assert got.dtype == torch.bfloat16 and torch.equal(got, cache.batch_states(batch))
    # Computed under bf16 autocast (not float32 states rounded afterwards), and close to float32.
    assert not torch.equal(got[real], fp32[real].bfloat16())
    assert ((got[real].float() - fp32[real]).norm() / fp32[real].norm()) < 2e-2
    with pytest.raises(KallmError, match="computed in bf16, this run computes in fp32"):
        loaded.check(model, 2, "fp32")
    with pytest.raises(KallmError, match="computed in bf16, this run computes in fp32"):
        PrefixCache.build(model, [batch], 2, path, precision="fp32")
    with pytest.raises(KallmError, match="'fp32' or 'bf16'"):
        PrefixCache(2, "f", precision="auto")
