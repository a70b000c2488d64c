"""KAN layer benchmark: forward+backward time and saved-for-backward bytes, side by side.

    .venv/bin/python benchmarks/kan_layer.py            # CPU, 2,048 tokens, d=576, float32 (+ bf16 rows)
    .venv/bin/python benchmarks/kan_layer.py --no-bf16  # float32 rows only

Variants run interleaved (every round runs each variant in a shuffled order; the five headline
variants run three times per round, spread over it) and the table reports medians of wall time and
of process CPU time, so load from other processes affects all variants alike. Saved bytes are
the activations autograd keeps for backward, measured with `torch.autograd.graph.saved_tensors_hooks`
(unique storages, parameters excluded). Prints a markdown table.

Rows marked "[bf16]" run the same module (float32 weights) under `torch.autocast("cpu", bfloat16)`, as
`precision: bf16` trains: matmuls in bf16, the KAN bases in float32. Their "x SwiGLU" compares with the
float32 SwiGLU; the lines under the table give each module's bf16/fp32 time ratio. On a CPU without
native bf16 (no AVX512-BF16/AMX) the bf16 matmuls are emulated and these rows are slower, not faster.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kallm.kan import KANLinear, build_kan, kan_num_params, list_bases  # noqa: E402
from kallm.runtime.precision import autocast, resolve_precision  # noqa: E402
from naive_kan import NaiveChebyshevKAN  # noqa: E402


class SwiGLU(nn.Module):
    """The Llama/SmolLM2 MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def budget_hidden(spec: str, d: int, budget: int) -> int:
    """The hidden width whose parameter count is closest to `budget` (counts grow monotonically)."""
    lo, hi = 1, 64 * d
    while lo < hi:
        mid = (lo + hi) // 2
        if kan_num_params(spec, d, d, mid) < budget:
            lo = mid + 1
        else:
            hi = mid
    return min((lo - 1, lo), key=lambda h: abs(kan_num_params(spec, d, d, max(h, 1)) - budget))


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    y.sum().backward()
    return sum(storages.values())


def make_step(module: nn.Module, x: torch.Tensor, compute: str = "fp32") -> Callable[[], None]:
    grad = torch.randn(x.shape[0], module(x).shape[-1])

    def step() -> None:
        x.grad = None
        for p in module.parameters():
            p.grad = None
        with autocast(compute, "cpu"):
            y = module(x)
        y.backward(grad.to(y.dtype))

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--hidden", type=int, default=1536, help="SwiGLU hidden width")
    parser.add_argument("--reps", type=int, default=4, help="timed rounds (after 1 warm-up round)")
    parser.add_argument("--bases", default="all", help="'all', 'none', or comma-separated basis names")
    parser.add_argument("--budget-s", type=float, default=120.0,
                        help="stop starting new rounds after this many seconds (at least 2 timed rounds run)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="leave out the bf16-autocast rows (SwiGLU, Linear, KANLinear)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, n = args.dim, args.tokens
    swiglu = SwiGLU(d, args.hidden)
    budget = sum(p.numel() for p in swiglu.parameters())
    two_layer = "sequential(chebyshev2:2,chebyshev2:2)"
    h = budget_hidden(two_layer, d, budget)
    kan = KANLinear(d, d, "chebyshev2", 2)
    width = kan.n_features  # a plain linear layer with as many weights as the KAN layer
    variants: dict[str, tuple[nn.Module, int]] = {
        f"SwiGLU {d}->{args.hidden}->{d}": (swiglu, d),
        f"Linear {width}->{d} (same weights as KANLinear)": (nn.Linear(width, d, bias=False), width),
        "KANLinear chebyshev2:2 + SiLU base": (kan, d),
        f"two-layer KAN {two_layer}, h={h}": (build_kan(two_layer, d, d, h), d),
        "naive reference KAN (einsum, stored expansion), U_k degree 2": (NaiveChebyshevKAN(d, d, 2), d),
    }
    bf16_rows = {}
    if args.bf16:
        for label in list(variants)[:3]:  # SwiGLU, the same-weights Linear, KANLinear
            bf16_rows[f"{label} [bf16]"] = label
            variants[f"{label} [bf16]"] = variants[label]
    names = [] if args.bases == "none" else list_bases() if args.bases == "all" else args.bases.split(",")
    for name in names:
        for degree in (2, 3):
            if (name, degree) != ("chebyshev2", 2):  # already the headline KANLinear
                variants[f"KANLinear {name}:{degree}"] = (KANLinear(d, d, name, degree), d)

    steps, saved, params = {}, {}, {}
    for label, (module, width_in) in variants.items():
        x = torch.randn(n, width_in, requires_grad=True)
        compute = "bf16" if label in bf16_rows else "fp32"
        with autocast(compute, "cpu"):
            saved[label] = saved_bytes(module, x)
        params[label] = sum(p.numel() for p in module.parameters())
        steps[label] = make_step(module, x, compute)
    times: dict[str, list[float]] = {label: [] for label in variants}
    cpu: dict[str, list[float]] = {label: [] for label in variants}
    headline = list(variants)[:5]
    rng = random.Random(0)
    began, rounds = time.perf_counter(), 0
    for rep in range(args.reps + 1):
        if rep >= 3 and time.perf_counter() - began > args.budget_s:
            break
        rounds = rep
        order = list(variants) + headline * 2
        rng.shuffle(order)
        for label in order:
            wall, proc = time.perf_counter(), time.process_time()
            steps[label]()
            if rep >= 1:
                times[label].append(time.perf_counter() - wall)
                cpu[label].append(time.process_time() - proc)
    median = {label: statistics.median(t) for label, t in times.items()}
    cpu_median = {label: statistics.median(t) for label, t in cpu.items()}

    ref = next(iter(variants))
    linear = list(variants)[1]
    naive = list(variants)[4]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    auto = resolve_precision("auto", "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, float32"
          f"{' and bf16 autocast' if bf16_rows else ''}, {n} tokens, d={d}, {rounds} interleaved rounds (medians), "
          f"load average {load:.1f}; precision auto here: {auto.name} ({auto.reason})\n")
    print("| variant | params | fwd+bwd ms | x SwiGLU | x Linear | CPU ms | x SwiGLU (CPU) | saved MB |"
          " x SwiGLU saved | x naive saved |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label in variants:
        print(f"| {label} | {params[label] / 1e6:.2f}M | {median[label] * 1e3:.1f} | "
              f"{median[label] / median[ref]:.2f} | {median[label] / median[linear]:.2f} | "
              f"{cpu_median[label] * 1e3:.1f} | {cpu_median[label] / cpu_median[ref]:.2f} | "
              f"{saved[label] / 2**20:.1f} | {saved[label] / saved[ref]:.3f} | {saved[label] / saved[naive]:.3f} |")
    kan_label, two_label = list(variants)[2], list(variants)[3]
    checks = [
        ("KANLinear time <= 0.55x SwiGLU", median[kan_label] / median[ref], 0.55),
        ("KANLinear CPU time <= 0.55x SwiGLU", cpu_median[kan_label] / cpu_median[ref], 0.55),
        ("two-layer KAN time <= 1.1x SwiGLU", median[two_label] / median[ref], 1.1),
        ("two-layer KAN CPU time <= 1.1x SwiGLU", cpu_median[two_label] / cpu_median[ref], 1.1),
        ("KANLinear saved <= 0.15x SwiGLU", saved[kan_label] / saved[ref], 0.15),
        ("KANLinear saved <= 0.5x naive", saved[kan_label] / saved[naive], 0.5),
    ]
    print()
    for text, value, target in checks:
        print(f"- {text}: {value:.3f} {'PASS' if value <= target else 'FAIL'}")
    for label, base in bf16_rows.items():
        print(f"- {base}: bf16 / fp32 time {median[label] / median[base]:.2f} "
              f"(CPU time {cpu_median[label] / cpu_median[base]:.2f}), saved bytes {saved[label] / saved[base]:.2f}")
    if bf16_rows:
        kan16, swi16 = f"{kan_label} [bf16]", f"{ref} [bf16]"
        print(f"- KANLinear / SwiGLU, both bf16: {median[kan16] / median[swi16]:.3f}")


if __name__ == "__main__":
    main()
