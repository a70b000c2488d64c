"""Batched greedy decoding with left padding, a KV cache and stop strings (lm-eval's generate_until).

lm-eval decodes the continuation, then cuts it at the first occurrence of any stop string; EOS always
stops. Rows that have stopped are dropped from the batch (and from the cache) so that a single rambling
example does not make the others pay for its tokens.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence

import torch

from kallm.progress import progress_bar

log = logging.getLogger(__name__)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """lm-eval: `for term in until: s = s.split(term)[0]`, i.e. cut at the earliest stop."""
    for term in stops:
        if term:
            text = text.split(term)[0]
    return text


def eos_token_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    # lm-eval's HF model adds no BOS for causal LMs by default (add_bos_token=False).
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def cache_argument(model) -> str:
    # transformers 5.x renamed `past_key_values` to `cache` (the old name warns, then goes away).
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(out):
    return out["cache"] if "cache" in out else out["past_key_values"]


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


# Prompts of one task share the description and exemplars: a prefix at least this long is computed once.
MIN_SHARED_PREFIX = 16


def _common_prefix_len(rows: list[list[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return n


# Rows that share at least this many leading tokens (a task's few-shot block) are batched only together.
LONG_SHARED_PREFIX = 128


def plan_batches(rows: Sequence[Sequence[int]], sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Batches of indices into `rows` (given in lexicographic token order) holding at most `capacity` size.

    Runs of neighbours sharing a long prefix are batched on their own so that prefill computes that
    prefix once; the other rows are packed together in order. Same input, same batches.
    """
    if not rows:
        return []
    segments, current = [], [0]
    for i in range(1, len(rows)):
        if _common_prefix_len([list(rows[i - 1]), list(rows[i])]) >= LONG_SHARED_PREFIX:
            current.append(i)
        else:
            segments.append(current)
            current = [i]
    segments.append(current)
    batches: list[list[int]] = []

    def pack(indices: list[int]) -> None:
        batch, load = [], 0
        for i in indices:
            if batch and load + sizes[i] > capacity:
                batches.append(batch)
                batch, load = [], 0
            batch.append(i)
            load += sizes[i]
        if batch:
            batches.append(batch)

    loose: list[int] = []
    for seg in segments:
        if len(seg) == 1:
            loose += seg
            continue
        pack(loose)
        loose = []
        pack(seg)
    pack(loose)
    return batches


def _logits_kwargs(model) -> dict:
    # Only the last position's logits are needed; (B, T, vocab) prefill logits would be large.
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def prefill(model, rows: list[list[int]], pad_id: int, device):
    """Run the prompts; returns (last logits (B, V), cache, attention mask, last position ids (B, 1)).

    A prefix common to all rows is run once and its cache repeated; the rest of each row is left padded
    after it, so the mask has a hole between the shared prefix and the row's own tokens.
    """
    cache_arg = cache_argument(model)
    keep = _logits_kwargs(model)
    shared = min(_common_prefix_len(rows), min(len(r) for r in rows) - 1) if len(rows) > 1 else 0
    if shared >= MIN_SHARED_PREFIX:
        out = model(input_ids=torch.tensor([rows[0][:shared]], device=device), use_cache=True, **keep)
        cache = returned_cache(out)
        cache.batch_select_indices(torch.zeros(len(rows), dtype=torch.long, device=device))
        ids, own_mask = left_pad([r[shared:] for r in rows], pad_id, device)
        mask = torch.cat([own_mask.new_ones((len(rows), shared)), own_mask], dim=1)
        positions = ((mask.cumsum(-1) - 1).clamp(min=0))[:, shared:]
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_arg: cache}, **keep)
    else:
        ids, mask = left_pad(rows, pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **keep)
    return out.logits[:, -1, :], returned_cache(out), mask, positions[:, -1:]


@torch.inference_mode()
def _generate_batch(model, tokenizer, rows: list[list[int]], stops: Sequence[str], max_new_tokens: int,
                    eos_ids: set[int], pad_id: int) -> list[str]:
    device = next(model.parameters()).device
    cache_arg = cache_argument(model)
    keep = _logits_kwargs(model)
    logits, past, mask, positions = prefill(model, rows, pad_id, device)
    generated: list[list[int]] = [[] for _ in rows]
    active = list(range(len(rows)))  # original row of each batch row still decoding
    for step in range(max_new_tokens):
        next_tokens = logits.argmax(dim=-1).tolist()
        still = []
        for b, token in enumerate(next_tokens):
            row = active[b]
            if token in eos_ids:
                continue
            generated[row].append(token)
            text = tokenizer.decode(generated[row][-64:], skip_special_tokens=True)
            if any(s and s in text for s in stops):
                continue
            still.append(b)
        if not still or step == max_new_tokens - 1:
            break
        if len(still) < len(active):
            index = torch.tensor(still, device=device)
            past.batch_select_indices(index)
            mask, positions = mask[index], positions[index]
            next_tokens = [next_tokens[b] for b in still]
            active = [active[b] for b in still]
        step_ids = torch.tensor(next_tokens, dtype=torch.long, device=device)[:, None]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        positions = positions + 1
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_arg: past}, **keep)
        past = returned_cache(out)
        logits = out.logits[:, -1, :]
    return [cut_at_stops(tokenizer.decode(g, skip_special_tokens=True), stops) for g in generated]


def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    stops: Sequence[str] = (),
    max_new_tokens: int = 256,
    batch_size: int = 16,
    progress: bool | None = None,
    desc: str = "generating",
) -> list[str]:
    """Greedy continuations of `prompts` (in their order), each cut at its first stop string.

    Prompts are sorted by their tokens, so a batch holds prompts of one task that share their long few-shot
    prefix (computed once); batch order is deterministic.
    """
    if not prompts:
        return []
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
    stop_list = [*stops, *(tokenizer.convert_ids_to_tokens(sorted(eos_ids)) if eos_ids else [])]
    encoded = encode_prompts(tokenizer, prompts)
    order = sorted(range(len(prompts)), key=lambda i: (encoded[i], i))
    outputs: list[str] = [""] * len(prompts)
    start = time.perf_counter()
    bar = progress_bar(total=len(prompts), progress=progress, desc=desc, unit="ex")
    try:
        for batch in plan_batches([encoded[i] for i in order], [1] * len(order), batch_size):
            chunk = [order[b] for b in batch]
            texts = _generate_batch(model, tokenizer, [encoded[i] for i in chunk], stop_list, max_new_tokens,
                                    eos_ids, pad_id)
            for i, text in zip(chunk, texts):
                outputs[i] = text
            bar.update(len(chunk))
            bar.set_postfix(ex_per_s=f"{bar.n / max(time.perf_counter() - start, 1e-9):.2f}")
    finally:
        bar.close()
    log.info("generated %d continuations in %.1f s", len(prompts), time.perf_counter() - start)
    return outputs
