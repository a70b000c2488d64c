"""What a training run minimises: `train.loss`, a weighted sum of named terms, and the module that computes it.

`loss: ce+kd`, `0.5*ce+kd`, `kd+0.1*hidden`: the names are those of `kallm.training.loss_terms.LOSS_TERMS`
(ce, kd, hidden, and any term registered there). Each term is a mean over its own positions in the global
batch (labelled tokens for ce, KD positions for kd, tokens for hidden), so weights mean the same thing
whatever the batch looks like. Terms that need the teacher (`kallm.distill.teacher`) get it from the
training loop, which builds it from the model when the spec asks for one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kallm.data.tokenize import TokenizedExample
from kallm.distill.teacher import teacher_hidden_states
from kallm.errors import KallmError
from kallm.models.prefix import tail_hidden_states
from kallm.retrofitting.arch import find_decoder_layers
from kallm.training.loss_terms import LOSS_TERMS, KDPositions, LossTerm, TermBatch, TermSettings

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

    def term_objects(self) -> list[LossTerm]:
        """The spec's terms, in registry order."""
        return [LOSS_TERMS.get(name) for name in LOSS_TERMS if self.weight(name)]

    def computed(self) -> list[LossTerm]:
        """The terms that run: each one, less those another term of the spec computes in its own pass."""
        terms = self.term_objects()
        fused = {name for term in terms for name in term.fuses}
        return [term for term in terms if term.name not in fused]

    @property
    def logged(self) -> tuple[str, ...]:
        """The metrics a step logs (registry order): what the terms' sums are, and the slots of `parts`."""
        names = {name for term in self.term_objects() for name in term.logs}
        return tuple(name for name in LOSS_TERMS if name in names)

    @property
    def needs_teacher(self) -> bool:
        return any(term.needs_teacher for term in self.term_objects())


def as_loss_spec(value: LossSpec | str) -> LossSpec:
    return value if isinstance(value, LossSpec) else LossSpec.from_text(value)


def term_counts(examples: Sequence[TokenizedExample], positions: KDPositions) -> dict[str, int]:
    """How many positions each registered term averages over in a batch of examples (the global normalisers)."""
    settings = TermSettings(kd_positions=positions)
    return {name: LOSS_TERMS.get(name).count(examples, settings) for name in LOSS_TERMS}


def term_means(parts: torch.Tensor, examples: Sequence[TokenizedExample], config) -> dict[str, float]:
    """Per-term means of a step for its metrics record ({} for plain CE, whose mean is the loss itself).

    `parts` are the sums of `config.loss.logged` over the global batch; `config` a TrainConfig. Terms log
    what their pass computes beyond what they train on (KD: the CE sum, what held-out NLL measures).
    """
    spec = config.loss
    if spec == LossSpec():
        return {}
    counts = term_counts(examples, config.kd_positions)
    return {name: float(parts[i]) / max(counts[name], 1) for i, name in enumerate(spec.logged)}


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


class ObjectiveLoss(nn.Module):
    """The training loss of one local batch: `(scaled loss, sums of spec.logged)` (float64 sums).

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
        self.layer_index, self.spec = layer_index, spec
        self.settings = TermSettings(kd_positions, temperature, chunk_size)
        self.terms = spec.computed()
        self.slots = {name: i for i, name in enumerate(spec.logged)}

    def scales(self, examples: Sequence[TokenizedExample]) -> dict[str, float]:
        counts = {name: LOSS_TERMS.get(name).count(examples, self.settings) for name, _ in self.spec.terms}
        return {name: weight / max(counts[name], 1) for name, weight in self.spec.terms}

    def _forward_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                      prefix_states: torch.Tensor | None) -> TermBatch:
        """The student's (and where needed the teacher's) pass, with layer outputs where a term needs them."""
        k, teacher = self.layer_index, self._teacher[0]
        hooks = [_LayerOutputs(self.model, k)] if any(t.needs_layer_outputs for t in self.terms) else []
        t_hidden = None
        try:
            hidden = tail_hidden_states(self.model, input_ids, attention_mask, k, prefix_states)
            if self.spec.needs_teacher:
                hooks.append(_LayerOutputs(teacher, k) if hooks else None)
                t_hidden = teacher_hidden_states(teacher, input_ids, attention_mask, k, prefix_states)
        finally:
            layer_outputs = [h.close() for h in hooks if h is not None]
        layer_outputs += [None] * (2 - len(layer_outputs))
        return TermBatch(self.model, teacher, input_ids, attention_mask, labels, hidden, t_hidden, *layer_outputs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                prefix_states: torch.Tensor | None = None, *,
                scales: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._forward_pass(input_ids, attention_mask, labels, prefix_states)
        parts = torch.zeros(len(self.slots), dtype=torch.float64, device=batch.hidden.device)
        loss = batch.hidden.new_zeros((), dtype=torch.float32)
        for term in self.terms:
            out = term.compute(batch, scales, self.settings)
            loss = loss + out.loss
            for name, value in out.sums.items():
                parts[self.slots[name]] = value.detach().double()
        return loss, parts
