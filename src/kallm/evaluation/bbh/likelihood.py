"""Log-likelihood of candidate answers after a prompt (kallm's `mc` mode), batched.

Tokenisation follows lm-eval's `_encode_pair`: trailing whitespace of the context moves to the continuation,
the continuation's tokens are those of `encode(context + continuation)` past `len(encode(context))`, and the
model reads `context_tokens + continuation_tokens`.

Two forward paths:
- default: each distinct context is run once (KV cache; a prefix shared by a batch of contexts, such as a
  task's few-shot exemplars, once per batch), then its candidates run together in one row after it, a mask
  keeping each to the context and itself (`pack_tails`); the prompt is neither recomputed nor copied per
  candidate.
- `forward_fn(input_ids, attention_mask) -> final hidden states (B, T, d)`: full rows
  `context + continuation[:-1]`, right padded, sorted by (length desc, request order), so identical
  requests always give identical padded batches (callers plug in caches keyed on them). The LM head
  (`model.get_output_embeddings()`) is applied only at the continuation positions: full-vocabulary
  logits at every prompt position would cost more than the tail of the model itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kallm.evaluation.bbh.generation import cache_argument, plan_batches, prefill
from kallm.progress import progress_bar
from kallm.runtime.bf16_weights import float32_output_head

ForwardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]


@torch.inference_mode()
def _full_rows(pairs, forward: ForwardFn, head: Callable[[torch.Tensor], torch.Tensor], batch_size: int, device,
               pad_id: int, bar) -> list[float]:
    rows = [(ctx + cont)[:-1] for ctx, cont in pairs]
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]), i))
    scores = [0.0] * len(rows)
    for lo in range(0, len(order), batch_size):
        chunk = order[lo:lo + batch_size]
        width = max(len(rows[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, i in enumerate(chunk):
            ids[b, :len(rows[i])] = torch.tensor(rows[i])
            mask[b, :len(rows[i])] = 1
        hidden = forward(ids.to(device), mask.to(device))
        for b, i in enumerate(chunk):
            ctx, cont = pairs[i]
            start = len(ctx) - 1
            picked = head(hidden[b, start:start + len(cont)])
            scores[i] = float(_token_logprobs(picked, torch.tensor(cont, device=picked.device)).sum())
        bar.update(len(chunk))
    return scores


@torch.inference_mode()
def _shared_context(pairs, model, batch_size: int, device, pad_id: int, bar) -> list[float]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(pairs):
        groups.setdefault(tuple(ctx), []).append(i)
    # Sorted by tokens: neighbouring contexts share their task's few-shot prefix, which prefill runs once.
    contexts = sorted(groups)
    cache_arg = cache_argument(model)
    scores = [0.0] * len(pairs)
    # Whole contexts per batch, their candidates filling up to batch_size rows.
    for batch in plan_batches(contexts, [len(groups[c]) for c in contexts], batch_size):
        chunk = [contexts[b] for b in batch]
        last_logits, cache, mask, last_pos = prefill(model, [list(c) for c in chunk], pad_id, device)
        first = torch.log_softmax(last_logits.float(), dim=-1)
        members = [groups[c] for c in chunk]
        for c_i, reqs in enumerate(members):
            for req in reqs:
                scores[req] = float(first[c_i, pairs[req][1][0]])
        tails = [[pairs[req][1] for req in reqs] for reqs in members]
        if any(len(tail) > 1 for row in tails for tail in row):
            ids, positions, step_mask, spans = pack_tails(tails, mask, last_pos, pad_id, model.dtype)
            logits = model(input_ids=ids, attention_mask=step_mask, position_ids=positions, use_cache=True,
                           **{cache_arg: cache}).logits
            for (row, start, tail), req in zip(spans, (req for reqs in members for req in reqs)):
                picked = logits[row, start:start + len(tail) - 1]
                scores[req] += float(_token_logprobs(picked, torch.tensor(tail[1:], device=device)).sum())
        bar.update(sum(len(reqs) for reqs in members))
    return scores


def pack_tails(tails: list[list[list[int]]], context_mask: torch.Tensor, last_pos: torch.Tensor, pad_id: int,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int, list[int]]]]:
    """One row per context holding its candidates' tails (each less its last token) one after another.

    The 4D additive mask lets each tail token see the row's context (`context_mask`, the prefill's) and
    the earlier tokens of its own tail only, and positions restart after the context for each tail, so
    every candidate is scored as if it ran alone after the context, while the context's cache is read in
    place: repeating it per candidate copied it (and its attention) as many times as there are candidates.
    Returns input ids, position ids, the mask (rows, 1, width, context + width) and per candidate, in
    order, (row, start, tail)."""
    width = max(sum(max(len(t) - 1, 0) for t in row) for row in tails)
    device = context_mask.device
    ids = torch.full((len(tails), width), pad_id, dtype=torch.long)
    offset = torch.zeros((len(tails), width), dtype=torch.long)
    segment = torch.full((len(tails), width), -1, dtype=torch.long)
    spans = []
    for r, row in enumerate(tails):
        start = 0
        for k, tail in enumerate(row):
            n = max(len(tail) - 1, 0)
            ids[r, start:start + n] = torch.tensor(tail[:-1], dtype=torch.long)
            offset[r, start:start + n] = torch.arange(n)
            segment[r, start:start + n] = k
            spans.append((r, start, tail))
            start += n
    own = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0)
    own &= torch.ones(width, width, dtype=torch.bool).tril()
    seen = context_mask.bool().cpu()[:, None, :].expand(-1, width, -1)  # padding queries see the context only
    allowed = torch.cat([seen, own], dim=2)[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids.to(device), (last_pos + 1 + offset.to(device)), mask.to(device), spans


def loglikelihoods(
    model,
    tokenizer,
    requests: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    forward_fn: ForwardFn | None = None,
    progress: bool | None = None,
    desc: str = "scoring",
) -> list[float]:
    """Sum of log-probabilities of each continuation given its context, in request order."""
    if not requests:
        return []
    pairs = [encode_pair(tokenizer, ctx, cont) for ctx, cont in requests]
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bar = progress_bar(total=len(pairs), progress=progress, desc=desc, unit="cand")
    # scores are sums of log-probabilities: the head runs in float32 even under bf16 (see float32_output_head)
    try:
        with float32_output_head(model):
            if forward_fn is not None:
                head = model.get_output_embeddings()
                return _full_rows(pairs, forward_fn, head, batch_size, device, pad_id, bar)
            if any(not cont for _, cont in pairs):
                def default_forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                    return model(input_ids=ids, attention_mask=mask).logits

                return _full_rows(pairs, default_forward, lambda x: x, batch_size, device, pad_id, bar)
            return _shared_context(pairs, model, batch_size, device, pad_id, bar)
    finally:
        bar.close()
