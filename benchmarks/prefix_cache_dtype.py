"""Does storing the frozen prefix's cached hidden states in bf16 change the held-out loss?

    .venv/bin/python benchmarks/prefix_cache_dtype.py [--conversations 48] [--layer 25] [--bf16-conversations 8]

On the embedded SmolLM2 (its own FFNs, so the loss is a trained model's), the hidden states entering
decoder layer `--layer` (25 = the first layer of `last:5`) are computed once per held-out conversation
and kept in a `PrefixCache` stored as float32 and as bfloat16; the tail (layers 25..29, LM head,
float32 cross-entropy over the assistant tokens) is then run from each. The only difference between
the two is the rounding of the stored states, so this isolates what a bf16 cache costs. It is
measured in fp32 compute on `--conversations` conversations and, for the first
`--bf16-conversations`, in bf16 compute (states computed under bf16 autocast, as a bf16 run would).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CHAT = Path(os.environ.get("KALLM_SHARED_DATA", REPO.parent / "shared" / "data")) / "chat" / "hh_helpful.jsonl"


def held_out_losses(model, batches: list[dict], layer: int, compute: str) -> dict[str, tuple[float, list[float]]]:
    """{storage: (mean CE per labelled token, per-conversation mean CE)} for fp32 and bf16 storage."""
    from kallm.models.prefix import PrefixCache
    from kallm.runtime.precision import autocast
    from kallm.training.loss import StepLoss

    step_loss = StepLoss(model, layer, 1024)
    full = PrefixCache.build(model, batches, layer, precision=compute, progress=False)
    rounded = PrefixCache(layer, full.fingerprint, torch.bfloat16, compute)
    for batch in batches:  # the same states, stored as a bf16 cache stores them
        for key in batch["cache_keys"]:
            rounded.add(key, full.get(key))
    out = {}
    for storage, cache in (("fp32", full), ("bf16", rounded)):
        total, count, per = 0.0, 0, []
        with torch.no_grad(), autocast(compute, "cpu"):
            for batch in batches:
                loss_sum, n = step_loss(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                        cache.batch_states(batch))
                total, count = total + float(loss_sum), count + n
                per.append(float(loss_sum) / n)
        out[storage] = (total / count, per)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conversations", type=int, default=48)
    p.add_argument("--bf16-conversations", type=int, default=8, help="0: skip the bf16-compute arm")
    p.add_argument("--layer", type=int, default=25)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--data", default=str(CHAT))
    args = p.parse_args()
    from kallm.data import collate, load_conversations, tokenize_conversations
    from kallm.models.loading import load_model

    model, tokenizer = load_model()
    model.requires_grad_(False)
    # The conversations `kallm train` would hold out are not known here; the last ones of the file are
    # never among the first conversations the training benchmarks use.
    convs = load_conversations(args.data).conversations[-args.conversations:]
    examples = tokenize_conversations(tokenizer, convs, args.max_length).examples
    batches = [collate(examples[i:i + 4], tokenizer.pad_token_id) for i in range(0, len(examples), 4)]
    n16 = -(-args.bf16_conversations // 4)
    rows = []
    for compute, use in (("fp32", batches), ("bf16", batches[:n16])):
        if not use:
            continue
        t0 = time.perf_counter()
        res = held_out_losses(model, use, args.layer, compute)
        (l32, p32), (l16, p16) = res["fp32"], res["bf16"]
        rows.append((compute, sum(len(b["cache_keys"]) for b in use), l32, l16,
                     max(abs(a - b) for a, b in zip(p32, p16)), time.perf_counter() - t0))
        print(f"{compute} compute done", file=sys.stderr)
    print(f"\nembedded SmolLM2, prefix = layers 0..{args.layer - 1}, held-out conversations of {Path(args.data).name} "
          f"(max_length {args.max_length}), torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| compute | conversations | loss, states stored fp32 | loss, states stored bf16 | relative change "
          "| max change of one conversation's loss | s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for compute, n, l32, l16, worst, secs in rows:
        print(f"| {compute} | {n} | {l32:.5f} | {l16:.5f} | {l16 / l32 - 1:+.4%} | {worst:.5f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
