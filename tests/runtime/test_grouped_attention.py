"""Grouped bf16 attention: the same attention as SDPA (to bf16 rounding), used only where it should be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kallm.runtime.grouped_attention import (
    NAME,
    grouped_attention,
    grouped_attention_forward,
    grouped_attention_in_bf16,
    takes_call,
)
from kallm.runtime.precision import autocast
from tests.tiny_models import TINY_CONFIGS, make_tiny_model

B, H, KV, LQ, D = 3, 6, 2, 7, 16


def qkv(q_len: int = LQ, k_len: int = LQ, kv: int = KV, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, q_len, D, generator=g), torch.randn(B, kv, k_len, D, generator=g),
            torch.randn(B, kv, k_len, D, generator=g))


def reference(q, k, v, mask=None, is_causal=False):
    """float64 SDPA with every key/value head repeated for its query heads."""
    rep = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(rep, 1),
                                          v.double().repeat_interleave(rep, 1), attn_mask=mask, is_causal=is_causal)


def padding_causal_mask(q_len: int = LQ, k_len: int = LQ) -> torch.Tensor:
    lengths = torch.tensor([k_len, k_len - 2, k_len - 4])
    causal = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
    return (causal[None] & (torch.arange(k_len)[None, :] < lengths[:, None])[:, None, :])[:, None]


def close_to_reference(out, expected, tol=0.03):
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    assert (out.double() - expected).abs().max().item() < tol


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_masked_attention_matches_sdpa(kind):
    q, k, v = qkv()
    mask = padding_causal_mask()
    given = mask if kind == "bool" else torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    close_to_reference(grouped_attention(q, k, v, given, D ** -0.5, is_causal=False), reference(q, k, v, mask))


def test_without_a_mask_causal_and_full_attention_match_sdpa():
    q, k, v = qkv()
    close_to_reference(grouped_attention(q, k, v, None, D ** -0.5, is_causal=True), reference(q, k, v, is_causal=True))
    q1, k1, v1 = qkv(q_len=1, k_len=9)  # one decoding step sees every cached key
    close_to_reference(grouped_attention(q1, k1, v1, None, D ** -0.5, is_causal=True), reference(q1, k1, v1))


def test_per_head_masks_and_one_key_head_per_query_head():
    q, k, v = qkv(kv=H)
    mask = padding_causal_mask().expand(B, H, LQ, LQ).clone()
    mask[:, 1, :, 0] = False  # one head may not see the first token
    mask[:, :, :, :1] |= torch.eye(LQ, dtype=torch.bool)[:, :1]  # every query still sees something
    close_to_reference(grouped_attention(q, k, v, mask, D ** -0.5, is_causal=False), reference(q, k, v, mask))


@pytest.mark.parametrize("blocked", [False, torch.finfo(torch.float32).min, float("-inf")])
def test_a_query_that_sees_nothing_attends_uniformly_instead_of_nan(blocked):
    q, k, v = qkv()
    mask = torch.ones(B, 1, LQ, LQ, dtype=torch.bool)
    mask[:, :, 0] = False
    if blocked is not False:  # an additive mask, as transformers makes them (or with -inf)
        mask = torch.zeros(mask.shape).masked_fill(~mask, blocked)
    out = grouped_attention(q, k, v, mask, D ** -0.5, is_causal=False)
    uniform = v.double().mean(2).repeat_interleave(H // KV, 1)
    assert not out.isnan().any()
    assert (out[:, :, 0].double() - uniform).abs().max() < 0.02


def test_gradients_match_sdpa():
    q, k, v = (t.requires_grad_() for t in qkv())
    mask = padding_causal_mask()
    grouped_attention(q, k, v, mask, D ** -0.5, is_causal=False).float().square().sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    reference(q64, k64, v64, mask).square().sum().backward()
    for g, ref in zip(got, (q64.grad, k64.grad, v64.grad)):
        assert (g.double() - ref).abs().max() < 0.05 * ref.abs().max()


def test_it_serves_bf16_cpu_calls_only_and_leaves_the_rest_to_sdpa():
    q, k, _ = qkv()
    assert not takes_call(q, k, 0.0, {})  # float32, no autocast: torch's flash kernel is faster there
    assert takes_call(q.bfloat16(), k.bfloat16(), 0.0, {})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert takes_call(q, k, 0.0, {})
        assert not takes_call(q, k, 0.1, {})  # attention dropout
        assert not takes_call(q, k, 0.0, {"softcap": 30.0})
        assert not takes_call(q, torch.empty(B, 4, LQ, D), 0.0, {})  # 6 query heads do not group into 4
        big_q, big_k = torch.empty(8, 9, 512, 1), torch.empty(8, 3, 512, 1)  # 72 MiB of float32 scores
        assert not takes_call(big_q, big_k, 0.0, {})


def test_the_interface_function_returns_what_sdpa_returns():
    q, k, v = qkv()
    module = torch.nn.Module()
    mask = padding_causal_mask()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, weights = grouped_attention_forward(module, q, k, v, mask)
    assert weights is None and out.shape == (B, LQ, H, D)
    close_to_reference(out, reference(q, k, v, mask).transpose(1, 2))


def test_models_switch_for_the_block_only(tmp_path):
    model, other = make_tiny_model("llama"), make_tiny_model("llama")
    other.set_attn_implementation("eager")
    with grouped_attention_in_bf16(model, other, None) as switched:
        assert switched == 1
        assert model.config._attn_implementation == NAME and other.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_bf16_forward_and_backward_agree_with_plain_autocast_on_every_architecture(arch, monkeypatch):
    import kallm.runtime.grouped_attention as module

    calls = []
    monkeypatch.setattr(module, "grouped_attention", lambda *a: calls.append(1) or grouped_attention(*a))
    model = make_tiny_model(arch)
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 9:] = 0  # right padding: every query sees at least itself
    outputs = []
    for block in (lambda: torch.autocast("cpu", dtype=torch.bfloat16), lambda: autocast("bf16", "cpu", model)):
        model.zero_grad()
        with block():
            logits = model(input_ids=ids, attention_mask=attention_mask).logits.float()
        logits[attention_mask.bool()].square().mean().backward()
        grad = next(p for p in model.parameters() if p.grad is not None).grad.clone()
        outputs.append((logits.detach(), grad))
    (plain, plain_grad), (ours, our_grad) = outputs
    assert len(calls) == model.config.num_hidden_layers  # every layer's attention went through it, once
    keep = attention_mask.bool()
    assert (plain[keep] - ours[keep]).abs().max() < 0.05 * plain[keep].abs().max()
    assert (plain_grad - our_grad).abs().max() < 0.1 * plain_grad.abs().max()


def test_greedy_generation_with_a_cache_and_padding_matches_plain_autocast():
    from kallm.evaluation.bbh.generation import generate_greedy
    from tests.tiny_models import make_tiny_tokenizer

    model, tokenizer = make_tiny_model("llama"), make_tiny_tokenizer()
    prompts = ["t5 t6 t7 t8 t9 t10 t11", "t20 t21", "t30 t31 t32 t33"]  # different lengths: padded batches
    texts = []
    for block in (lambda: torch.autocast("cpu", dtype=torch.bfloat16), lambda: autocast("bf16", "cpu", model)):
        with torch.inference_mode(), block():
            texts.append(generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=3, progress=False))
    assert texts[0] == texts[1] and all(texts[0])
