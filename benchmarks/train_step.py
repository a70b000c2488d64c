"""One training step of kallm vs a plain Hugging Face step, side by side, on the embedded SmolLM2.

    .venv/bin/python benchmarks/train_step.py [--reps 5] [--batch 4] [--length 512] [--json out.json]
        [--precisions fp32,auto] [--variants kan:chebyshev2:2,linear] [--modes plain,kallm,kallm+cache]

For each variant (KAN chebyshev2:2 and the linear restart, both on `last:5`, freeze=ffn) and each
precision (`fp32`, `auto` = what `precision: auto` resolves to on this machine, `bf16` = forced bf16
autocast) it times, in interleaved repetitions (medians reported):
  plain         model(input_ids, labels=labels): all 30 blocks, logits at every position, backward
  kallm         frozen prefix without autograd, logits/CE only at labelled positions (chunked), backward
  kallm+cache   as kallm, but the prefix's hidden states come from a PrefixCache built once beforehand
                (in the arm's precision, stored as `precision` stores them)
Each step includes the AdamW update (float32 master weights in every precision). Memory is the step's peak above the memory held before it:
CUDA max allocated on GPU; on CPU a sampling thread reads the process RSS (glibc is told to return
large buffers to the OS at once so RSS follows tensor lifetimes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    # A fixed mmap threshold makes every large tensor its own mapping, unmapped when freed.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHAT = Path(os.environ.get("KALLM_SHARED_DATA", REPO.parent / "shared" / "data")) / "chat" / "hh_helpful.jsonl"
VARIANTS = ("kan:chebyshev2:2", "linear")
MODES = ("plain", "kallm", "kallm+cache")


class PeakMemory:
    """Peak memory during a block, above what was in use when it started."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.cuda = torch.cuda.is_available()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        import psutil

        self._proc = psutil.Process()
        self.base = self._peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._proc.memory_info().rss)
            self.peak = self._peak - self.base


def real_batch(tokenizer, batch: int, length: int) -> dict:
    """The first `batch` conversations of the shared chat data that fill `length` tokens (truncated)."""
    from kallm.data import ChatTokenizer, collate, load_conversations

    chat = ChatTokenizer(tokenizer, length)
    examples = []
    for messages in load_conversations(CHAT).conversations:
        ex = chat(messages, index=len(examples))
        if ex is not None and len(ex) == length:
            examples.append(ex)
            if len(examples) == batch:
                break
    return collate(examples, tokenizer.pad_token_id)


def build(variant: str):
    from kallm.models import load_model
    from kallm.retrofitting import retrofit

    model, tokenizer = load_model("smollm2-135m-instruct")
    report = retrofit(model, layers="last:5", variant=variant, freeze="ffn", seed=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    return model, tokenizer, report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=1024, help="logits_chunk_size of the kallm step")
    parser.add_argument("--precisions", default="fp32,auto", help="comma-separated: fp32, auto, bf16")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args()


def setup_variant(variant: str, args: argparse.Namespace, precisions: dict) -> dict:
    from kallm.training.config import TrainConfig
    from kallm.training.loss import StepLoss
    from kallm.training.optim import build_optimizer
    from kallm.training.prefix import PrefixCache

    model, tokenizer, report = build(variant)
    device = next(model.parameters()).device
    batch = real_batch(tokenizer, args.batch, args.length)
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    k = report.first_trainable_layer
    states, cache_s = {}, {}
    for p in {p.name: p for p in precisions.values()}.values():  # one cache per distinct arithmetic
        t0 = time.perf_counter()
        cache = PrefixCache.build(model, [batch], k, dtype=p.storage_dtype, precision=p.name, progress=False)
        cache_s[p.name] = time.perf_counter() - t0
        states[p.name] = cache.batch_states(batch, device)
    return dict(model=model, ids=ids, mask=mask, labels=labels, states=states, opt=build_optimizer(model, TrainConfig()),
                step_loss=StepLoss(model, k, args.chunk), cache_s=cache_s, k=k, device=device)


def step(s: dict, mode: str, precision) -> float:
    with precision.autocast(s["device"]):
        if mode == "plain":
            loss = s["model"](input_ids=s["ids"], attention_mask=s["mask"], labels=s["labels"]).loss
        else:
            states = s["states"][precision.name] if mode == "kallm+cache" else None
            loss_sum, n = s["step_loss"](s["ids"], s["mask"], s["labels"], states)
            loss = loss_sum / n
    loss.backward()
    s["opt"].step()
    s["opt"].zero_grad(set_to_none=True)
    return float(loss.detach())


def main() -> None:
    args = parse_args()
    from kallm.precision import resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = {label: resolve_precision(label, device) for label in args.precisions.split(",")}
    variants, modes = args.variants.split(","), args.modes.split(",")
    setups = {variant: setup_variant(variant, args, precisions) for variant in variants}
    arms = [(v, m, p) for v in variants for m in modes for p in precisions]
    times: dict[tuple, list[float]] = {a: [] for a in arms}
    mems: dict[tuple, list[int]] = {a: [] for a in arms}
    losses: dict[tuple, float] = {}
    for rep in range(args.reps + 1):  # repetition 0 warms up and is not counted
        for arm in arms:
            s = setups[arm[0]]
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                losses[arm] = step(s, arm[1], precisions[arm[2]])
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
            if rep:
                times[arm].append(dt)
                mems[arm].append(mem.peak)
        print(f"rep {rep}/{args.reps} done", file=sys.stderr)
    report(args, setups, precisions, arms, times, mems, losses)


def report(args, setups, precisions, arms, times, mems, losses) -> None:
    first = setups[arms[0][0]]
    tokens = int(first["mask"].sum())
    labelled = int((first["labels"][:, 1:] != -100).sum())
    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    ref_p = next(iter(precisions))
    med = {a: statistics.median(times[a]) for a in arms}
    rows = []
    for v, m, p in arms:
        base = (v, "plain", ref_p) if (v, "plain", ref_p) in med else (v, m, ref_p)
        base_m = statistics.median(mems[base])
        m_peak = statistics.median(mems[(v, m, p)])
        rows.append({"variant": v, "mode": m, "precision": p, "computes_in": precisions[p].name,
                     "step_s": med[(v, m, p)], "tokens_per_s": tokens / med[(v, m, p)],
                     "speedup": med[base] / med[(v, m, p)], "vs_first_precision": med[(v, m, ref_p)] / med[(v, m, p)],
                     "peak_mem_mb": m_peak / 2**20, "mem_ratio": m_peak / base_m if base_m else None,
                     "loss": losses[(v, m, p)], "times": times[(v, m, p)]})
    caches = ", ".join(f"{name} {t:.2f} s" for name, t in first["cache_s"].items())
    print(f"\n{args.batch}x{args.length} tokens of {CHAT.name} ({labelled / tokens:.0%} of positions labelled), "
          f"last:5, freeze=ffn, {device}, median of {args.reps}; prefix cache built once in {caches}; "
          + "; ".join(f"{label} = {p}" for label, p in precisions.items()) + "\n")
    print(f"| variant | precision | step | s/step | tokens/s | speed-up vs {ref_p} plain | x {ref_p} (same step) "
          "| peak step memory (MB) | memory vs plain |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = f"{r['mem_ratio']:.2f}x" if r["mem_ratio"] is not None else "-"
        print(f"| {r['variant']} | {r['precision']} ({r['computes_in']}) | {r['mode']} | {r['step_s']:.2f} "
              f"| {r['tokens_per_s']:,.0f} | {r['speedup']:.2f}x | {r['vs_first_precision']:.2f}x "
              f"| {r['peak_mem_mb']:,.0f} | {ratio} |")
    print("\nlast losses (the arms share each variant's weights, which every step updates, so these drift): "
          + "; ".join(f"{r['variant']} {r['mode']} {r['precision']} {r['loss']:.4f}" for r in rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "tokens": tokens, "labelled": labelled,
                                               "precisions": {k: p.to_dict() for k, p in precisions.items()},
                                               "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
