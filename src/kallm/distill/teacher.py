"""The teacher for distillation: the untouched model, rebuilt beside a retrofit without copying it.

`build_teacher(model)` makes a frozen module that computes what the model computed before surgery:
every replaced FFN is the original module again (kept aside by surgery, `kallm.retrofitting.displaced`),
every frozen tensor is *shared* with the student (no copy), and only tensors that train are copied —
at the moment the teacher is built, i.e. before training touches them. With the default `freeze: ffn`
the teacher costs no memory at all; with `blocks` it holds its own copy of the retrofitted blocks'
attention, with `none` a copy of the whole model.

Decoder layers below the first trainable one are frozen and unreplaced in both models, so the
teacher's hidden states entering that layer are the student's: it runs only its own tail on the
student's prefix states (cached or not), and its LM head only where the loss needs logits.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from kallm.models.prefix import tail_hidden_states
from kallm.retrofitting.displaced import original_modules

log = logging.getLogger(__name__)


def build_teacher(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode stand-in for the model as it was before surgery (and before training)."""
    device = next(model.parameters()).device
    memo: dict[int, object] = {id(p): p for p in model.parameters() if not p.requires_grad}
    memo.update({id(b): b for b in model.buffers()})
    # deepcopy returns a memo entry as is: each module surgery put in becomes its original there
    memo.update({key: old.to(device) for key, old in original_modules(model).items()})
    teacher = copy.deepcopy(model, memo)
    teacher.requires_grad_(False)
    teacher.eval()
    shared = {id(p) for p in model.parameters()}
    copied = sum(p.numel() for p in teacher.parameters() if id(p) not in shared)
    log.info("teacher: the original model, sharing the student's frozen tensors; %s parameters copied",
             f"{copied:,}")
    return teacher


@torch.no_grad()
def teacher_hidden_states(teacher: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          layer_index: int, states: torch.Tensor | None = None) -> torch.Tensor:
    """The teacher's final hidden states; with prefix `states` only layers `layer_index`.. run."""
    return tail_hidden_states(teacher, input_ids, attention_mask, layer_index, states)
