"""One training step of kallm vs a plain Hugging Face step, side by side, on the embedded SmolLM2.

    .venv/bin/python benchmarks/train_step.py [--reps 5] [--batch 4] [--length 512] [--json out.json]

For each variant (KAN chebyshev2:2 and the linear restart, both on `last:5`, freeze=ffn) it times, in
interleaved repetitions (medians reported):
  plain         model(input_ids, labels=labels): all 30 blocks, float32 logits at every position, backward
  kallm         frozen prefix without autograd, logits/CE only at labelled positions (chunked), backward
  kallm+cache   as kallm, but the prefix's hidden states come from a PrefixCache built once beforehand
  kd+cache      as kallm+cache with train.loss kd: KL from the original model (its tail on the same prefix
                states) over the full vocabulary at the labelled positions, chunked
  kd-all+cache  the same at every position
Each step includes the AdamW update. Memory is the step's peak above the memory held before it:
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
MODES = ("plain", "kallm", "kallm+cache", "kd+cache", "kd-all+cache")
# Distillation from the original model (train.loss: kd): KL over the full vocabulary at assistant positions,
# or at every position; the teacher runs its own tail on the same cached prefix states.
KD_MODES = {"kd+cache": "assistant", "kd-all+cache": "all"}


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
    from kallm.models.loading import load_model
    from kallm.retrofitting import retrofit

    model, tokenizer = load_model("smollm2-135m-instruct")
    report = retrofit(model, layers="last:5", variant=variant, freeze="ffn", seed=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    return model, tokenizer, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=1024, help="logits_chunk_size of the kallm step")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from kallm.distill.teacher import build_teacher
    from kallm.models.prefix import PrefixCache
    from kallm.training.config import TrainConfig
    from kallm.training.loss import StepLoss
    from kallm.training.loss_terms import kd_row_mask
    from kallm.training.objective import LossSpec, ObjectiveLoss
    from kallm.training.optim import build_optimizer

    setups = {}
    for variant in VARIANTS:
        model, tokenizer, report = build(variant)
        device = next(model.parameters()).device
        batch = real_batch(tokenizer, args.batch, args.length)
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        k = report.first_trainable_layer
        t0 = time.perf_counter()
        cache = PrefixCache.build(model, [batch], k, progress=False)
        cache_s = time.perf_counter() - t0
        states = cache.batch_states(batch, device)
        optimizer = build_optimizer(model, TrainConfig())
        step_loss = StepLoss(model, k, args.chunk)
        teacher = build_teacher(model)
        kd = {mode: ObjectiveLoss(model, teacher, k, LossSpec.from_text("kd"), positions, 1.0, args.chunk)
              for mode, positions in KD_MODES.items()}
        setups[variant] = dict(model=model, ids=ids, mask=mask, labels=labels, states=states, opt=optimizer,
                               step_loss=step_loss, cache_s=cache_s, k=k, kd=kd)

    def step(s: dict, mode: str) -> float:
        if mode == "plain":
            loss = s["model"](input_ids=s["ids"], attention_mask=s["mask"], labels=s["labels"]).loss
        elif mode in KD_MODES:
            rows = int(kd_row_mask(s["mask"], s["labels"], KD_MODES[mode]).sum())
            loss, _ = s["kd"][mode](s["ids"], s["mask"], s["labels"], s["states"], scales={"kd": 1.0 / rows})
        else:
            loss_sum, n = s["step_loss"](s["ids"], s["mask"], s["labels"], s["states"] if mode == "kallm+cache" else None)
            loss = loss_sum / n
        loss.backward()
        s["opt"].step()
        s["opt"].zero_grad(set_to_none=True)
        return float(loss.detach())

    times: dict[tuple[str, str], list[float]] = {(v, m): [] for v in VARIANTS for m in MODES}
    mems: dict[tuple[str, str], list[int]] = {(v, m): [] for v in VARIANTS for m in MODES}
    losses: dict[tuple[str, str], float] = {}
    for rep in range(args.reps + 1):  # repetition 0 warms up and is not counted
        for variant in VARIANTS:
            for mode in MODES:
                s = setups[variant]
                with PeakMemory() as mem:
                    t0 = time.perf_counter()
                    losses[(variant, mode)] = step(s, mode)
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - t0
                if rep:
                    times[(variant, mode)].append(dt)
                    mems[(variant, mode)].append(mem.peak)
        print(f"rep {rep}/{args.reps} done", file=sys.stderr)

    tokens = int(setups[VARIANTS[0]]["mask"].sum())
    labelled = int((setups[VARIANTS[0]]["labels"][:, 1:] != -100).sum())
    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    rows = []
    for variant in VARIANTS:
        base_t = statistics.median(times[(variant, "plain")])
        base_m = statistics.median(mems[(variant, "plain")])
        ce_t = statistics.median(times[(variant, "kallm+cache")])  # the CE step the KD steps are set against
        ce_m = statistics.median(mems[(variant, "kallm+cache")])
        for mode in MODES:
            t = statistics.median(times[(variant, mode)])
            m = statistics.median(mems[(variant, mode)])
            rows.append({"variant": variant, "mode": mode, "step_s": t, "tokens_per_s": tokens / t,
                         "speedup": base_t / t, "peak_mem_mb": m / 2**20, "mem_ratio": m / base_m if base_m else None,
                         "time_vs_ce": t / ce_t, "mem_vs_ce": m / ce_m if ce_m else None,
                         "times": times[(variant, mode)]})
    print(f"\n{args.batch}x{args.length} tokens of {CHAT.name} ({labelled / tokens:.0%} of positions labelled), "
          f"last:5, freeze=ffn, {device}, median of {args.reps}; prefix cache built once in "
          f"{setups[VARIANTS[0]]['cache_s']:.2f} s\n")
    print("| variant | step | s/step | tokens/s | speed-up | peak step memory (MB) | memory vs plain "
          "| time vs CE step | memory vs CE step |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = f"{r['mem_ratio']:.2f}x" if r["mem_ratio"] is not None else "-"
        ce_ratio = f"{r['mem_vs_ce']:.2f}x" if r["mem_vs_ce"] is not None else "-"
        print(f"| {r['variant']} | {r['mode']} | {r['step_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['speedup']:.2f}x "
              f"| {r['peak_mem_mb']:,.0f} | {ratio} | {r['time_vs_ce']:.2f}x | {ce_ratio} |")
    for variant in VARIANTS:
        drift = abs(losses[(variant, "plain")] - losses[(variant, "kallm")])
        print(f"{variant}: last losses plain {losses[(variant, 'plain')]:.4f}, kallm {losses[(variant, 'kallm')]:.4f}, "
              f"kallm+cache {losses[(variant, 'kallm+cache')]:.4f} (they drift apart as each step updates the weights; "
              f"|plain-kallm| = {drift:.4f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "tokens": tokens, "labelled": labelled,
                                               "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
