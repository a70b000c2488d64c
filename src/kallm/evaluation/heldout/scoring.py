"""Held-out quality: mean next-token NLL per assistant token on conversations no run trained on.

The verdict on a retrofit is how far it falls from the model it came from. Every run of a grid (the
untouched model included) is scored on the same held-out conversations, and the per-conversation
sums are kept, so two runs can be compared conversation by conversation (paired). Decoder layers
below the first one any variant changes are identical in every run, so their output for the
held-out conversations is computed once per grid (a `PrefixCache`) and only the tail runs per model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kallm.data import ChatTokenizer, ConversationSet, TokenizedExample, collate
from kallm.data.sampling import allocate, file_groups, source_name, stratified_order
from kallm.errors import KallmError
from kallm.folders.records import HeldoutScore  # the one schema of held-out scores; re-exported here
from kallm.models.prefix import PrefixCache, tail_hidden_states
from kallm.progress import progress_bar
from kallm.training.loss import check_lm_head, per_sequence_nll

__all__ = ["HeldoutScore", "QualityRetained", "carve_heldout", "quality_retained", "score_heldout"]


def carve_heldout(data: ConversationSet, size: int, tokenizer, max_length: int,
                  seed: int = 0) -> tuple[list[TokenizedExample], ConversationSet]:
    """(held-out examples, the rest of the data): `size` conversations that keep an assistant token within
    `max_length`, stratified by source file like the training sample (each file its share of `size` by
    largest remainder, drawn in a seeded order), so every run of a grid is scored on the same ones and
    every source is represented. A file short of usable conversations leaves its shortfall to the others."""
    if size <= 0:
        return [], data
    chat = ChatTokenizer(tokenizer, max_length)
    files = data.item_files()
    order = stratified_order(files, seed)
    quotas = allocate({f: float(len(idx)) for f, idx in file_groups(files).items()}, min(size, len(data)))
    held: list[TokenizedExample] = []
    tried: set[int] = set()
    for pass_quotas in (quotas, None):  # by file's share first, then whatever is usable, in the same order
        for i in order:
            if len(held) == size:
                break
            if i in tried or (pass_quotas is not None and pass_quotas[files[i]] == 0):
                continue
            tried.add(i)
            example = chat(data.conversations[i], index=i)
            if example is not None:
                held.append(example)
                if pass_quotas is not None:
                    pass_quotas[files[i]] -= 1
    if len(held) < size:
        raise KallmError(f"only {len(held)} of {len(data)} conversations keep an assistant token within "
                         f"{max_length} tokens; lower eval.heldout_size ({size}) or raise train.max_length")
    taken = {e.index for e in held}
    return held, data.subset([i for i in range(len(data)) if i not in taken])


def held_sources(data: ConversationSet, held: list[TokenizedExample]) -> dict[str, str]:
    """Each held-out example's content key -> the source name of the file it came from."""
    files = data.item_files()
    return {e.key: source_name(files[e.index]) for e in held}


def split_by_source(score: HeldoutScore, sources: dict[str, str], name_of) -> dict[str, HeldoutScore]:
    """`score` split into one score per source (`sources`: key -> source; `name_of(source)` -> set name),
    in order of first appearance; keys not in `sources` are left out."""
    out: dict[str, HeldoutScore] = {}
    for key, nll, n in zip(score.keys, score.nll_sums, score.n_tokens):
        if key not in sources:
            continue
        part = out.setdefault(sources[key], HeldoutScore(name_of(sources[key])))
        part.keys.append(key)
        part.nll_sums.append(nll)
        part.n_tokens.append(n)
    return {part.name: part for part in out.values()}


def _batches(examples: list[TokenizedExample], batch_size: int) -> list[list[TokenizedExample]]:
    """Length-sorted batches (little padding); the order is deterministic, so is every score."""
    ordered = sorted(examples, key=lambda e: (-len(e), e.key))
    return [ordered[i: i + batch_size] for i in range(0, len(ordered), batch_size)]


@torch.no_grad()
def score_heldout(model: nn.Module, examples: list[TokenizedExample], *, name: str, pad_id: int,
                  layer_index: int = 0, cache: PrefixCache | None = None, batch_size: int = 8,
                  chunk_size: int = 1024, progress: bool | None = None) -> HeldoutScore:
    """Score `model` on `examples`; layers below `layer_index` come from `cache` when given (computed once).

    The arithmetic is the caller's: run it under a precision's autocast (kallm.runtime.precision) to score in bf16;
    the log-softmax is float32 either way."""
    if not examples:
        raise KallmError(f"held-out set {name!r} is empty")
    if cache is not None and cache.layer_index != layer_index:
        raise KallmError(f"held-out prefix cache is for layer {cache.layer_index}, not {layer_index}")
    head = check_lm_head(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    score = HeldoutScore(name)
    try:
        for batch_examples in progress_bar(_batches(examples, batch_size), progress=progress,
                                           desc=f"held-out {name}", unit="batch"):
            batch = collate(batch_examples, pad_id)
            states = None
            if cache is not None and layer_index > 0:
                cache.fill(model, batch)
                states = cache.batch_states(batch, device)
            hidden = tail_hidden_states(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                        layer_index, states)
            sums, counts = per_sequence_nll(hidden, batch["labels"].to(device), head, chunk_size)
            score.keys += [e.key for e in batch_examples]
            score.nll_sums += sums.tolist()
            score.n_tokens += counts.tolist()
    finally:
        model.train(was_training)
    return score


@dataclass(frozen=True)
class QualityRetained:
    """How much of the original model's held-out quality a variant keeps.

    `retained` = original NLL / variant NLL (1.0: as good as the original; 0.5: twice the NLL), `gap_nats` =
    variant NLL - original NLL (nats per assistant token; > 0 is worse).
    """

    retained: float
    gap_nats: float

    @property
    def relative_gap(self) -> float:
        """The relative NLL gap (variant / original - 1): 0.10 means 10% worse than the original."""
        return 1.0 / self.retained - 1.0


def quality_retained(original_nll: float, variant_nll: float) -> QualityRetained:
    """`QualityRetained` of a variant's mean held-out NLL against the original's, on the same conversations."""
    if not (original_nll > 0 and variant_nll > 0 and math.isfinite(original_nll) and math.isfinite(variant_nll)):
        raise KallmError(f"quality retained needs two positive finite NLLs, got {original_nll} and {variant_nll}")
    return QualityRetained(original_nll / variant_nll, variant_nll - original_nll)
