"""Knowledge distillation from the original model's next-token distribution, without (rows x vocab) tensors.

    loss = ce_scale * sum_i CE(z_i, y_i) + kd_scale * T^2 * sum_i KL(softmax(t_i / T) || softmax(z_i / T))

z_i = student head(h_i), t_i = teacher head(g_i), over the full vocabulary, in float32 (float64 for a
float64 model, which the tests use to check the algorithm to 1e-12). As in
`kallm.training.loss`, the rows are processed in chunks and each chunk's gradient with respect to the
logits is formed right away (d/dz of T^2 KL is T (q - p), of CE softmax(z) - onehot), so the logits of
a chunk (student and teacher) never outlive the chunk and backward only scales the stored gradients.
Peak memory beyond the inputs is about three (chunk x vocab) float32 buffers.

The T^2 factor (Hinton et al., 2015) keeps the gradient's size independent of the temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kallm.data.tokenize import IGNORE_INDEX
from kallm.training.loss import accumulation_dtype, chunk_rows


@dataclass(frozen=True)
class DistillTerms:
    """How the CE and KL sums are weighted; a weight of 0 skips that term's work entirely."""

    ce_scale: float = 0.0
    kd_scale: float = 1.0
    temperature: float = 1.0


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a[i, v] * b[i, v] per row, without an (rows x vocab) product tensor."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _subtract_onehot(grad: torch.Tensor, targets: torch.Tensor, labelled: torch.Tensor, scale: float) -> None:
    grad[labelled, targets[labelled]] -= scale


def _chunk_terms(zs: torch.Tensor, zt: torch.Tensor | None, targets: torch.Tensor,
                 terms: DistillTerms) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(CE sum, KL sum, d loss / d logits) of one chunk; `zs` and `zt` are consumed (used as buffers)."""
    temp, ce_w, kd_w = terms.temperature, terms.ce_scale, terms.kd_scale
    labelled = targets != IGNORE_INDEX
    ce_rows = labelled.to(zs.dtype) * ce_w  # each row's CE weight, in the logits' precision
    # The CE sum is kept even when it is not trained on: it is what the held-out verdict measures.
    lse1 = torch.logsumexp(zs, dim=-1)
    ce = ((lse1 - zs.gather(1, targets.clamp_min(0)[:, None]).squeeze(1)) * labelled).sum()
    kl = zs.new_zeros(())
    if zt is None:  # CE only: softmax(z) - onehot on labelled rows
        grad = zs.sub_(lse1[:, None]).exp_().mul_(ce_rows[:, None])
        _subtract_onehot(grad, targets, labelled, ce_w)
        return ce, kl, grad
    lse_s = lse1 if temp == 1.0 else torch.logsumexp(zs.div_(temp), dim=-1)
    log_q = zs.sub_(lse_s[:, None])
    log_p = zt.div_(temp)
    log_p -= torch.logsumexp(log_p, dim=-1, keepdim=True)
    p = log_p.exp()
    # sum p (log p - log q) with the difference taken elementwise: the two cross terms are each about the
    # entropy (nats), their difference is the small KL, and subtracting the sums would lose its digits
    kl = _rowdot(p, log_p.sub_(log_q)).sum()
    del log_p, zt
    if ce_w and temp != 1.0:
        # softmax(z) at temperature 1 from log q: z = T (log q + lse_s)
        soft = (log_q * temp).add_((temp * lse_s - lse1)[:, None]).exp_().mul_(ce_rows[:, None])
        grad = log_q.exp_().sub_(p).mul_(kd_w * temp).add_(soft)  # d(T^2 KL)/dz = T (q - p)
    else:
        # at T = 1 softmax(z) is q: grad = q (kd_w + ce_w [labelled]) - kd_w p - ce_w onehot, in place
        coeff = ce_rows + kd_w * temp
        grad = log_q.exp_().mul_(coeff[:, None]).sub_(p, alpha=kd_w * temp)
    if ce_w:
        _subtract_onehot(grad, targets, labelled, ce_w)
    return ce, kl, grad


class _ChunkedLinearDistill(torch.autograd.Function):
    """Weighted CE + KD sums over rows of (student hidden, teacher hidden), gradients formed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, t_hidden, t_weight, t_bias, targets, terms, chunk_size):  # noqa: D401
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        acc = accumulation_dtype(weight.dtype)
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        sums = torch.zeros(2, dtype=torch.float64, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=acc) if need_b else None
        chunk_size = chunk_rows(chunk_size, weight.shape[0], weight.dtype)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h = hidden[rows]
            zt = None
            if terms.kd_scale:
                with torch.no_grad():
                    zt = F.linear(t_hidden[rows], t_weight, t_bias).to(acc)
            zs = F.linear(h, weight, bias).to(acc)
            ce, kl, grad = _chunk_terms(zs, zt, targets[rows], terms)
            del zs, zt
            t2 = terms.temperature ** 2
            loss += terms.ce_scale * ce + terms.kd_scale * t2 * kl
            sums += torch.stack([ce.double(), kl.double()])
            if need_h:
                grad_h[rows] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += grad.T @ h.to(acc)
            if need_b:
                grad_b += grad.sum(0)
            del grad
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.flags = (need_h, need_w, need_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(sums)
        return loss, sums

    @staticmethod
    def backward(ctx, grad_out, _grad_sums):
        saved = iter(ctx.saved_tensors)
        outs = [(next(saved) * grad_out).to(dtype) if flag else None for flag, dtype in zip(ctx.flags, ctx.dtypes)]
        return outs[0], outs[1], outs[2], None, None, None, None, None, None


def linear_distill_loss(hidden: torch.Tensor, head: nn.Linear, teacher_hidden: torch.Tensor | None,
                        teacher_head: nn.Linear | None, targets: torch.Tensor, terms: DistillTerms,
                        chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted loss, [CE sum, KL sum] float64) over the rows of `hidden` (student final hidden states).

    `teacher_hidden` holds the teacher's final hidden states at the same rows (None when kd_scale is 0);
    `targets` the next tokens, IGNORE_INDEX where a row has no CE label. The KL sum is before T^2.
    """
    if terms.kd_scale and (teacher_hidden is None or teacher_head is None):
        raise ValueError("linear_distill_loss: a KD term needs the teacher's hidden states and head")
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0, torch.zeros(2, dtype=torch.float64, device=hidden.device)
    weight, bias = head.weight, head.bias
    t_weight = teacher_head.weight if teacher_head is not None else None
    t_bias = teacher_head.bias if teacher_head is not None else None
    if torch.is_autocast_enabled(hidden.device.type):
        # both heads in the autocast dtype, as autocast would run them: the teacher's logits are made the
        # way the student's are (and a float32 teacher head would cost as much as the student's step)
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight, bias, teacher_hidden, t_weight, t_bias = (
            None if t is None else t.to(dtype) for t in (hidden, weight, bias, teacher_hidden, t_weight, t_bias))
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedLinearDistill.apply(hidden, weight, bias, teacher_hidden, t_weight, t_bias, targets, terms,
                                           chunk_size)
