"""The terms `train.loss` can name, one class each, registered in `LOSS_TERMS`.

A term says what it needs (the teacher, every trainable layer's output), what its mean is taken over
(`count`: its global normaliser), how it is computed on one local batch (`compute`: its weighted
contribution to the loss and the float64 sums it logs) and which metrics those sums are (`logs`: each a
registered term's name, whose `count` divides the sum in the metrics record). Adding a term is one
subclass with `@loss_term`; `kallm.training.objective` parses `train.loss` against this registry and
`ObjectiveLoss` runs the named terms.

    ce       next-token cross-entropy on labelled (assistant) tokens
    kd       KL from the original model's next-token distribution to the student's, full vocabulary,
             at assistant positions or at every position (`kd_positions`), temperature `kd_temperature`
    hidden   relative squared error of every trainable decoder layer's output against the original
             model's, at every position (cheap: no LM head)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
from torch import nn

from kallm.data.tokenize import IGNORE_INDEX, TokenizedExample
from kallm.registry import Registry
from kallm.training.kd import DistillTerms, linear_distill_loss
from kallm.training.loss import check_lm_head, linear_cross_entropy_sum

KDPositions = Literal["assistant", "all"]
KD_POSITIONS: tuple[str, ...] = get_args(KDPositions)


@dataclass(frozen=True)
class TermSettings:
    """The `train.*` settings terms read (kd_positions, kd_temperature, logits_chunk_size)."""

    kd_positions: KDPositions = "assistant"
    temperature: float = 1.0
    chunk_size: int = 1024


@dataclass
class TermBatch:
    """What one local batch's forward pass gives the terms: the student's final hidden states (from the
    first trainable layer on), and, where a term of the objective needs them, the teacher's and the
    outputs of every trainable decoder layer of both."""

    model: nn.Module
    teacher: nn.Module | None
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    hidden: torch.Tensor
    teacher_hidden: torch.Tensor | None = None
    layer_outputs: list[torch.Tensor] | None = None
    teacher_layer_outputs: list[torch.Tensor] | None = None


@dataclass(frozen=True)
class TermOutput:
    """A term's weighted contribution to the loss, and the unweighted sums it logs (name -> 0-d tensor)."""

    loss: torch.Tensor
    sums: dict[str, torch.Tensor]


class LossTerm:
    """One named term of the training objective. Subclass, set the class attributes, register with
    `@loss_term`; `compute` returns the term's loss already multiplied by `scales[name]` (its weight over
    its global count), so the local losses of all micro-batches and processes add up to the objective."""

    name: ClassVar[str]
    mean_over: ClassVar[str]  # what `count` counts, for the docs and error messages
    needs_teacher: ClassVar[bool] = False  # the original model's final hidden states
    needs_layer_outputs: ClassVar[bool] = False  # every trainable decoder layer's output (and the teacher's)
    # Other terms this one computes in the same pass when both are in the objective (their weight comes
    # in `scales`); a fused term is not run on its own.
    fuses: ClassVar[tuple[str, ...]] = ()

    @property
    def logs(self) -> tuple[str, ...]:
        """The metric names of the sums `compute` returns (each a registered term's name)."""
        return (self.name,)

    def count(self, examples: Sequence[TokenizedExample], settings: TermSettings) -> int:
        raise NotImplementedError

    def compute(self, batch: TermBatch, scales: Mapping[str, float], settings: TermSettings) -> TermOutput:
        raise NotImplementedError


LOSS_TERMS: Registry[LossTerm] = Registry("loss term")


def loss_term(cls: type[LossTerm]) -> type[LossTerm]:
    """Class decorator: register one instance of the term under its `name`."""
    LOSS_TERMS.add(cls.name, cls())
    return cls


def kd_row_mask(attention_mask: torch.Tensor, labels: torch.Tensor, positions: KDPositions) -> torch.Tensor:
    """(batch, seq - 1) positions that predict a next token in the loss: labelled ones, or every real one."""
    if positions == "assistant":
        return labels[:, 1:] != IGNORE_INDEX
    return attention_mask[:, 1:].bool()


def hidden_matching_sum(student: list[torch.Tensor], teacher: list[torch.Tensor],
                        mask: torch.Tensor) -> torch.Tensor:
    """Sum over real positions of the layer-mean relative squared error |s - t|^2 / |t|^2.

    Relative per position, because a few positions (the first token) carry residual norms ~100x the
    rest and would otherwise be all the loss is about.
    """
    keep = mask.bool()
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        s, t = s[keep].float(), t[keep].float()
        total = total + ((s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-6)).sum()
    return total / len(student)


@loss_term
class CrossEntropyTerm(LossTerm):
    name = "ce"
    mean_over = "labelled tokens"

    def count(self, examples: Sequence[TokenizedExample], settings: TermSettings) -> int:
        return sum(e.num_labels for e in examples)

    def compute(self, batch: TermBatch, scales: Mapping[str, float], settings: TermSettings) -> TermOutput:
        rows = batch.labels[:, 1:] != IGNORE_INDEX
        ce = linear_cross_entropy_sum(batch.hidden[:, :-1][rows], check_lm_head(batch.model),
                                      batch.labels[:, 1:][rows], settings.chunk_size)
        return TermOutput(scales["ce"] * ce, {"ce": ce.detach()})


@loss_term
class DistillationTerm(LossTerm):
    """KD; its pass also yields the CE sum at no extra cost, so it logs CE (what held-out NLL measures)
    and trains on it too when `ce` is in the objective."""

    name = "kd"
    mean_over = "KD positions"
    needs_teacher = True
    fuses = ("ce",)

    @property
    def logs(self) -> tuple[str, ...]:
        return ("ce", "kd")

    def count(self, examples: Sequence[TokenizedExample], settings: TermSettings) -> int:
        if settings.kd_positions == "assistant":
            return sum(e.num_labels for e in examples)
        return sum(len(e) - 1 for e in examples)

    def compute(self, batch: TermBatch, scales: Mapping[str, float], settings: TermSettings) -> TermOutput:
        rows = kd_row_mask(batch.attention_mask, batch.labels, settings.kd_positions)
        terms = DistillTerms(scales.get("ce", 0.0), scales["kd"], settings.temperature)
        loss, sums = linear_distill_loss(batch.hidden[:, :-1][rows], check_lm_head(batch.model),
                                         batch.teacher_hidden[:, :-1][rows], check_lm_head(batch.teacher),
                                         batch.labels[:, 1:][rows], terms, settings.chunk_size)
        return TermOutput(loss, {"ce": sums[0], "kd": sums[1]})


@loss_term
class HiddenMatchingTerm(LossTerm):
    name = "hidden"
    mean_over = "tokens"
    needs_teacher = True
    needs_layer_outputs = True

    def count(self, examples: Sequence[TokenizedExample], settings: TermSettings) -> int:
        return sum(len(e) for e in examples)

    def compute(self, batch: TermBatch, scales: Mapping[str, float], settings: TermSettings) -> TermOutput:
        matched = hidden_matching_sum(batch.layer_outputs, batch.teacher_layer_outputs, batch.attention_mask)
        return TermOutput(scales["hidden"] * matched, {"hidden": matched.detach()})
