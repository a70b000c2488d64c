"""Attention as two grouped bf16 matmuls while bf16 autocast runs on a CPU.

torch's CPU flash attention is no faster in bf16 than in float32: its inner products are not done by
the CPU's bf16 dot-product units. Measured on this project's machine (AVX512-BF16, 2 threads), 4
sequences × 9 query heads in 3 key/value groups × 221 tokens, padding mask: forward 4.2 ms in bf16
against 4.1 ms in float32, forward + backward 15.9 against 13.1 ms. Written as a bf16 matmul for the
scores, a softmax (computed in float32) and a bf16 matmul for the values, with the query heads that share a key/value
head stacked into one matmul (keys and values are never repeated per head), the same attention takes
3.1 and 9.0 ms; a bf16 training step of the embedded SmolLM2 (last:5 KAN, 4×256 tokens) ran about 12%
faster (alternating runs: 8% with the scores scaled and masked in float32, 4% more with them kept in bf16).

The numerics are close to those of transformers' `eager` attention under autocast: the scores come out
of the bf16 matmul rounded to bf16 (flash keeps them in float32), the softmax computes in float32 and its
probabilities are rounded to bf16 for the second matmul; the scale is applied to the queries before their
rounding, not to the scores after it. Masked positions get bf16's lowest value, so a query that sees
nothing attends uniformly, as in eager attention, instead of producing NaN.

The scores are materialised, so this is used only while they stay small: at most HEAP_BLOCK_BYTES / 4
scores for the whole call (6.3M, e.g. 4 sequences × 9 heads × 420 tokens; memory then stays within tens of
MB per layer; beyond it flash, whose memory does not grow with the square of the length, was also faster
here with the scores in float32: 4×512 tokens, forward 17.8 ms flash against 39.5 ms). Everything else goes to transformers' own `sdpa`: float32 runs,
other devices, attention dropout, position biases, soft-capping, attention sinks, head counts that do
not group, larger calls.

`grouped_attention_in_bf16(models)` switches models that run `sdpa` to this implementation for the
duration of a block (`kallm.runtime.precision.autocast` does it on a CPU in bf16); their configs say `sdpa`
again after it, so nothing saved or exported ever names it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kallm.runtime.allocator import HEAP_BLOCK_BYTES

NAME = "kallm_grouped_bf16"
_DELEGATED_KWARGS = ("position_bias", "softcap", "s_aux", "sinks")


def grouped_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                      scale: float, is_causal: bool) -> torch.Tensor:
    """softmax(Q K^T * scale + mask) V in bf16 matmuls, query heads grouped by their key/value head.

    query [B, H, Lq, D], key and value [B, KV, Lk, D] with H a multiple of KV (head h reads key/value
    head h // (H/KV), as transformers' repeat_kv arranges them); mask None, bool (True = attend) or
    additive float, broadcastable to [B, H, Lq, Lk]. is_causal applies only without a mask, as in SDPA.
    Returns [B, H, Lq, Dv] in bf16."""
    batch, heads, q_len, _ = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    per_group = heads // kv_heads
    if mask is None and is_causal and q_len > 1:
        if k_len > q_len:  # prefill into an empty static cache: keys past the queries are empty slots
            key, value, k_len = key[:, :, :q_len], value[:, :, :q_len], q_len
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()
    # The scale goes into the queries, in float32 before their one rounding to bf16, so the scores can stay
    # bf16 from the matmul to the softmax: torch's bf16 softmax computes in float32 inside and rounds its
    # output once, the rounding the second matmul needs anyway. (Scaled and masked in float32 instead, the
    # two casts of the [B, H, Lq, Lk] scores took as long as the softmax.)
    grouped_q = query.float().mul(scale).to(torch.bfloat16).reshape(batch, kv_heads, per_group * q_len, -1)
    scores = torch.matmul(grouped_q, key.to(torch.bfloat16).transpose(-1, -2))
    scores = scores.view(batch, kv_heads, per_group, q_len, k_len)
    if mask is not None:
        scores = scores.add_(_additive(mask, kv_heads, per_group))
    probs = torch.softmax(scores, dim=-1).view(batch, kv_heads, per_group * q_len, k_len)
    return torch.matmul(probs, value.to(torch.bfloat16)).view(batch, heads, q_len, -1)


def _additive(mask: torch.Tensor, kv_heads: int, per_group: int) -> torch.Tensor:
    """`mask` ([Lq, Lk] or [B|1, 1|H, Lq, Lk]) as an additive mask broadcastable to [B, KV, G, Lq, Lk].

    A bool mask becomes 0 / bf16's lowest value (adding it took a third of the time of a masked_fill_
    broadcast over the heads), a float one is clipped there; a query that sees nothing then attends
    uniformly, as in eager attention."""
    if mask.dim() == 2:
        mask = mask[None, None]
    if mask.shape[1] == 1:
        grouped = mask[:, :, None]
    else:
        grouped = mask.reshape(mask.shape[0], kv_heads, per_group, *mask.shape[-2:])
    lowest = torch.finfo(torch.bfloat16).min
    if grouped.dtype != torch.bool:
        # float32's lowest (transformers' masks) or -inf would overflow the bf16 scores to -inf, and a query
        # that sees nothing would get NaN
        return grouped.clamp(min=lowest)
    return torch.zeros(grouped.shape, dtype=torch.bfloat16, device=grouped.device).masked_fill_(~grouped, lowest)


def computes_in_bf16(query: torch.Tensor) -> bool:
    """Whether attention on `query` runs in bf16 on a CPU: bf16 CPU autocast is on, or `query` is bf16."""
    if query.device.type != "cpu":
        return False
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu") == torch.bfloat16
    return query.dtype == torch.bfloat16


def takes_call(query: torch.Tensor, key: torch.Tensor, dropout: float, kwargs: dict[str, Any]) -> bool:
    """Whether `grouped_attention` serves this call (else transformers' sdpa does; see the module doc)."""
    if dropout or any(kwargs.get(name) is not None for name in _DELEGATED_KWARGS):
        return False
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads % kv_heads or query.shape[0] != key.shape[0] or not computes_in_bf16(query):
        return False
    return query.shape[0] * heads * query.shape[2] * key.shape[2] * 4 <= HEAP_BLOCK_BYTES


def grouped_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, dropout: float = 0.0,
                              scaling: float | None = None, is_causal: bool | None = None,
                              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface (as `sdpa_attention_forward`): output [B, Lq, H, Dv]."""
    if not takes_call(query, key, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = grouped_attention(query, key, value, attention_mask, scale, bool(causal))
    return out.transpose(1, 2).contiguous(), None


# Registered under NAME with sdpa's masks: a name without a mask function would get no mask at all.
AttentionInterface.register(NAME, grouped_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextlib.contextmanager
def grouped_attention_in_bf16(*models: nn.Module | None) -> Iterator[int]:
    """Models whose attention is `sdpa` run `grouped_attention_forward` until exit; yields how many.

    Only their config's implementation name changes (each model reads it on every call), and it is set
    back on exit, so saving and exporting still see `sdpa`."""
    switched = []
    try:
        for model in models:
            config = getattr(model, "config", None)
            if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
                config._attn_implementation = NAME
                switched.append(config)
        yield len(switched)
    finally:
        for config in switched:
            config._attn_implementation = "sdpa"
