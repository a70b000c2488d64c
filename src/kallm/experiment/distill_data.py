"""The tokens distillation fits on: the training sample, and optionally blocks of plain text.

Fitting only on chat turns teaches the new FFNs the original's behaviour on one kind of text. With
`distill.text: [files]` a share `distill.text_fraction` of `distill.tokens` comes from plain-text files
instead, cut into blocks of `train.max_length` tokens exactly as a held-out text set is
(`kallm.evaluation.heldout.text`: the documents joined, tokenised once, the file's first tokens). The two
kinds of batches are interleaved in proportion, so every slice of the recorded rows (the fit rows, their
validation slice and the held-out tail) holds both. A file that is also an `eval.heldout` set is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kallm.data import TokenizedExample, token_batches
from kallm.distill.layerwise import DistillConfig
from kallm.evaluation.heldout.text import load_text_set
from kallm.experiment.schema import ExperimentConfig


@dataclass
class DistillData:
    batches: list[dict]  # what the fit reads, interleaved
    sample: list[dict]  # the training-sample batches among them
    text_tokens: dict[str, int] = field(default_factory=dict)  # per text file: real tokens
    text_fraction: float = 0.0

    def record(self) -> dict[str, Any]:
        """For the run's records: which data the fit used."""
        sample = sum(int(b["attention_mask"].sum()) for b in self.sample)
        return {"sample_tokens": sample, "text_tokens": dict(self.text_tokens), "text_fraction": self.text_fraction}


def interleave(*lists: Sequence[dict]) -> list[dict]:
    """The items of all lists, each list's spread evenly over the result (stable within a list)."""
    keyed = [((i + 0.5) / len(items), n, i) for n, items in enumerate(lists) for i in range(len(items))]
    return [lists[n][i] for _, n, i in sorted(keyed)]


def _text_batches(paths: Sequence[Path], tokenizer, tokens: int, block_length: int, pad: int
                  ) -> tuple[list[dict], dict[str, int]]:
    """About `tokens` tokens of plain-text blocks, shared evenly between `paths` (the start of each file)."""
    per_file, counts, parts = -(-tokens // len(paths)), {}, []
    for path in paths:
        windows = load_text_set(path, tokenizer, block_length, per_file)  # its first per_file tokens
        batches = token_batches(windows, pad, per_file)
        counts[path.name] = sum(int(b["attention_mask"].sum()) for b in batches)
        parts.append(batches)
    return interleave(*parts), counts


def distill_data(config: ExperimentConfig, tokenizer, examples: Sequence[TokenizedExample]) -> DistillData:
    """The fit's batches: `examples` (the training sample in fitting order) and `distill.text` blocks."""
    cfg = config.distill or DistillConfig()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    paths = config.distill_text_paths()
    text_tokens = round(cfg.tokens * cfg.text_fraction) if paths else 0
    sample = token_batches(examples, pad, cfg.tokens - text_tokens) if text_tokens < cfg.tokens else []
    if not paths:
        return DistillData(sample, sample)
    text, counts = _text_batches(paths, tokenizer, text_tokens, config.train.max_length, pad)
    return DistillData(interleave(sample, text), sample, counts, cfg.text_fraction)


def cache_tag(config: ExperimentConfig) -> str:
    """What distinguishes a grid's recorded activations besides tokens and layers: the text files and share."""
    cfg = config.distill or DistillConfig()
    if not cfg.text:
        return ""
    names = "|".join(str(p) for p in config.distill_text_paths())
    return f"-text{cfg.text_fraction:g}-{hashlib.sha256(names.encode()).hexdigest()[:10]}"
