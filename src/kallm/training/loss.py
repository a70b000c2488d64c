"""Next-token loss computed only where there is a label, without a (batch, seq, vocab) logits tensor.

With assistant-only labels a large share of positions carries no label, and the vocabulary is large
(49k for SmolLM2), so the full logits tensor dominates time and memory of a step. Here the final
hidden states of labelled positions are gathered first; the LM head and float32 cross-entropy run on
chunks of those rows. When gradients are needed, each chunk's gradient is formed right away
(softmax - one-hot) and only the (rows, hidden) gradient is kept, so a chunk's logits never outlive
the chunk and nothing is recomputed in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kallm.data.tokenize import IGNORE_INDEX
from kallm.errors import KallmError
from kallm.models.prefix import tail_hidden_states
from kallm.runtime.allocator import HEAP_BLOCK_BYTES


def check_lm_head(model: nn.Module) -> nn.Linear:
    """The model's output projection, if logits are a plain linear map of the final hidden states."""
    config = getattr(model, "config", None)
    for key in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(config, key, None) not in (None, 1, 1.0):
            raise KallmError(
                f"unsupported model {type(model).__name__}: its logits are post-processed ({key}); kallm's "
                f"labelled-positions loss assumes logits = lm_head(final hidden states)"
            )
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise KallmError(f"unsupported model {type(model).__name__}: output embeddings are not a Linear layer")
    return head


def gather_labelled(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden rows that predict a label (position t predicts labels[t+1]) and those labels."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return hidden[:, :-1][keep], targets[keep]


# Under bf16 a logits chunk is kept to at most this many float32 bytes: glibc serves larger blocks by
# mmap and returns them to the OS on free (its threshold tops out at 32 MiB), so every chunk of a bigger
# buffer page-faults afresh. Measured on SmolLM2's 49k vocabulary, 400 rows, forward + backward: bf16
# 196-223 ms in one chunk, 163-176 ms in 24 MiB chunks; float32 is faster in one chunk (316-335 against
# 387-397 ms: its matmul gains more from the taller chunk than it loses to the faults), so it keeps it.
CHUNK_BYTES = HEAP_BLOCK_BYTES


def chunk_rows(chunk_size: int, vocab: int, dtype: torch.dtype) -> int:
    """Rows per logits chunk for logits computed in `dtype`: `chunk_size`, and for 16-bit logits at
    most CHUNK_BYTES of float32 (>= 16 rows)."""
    if dtype not in (torch.bfloat16, torch.float16):
        return chunk_size
    return max(1, min(chunk_size, max(16, CHUNK_BYTES // (4 * vocab))))


def _compute_dtype(hidden: torch.Tensor, head: nn.Linear) -> torch.dtype:
    """The dtype `head(hidden)` computes in: the autocast dtype when autocast is on, else the weight's."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return head.weight.dtype


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where losses and softmax are computed for logits of `dtype`: float64 for a float64 model (the tests
    check algorithms to 1e-12 there), float32 for float32, bf16 and fp16."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def softmax_and_ce(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax of each row, each row's CE against `targets`), in float32 (float64 for float64 logits).

    torch's fused softmax reads bf16 logits as they are and keeps a row in cache while it works: measured
    on 128 x 49k rows, 4.5 ms against 8.9 ms for torch.logsumexp alone. The CE is -log p[target], exact
    to float32 rounding while p is a normal number; rows where it is not are recomputed as lse - z.
    """
    dtype = accumulation_dtype(logits.dtype)
    probs = torch.softmax(logits, dim=1, dtype=dtype)
    picked = probs.gather(1, targets[:, None]).squeeze(1)
    ce = -picked.log()
    tiny = picked < 1e-30
    if bool(tiny.any()):
        rows = logits[tiny].to(dtype)
        ce[tiny] = torch.logsumexp(rows, dim=1) - rows.gather(1, targets[tiny][:, None]).squeeze(1)
    return probs, ce


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i W^T + b, y_i) in float32, with gradients formed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):  # noqa: D401 - autograd signature
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        chunk_size = chunk_rows(chunk_size, weight.shape[0], weight.dtype)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            t = targets[start : start + chunk_size]
            # d(sum CE)/d(logits) = softmax - one_hot, formed in place to keep one chunk-sized buffer.
            logits = F.linear(h, weight, bias)
            probs, ce = softmax_and_ce(logits, t)
            total += ce.sum()
            probs[torch.arange(len(t), device=t.device), t] -= 1.0
            if need_h:
                grad_h[start : start + chunk_size] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += probs.T @ h.float()
            if need_b:
                grad_b += probs.sum(0)
            del logits, probs
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.flags = (need_h, need_w, need_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        outs = [(next(saved) * grad_out).to(dtype) if flag else None for flag, dtype in zip(ctx.flags, ctx.dtypes)]
        return outs[0], outs[1], outs[2], None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor,
                             chunk_size: int = 1024) -> torch.Tensor:
    """Sum of float32 cross-entropies of `head(hidden)` against `targets`, computed in row chunks."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    weight, bias = head.weight, head.bias
    wants_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if wants_grad:
        if torch.is_autocast_enabled(hidden.device.type):
            dtype = torch.get_autocast_dtype(hidden.device.type)
            hidden, weight = hidden.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    chunk_size = chunk_rows(chunk_size, head.out_features, _compute_dtype(hidden, head))
    for start in range(0, hidden.shape[0], chunk_size):
        logits = head(hidden[start : start + chunk_size]).float()
        total += F.cross_entropy(logits, targets[start : start + chunk_size], reduction="sum")
    return total


def labelled_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Linear,
                     chunk_size: int = 1024) -> tuple[torch.Tensor, int]:
    """(sum of next-token CE over labelled positions, number of those positions)."""
    rows, targets = gather_labelled(hidden, labels)
    return linear_cross_entropy_sum(rows, head, targets, chunk_size), int(targets.numel())


class StepLoss(nn.Module):
    """(sum of CE over labelled tokens, count) for a batch: frozen prefix without autograd (or from
    cached states), then the tail, then logits only at labelled positions. A module of its own so
    that DDP wraps exactly the computation that produces gradients."""

    def __init__(self, model: nn.Module, layer_index: int, chunk_size: int) -> None:
        super().__init__()
        self.model = model
        self.layer_index = layer_index
        self.chunk_size = chunk_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                prefix_states: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        hidden = tail_hidden_states(self.model, input_ids, attention_mask, self.layer_index, prefix_states)
        return labelled_lm_loss(hidden, labels, check_lm_head(self.model), self.chunk_size)


@torch.no_grad()
def per_sequence_nll(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Linear,
                     chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token NLL, labelled positions) per row of a batch, float64; no autograd.

    The held-out verdict pairs variants conversation by conversation, so it needs each row's sum, not the
    batch total that training uses.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    rows = torch.nonzero(keep, as_tuple=True)[0]  # row of each kept position, in the order `[keep]` gathers
    hidden_rows, kept_targets = hidden[:, :-1][keep], targets[keep]
    sums = torch.zeros(labels.shape[0], dtype=torch.float64, device=hidden.device)
    chunk_size = chunk_rows(chunk_size, head.out_features, _compute_dtype(hidden, head))
    for start in range(0, hidden_rows.shape[0], chunk_size):
        logits = head(hidden_rows[start: start + chunk_size]).float()
        nll = F.cross_entropy(logits, kept_targets[start: start + chunk_size], reduction="none")
        sums.index_add_(0, rows[start: start + chunk_size], nll.double())
    return sums, keep.sum(1)
