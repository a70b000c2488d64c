"""The grid's held-out sets: carved once, tokenised once, their shared prefix computed once, every run scored.

The default set is `eval.heldout_size` conversations drawn from the training data with a fixed seed,
stratified by source file, and removed from it, so no run of the grid trains on them. When the training
data has several source files, the default set is also reported split by source (`heldout:<file stem>`,
see `source_set_name`: scored once, split after). `eval.heldout` adds files, each scored and reported on its
own: chat (assistant tokens), or plain text (NLL per token in fixed blocks, kallm.evaluation.heldout.text).
Every run (the untouched model included) is scored on the same sets, so any two runs can be compared
example by example. Each run's per-conversation sums are
written to `runs/<run_id>/heldout.json`; its record gets the summary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from torch import nn

from kallm.data import ConversationSet, TokenizedExample, load_conversations, tokenize_conversations
from kallm.errors import KallmError
from kallm.evaluation.heldout.scoring import carve_heldout, held_sources, score_heldout, split_by_source
from kallm.evaluation.heldout.text import is_text_set, load_text_set
from kallm.experiment.schema import ExperimentConfig
from kallm.folders.layout import (
    DEFAULT_HELDOUT_SET,
    GridRunFolder,
    cache_file,
    heldout_set_name,
    source_set_name,
)
from kallm.folders.records import HeldoutScore, HeldoutScores, write_heldout_scores
from kallm.models.prefix import PrefixCache
from kallm.runtime.precision import Precision

log = logging.getLogger(__name__)

HELDOUT_SEED = 0  # fixed for the grid: every run and every seed sees the same held-out conversations


class GridHeldout:
    """Held-out sets of one grid, with one frozen-prefix cache per (set, prefix layer), kept on disk."""

    def __init__(self, config: ExperimentConfig, cache_dir: Path, lock: Callable[[], AbstractContextManager],
                 precision: Precision, progress: bool | None = None) -> None:
        self.config = config
        self.precision = precision
        self.cache_dir = cache_dir
        self.lock = lock
        self.progress = progress
        self._examples: dict[str, list[TokenizedExample]] | None = None
        self._sources: dict[str, str] = {}  # default-set example key -> its source (for the split by source)
        self._caches: dict[tuple[str, int], PrefixCache] = {}

    def split_training_data(self, data: ConversationSet, tokenizer) -> ConversationSet:
        """The training data without the default held-out set (whose examples are kept here)."""
        max_length = self.config.train.max_length
        held, rest = carve_heldout(data, self.config.eval.heldout_size, tokenizer, max_length, HELDOUT_SEED)
        self._examples = {DEFAULT_HELDOUT_SET: held} if held else {}
        self._sources = held_sources(data, held)
        ecfg = self.config.eval
        for path in self.config.heldout_paths():
            if is_text_set(path):
                self._examples[heldout_set_name(path)] = load_text_set(path, tokenizer, ecfg.block_length,
                                                               ecfg.max_text_tokens, ecfg.text_stride)
                continue
            extra = load_conversations(path, on_bad_row=self.config.train.on_bad_row)
            self._examples[heldout_set_name(path)] = tokenize_conversations(tokenizer, extra.conversations, max_length,
                                                                    progress=False).examples
        return rest

    def carved_counts(self) -> dict[str, dict[str, int]]:
        """`{source: {conversations, tokens}}` of the default set (tokens: the assistant tokens scored)."""
        out: dict[str, dict[str, int]] = {}
        for e in self.examples().get(DEFAULT_HELDOUT_SET, []):
            row = out.setdefault(self._sources.get(e.key, ""), {"conversations": 0, "tokens": 0})
            row["conversations"] += 1
            row["tokens"] += e.num_labels
        return out

    def examples(self) -> dict[str, list[TokenizedExample]]:
        if self._examples is None:
            raise KallmError("the held-out sets are carved from the training data: split it first")
        return self._examples

    def _cache(self, model: nn.Module, name: str, layer_index: int) -> PrefixCache | None:
        if layer_index == 0:
            return None
        key = (name, layer_index)
        if key not in self._caches:
            p = self.precision
            path = cache_file(self.cache_dir, f"prefix-{name}-layer{layer_index}", p.name)
            self._caches[key] = PrefixCache.for_model(path, model, layer_index, p.storage_dtype, p.name)
        return self._caches[key]

    def score(self, model: nn.Module, tokenizer, layer_index: int) -> dict[str, HeldoutScore]:
        """Every held-out set scored on `model`; layers below `layer_index` come from the grid's caches."""
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        scores = {}
        for name, examples in self.examples().items():
            cache = self._cache(model, name, layer_index)
            device = next(model.parameters()).device
            with self.precision.autocast(device, model):
                scores[name] = score_heldout(model, examples, name=name, pad_id=pad, layer_index=layer_index,
                                             cache=cache, batch_size=self.config.eval.heldout_batch_size,
                                             chunk_size=self.config.train.logits_chunk_size, progress=self.progress)
            if cache is not None and cache.dirty:
                with self.lock():  # processes running one grid share cache/
                    cache.save(cache.path)
        return with_source_sets(scores, self._sources)


def with_source_sets(scores: dict[str, HeldoutScore], sources: dict[str, str]) -> dict[str, HeldoutScore]:
    """`scores` plus the default set split by source (`heldout:<source>`), when it spans several sources."""
    if DEFAULT_HELDOUT_SET not in scores or len(set(sources.values())) < 2:
        return scores
    parts = split_by_source(scores[DEFAULT_HELDOUT_SET], sources, source_set_name)
    ordered = {DEFAULT_HELDOUT_SET: scores[DEFAULT_HELDOUT_SET], **parts}
    return {**ordered, **{n: s for n, s in scores.items() if n not in ordered}}


def heldout_record(scores: dict[str, HeldoutScore]) -> dict[str, Any] | None:
    """`{nll, ppl, n_conversations, n_tokens, sets: {name: {...}}}`; the headline is the default set
    (or the first user set when there is none)."""
    if not scores:
        return None
    headline = scores.get(DEFAULT_HELDOUT_SET) or next(iter(scores.values()))
    return {**headline.summary(), "set": headline.name, "sets": {n: s.summary() for n, s in scores.items()}}


def write_scores(run_dir: Path, scores: HeldoutScores) -> None:
    """Per-conversation sums, by stage ('init': before training, 'final') and set, for paired comparisons."""
    write_heldout_scores(GridRunFolder(run_dir).heldout, scores)
