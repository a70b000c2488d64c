"""Log-likelihood of candidate answers after a prompt (kallm's `mc` mode), batched.

Tokenisation follows lm-eval's `_encode_pair`: trailing whitespace of the context moves to the continuation,
the continuation's tokens are those of `encode(context + continuation)` past `len(encode(context))`, and the
model reads `context_tokens + continuation_tokens`.

Two forward paths:
- default: each distinct context is run once (KV cache; a prefix shared by a batch of contexts, such as a
  task's few-shot exemplars, once per batch), then the cache is repeated for its candidates, which are run
  together; the prompt is not recomputed per candidate.
- `forward_fn(input_ids, attention_mask) -> final hidden states (B, T, d)`: full rows
  `context + continuation[:-1]`, right padded, sorted by (length desc, request order), so identical
  requests always give identical padded batches (callers plug in caches keyed on them). The LM head
  (`model.get_output_embeddings()`) is applied only at the continuation positions: full-vocabulary
  logits at every prompt position would cost more than the tail of the model itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kallm.bbh.generation import cache_argument, plan_batches, prefill
from kallm.frozen_bf16 import float32_output_head
from kallm.progress import progress_bar

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
        members = [(c_i, req) for c_i, c in enumerate(chunk) for req in groups[c]]
        for c_i, req in members:
            scores[req] = float(first[c_i, pairs[req][1][0]])
        tails = [pairs[req][1] for _, req in members]
        width = max(len(t) for t in tails) - 1
        if width > 0:
            index = torch.tensor([c_i for c_i, _ in members], device=device)
            cache.batch_select_indices(index)
            step = torch.full((len(members), width), pad_id, dtype=torch.long)
            step_mask = torch.zeros((len(members), width), dtype=torch.long)
            for r, tail in enumerate(tails):
                step[r, :len(tail) - 1] = torch.tensor(tail[:-1])
                step_mask[r, :len(tail) - 1] = 1
            step, step_mask = step.to(device), step_mask.to(device)
            full_mask = torch.cat([mask[index], step_mask], dim=1)
            step_pos = last_pos[index] + 1 + torch.arange(width, device=device)[None, :]
            logits = model(input_ids=step, attention_mask=full_mask, position_ids=step_pos, use_cache=True,
                           **{cache_arg: cache}).logits
            for r, (_, req) in enumerate(members):
                tail = tails[r]
                if len(tail) > 1:
                    picked = logits[r, :len(tail) - 1]
                    scores[req] += float(_token_logprobs(picked, torch.tensor(tail[1:], device=device)).sum())
        bar.update(len(members))
    return scores


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
