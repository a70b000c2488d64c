"""What a training run minimises: `train.loss`, a weighted sum of named terms, and the module that computes it.

    ce       next-token cross-entropy on labelled (assistant) tokens
    kd       KL from the original model's next-token distribution to the student's, full vocabulary,
             at assistant positions or at every position (`kd_positions`), temperature `kd_temperature`
    hidden   relative squared error of every trainable decoder layer's output against the original
             model's, at every position (cheap: no LM head)

`loss: ce+kd`, `0.5*ce+kd`, `kd+0.1*hidden`. Each term is a mean over its own positions in the global
batch (labelled tokens for ce, KD positions for kd, tokens for hidden), so weights mean the same thing
whatever the batch looks like. kd and hidden need the teacher (`kallm.distill.teacher`), which the
training loop builds itself from the model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from kallm.data.tokenize import IGNORE_INDEX, TokenizedExample
from kallm.distill.teacher import teacher_hidden_states
from kallm.errors import KallmError
from kallm.models.prefix import tail_hidden_states
from kallm.registry import Registry
from kallm.retrofitting.arch import find_decoder_layers
from kallm.training.kd import DistillTerms, linear_distill_loss
from kallm.training.loss import check_lm_head, linear_cross_entropy_sum

KDPositions = Literal["assistant", "all"]
KD_POSITIONS: tuple[str, ...] = get_args(KDPositions)

# name -> what its mean is taken over (for the docs and the error message)
LOSS_TERMS: Registry[str] = Registry("loss term")
LOSS_TERMS.add("ce", "labelled tokens")
LOSS_TERMS.add("kd", "KD positions")
LOSS_TERMS.add("hidden", "tokens")

_TERM_RE = re.compile(r"^(?:(?P<weight>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\*)?(?P<name>[a-z]+)$")


@dataclass(frozen=True)
class LossSpec:
    """`train.loss` parsed once: (term, weight) pairs. `str()` gives the canonical text back."""

    terms: tuple[tuple[str, float], ...] = (("ce", 1.0),)

    def __post_init__(self) -> None:
        names = [name for name, _ in self.terms]
        if not names:
            raise KallmError("train.loss needs at least one term, e.g. 'ce', 'kd' or 'ce+kd'")
        for name, weight in self.terms:
            LOSS_TERMS.get(name)
            if not weight > 0:
                raise KallmError(f"train.loss: the weight of {name!r} must be > 0, got {weight}")
        if len(set(names)) != len(names):
            raise KallmError(f"train.loss '{self}' names a term twice")

    @classmethod
    def from_text(cls, text: str) -> LossSpec:
        terms = []
        for part in str(text).replace(" ", "").split("+"):
            match = _TERM_RE.match(part)
            if match is None:
                raise KallmError(f"train.loss: cannot read {part!r} in {text!r}; write terms like 'ce', 'kd', "
                                 f"'ce+kd' or '0.5*ce+kd' (terms: {', '.join(LOSS_TERMS.names())})")
            terms.append((match["name"], float(match["weight"] or 1.0)))
        return cls(tuple(terms))

    def __str__(self) -> str:
        return "+".join(name if weight == 1.0 else f"{weight:g}*{name}" for name, weight in self.terms)

    def weight(self, name: str) -> float:
        return dict(self.terms).get(name, 0.0)

    @property
    def needs_teacher(self) -> bool:
        return bool(self.weight("kd") or self.weight("hidden"))


def as_loss_spec(value: LossSpec | str) -> LossSpec:
    return value if isinstance(value, LossSpec) else LossSpec.from_text(value)


def kd_row_mask(attention_mask: torch.Tensor, labels: torch.Tensor, positions: KDPositions) -> torch.Tensor:
    """(batch, seq - 1) positions that predict a next token in the loss: labelled ones, or every real one."""
    if positions == "assistant":
        return labels[:, 1:] != IGNORE_INDEX
    return attention_mask[:, 1:].bool()


def term_counts(examples: Sequence[TokenizedExample], positions: KDPositions) -> dict[str, int]:
    """How many positions each term averages over in a batch of examples (the global normalisers)."""
    labelled = sum(e.num_labels for e in examples)
    predicting = sum(len(e) - 1 for e in examples)
    return {"ce": labelled, "kd": labelled if positions == "assistant" else predicting,
            "hidden": sum(len(e) for e in examples)}


def term_means(parts: torch.Tensor, examples: Sequence[TokenizedExample], config) -> dict[str, float]:
    """Per-term means of a step for its metrics record ({} for plain CE, whose mean is the loss itself).

    `parts` are the [CE, KL, hidden] sums over the global batch; `config` a TrainConfig. The CE mean is
    reported whenever it was computed (KD computes it at no extra cost): it is what held-out NLL measures.
    """
    spec = config.loss
    if str(spec) == "ce":
        return {}
    counts = term_counts(examples, config.kd_positions)
    means = {}
    if spec.weight("ce") or spec.weight("kd"):
        means["ce"] = float(parts[0]) / max(counts["ce"], 1)
    if spec.weight("kd"):
        means["kd"] = float(parts[1]) / max(counts["kd"], 1)
    if spec.weight("hidden"):
        means["hidden"] = float(parts[2]) / max(counts["hidden"], 1)
    return means


class _LayerOutputs:
    """Collects the outputs of decoder layers `first`.. during one forward pass (forward hooks)."""

    def __init__(self, model: nn.Module, first: int) -> None:
        _, layers = find_decoder_layers(model)
        self.outputs: list[torch.Tensor] = []
        self.handles = [layer.register_forward_hook(self._grab) for layer in list(layers)[first:]]

    def _grab(self, _module, _args, output) -> None:
        self.outputs.append(output[0] if isinstance(output, tuple) else output)

    def close(self) -> list[torch.Tensor]:
        for handle in self.handles:
            handle.remove()
        return self.outputs


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


class ObjectiveLoss(nn.Module):
    """The training loss of one local batch: `(scaled loss, [ce sum, kl sum, hidden sum])`.

    `scales` gives each term's weight divided by its global count, so the losses of all micro-batches
    and processes add up to the objective. The teacher is held outside the module tree, so DDP wraps
    only what trains.
    """

    def __init__(self, model: nn.Module, teacher: nn.Module | None, layer_index: int, spec: LossSpec,
                 kd_positions: KDPositions, temperature: float, chunk_size: int) -> None:
        super().__init__()
        if spec.needs_teacher and teacher is None:
            raise KallmError(f"train.loss '{spec}' needs the original model as a teacher, and none was built")
        self.model = model
        self._teacher = (teacher,)  # a tuple keeps it out of the module tree
        self.layer_index, self.spec, self.positions = layer_index, spec, kd_positions
        self.temperature, self.chunk_size = temperature, chunk_size

    def scales(self, examples: Sequence[TokenizedExample]) -> dict[str, float]:
        counts = term_counts(examples, self.positions)
        return {name: weight / max(counts[name], 1) for name, weight in self.spec.terms}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                prefix_states: torch.Tensor | None = None, *,
                scales: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.layer_index
        hooks = [_LayerOutputs(self.model, k)] if "hidden" in scales else []
        try:
            hidden = tail_hidden_states(self.model, input_ids, attention_mask, k, prefix_states)
            if self.spec.needs_teacher:
                hooks.append(_LayerOutputs(self._teacher[0], k) if hooks else None)
                t_hidden = teacher_hidden_states(self._teacher[0], input_ids, attention_mask, k, prefix_states)
        finally:
            layer_outputs = [h.close() for h in hooks if h is not None]
        parts = torch.zeros(3, dtype=torch.float64, device=hidden.device)
        loss = hidden.new_zeros((), dtype=torch.float32)
        if layer_outputs:
            matched = hidden_matching_sum(layer_outputs[0], layer_outputs[1], attention_mask)
            loss = loss + scales["hidden"] * matched
            parts[2] = matched.detach().double()
        head = check_lm_head(self.model)
        if "kd" in scales:
            rows = kd_row_mask(attention_mask, labels, self.positions)
            terms = DistillTerms(scales.get("ce", 0.0), scales["kd"], self.temperature)
            kd_loss, sums = linear_distill_loss(hidden[:, :-1][rows], head, t_hidden[:, :-1][rows],
                                                check_lm_head(self._teacher[0]), labels[:, 1:][rows], terms,
                                                self.chunk_size)
            loss = loss + kd_loss
            parts[:2] = sums
        elif "ce" in scales:
            rows = labels[:, 1:] != IGNORE_INDEX
            ce = linear_cross_entropy_sum(hidden[:, :-1][rows], head, labels[:, 1:][rows], self.chunk_size)
            loss = loss + scales["ce"] * ce
            parts[0] = ce.detach().double()
        return loss, parts
