"""Which arithmetic a run uses: `fp32`, `bf16` (autocast), or `auto` — decided once, from the hardware.

`auto` means bf16 autocast where the device multiplies bfloat16 matrices natively, float32 elsewhere:
- CUDA: `torch.cuda.is_bf16_supported(including_emulation=False)` (Ampere and later).
- CPU: the instruction-set features torch's cpuinfo reports (`torch.cpu.get_capabilities()`):
  AVX512-BF16 or AMX-BF16 on x86, the BF16 extension on Arm; /proc/cpuinfo flags if torch cannot say.
  `torch.ops.mkldnn._is_mkldnn_bf16_supported()` is *not* used: it is also true on plain AVX-512
  CPUs, where oneDNN emulates bf16 and a matmul runs slower than in float32.
- anything else (MPS, ...): float32.
On a CPU without these features bf16 is emulated (measured: a 4096x2304 @ 2304x576 matmul at 1.5
GFLOP/s against 96 in float32 on an AVX2 EPYC), so `auto` must not pick it there.

bf16 here is autocast only: parameters, gradients and optimizer state stay float32, and the places
that need range or exactness (losses, log-softmax, KAN bases) run in float32 under it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from kallm.errors import KallmError
from kallm.runtime.bf16_weights import frozen_weights_in_bf16

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# CPU features (names as in torch.cpu.get_capabilities()) that give native bf16 matmuls.
NATIVE_BF16_CPU_FEATURES = ("amx_bf16", "avx512_bf16", "sve_bf16", "bf16")
# The same features as /proc/cpuinfo spells them ("flags" on x86, "Features" on Arm).
_PROC_FLAGS = {"amx_bf16": "amx_bf16", "avx512_bf16": "avx512_bf16", "svebf16": "sve_bf16", "bf16": "bf16"}

Compute = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class Precision:
    """A resolved precision: what runs (`name`), what was asked for, and why (recorded in provenance)."""

    name: Compute
    requested: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype for activations kept between steps (prefix caches): bf16 runs keep them in bf16."""
        return torch.bfloat16 if self.bf16 else torch.float32

    def autocast(self, device: torch.device | str,
                 *modules: torch.nn.Module | None) -> contextlib.AbstractContextManager:
        return autocast(self.name, device, *modules)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return self.name if self.requested == self.name else f"{self.name} ({self.requested}: {self.reason})"


def autocast(compute: Compute, device: torch.device | str,
             *modules: torch.nn.Module | None) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` for 'bf16'; for 'fp32' autocast is switched *off* inside the block.

    `modules`: the models the block runs. On a CPU in bf16 their frozen matmul weights are swapped for bf16
    copies made once (`kallm.runtime.bf16_weights`) instead of being cast again on every call, and their `sdpa`
    attention runs as grouped bf16 matmuls (`kallm.runtime.grouped_attention`)."""
    if compute not in ("fp32", "bf16"):
        raise KallmError(f"compute precision must be 'fp32' or 'bf16', got {compute!r}")
    return _autocast(compute == "bf16", torch.device(device).type, modules)


@contextlib.contextmanager
def _autocast(bf16: bool, device_type: str, modules: tuple) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16))
        if bf16 and device_type == "cpu":
            from kallm.runtime.grouped_attention import (
                grouped_attention_in_bf16,  # imports transformers: only here
            )

            stack.enter_context(frozen_weights_in_bf16(*modules))
            stack.enter_context(grouped_attention_in_bf16(*modules))
        yield


def precision_problem(name: object) -> str | None:
    """Why `name` is not one of PRECISIONS (with a did-you-mean), or None when it is one."""
    if isinstance(name, str) and name in PRECISIONS:
        return None
    close = difflib.get_close_matches(str(name), PRECISIONS, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{name!r} is not valid{hint}; choose one of: {', '.join(PRECISIONS)}"


def check_precision(name: str) -> str:
    """`name` if it is one of PRECISIONS, else a KallmError saying what would be valid."""
    problem = precision_problem(name)
    if problem is not None:
        raise KallmError(f"precision {problem}")
    return name


def cpu_capabilities() -> Mapping[str, Any]:
    """The CPU's features as torch's cpuinfo reports them, else the flags of /proc/cpuinfo."""
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get is not None:
        try:
            return get()
        except RuntimeError as exc:  # cpuinfo could not initialise (unusual virtual machines)
            log.debug("torch.cpu.get_capabilities() failed (%s); reading /proc/cpuinfo", exc)
    return proc_cpuinfo_features()


def proc_cpuinfo_features(path: str | Path = "/proc/cpuinfo") -> dict[str, bool]:
    """The native-bf16 features listed in /proc/cpuinfo, named as torch names them ({} if unreadable)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    words: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            words.update(value.split())
    return {name: True for flag, name in _PROC_FLAGS.items() if flag in words}


def native_bf16_cpu_features(capabilities: Mapping[str, Any] | None = None) -> list[str]:
    """The CPU features present that give native bf16 matmuls (empty: bf16 would be emulated)."""
    caps = cpu_capabilities() if capabilities is None else capabilities
    return [f for f in NATIVE_BF16_CPU_FEATURES if caps.get(f) is True]


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """(does `device` multiply bf16 matrices natively, the reason in words)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(dev) if torch.cuda.is_available() else "CUDA"
        return ok, f"{name} {'supports' if ok else 'lacks'} native bf16"
    if dev.type == "cpu":
        found = native_bf16_cpu_features()
        if found:
            return True, f"CPU has {', '.join(found)}"
        return False, "CPU has no native bf16 (no avx512_bf16, amx_bf16 or Arm bf16); bf16 would be emulated"
    return False, f"no automatic bf16 on {dev.type}"


def _resolve(requested: str, device: torch.device) -> Precision:
    if requested == "fp32":
        return Precision("fp32", requested, "requested")
    native, why = native_bf16(device)
    if requested == "bf16":
        if not native:
            log.warning("precision bf16 on %s: %s; expect it to be slower than fp32", device, why)
        return Precision("bf16", requested, f"requested; {why}")
    return Precision("bf16" if native else "fp32", requested, why)


def resolve_precision(precision: str | Precision, device: torch.device | str) -> Precision:
    """The precision a run on `device` uses for `precision` ('auto', 'fp32', 'bf16' or a resolved one)."""
    if isinstance(precision, Precision):
        return precision
    return _resolve(check_precision(precision), torch.device(device))


def precision_in_effect(model: torch.nn.Module) -> str:
    """What the model's matmuls run in right now: the autocast dtype if autocast is on for its device,
    else its weights' dtype ('fp32', 'bf16', 'fp16'). For provenance recorded from inside a run."""
    param = next(model.parameters(), None)
    device_type = param.device.type if param is not None else "cpu"
    dtype = param.dtype if param is not None else torch.float32
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}.get(dtype, "fp32")
